"""`qresidual apply` against the real thing: gguf-py reads the output, ggml
dequantizes the base and quantizes the expected sum, llama.cpp runs the model."""
import json

import numpy as np
import pytest
from gguf import GGUFReader, GGMLQuantizationType, get_tensor_name_map, MODEL_ARCH
from safetensors.numpy import load_file

from conftest import FIXTURES, run_qresidual

TINY = FIXTURES / "tiny"
BASE = TINY / "base-q4_k_m.gguf"
RESIDUAL = TINY / "residual-f16.safetensors"


def tensors(path):
    r = GGUFReader(str(path))
    return r, {t.name: t for t in r.tensors}


def field_int(reader, key):
    f = reader.fields[key]
    return int(f.parts[f.data[0]][0])


def converter_permute(w, n_head, n_head_kv):
    """convert_hf_to_gguf.py's LlamaModel.permute, in numpy."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def expected_sums(ggml, scale=1.0):
    """{gguf_name: (base_f32, exact_sum)} computed with ggml and gguf-py's name map."""
    reader, base = tensors(BASE)
    n_head = field_int(reader, "llama.attention.head_count")
    n_head_kv = field_int(reader, "llama.attention.head_count_kv")
    n_layer = field_int(reader, "llama.block_count")
    name_map = get_tensor_name_map(MODEL_ARCH.LLAMA, n_layer)
    res = load_file(str(RESIDUAL))
    out = {}
    for hf_name, delta in res.items():
        gname = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        assert gname is not None, hf_name
        t = base[gname]
        delta = delta.astype(np.float32)
        if hf_name.endswith("q_proj.weight"):
            delta = converter_permute(delta, n_head, n_head)
        elif hf_name.endswith("k_proj.weight"):
            delta = converter_permute(delta, n_head, n_head_kv)
        b = ggml.dequantize(int(t.tensor_type), bytes(t.data), int(t.n_elements))
        b = b.reshape(delta.shape)
        out[gname] = (b, b + np.float32(scale) * delta)
    return out


def test_f32_output_equals_dequantized_base_plus_permuted_residual(tmp_path, ggml):
    out = tmp_path / "out-f32.gguf"
    run_qresidual("apply", "--base", BASE, "--residual", RESIDUAL, "-o", out, "--type", "f32", "-q")
    _, got = tensors(out)
    sums = expected_sums(ggml)
    assert sums, "the residual matched no tensor"
    for name, (_, want) in sums.items():
        t = got[name]
        assert t.tensor_type == GGMLQuantizationType.F32
        have = np.asarray(t.data, dtype=np.float32).reshape(want.shape)
        assert np.array_equal(have.view(np.uint32), want.view(np.uint32)), name


@pytest.mark.parametrize("strategy,rounding", [("fresh", None), ("auto", "nearest"), ("auto", None)])
def test_output_is_ggml_quantization_of_the_exact_sum(tmp_path, ggml, strategy, rounding):
    """fresh keeps every type and writes ggml's quantization of the exact
    sum; auto (the default) may choose other types within the base's size —
    tensors it moves are ggml's quantization of the sum in the new type; the
    ones it keeps are searched with --rounding nearest, never further from
    the sum than that, and dithered by default: as ggml decodes them, they
    keep most of the residual (⟨out − base, Δ⟩ / ‖Δ‖² above 0.8)."""
    out = tmp_path / f"out-{strategy}-{rounding}.gguf"
    report = tmp_path / "report.json"
    extra = ["--rounding", rounding] if rounding else []
    run_qresidual("apply", "--base", BASE, "--residual", RESIDUAL, "-o", out, "--report", report,
                  "--strategy", strategy, *extra, "-q")
    _, base = tensors(BASE)
    _, got = tensors(out)
    assert list(base) == list(got), "tensor order changed"
    sums = expected_sums(ggml)
    moved = 0
    for name, bt in base.items():
        gt = got[name]
        if strategy == "fresh":
            assert gt.tensor_type == bt.tensor_type, name
        moved += gt.tensor_type != bt.tensor_type
        if name in sums:
            _, exact = sums[name]
            ty = int(gt.tensor_type)
            want = ggml.quantize(ty, exact.reshape(-1, exact.shape[-1]))
            if strategy == "fresh" or gt.tensor_type != bt.tensor_type:
                assert bytes(gt.data) == want, f"{name}: bytes differ from ggml's quantization of the sum"
            elif rounding == "nearest":
                # auto searches tensors kept in their type: never further
                # from the sum than ggml's own quantization of it.
                n = exact.size
                err = lambda b: float(np.sum((ggml.dequantize(ty, b, n) - exact.reshape(-1)) ** 2))
                assert err(bytes(gt.data)) <= err(want), name
            else:
                # dithered on the base's grid: the residual survives in what
                # ggml decodes.
                n = exact.size
                b = ggml.dequantize(ty, bytes(bt.data), n).astype(np.float64)
                o = ggml.dequantize(ty, bytes(gt.data), n).astype(np.float64)
                d = exact.reshape(-1).astype(np.float64) - b
                assert float(np.dot(o - b, d) / np.dot(d, d)) > 0.8, name
        elif gt.tensor_type == bt.tensor_type:
            assert bytes(gt.data) == bytes(bt.data), f"{name}: untouched tensor changed"
    if strategy == "auto":
        assert moved > 0, "auto chose the base's types everywhere: the test shows nothing"
        size = lambda ts: sum(int(t.n_bytes) for t in ts.values())
        assert size(got) <= size(base)
    rep = json.loads(report.read_text())
    with_res = [t for t in rep["tensors"] if t["residual"]]
    assert len(with_res) == len(sums)
    for t in with_res:
        assert 0.0 < t["error"]["retention"] < 1.5, t
        # The plan may move a tensor down to a 3-bit type (λ prices the
        # residual it keeps, not the noise): a relative error near 0.15 there,
        # cosine 0.989; 0.997 and above for the 4- to 8-bit types.
        assert t["error"]["cosine"] > (0.98 if t["type_out"] in ("q3_K", "q2_K") else 0.99), t


def test_output_loads_in_llama_cpp_and_generates(tmp_path):
    from llama_cpp import Llama
    out = tmp_path / "instruct.gguf"
    run_qresidual("apply", "--base", BASE, "--residual", RESIDUAL, "-o", out, "-q")
    llm = Llama(model_path=str(out), n_ctx=64, verbose=False, seed=1)
    res = llm("hello", max_tokens=6, temperature=0.0)
    assert res["usage"]["completion_tokens"] > 0


@pytest.mark.parametrize("variant", ["residual-sharded", "residual-gguf-names.safetensors"])
def test_residual_variants_give_the_same_model(tmp_path, variant):
    a = tmp_path / "a.gguf"
    b = tmp_path / "b.gguf"
    run_qresidual("apply", "--base", BASE, "--residual", RESIDUAL, "-o", a, "-q")
    run_qresidual("apply", "--base", BASE, "--residual", TINY / variant, "-o", b, "-q")
    assert a.read_bytes() == b.read_bytes()
