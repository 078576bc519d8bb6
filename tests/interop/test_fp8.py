"""FP8 model folders against the reference quantizers (CPU): transformers'
finegrained FP8 (`quant_method: fp8`, Fp8Quantize / Fp8Dequantize in
transformers.integrations.finegrained_fp8) and compressed-tensors
`float-quantized` (calculate_qparams, quantize, dequantize). `dequantize`
equals the reference dequantization bit for bit; `apply --type keep` writes
the codes and scales the reference quantizer makes for dequant(base) + Δ;
the outputs load in transformers."""
import json
import pathlib
import types

import pytest

import torch  # noqa: E402  (tests/interop/requirements.txt installs it; missing = failure, not a skip)
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import FineGrainedFP8Config  # noqa: E402
from transformers.integrations.finegrained_fp8 import Fp8Dequantize, Fp8Quantize  # noqa: E402
from compressed_tensors.quantization import QuantizationArgs  # noqa: E402
from compressed_tensors.quantization.lifecycle.forward import dequantize, quantize  # noqa: E402
from compressed_tensors.quantization.utils import calculate_qparams  # noqa: E402

from conftest import FIXTURES  # noqa: E402

TINY = FIXTURES / "tiny_fp8"
VARIANTS = ["block", "channel", "tensor", "ctblock"]


def read_all(folder):
    out = {}
    for p in sorted(pathlib.Path(folder).glob("*.safetensors")):
        with safe_open(str(p), "pt") as f:
            for k in f.keys():
                out[k] = f.get_tensor(k)
    return out


def config(folder):
    return json.loads((pathlib.Path(folder) / "config.json").read_text())["quantization_config"]


def fp8_weights(tensors):
    """FP8 weight name -> its scale tensor's name."""
    out = {}
    for k, t in tensors.items():
        if t.dtype == torch.float8_e4m3fn:
            out[k] = k + "_scale_inv" if k + "_scale_inv" in tensors else k + "_scale"
    return out


def ct_args(qc):
    (group,) = qc["config_groups"].values()
    return QuantizationArgs(**group["weights"])


def reference_dequantize(qc, q, s):
    """The reference's values of an FP8 weight, in the dtype it computes them."""
    if qc["quant_method"] == "fp8":
        return Fp8Dequantize(None)._dequantize_one(q, s, output_dtype=torch.float32)
    return dequantize(x_q=q, scale=s, args=ct_args(qc))


