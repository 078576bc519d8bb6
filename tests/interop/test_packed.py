"""compressed-tensors `pack-quantized` folders (symmetric int4 groups, the
W4A16 layout of llm-compressor's GPTQ/RTN outputs) against compressed-tensors
itself (CPU): `dequantize` equals its decompression (unpack_from_int32 +
dequantize) bit for bit; `apply --type keep` keeps the base's scales and
writes the codes compressed-tensors' quantize gives dequant(base) + Δ
(rounded to bf16) on those scales, packed by pack_to_int32; transformers
loads the outputs."""
import json
import pathlib

import pytest

import torch  # noqa: E402  (tests/interop/requirements.txt installs it; missing = failure, not a skip)
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32  # noqa: E402
from compressed_tensors.quantization import QuantizationArgs  # noqa: E402
from compressed_tensors.quantization.lifecycle.forward import dequantize, quantize  # noqa: E402

from conftest import FIXTURES  # noqa: E402

BASE = FIXTURES / "tiny_packed" / "w4g64"


def read_all(folder):
    out = {}
    for p in sorted(pathlib.Path(folder).glob("*.safetensors")):
        with safe_open(str(p), "pt") as f:
            for k in f.keys():
                out[k] = f.get_tensor(k)
    return out


def args():
    qc = json.loads((BASE / "config.json").read_text())["quantization_config"]
    (group,) = qc["config_groups"].values()
    return QuantizationArgs(**group["weights"])


def modules(t):
    return [k[: -len(".weight_packed")] for k in t if k.endswith(".weight_packed")]


def reference(t, m):
    shape = torch.Size(t[m + ".weight_shape"].tolist())
    q = unpack_from_int32(t[m + ".weight_packed"], args().num_bits, shape)
    return dequantize(x_q=q, scale=t[m + ".weight_scale"], args=args())


def bits(x):
    return x.float().contiguous().view(torch.int32)


def make_residual(t, path, seed=1):
    g = torch.Generator().manual_seed(seed)
    res = {}
    for m in modules(t):
        res[m + ".weight"] = (torch.randn(*t[m + ".weight_shape"].tolist(), generator=g) * 0.004).half()
    res["model.norm.weight"] = (torch.randn(256, generator=g) * 0.01).half()
    save_file(res, str(path))
    return res


def test_dequantize_matches_compressed_tensors(run, tmp_path):
    src = read_all(BASE)
    assert len(modules(src)) == 14
    out = tmp_path / "out"
    run("dequantize", BASE, "-o", out, "--type", "f32", "--quiet")
    got = read_all(out)
    for m in modules(src):
        assert torch.equal(bits(got[m + ".weight"]), bits(reference(src, m))), m
        assert m + ".weight_packed" not in got


def test_apply_keep_rerounds_on_the_base_scales(run, tmp_path):
    src = read_all(BASE)
    res = make_residual(src, tmp_path / "r.safetensors")
    out = tmp_path / "out"
    run("apply", "--base", BASE, "--residual", tmp_path / "r.safetensors", "-o", out, "--quiet")
    got = read_all(out)
    assert sorted(got) == sorted(src)
    for m in modules(src):
        exact = reference(src, m).float() + res[m + ".weight"].float()
        q = quantize(x=exact.to(torch.bfloat16), scale=src[m + ".weight_scale"], zero_point=None,
                     args=args(), dtype=torch.int8)
        assert torch.equal(got[m + ".weight_packed"], pack_to_int32(q, args().num_bits)), m
        assert torch.equal(got[m + ".weight_scale"], src[m + ".weight_scale"]), m
        assert torch.equal(got[m + ".weight_shape"], src[m + ".weight_shape"]), m


@pytest.mark.parametrize("ty", ["keep", "bf16"])
def test_outputs_load_in_transformers(run, tmp_path, ty):
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig
    src = read_all(BASE)
    make_residual(src, tmp_path / "r.safetensors", seed=3)
    out = tmp_path / "out"
    run("apply", "--base", BASE, "--residual", tmp_path / "r.safetensors", "-o", out, "--type", ty, "--quiet")
    extra = {"quantization_config": CompressedTensorsConfig(run_compressed=False)} if ty == "keep" else {}
    model = AutoModelForCausalLM.from_pretrained(out, device_map="cpu", **extra)
    got = read_all(out)
    name = "model.layers.1.mlp.down_proj"
    loaded = model.model.layers[1].mlp.down_proj.weight.detach()
    want = reference(got, name) if ty == "keep" else got[name + ".weight"]
    assert torch.equal(loaded, want.to(loaded.dtype))
    with torch.no_grad():
        logits = model(torch.tensor([[1, 5, 9, 42]])).logits
    assert torch.isfinite(logits).all()
