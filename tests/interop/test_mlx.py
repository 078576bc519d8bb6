"""mlx-lm folders in MLX's affine mode against MLX itself (mlx[cpu]):
`dequantize` equals `mx.dequantize` bit for bit for every weight (2, 3, 4,
6 and 8 bits, groups of 32, 64, 128), `apply --type keep` writes what
`mx.quantize` makes of dequant(base) + Δ rounded to the model dtype, and
mlx-lm loads the outputs and generates."""
import json
import pathlib

import pytest

import mlx.core as mx  # noqa: E402  (tests/interop/requirements.txt installs it; missing = failure, not a skip)
import numpy as np  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

from conftest import FIXTURES  # noqa: E402

BASE = FIXTURES / "tiny_mlx" / "affine"


def read_all(folder):
    out = {}
    for p in sorted(pathlib.Path(folder).glob("*.safetensors")):
        out.update(mx.load(str(p)))
    return out


def quantized(folder):
    """Module path -> (group_size, bits) for every quantized module."""
    q = json.loads((pathlib.Path(folder) / "config.json").read_text())["quantization"]
    tensors = read_all(folder)
    out = {}
    for k in tensors:
        if k.endswith(".scales"):
            m = k[: -len(".scales")]
            o = q.get(m, {})
            out[m] = (o.get("group_size", q["group_size"]), o.get("bits", q["bits"]))
    return out


def deq(t, m, gs, bits):
    return mx.dequantize(t[m + ".weight"], t[m + ".scales"], t[m + ".biases"], group_size=gs, bits=bits)


def bits_of(a):
    return np.array(a.astype(mx.float32)).view(np.uint32)


def make_residual(tensors, modules, path, seed=1):
    rng = np.random.default_rng(seed)
    res = {}
    for m, (gs, bits) in modules.items():
        shape = (tensors[m + ".scales"].shape[0], tensors[m + ".scales"].shape[1] * gs)
        res[m + ".weight"] = (rng.standard_normal(shape) * 0.004).astype(np.float16)
    res["model.norm.weight"] = (rng.standard_normal(256) * 0.01).astype(np.float16)
    save_file(res, str(path))
    return res


def test_dequantize_matches_mlx(run, tmp_path):
    src, modules = read_all(BASE), quantized(BASE)
    assert sorted({b for _, b in modules.values()}) == [2, 3, 4, 6, 8]
    out = tmp_path / "out"
    run("dequantize", BASE, "-o", out, "--type", "f32", "--quiet")
    got = read_all(out)
    for m, (gs, bits) in modules.items():
        assert (bits_of(got[m + ".weight"]) == bits_of(deq(src, m, gs, bits))).all(), m
        assert m + ".scales" not in got
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization" not in cfg and "quantization_config" not in cfg


def test_apply_keep_is_mx_quantize(run, tmp_path):
    src, modules = read_all(BASE), quantized(BASE)
    res = make_residual(src, modules, tmp_path / "r.safetensors")
    out = tmp_path / "out"
    run("apply", "--base", BASE, "--residual", tmp_path / "r.safetensors", "-o", out, "--type", "keep", "--quiet")
    got = read_all(out)
    assert sorted(got) == sorted(src)
    for m, (gs, bits) in modules.items():
        exact = deq(src, m, gs, bits).astype(mx.float32) + mx.array(res[m + ".weight"]).astype(mx.float32)
        q, s, b = mx.quantize(exact.astype(mx.bfloat16), group_size=gs, bits=bits)
        assert (np.array(got[m + ".weight"]) == np.array(q)).all(), m
        assert (bits_of(got[m + ".scales"]) == bits_of(s)).all(), m
        assert (bits_of(got[m + ".biases"]) == bits_of(b)).all(), m
    norm = (src["model.norm.weight"].astype(mx.float32) + mx.array(res["model.norm.weight"]).astype(mx.float32))
    assert (bits_of(got["model.norm.weight"]) == bits_of(norm.astype(mx.bfloat16))).all()
    assert (out / "config.json").read_bytes() == (BASE / "config.json").read_bytes()


@pytest.mark.parametrize("ty", ["keep", "bf16"])
def test_mlx_lm_loads_and_generates(run, tmp_path, ty):
    from mlx_lm.generate import generate_step
    from mlx_lm.utils import load_model
    src, modules = read_all(BASE), quantized(BASE)
    make_residual(src, modules, tmp_path / "r.safetensors", seed=3)
    out = tmp_path / "out"
    run("apply", "--base", BASE, "--residual", tmp_path / "r.safetensors", "-o", out, "--type", ty, "--quiet")
    model, config = load_model(out)
    assert ("quantization" in config) == (ty == "keep")
    tokens = []
    for (tok, _), _ in zip(generate_step(mx.array([1, 5, 9, 42]), model), range(8)):
        tokens.append(int(tok))
    assert len(tokens) == 8 and all(0 <= t < 256 for t in tokens)
    logits = model(mx.array([[1, 5, 9, 42]]))
    assert bool(mx.all(mx.isfinite(logits)))
