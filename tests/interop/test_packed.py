"""compressed-tensors `pack-quantized` folders (int4 groups and int8 channels, symmetric or
with zero points: the W4A16 / W8A16 layouts of llm-compressor's GPTQ/RTN outputs) against
compressed-tensors itself (CPU): `dequantize` equals its decompression
(PackedQuantizationCompressor.decompress: unpack_from_int32 + dequantize) bit for bit;
`apply --type keep` keeps the base's scales (and zero points) and writes what
PackedQuantizationCompressor.compress makes of dequant(base) + Δ (rounded to bf16) on them;
transformers loads the outputs."""
import json
import pathlib

import pytest

import torch  # noqa: E402  (tests/interop/requirements.txt installs it; missing = failure, not a skip)
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor  # noqa: E402
from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32  # noqa: E402
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme  # noqa: E402

from conftest import FIXTURES  # noqa: E402

VARIANTS = ["w4g64", "w8ch", "w4g64_asym", "w8ch_asym"]


def read_all(folder):
    out = {}
    for p in sorted(pathlib.Path(folder).glob("*.safetensors")):
        with safe_open(str(p), "pt") as f:
            for k in f.keys():
                out[k] = f.get_tensor(k)
    return out


def scheme(base):
    qc = json.loads((base / "config.json").read_text())["quantization_config"]
    (group,) = qc["config_groups"].values()
    return QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**group["weights"]))


def modules(t):
    return [k[: -len(".weight_packed")] for k in t if k.endswith(".weight_packed")]


def parts(t, m):
    return {k[len(m) + 1:]: v for k, v in t.items() if k.startswith(m + ".weight_")}


def reference(base, t, m):
    """compressed-tensors' decompression of module `m`."""
    return PackedQuantizationCompressor.decompress(parts(t, m), scheme(base))["weight"]


def reference_keep(base, t, m, x):
    """compressed-tensors' compression of `x` on module `m`'s scales and zero points."""
    sd = {"weight": x, **parts(t, m)}
    del sd["weight_packed"]
    sch = scheme(base)
    if "weight_zero_point" in sd:
        shape = (int(t[m + ".weight_shape"][0]), sd["weight_scale"].shape[-1])
        sd["weight_zero_point"] = unpack_from_int32(sd["weight_zero_point"], sch.weights.num_bits, shape,
                                                    packed_dim=0)
    return PackedQuantizationCompressor.compress(sd, sch)


def bits_(x):
    return x.float().contiguous().view(torch.int32)


def make_residual(t, path, seed=1, sigma=0.004):
    g = torch.Generator().manual_seed(seed)
    res = {}
    for m in modules(t):
        res[m + ".weight"] = (torch.randn(*t[m + ".weight_shape"].tolist(), generator=g) * sigma).half()
    res["model.norm.weight"] = (torch.randn(256, generator=g) * 0.01).half()
    save_file(res, str(path))
    return res


def assert_keep_on_base_grid(base, src, res, got):
    """`got`, the `keep` output of `base` (tensors `src`) and residual `res`: every module's codes
    (and zero points) are compressed-tensors' compression of dequant(base) + Δ rounded to bf16 on
    the base's scales, every other part is the base's, and some codes moved."""
    moved = 0
    for m in modules(src):
        exact = reference(base, src, m).float() + res[m + ".weight"].float()
        want = reference_keep(base, src, m, exact.to(torch.bfloat16))
        for k, t in parts(src, m).items():
            same = want[k] if k in ("weight_packed", "weight_zero_point") else t
            assert torch.equal(got[f"{m}.{k}"], same), (m, k)
        moved += int((got[m + ".weight_packed"] != src[m + ".weight_packed"]).sum())
    assert moved > 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_dequantize_matches_compressed_tensors(run, tmp_path, variant):
    base = FIXTURES / "tiny_packed" / variant
    src = read_all(base)
    assert len(modules(src)) == 14
    out = tmp_path / "out"
    run("dequantize", base, "-o", out, "--type", "f32", "--quiet")
    got = read_all(out)
    for m in modules(src):
        assert torch.equal(bits_(got[m + ".weight"]), bits_(reference(base, src, m))), m
        assert m + ".weight_packed" not in got


