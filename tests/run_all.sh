#!/usr/bin/env bash
# Every test: the Rust suites (no Python needed), then the interoperability
# tests against llama.cpp, gguf-py, the real gemma-3-270m model, huggingface_hub's
# cache and headless Chromium, then the Python package.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 tests/check_layers.py
cargo test --workspace --all-targets
cargo test --workspace --doc

python3 -m pip install --quiet --disable-pip-version-check -r tests/interop/requirements.txt
# The HTML report is looked at in a real browser (test_html_report.py): Debian's Chromium.
if ! command -v chromium >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y chromium || { apt-get update && apt-get install -y chromium; }
fi
cargo build --release --bin qresidual
export QRESIDUAL_BIN="$PWD/target/release/qresidual"
bash tests/output_digests.sh
python3 -m pytest tests/interop -q -p no:cacheprovider

# The Python package: the wheel maturin builds from python/ (sharing the
# release build above), installed in a fresh virtual environment holding
# nothing else, against the command built from the same tree.
rm -rf target/wheels target/py-venv
CARGO_TARGET_DIR="$PWD/target" python3 -m maturin build --release --quiet \
    -m python/Cargo.toml -o target/wheels
python3 -m venv target/py-venv
target/py-venv/bin/python -m pip install --quiet --disable-pip-version-check \
    target/wheels/qresidual-*.whl pytest==9.2.0 tqdm==4.70.1
target/py-venv/bin/python -m pytest tests/python -q -p no:cacheprovider