def reference_quantize(qc, name, x):
    """The reference quantizer on `x` (the model dtype): (codes, scale)."""
    if qc["quant_method"] == "fp8":
        fqc = FineGrainedFP8Config(weight_block_size=tuple(qc["weight_block_size"]))
        out = Fp8Quantize(types.SimpleNamespace(quantization_config=fqc)).convert({name: x})
        return out[name], out[name + "_scale_inv"]
    args = ct_args(qc)
    if args.strategy == "channel":
        mn, mx = x.amin(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)
    elif args.strategy == "block":
        bh, bw = args.block_structure
        b = x.reshape(x.shape[0] // bh, bh, x.shape[1] // bw, bw)
        mn, mx = b.amin(dim=(1, 3)), b.amax(dim=(1, 3))
    else:
        mn, mx = x.amin().reshape(1), x.amax().reshape(1)
    scale, zp = calculate_qparams(mn, mx, args)
    return quantize(x=x, scale=scale, zero_point=None, args=args, dtype=torch.float8_e4m3fn), scale


def reference_requantize(qc, x, s):
    """Codes of `x` (the model dtype) re-rounded on the stored scales `s`: compressed-tensors'
    own quantize with the given scale; for quant_method fp8 (no such function in transformers)
    torch's `(x.float() / scale_inv).clamp(-448, 448).to(float8_e4m3fn)`, each block's scale
    broadcast over its block."""
    if qc["quant_method"] == "fp8":
        bh, bw = qc["weight_block_size"]
        full = s.repeat_interleave(bh, 0).repeat_interleave(bw, 1)[: x.shape[0], : x.shape[1]]
        return (x.float() / full).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
    return quantize(x=x, scale=s, zero_point=None, args=ct_args(qc), dtype=torch.float8_e4m3fn)


def make_residual(tensors, path, seed=1):
    """A float16 residual for every FP8 weight and one norm, HF names."""
    g = torch.Generator().manual_seed(seed)
    res = {}
    for w in fp8_weights(tensors):
        res[w] = (torch.randn(*tensors[w].shape, generator=g) * 0.004).half()
    res["model.norm.weight"] = (torch.randn(tensors["model.norm.weight"].shape, generator=g) * 0.01).half()
    # One row all but zero: its block scale comes from the residual alone.
    res[next(iter(fp8_weights(tensors)))][0] *= 0
    save_file(res, str(path))
    return res


def bits(t):
    return t.contiguous().view(torch.uint8) if t.element_size() == 1 else t.contiguous().view(torch.int16 if t.element_size() == 2 else torch.int32)


@pytest.mark.parametrize("variant", VARIANTS)
def test_dequantize_matches_reference(run, tmp_path, variant):
    base = TINY / variant
    src, qc = read_all(base), config(base)
    weights = fp8_weights(src)
    assert len(weights) == 14
    out = tmp_path / "out"
    run("dequantize", base, "-o", out, "--type", "f32", "--quiet")
    got = read_all(out)
    for w, s in weights.items():
        ref = reference_dequantize(qc, src[w], src[s]).float()
        assert torch.equal(bits(got[w]), bits(ref)), w
        assert s not in got
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg


@pytest.mark.parametrize("variant", VARIANTS)
def test_apply_keep_is_reference_quantization(run, tmp_path, variant):
    base = TINY / variant
    src, qc = read_all(base), config(base)
    res = make_residual(src, tmp_path / "residual.safetensors")
    out = tmp_path / "out"
    report = tmp_path / "report.json"
    run("apply", "--base", base, "--residual", tmp_path / "residual.safetensors", "-o", out,
        "--type", "keep", "--report", report, "--quiet")
    got = read_all(out)
    assert sorted(got) == sorted(src)
    for w, s in fp8_weights(src).items():
        exact = reference_dequantize(qc, src[w], src[s]).float() + res[w].float()
        codes, scale = reference_quantize(qc, w, exact.to(torch.bfloat16))
        assert got[s].dtype == scale.dtype and got[s].shape == src[s].shape, w
        assert torch.equal(bits(got[s]), bits(scale.reshape(src[s].shape))), w
        assert torch.equal(bits(got[w]), bits(codes)), w
    norm = src["model.norm.weight"].float() + res["model.norm.weight"].float()
    assert torch.equal(got["model.norm.weight"], norm.to(torch.bfloat16))
    assert (out / "config.json").read_bytes() == (base / "config.json").read_bytes()
    r = json.loads(report.read_text())
    assert r["summary"]["with_residual"] == 15


@pytest.mark.parametrize("variant", VARIANTS)
def test_apply_keep_scales_is_reference_re_rounding(run, tmp_path, variant):
    base = TINY / variant
    src, qc = read_all(base), config(base)
    res = make_residual(src, tmp_path / "residual.safetensors")
    out = tmp_path / "out"
    run("apply", "--base", base, "--residual", tmp_path / "residual.safetensors", "-o", out,
        "--type", "keep", "--keep-scales", "--quiet")
    got = read_all(out)
    assert sorted(got) == sorted(src)
    moved = 0
    for w, s in fp8_weights(src).items():
        exact = reference_dequantize(qc, src[w], src[s]).float() + res[w].float()
        codes = reference_requantize(qc, exact.to(torch.bfloat16), src[s])
        assert torch.equal(bits(got[s]), bits(src[s])), w
        assert torch.equal(bits(got[w]), bits(codes)), w
        moved += int((bits(got[w]) != bits(src[w])).sum())
    assert moved > 0
    # Loads as the base does: the output is an FP8 folder of the same layout.
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig
    extra = {}
    if qc["quant_method"] == "compressed-tensors":
        extra["quantization_config"] = CompressedTensorsConfig(run_compressed=False)
    model = AutoModelForCausalLM.from_pretrained(out, device_map="cpu", **extra)
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 5, 9, 42]])).logits).all()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("ty", ["keep", "bf16", "f16"])
def test_outputs_load_in_transformers(run, tmp_path, variant, ty):
    base = TINY / variant
    src, qc = read_all(base), config(base)
    res = make_residual(src, tmp_path / "r.safetensors", seed=3)
    out = tmp_path / "out"
    run("apply", "--base", base, "--residual", tmp_path / "r.safetensors", "-o", out, "--type", ty, "--quiet")
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig
    extra = {}
    if ty == "keep" and qc["quant_method"] == "compressed-tensors":
        # Decompressed on load, so the loaded weight is compressed-tensors' dequantization.
        extra["quantization_config"] = CompressedTensorsConfig(run_compressed=False)
    model = AutoModelForCausalLM.from_pretrained(out, device_map="cpu", **extra)
    name = "model.layers.1.mlp.down_proj.weight"
    got = read_all(out)
    if ty == "keep":
        # transformers dequantizes FP8 on a CPU; compressed-tensors decompresses.
        loaded = model.model.layers[1].mlp.down_proj.weight
        ref = reference_dequantize(qc, got[name], got[fp8_weights(got)[name]]).to(loaded.dtype)
        assert torch.equal(loaded.detach(), ref)
    else:
        dtype = {"f16": torch.float16, "bf16": torch.bfloat16}[ty]
        w = model.model.layers[1].mlp.down_proj.weight
        assert w.dtype == dtype and not fp8_weights(got)
        exact = reference_dequantize(qc, src[name], src[fp8_weights(src)[name]]).float() + res[name].float()
        assert torch.equal(got[name], exact.to(dtype))
        assert torch.equal(w.detach(), exact.to(dtype))
    with torch.no_grad():
        logits = model(torch.tensor([[1, 5, 9, 42]])).logits
    assert torch.isfinite(logits).all()
