"""bitsandbytes model folders against bitsandbytes and transformers themselves
(CPU): `dequantize` equals bitsandbytes' dequantization bit for bit, and
`apply --type keep` writes what bitsandbytes would write for dequant(base) + Δ,
in a folder transformers loads."""
import json
import pathlib

import pytest

import torch  # noqa: E402  (tests/interop/requirements.txt installs it; missing = failure, not a skip)
import bitsandbytes.functional as F  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from conftest import FIXTURES  # noqa: E402

TINY = FIXTURES / "tiny_bnb"


def read_all(folder):
    out = {}
    for p in sorted(pathlib.Path(folder).glob("*.safetensors")):
        with safe_open(str(p), "pt") as f:
            for k in f.keys():
                out[k] = f.get_tensor(k)
    return out


def quantized_4bit(tensors):
    """Logical 4-bit weight names -> their QuantState."""
    states = {}
    for k in tensors:
        if ".quant_state.bitsandbytes__" in k:
            w = k.split(".quant_state.")[0]
            parts = {kk[len(w) + 1:]: v for kk, v in tensors.items() if kk.startswith(w + ".")}
            states[w] = F.QuantState.from_dict(parts, device=torch.device("cpu"))
    return states


def dequant_f32(packed, qs):
    """bitsandbytes' dequantize_4bit in float32 (before the cast to the module dtype)."""
    import copy
    qs32 = copy.deepcopy(qs)
    qs32.dtype = torch.float32
    return F.dequantize_4bit(packed, qs32)


def make_residual(tensors, states, path, seed=1):
    """A float16 residual for every quantized weight and one norm, HF names."""
    g = torch.Generator().manual_seed(seed)
    res = {}
    for w, qs in states.items():
        res[w] = (torch.randn(*qs.shape, generator=g) * 0.004).half()
    res["model.norm.weight"] = (torch.randn(tensors["model.norm.weight"].shape, generator=g) * 0.01).half()
    save_file(res, str(path))
    return res


@pytest.mark.parametrize("variant", ["nf4", "fp4"])
def test_dequantize_matches_bitsandbytes(run, tmp_path, variant):
    out = tmp_path / "deq"
    run("dequantize", TINY / variant, "-o", out, "--type", "f16", "--quiet")
    src = read_all(TINY / variant)
    got = read_all(out)
    states = quantized_4bit(src)
    assert states, "fixture has 4-bit weights"
    for w, qs in states.items():
        ref = F.dequantize_4bit(src[w], qs)
        assert ref.dtype == torch.float16
        assert torch.equal(ref.view(torch.int16), got[w].view(torch.int16)), w
    for k, v in got.items():
        if k not in states:
            assert torch.equal(v, src[k]), k
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg
    assert (out / "generation_config.json").read_bytes() == (TINY / variant / "generation_config.json").read_bytes()


def test_dequantize_int8_matches_bitsandbytes(run, tmp_path):
    out = tmp_path / "deq"
    run("dequantize", TINY / "int8", "-o", out, "--type", "f32", "--quiet")
    src = read_all(TINY / "int8")
    got = read_all(out)
    n = 0
    for k, scb in src.items():
        if k.endswith(".SCB"):
            w = k[: -len(".SCB")] + ".weight"
            ref = F.int8_vectorwise_dequant(src[w], scb)
            assert ref.dtype == torch.float32
            assert torch.equal(ref.view(torch.int32), got[w].view(torch.int32)), w
            n += 1
    assert n == 14


