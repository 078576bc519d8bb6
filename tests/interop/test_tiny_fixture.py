"""The tiny llama fixture (fixtures/make_tiny_llama.py) is what it claims:
llama.cpp loads and runs the committed Q4_K_M file, the build is reproducible,
and the GGUF tensors are the HF weights permuted as convert_hf_to_gguf.py does.

Run: python3 -m pytest tests/interop/test_tiny_fixture.py
"""
import json
import os
import sys
import tempfile

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "fixtures")
TINY = os.path.join(FIXTURES, "tiny")
sys.path.insert(0, FIXTURES)

import make_tiny_llama as mtl  # noqa: E402  (also puts the reference gguf-py first)
import gguf  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402


@pytest.fixture(scope="module")
def expected():
    with open(os.path.join(TINY, "expected.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def rebuilt():
    """A fresh build in a temporary folder (also yields the uncommitted files)."""
    with tempfile.TemporaryDirectory() as tmp:
        exp = mtl.build(tmp)
        yield tmp, exp


def test_llama_cpp_loads_and_generates():
    import llama_cpp
    llm = llama_cpp.Llama(model_path=os.path.join(TINY, "base-q4_k_m.gguf"),
                          n_ctx=64, verbose=False, seed=1)
    # The SentencePiece vocab works: BOS then the merged "▁hello" piece.
    toks = llm.tokenize(b"hello")
    assert toks[0] == 1 and len(toks) == 2
    out = llm("hello", max_tokens=4, temperature=0.0)
    # llama-cpp-python's usage count re-tokenizes the text, so it can differ
    # from max_tokens; that it stopped on length means 4 tokens were sampled.
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"]["completion_tokens"] >= 1
    llm.reset()
    llm.eval(toks)
    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    logits = np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).copy()
    assert logits.shape == (llm.n_vocab(),)
    assert np.all(np.isfinite(logits)) and np.std(logits) > 0


def test_rebuild_is_byte_identical(expected, rebuilt):
    _, exp = rebuilt
    assert exp == expected


def test_q4_k_m_is_a_real_mix(expected):
    r = gguf.GGUFReader(os.path.join(TINY, "base-q4_k_m.gguf"))
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["output.weight"] == "Q6_K"
    assert types["blk.0.attn_q.weight"] == "Q4_K"
    assert types["output_norm.weight"] == "F32"
    assert "Q6_K" in {types[f"blk.{i}.ffn_down.weight"] for i in range(expected["n_layer"])}
    arch = r.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "llama"
    assert r.fields["general.file_type"].parts[-1][0] == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M


def test_gguf_holds_hf_weights_in_converter_layout(expected, rebuilt):
    tmp, _ = rebuilt
    hf = load_file(os.path.join(tmp, "hf", "model.safetensors"))
    f32 = {t.name: t for t in gguf.GGUFReader(os.path.join(tmp, "base-f32.gguf")).tensors}
    q4 = {t.name: t for t in gguf.GGUFReader(os.path.join(TINY, "base-q4_k_m.gguf")).tensors}
    assert len(f32) == len(hf) == len(q4)
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, expected["n_layer"])
    n_perm = 0
    for name, w in hf.items():
        g = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        assert g == expected["tensors"][name]["gguf"]
        want = w.astype(np.float32)
        if expected["tensors"][name]["permuted"]:
            n_h = expected["n_head"] if "q_proj" in name else expected["n_head_kv"]
            rows = want.shape[0]
            want = want.reshape(n_h, 2, rows // n_h // 2, -1).swapaxes(1, 2).reshape(want.shape)
            n_perm += 1
        got = np.asarray(f32[g].data).reshape(want.shape)
        np.testing.assert_array_equal(got, want, err_msg=name)
        # The quantized tensor is close to the F32 one, row for row.
        t = q4[g]
        deq = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(want.shape)
        rel = np.sqrt(np.mean((deq - want) ** 2) / np.mean(want ** 2))
        assert rel < 0.15, (name, rel)
    assert n_perm == 2 * expected["n_layer"]
    # Residuals are about residual_rel_rms of their tensor's RMS.
    res = load_file(os.path.join(TINY, "residual-f16.safetensors"))
    for name, d in res.items():
        w = hf[name].astype(np.float64)
        ratio = np.sqrt(np.mean(d.astype(np.float64) ** 2) / np.mean(w ** 2))
        assert abs(ratio - expected["residual_rel_rms"]) < 0.001, (name, ratio)


def test_residuals_are_small_and_consistent(expected):
    res = load_file(os.path.join(TINY, "residual-f16.safetensors"))
    gg = load_file(os.path.join(TINY, "residual-gguf-names.safetensors"))
    assert set(res) == set(expected["tensors"])
    for name, d in res.items():
        e = expected["tensors"][name]
        assert d.dtype == np.float16 and list(d.shape) == e["shape"]
        g = gg[e["gguf"]]
        if e["permuted"]:
            assert not np.array_equal(g, d)
            n_h = expected["n_head"] if "q_proj" in name else expected["n_head_kv"]
            d = mtl.permute(d, n_h, n_h)
        np.testing.assert_array_equal(g, d, err_msg=name)