@pytest.mark.parametrize("variant", VARIANTS)
def test_apply_keep_rerounds_on_the_base_grid(run, tmp_path, variant):
    base = FIXTURES / "tiny_packed" / variant
    src = read_all(base)
    res = make_residual(src, tmp_path / "r.safetensors")
    out = tmp_path / "out"
    run("apply", "--base", base, "--residual", tmp_path / "r.safetensors", "-o", out, "--quiet")
    got = read_all(out)
    assert sorted(got) == sorted(src)
    assert_keep_on_base_grid(base, src, res, got)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("ty", ["keep", "bf16"])
def test_outputs_load_in_transformers(run, tmp_path, variant, ty):
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig
    base = FIXTURES / "tiny_packed" / variant
    src = read_all(base)
    make_residual(src, tmp_path / "r.safetensors", seed=3)
    out = tmp_path / "out"
    run("apply", "--base", base, "--residual", tmp_path / "r.safetensors", "-o", out, "--type", ty, "--quiet")
    extra = {"quantization_config": CompressedTensorsConfig(run_compressed=False)} if ty == "keep" else {}
    model = AutoModelForCausalLM.from_pretrained(out, device_map="cpu", **extra)
    got = read_all(out)
    name = "model.layers.1.mlp.down_proj"
    loaded = model.model.layers[1].mlp.down_proj.weight.detach()
    want = reference(base, got, name) if ty == "keep" else got[name + ".weight"]
    assert torch.equal(loaded, want.to(loaded.dtype))
    with torch.no_grad():
        logits = model(torch.tensor([[1, 5, 9, 42]])).logits
    assert torch.isfinite(logits).all()


# The other widths compressed-tensors packs (pack_to_int32 takes 1 to 8 bits): folders written on
# the fly by fixtures/make_tiny_packed.py's `packed` (calculate_qparams over min/max,
# ModelCompressor.compress_model), symmetric and asymmetric, per group and per channel.
WIDTHS = {"w2g64_asym": (2, 64, False), "w3g64": (3, 64, True), "w5ch_asym": (5, None, False),
          "w6g32_asym": (6, 32, False), "w7ch": (7, None, True), "w1g64_asym": (1, 64, False)}


@pytest.mark.parametrize("name", sorted(WIDTHS))
def test_other_widths_dequantize_and_keep_as_compressed_tensors(run, tmp_path, name):
    from make_tiny_fp8 import tiny_model
    from make_tiny_packed import packed
    bits, group, symmetric = WIDTHS[name]
    tiny_model().save_pretrained(tmp_path / "bf16")
    base = tmp_path / name
    packed(tmp_path / "bf16", base, bits, group, symmetric)
    src = read_all(base)
    assert scheme(base).weights.num_bits == bits and len(modules(src)) == 14
    run("dequantize", base, "-o", tmp_path / "f32", "--type", "f32", "--quiet")
    got = read_all(tmp_path / "f32")
    for m in modules(src):
        assert torch.equal(bits_(got[m + ".weight"]), bits_(reference(base, src, m))), m
    # One- and two-bit steps are wide: a residual that moves some codes there.
    res = make_residual(src, tmp_path / "r.safetensors", sigma=0.004 if bits > 2 else 0.05)
    out = tmp_path / "out"
    run("apply", "--base", base, "--residual", tmp_path / "r.safetensors", "-o", out, "--quiet")
    got = read_all(out)
    assert_keep_on_base_grid(base, src, res, got)
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig
    model = AutoModelForCausalLM.from_pretrained(
        out, device_map="cpu", quantization_config=CompressedTensorsConfig(run_compressed=False))
    name = "model.layers.1.mlp.down_proj"
    loaded = model.model.layers[1].mlp.down_proj.weight.detach()
    assert torch.equal(loaded, reference(base, got, name).to(loaded.dtype))
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 5, 9, 42]])).logits).all()