@pytest.mark.parametrize("variant", ["nf4", "fp4"])
def test_apply_keep_4bit_is_bitsandbytes_quantization(run, tmp_path, variant):
    base = TINY / variant
    src = read_all(base)
    states = quantized_4bit(src)
    res = make_residual(src, states, tmp_path / "residual.safetensors")
    out = tmp_path / "out"
    report = tmp_path / "report.json"
    run("apply", "--base", base, "--residual", tmp_path / "residual.safetensors",
        "-o", out, "--type", "keep", "--report", report, "--quiet")
    got = read_all(out)
    assert set(got) == set(src)
    for w, qs in states.items():
        # bitsandbytes quantizes the module's float16 weight: the f32 sum
        # rounded to float16 once.
        target = (dequant_f32(src[w], qs) + res[w].float()).half()
        packed, qs2 = F.quantize_4bit(target, blocksize=qs.blocksize, compress_statistics=qs.nested,
                                      quant_type=qs.quant_type, quant_storage=torch.uint8)
        exp = qs2.as_dict(packed=True)
        assert torch.equal(got[w], packed), w
        assert set(exp) | {""} == {k[len(w) + 1:] for k in got if k.startswith(w + ".")} | {""}
        for k, v in exp.items():
            name = f"{w}.{k}"
            if isinstance(v, torch.Tensor):
                assert torch.equal(got[name], v.cpu()), name
        blob = bytes(got[f"{w}.quant_state.bitsandbytes__{variant}"].tolist())
        expected_blob = bytes(exp[f"quant_state.bitsandbytes__{variant}"].tolist())
        assert blob == expected_blob, (blob, expected_blob)
    norm = (src["model.norm.weight"].float() + res["model.norm.weight"].float()).half()
    assert torch.equal(got["model.norm.weight"], norm)
    assert torch.equal(got["model.embed_tokens.weight"], src["model.embed_tokens.weight"])
    assert (out / "config.json").read_bytes() == (base / "config.json").read_bytes()
    r = json.loads(report.read_text())
    assert r["summary"]["with_residual"] == len(states) + 1
    assert r["summary"]["by_output_type"][variant]["tensors"] == len(states)

    # transformers loads it with bitsandbytes on CPU, and the module weights
    # are the ones written.
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(out, device_map="cpu")
    lin = model.model.layers[0].self_attn.q_proj
    assert type(lin.weight).__name__ == "Params4bit"
    assert torch.equal(lin.weight.data.view(-1), got["model.layers.0.self_attn.q_proj.weight"].view(-1))
    deq = F.dequantize_4bit(lin.weight.data, lin.weight.quant_state)
    deq_file = F.dequantize_4bit(got["model.layers.0.self_attn.q_proj.weight"], quantized_4bit(got)["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(deq, deq_file)
    ids = torch.tensor([[1, 5, 9, 42]])
    with torch.no_grad():
        logits = model(ids).logits
    assert torch.isfinite(logits).all()


def test_apply_int8_keep_is_bitsandbytes_quantization(run, tmp_path):
    base = TINY / "int8"
    src = read_all(base)
    g = torch.Generator().manual_seed(3)
    res = {}
    for k in src:
        if k.endswith(".SCB"):
            w = k[: -len(".SCB")] + ".weight"
            res[w] = (torch.randn(*src[w].shape, generator=g) * 0.004).half()
    save_file(res, str(tmp_path / "r.safetensors"))
    out = tmp_path / "out"
    run("apply", "--base", base, "--residual", tmp_path / "r.safetensors", "-o", out, "--quiet")
    got = read_all(out)
    for w, d in res.items():
        scb = src[w[: -len(".weight")] + ".SCB"]
        target = (F.int8_vectorwise_dequant(src[w], scb) + d.float()).half()
        cb, scb2, _ = F.int8_vectorwise_quant(target)
        assert torch.equal(got[w], cb), w
        assert torch.equal(got[w[: -len(".weight")] + ".SCB"], scb2), w
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(out, device_map="cpu")
    assert type(model.model.layers[0].mlp.up_proj.weight).__name__ == "Int8Params"


@pytest.mark.parametrize("variant,ty,param", [
    ("nf4", "int8", "Int8Params"),
    ("fp4", "nf4", "Params4bit"),
    ("int8", "fp4", "Params4bit"),
    ("nf4", "f16", "Parameter"),
    ("nf4", "bf16", "Parameter"),
])
def test_apply_other_types_load_in_transformers(run, tmp_path, variant, ty, param):
    base = TINY / variant
    src = read_all(base)
    g = torch.Generator().manual_seed(5)
    shape = list(src["model.embed_tokens.weight"].shape)
    res = {"model.embed_tokens.weight": (torch.randn(*shape, generator=g) * 0.002).half()}
    save_file(res, str(tmp_path / "r.safetensors"))
    out = tmp_path / "out"
    run("apply", "--base", base, "--residual", tmp_path / "r.safetensors", "-o", out, "--type", ty, "--quiet")
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(out, device_map="cpu")
    w = model.model.layers[1].mlp.down_proj.weight
    assert type(w).__name__ == param
    if ty in ("f16", "bf16"):
        assert w.dtype == {"f16": torch.float16, "bf16": torch.bfloat16}[ty]
        got = read_all(out)
        emb = (src["model.embed_tokens.weight"].float() + res["model.embed_tokens.weight"].float())
        assert torch.equal(got["model.embed_tokens.weight"], emb.to(w.dtype))
    with torch.no_grad():
        logits = model(torch.tensor([[1, 5, 9, 42]])).logits
    assert torch.isfinite(logits).all()
