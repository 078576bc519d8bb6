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


def make_row_residual(states, path, seed=7):
    """A float16 residual for every 4-bit weight whose rows take four amplitudes
    in turn (none, below, near and above the 4-bit step of these weights), so
    that both the base's blocks and the fresh ones win somewhere."""
    g = torch.Generator().manual_seed(seed)
    res = {}
    for w, qs in states.items():
        amp = torch.tensor([0.0, 3e-4, 3e-3, 1e-2]).repeat(qs.shape[0] // 4 + 1)[: qs.shape[0]]
        res[w] = (torch.randn(*qs.shape, generator=g) * amp[:, None]).half()
    save_file(res, str(path))
    return res


def block_codes(tensors, w, blocksize):
    """The 4-bit codes of weight `w`, one row per block."""
    p = tensors[w].reshape(-1)
    return torch.stack([p >> 4, p & 15], 1).reshape(-1, blocksize)


def rewrite_4bit(src_dir, out_dir, double_quant):
    """The fixture with every 4-bit weight requantized by bitsandbytes itself
    from its float16 dequantization, with or without double quantization."""
    import shutil
    src = read_all(src_dir)
    states = quantized_4bit(src)
    out = {k: v for k, v in src.items() if not any(k == w or k.startswith(w + ".") for w in states)}
    for w, qs in states.items():
        packed, qs2 = F.quantize_4bit(F.dequantize_4bit(src[w], qs), blocksize=qs.blocksize,
                                      compress_statistics=double_quant, quant_type=qs.quant_type,
                                      quant_storage=torch.uint8)
        out[w] = packed
        for k, v in qs2.as_dict(packed=True).items():
            out[f"{w}.{k}"] = v
    out_dir.mkdir()
    save_file(out, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((src_dir / "config.json").read_text())
    cfg["quantization_config"]["bnb_4bit_use_double_quant"] = double_quant
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    shutil.copy(src_dir / "generation_config.json", out_dir / "generation_config.json")
    return out_dir


@pytest.mark.parametrize("variant,double_quant", [
    ("nf4", True), ("nf4", False), ("fp4", False), ("fp4", True)])
def test_apply_search_is_never_further_than_fresh(run, tmp_path, variant, double_quant):
    """`--strategy search` on NF4/FP4 bases, with and without double quantization:
    dequantized by bitsandbytes (in float32 and in the module's float16), every
    block is no further from dequant(base) + Δ than in the fresh output; the
    report's base wins are the blocks that differ; transformers loads it."""
    base = TINY / variant
    if (variant == "nf4") != double_quant:  # the fixtures: nf4 nested, fp4 plain
        base = rewrite_4bit(base, tmp_path / "base", double_quant)
    src = read_all(base)
    states = quantized_4bit(src)
    assert all(qs.nested == double_quant for qs in states.values())
    res = make_row_residual(states, tmp_path / "residual.safetensors")
    outs = {}
    for strategy in ["fresh", "search"]:
        outs[strategy] = tmp_path / strategy
        run("apply", "--base", base, "--residual", tmp_path / "residual.safetensors",
            "-o", outs[strategy], "--strategy", strategy,
            "--report", tmp_path / f"{strategy}.json", "--quiet")
    fresh, got = read_all(outs["fresh"]), read_all(outs["search"])
    fresh_states, got_states = quantized_4bit(fresh), quantized_4bit(got)
    report = json.loads((tmp_path / "search.json").read_text())
    wins = {t["name"]: t["search"] for t in report["tensors"] if "search" in t}
    assert set(wins) == set(states)
    kept = 0
    for w, qs in states.items():
        exact = (dequant_f32(src[w], qs) + res[w].float()).double().reshape(-1, qs.blocksize)
        errs = {}
        for name, tensors, st in [("fresh", fresh, fresh_states), ("search", got, got_states)]:
            f32 = dequant_f32(tensors[w], st[w]).double().reshape(-1, qs.blocksize)
            f16 = F.dequantize_4bit(tensors[w], st[w])
            assert f16.dtype == torch.float16
            f16 = f16.double().reshape(-1, qs.blocksize)
            errs[name] = (((exact - f32) ** 2).sum(1), ((exact - f16) ** 2).sum(1), f32)
        for k in (0, 1):
            assert (errs["search"][k] <= errs["fresh"][k]).all(), (w, k)
        # Wins count stored blocks: codes or absmax differ from fresh's.
        differs = (block_codes(got, w, qs.blocksize) != block_codes(fresh, w, qs.blocksize)).any(1)
        differs |= got[f"{w}.absmax"] != fresh[f"{w}.absmax"]
        assert not (errs["search"][2] != errs["fresh"][2]).any(1)[~differs].any()
        differs = differs.sum().item()
        assert wins[w]["base"] == differs, w
        assert wins[w]["blocks"] == exact.shape[0]
        kept += differs
        if double_quant:
            # The nested state is the fresh output's.
            for part in ("nested_absmax", "nested_quant_map"):
                assert torch.equal(got[f"{w}.{part}"], fresh[f"{w}.{part}"])
            assert torch.equal(got_states[w].offset, fresh_states[w].offset)
    assert kept > 0
    assert report["summary"]["search"]["total"]["base"] == kept

    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(outs["search"], device_map="cpu")
    lin = model.model.layers[1].mlp.down_proj
    assert type(lin.weight).__name__ == "Params4bit"
    name = "model.layers.1.mlp.down_proj.weight"
    assert torch.equal(F.dequantize_4bit(lin.weight.data, lin.weight.quant_state),
                       F.dequantize_4bit(got[name], got_states[name]))
    with torch.no_grad():
        logits = model(torch.tensor([[1, 5, 9, 42]])).logits
    assert torch.isfinite(logits).all()
