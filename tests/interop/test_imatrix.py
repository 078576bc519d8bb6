"""`qresidual quantize --imatrix` against llama.cpp's quantizer with the same
importance matrix.

Builds the synthetic F32 models of test_quantize_mix.py, writes an imatrix
for each with fixtures/make_imatrix.py (GGUF format; one tensor left out, so
it must be quantized unweighted; one entry with count 0, weight 1), and
quantizes with `qresidual quantize --imatrix` and with
`llama_model_quantize` given the same per-column weights through
`llama_model_quantize_params.imatrix` (an array of
`llama_model_imatrix_data {name, data, size}`, what llama-quantize builds
from the file: in_sum2 / count, 1 where the count is 0). Every tensor must
have the same type and bytes.

Run:  QRESIDUAL_BIN=target/release/qresidual python3 -m pytest tests/interop/test_imatrix.py
"""
import ctypes
import subprocess

import numpy as np
import pytest

import llama_cpp

import make_imatrix
import test_quantize_mix as qm

SKIP = "blk.1.ffn_up.weight"
ZERO = "blk.0.attn_k.weight"

# (qresidual --type, llama ftype, --pure)
CASES = [
    ("q4_k_m", "LLAMA_FTYPE_MOSTLY_Q4_K_M", False),
    ("q5_k_m", "LLAMA_FTYPE_MOSTLY_Q5_K_M", False),
    ("q3_k_m", "LLAMA_FTYPE_MOSTLY_Q3_K_M", False),
    ("q2_k", "LLAMA_FTYPE_MOSTLY_Q2_K", True),
    ("q6_k", "LLAMA_FTYPE_MOSTLY_Q6_K", True),
    ("q4_0", "LLAMA_FTYPE_MOSTLY_Q4_0", True),
    ("q4_1", "LLAMA_FTYPE_MOSTLY_Q4_1", True),
    ("q5_0", "LLAMA_FTYPE_MOSTLY_Q5_0", True),
    ("q5_1", "LLAMA_FTYPE_MOSTLY_Q5_1", True),
    ("iq4_nl", "LLAMA_FTYPE_MOSTLY_IQ4_NL", True),
    ("iq4_xs", "LLAMA_FTYPE_MOSTLY_IQ4_XS", True),
]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(F32 model path, imatrix path, {name: weights}) for the llama_dense model."""
    d = tmp_path_factory.mktemp("imx")
    qm.gen.RNG = np.random.default_rng(sum(map(ord, "llama_dense")))
    mname, arch, kv, tensors, n_vocab = qm.MODELS["llama_dense"]()
    path = d / f"{mname}.f32.gguf"
    qm.gen.write_gguf(path, arch, kv, tensors, n_vocab)
    w = make_imatrix.weights(str(path), 11, {SKIP})
    im = d / "imatrix.gguf"
    make_imatrix.write_gguf(str(im), w, {ZERO})
    weights = {n: (np.ones_like(v) if n == ZERO else v).reshape(-1).astype(np.float32)
               for n, v in w.items()}
    return path, im, weights


def llama_quantize_imatrix(fin, fout, ftype_name, pure, weights):
    entries = (llama_cpp.llama_model_imatrix_data * (len(weights) + 1))()
    keep = []
    for e, (name, v) in zip(entries, weights.items()):
        v = np.ascontiguousarray(v, dtype=np.float32)
        keep.append(v)
        e.name = name.encode()
        e.data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        e.size = v.size
    entries[len(weights)].name = None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype_name)
    params.nthread = 1
    params.pure = pure
    params.imatrix = ctypes.cast(entries, type(params.imatrix))
    rc = llama_cpp.llama_model_quantize(str(fin).encode(), str(fout).encode(), ctypes.byref(params))
    assert rc == 0, f"llama_model_quantize failed ({rc})"


@pytest.mark.parametrize("target,ftype,pure", CASES)
def test_imatrix_quantize_matches_llama_cpp(qbin, model, tmp_path, target, ftype, pure):
    fin, im, weights = model
    ref, ours, plain = tmp_path / "llama.gguf", tmp_path / "ours.gguf", tmp_path / "plain.gguf"
    llama_quantize_imatrix(fin, ref, ftype, pure, weights)
    proc = subprocess.run([str(qbin), "quantize", str(fin), "-o", str(ours), "--type", target,
                           "--imatrix", str(im)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert SKIP in proc.stderr, proc.stderr
    qm.compare(ours, ref)
    # The importance matters: without it the bytes differ.
    qm.qresidual_quantize(qbin, fin, plain, target)
    with pytest.raises(AssertionError):
        qm.compare(plain, ref)
