"""mlx-lm folders in MLX's affine mode and its float modes (mxfp4, mxfp8,
nvfp4) against MLX itself (mlx[cpu]): `dequantize` equals `mx.dequantize`
bit for bit for every weight (affine: 2, 3, 4, 6 and 8 bits, groups of 32,
64, 128; the float modes in bfloat16, float16 and float32 on varied data),
`apply --type keep` writes what `mx.quantize` makes of dequant(base) + Δ
rounded to the model dtype, and mlx-lm loads the outputs and generates."""
import json
import pathlib

import pytest

import mlx.core as mx  # noqa: E402  (tests/interop/requirements.txt installs it; missing = failure, not a skip)
import numpy as np  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

from conftest import FIXTURES  # noqa: E402

BASE = FIXTURES / "tiny_mlx" / "affine"
FLOAT = FIXTURES / "tiny_mlx" / "float"
DTYPES = {"bfloat16": mx.bfloat16, "float16": mx.float16, "float32": mx.float32}


def read_all(folder):
    out = {}
    for p in sorted(pathlib.Path(folder).glob("*.safetensors")):
        out.update(mx.load(str(p)))
    return out


def quantized(folder, with_mode=False):
    """Module path -> (group_size, bits[, mode]) for every quantized module."""
    q = json.loads((pathlib.Path(folder) / "config.json").read_text())["quantization"]
    tensors = read_all(folder)
    out = {}
    for k in tensors:
        if k.endswith(".scales"):
            m = k[: -len(".scales")]
            # mlx-lm hands a module's override to to_quantized as it is: what it leaves out
            # is to_quantized's default (affine), not the model's setting.
            o = q[m] if isinstance(q.get(m), dict) else q
            mode = o.get("mode", "affine")
            p = (o.get("group_size", q["group_size"]), o.get("bits", q["bits"]))
            out[m] = p + (mode,) if with_mode else p
    return out


def deq(t, m, gs, bits, mode="affine", dtype=None):
    if mode == "affine":
        return mx.dequantize(t[m + ".weight"], t[m + ".scales"], t[m + ".biases"], group_size=gs, bits=bits)
    return mx.dequantize(t[m + ".weight"], t[m + ".scales"], group_size=gs, bits=bits, mode=mode, dtype=dtype)


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
    out = tmp_path / "out"
    modules = check_dequantize(run, BASE, out)
    assert sorted({b for _, b, _ in modules.values()}) == [2, 3, 4, 6, 8]
    got = read_all(out)
    assert not any(k.endswith((".scales", ".biases")) for k in got)
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


@pytest.mark.parametrize("base", [BASE, FIXTURES / "tiny_mlx" / "float"], ids=["affine", "float"])
@pytest.mark.parametrize("ty", ["keep", "bf16"])
def test_mlx_lm_loads_and_generates(run, tmp_path, ty, base):
    from mlx_lm.generate import generate_step
    from mlx_lm.utils import load_model
    src, modules = read_all(base), quantized(base)
    make_residual(src, modules, tmp_path / "r.safetensors", seed=3)
    out = tmp_path / "out"
    run("apply", "--base", base, "--residual", tmp_path / "r.safetensors", "-o", out, "--type", ty, "--quiet")
    model, config = load_model(out)
    assert ("quantization" in config) == (ty == "keep")
    tokens = []
    for (tok, _), _ in zip(generate_step(mx.array([1, 5, 9, 42]), model), range(8)):
        tokens.append(int(tok))
    assert len(tokens) == 8 and all(0 <= t < 256 for t in tokens)
    logits = model(mx.array([[1, 5, 9, 42]]))
    assert bool(mx.all(mx.isfinite(logits)))


def model_dtype(folder):
    c = json.loads((pathlib.Path(folder) / "config.json").read_text())
    return DTYPES[c.get("torch_dtype") or c.get("dtype") or "bfloat16"]


def requantized(src, res, m, gs, bits, mode, dtype):
    """What mx.quantize makes of dequant(base) + Δ rounded to `dtype`."""
    exact = deq(src, m, gs, bits, mode, dtype).astype(mx.float32) + mx.array(res[m + ".weight"]).astype(mx.float32)
    return mx.quantize(exact.astype(dtype), group_size=gs, bits=bits, mode=mode)


def check_dequantize(run, folder, out):
    src, modules, dtype = read_all(folder), quantized(folder, True), model_dtype(folder)
    run("dequantize", folder, "-o", out, "--type", "f32", "--quiet")
    got = read_all(out)
    for m, (gs, bits, mode) in modules.items():
        want = deq(src, m, gs, bits, mode, dtype)
        assert (bits_of(got[m + ".weight"]) == bits_of(want)).all(), (m, mode)
    return modules


def check_apply_keep(run, folder, tmp_path, seed=1, scale=0.004):
    src, modules, dtype = read_all(folder), quantized(folder, True), model_dtype(folder)
    rng = np.random.default_rng(seed)
    res = {m + ".weight": (rng.standard_normal((src[m + ".scales"].shape[0], src[m + ".scales"].shape[1] * gs))
                           * scale).astype(np.float16) for m, (gs, _, _) in modules.items()}
    save_file(res, str(tmp_path / "r.safetensors"))
    out = tmp_path / "out"
    run("apply", "--base", folder, "--residual", tmp_path / "r.safetensors", "-o", out, "--type", "keep", "--quiet")
    got = read_all(out)
    assert sorted(got) == sorted(src)
    for m, (gs, bits, mode) in modules.items():
        want = requantized(src, res, m, gs, bits, mode, dtype)
        assert (np.array(got[m + ".weight"]) == np.array(want[0])).all(), (m, mode)
        for part, w in zip([".scales", ".biases"], want[1:]):
            assert got[m + part].dtype == w.dtype, (m, part)
            assert (np.array(got[m + part].astype(mx.float32)) == np.array(w.astype(mx.float32))).all(), (m, part)
    assert (out / "config.json").read_bytes() == (pathlib.Path(folder) / "config.json").read_bytes()
    return modules


def test_float_modes_dequantize_match_mlx(run, tmp_path):
    modules = check_dequantize(run, FLOAT, tmp_path / "out")
    assert sorted({mode for _, _, mode in modules.values()}) == ["affine", "mxfp4", "mxfp8", "nvfp4"]


def test_float_modes_apply_keep_is_mx_quantize(run, tmp_path):
    check_apply_keep(run, FLOAT, tmp_path)


def varied(shape, rng):
    """Gaussian rows, heavy tails, zero and constant groups, huge and tiny rows."""
    rows, cols = shape
    w = rng.standard_normal(shape) * 0.02
    w[1] = rng.standard_t(1.5, cols)
    w[2, :64] = 0.0
    w[3] = 0.37
    w[4] *= 1e4
    w[5] *= 1e-3
    w[6, ::7] = 0.0
    w[7, 5] = 40.0
    return w


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_float_modes_on_varied_data_and_dtypes(run, tmp_path, dtype):
    """A folder written by mx.quantize in every float mode, computed in `dtype`."""
    rng = np.random.default_rng(7)
    dt = DTYPES[dtype]
    weights, q = {}, {"group_size": 32, "bits": 4, "mode": "mxfp4"}
    for mode, (gs, bits) in {"mxfp4": (32, 4), "mxfp8": (32, 8), "nvfp4": (16, 4)}.items():
        m = f"layers.{mode}"
        w = mx.array(varied((16, 256), rng).astype(np.float32)).astype(dt)
        weights[m + ".weight"], weights[m + ".scales"] = mx.quantize(w, group_size=gs, bits=bits, mode=mode)
        q[m] = {"group_size": gs, "bits": bits, "mode": mode}
    folder = tmp_path / "base"
    folder.mkdir()
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})
    (folder / "config.json").write_text(json.dumps({"torch_dtype": dtype, "quantization": q}))
    check_dequantize(run, folder, tmp_path / "deq")
    (tmp_path / "keep").mkdir()
    check_apply_keep(run, folder, tmp_path / "keep", seed=11, scale=0.01)




@pytest.mark.parametrize("base", [BASE, FLOAT], ids=["affine", "float"])
def test_search_groups_are_mx_quantize_or_base(run, tmp_path, base):
    """`--strategy search`: every group of every changed module is either mx.quantize's group of
    the sum (rounded to the model dtype) or the base's own — codes, scale and bias — the base's
    exactly where mx.dequantize makes it strictly nearer that sum; mlx-lm loads the output."""
    from mlx_lm.utils import load_model
    src, modules, dtype = read_all(base), quantized(base, True), model_dtype(base)
    res = make_residual(src, {m: p[:2] for m, p in modules.items()}, tmp_path / "r.safetensors", seed=5)
    out = tmp_path / "out"
    run("apply", "--base", base, "--residual", tmp_path / "r.safetensors", "-o", out,
        "--strategy", "search", "--quiet")
    got = read_all(out)
    kept = 0
    for m, (gs, bits, mode) in modules.items():
        target = (deq(src, m, gs, bits, mode, dtype).astype(mx.float32)
                  + mx.array(res[m + ".weight"]).astype(mx.float32)).astype(dtype)
        parts = [".weight", ".scales"] + ([".biases"] if mode == "affine" else [])
        fresh = {m + k: v for k, v in zip(parts, mx.quantize(target, group_size=gs, bits=bits, mode=mode))}
        t = np.array(target.astype(mx.float32)).astype(np.float64)
        t = t.reshape(t.shape[0], -1, gs)

        def err(tensors):
            d = np.array(deq(tensors, m, gs, bits, mode, dtype).astype(mx.float32)).astype(np.float64)
            return ((d.reshape(t.shape) - t) ** 2).sum(-1)

        def groups(tensors, k):
            # uint32 code words per group; one scale (and bias) per group
            a = np.array(tensors[m + k]) if k == ".weight" else bits_of(tensors[m + k])
            return a.reshape(t.shape[0], t.shape[1], -1)

        e_fresh, e_base = err(fresh), err(src)
        is_fresh = np.logical_and.reduce([(groups(got, k) == groups(fresh, k)).all(-1) for k in parts])
        is_base = np.logical_and.reduce([(groups(got, k) == groups(src, k)).all(-1) for k in parts])
        assert (is_fresh | is_base).all(), f"{m}: a group is neither mx.quantize's nor the base's"
        took = is_base & ~is_fresh
        assert (e_base[took] < e_fresh[took]).all(), f"{m}: a base group kept though not nearer"
        missed = ~is_base & (e_base < e_fresh * (1 - 1e-9))
        assert not missed.any(), f"{m}: {int(missed.sum())} nearer base groups not kept"
        kept += int(took.sum())
    assert kept > 0, "no base group kept: the test shows nothing"
    model, _ = load_model(out)
    assert bool(mx.all(mx.isfinite(model(mx.array([[1, 5, 9, 42]])))))


def test_one_and_five_bit_affine(run, tmp_path):
    """MLX 0.32's affine mode also takes 1 and 5 bits: a copy of the fixture with three modules
    re-quantized by mx.quantize at 5 bits/32, 1 bit/64 and 5 bits/128 (per-module overrides)
    dequantizes bit-exactly as mx.dequantize, `apply --type keep` writes mx.quantize's bytes of
    the sum, and mlx-lm loads and runs the output."""
    from mlx_lm.utils import load_model
    src, folder = read_all(BASE), tmp_path / "base"
    cfg = json.loads((BASE / "config.json").read_text())
    q = cfg["quantization"]
    changes = {"model.layers.0.mlp.up_proj": (32, 5), "model.layers.1.self_attn.o_proj": (64, 1),
               "model.layers.0.self_attn.q_proj": (128, 5)}
    for m, (gs, bits) in changes.items():
        o = q.get(m, {})
        w = deq(src, m, o.get("group_size", q["group_size"]), o.get("bits", q["bits"]))
        src[m + ".weight"], src[m + ".scales"], src[m + ".biases"] = mx.quantize(w, group_size=gs, bits=bits)
        q[m] = {"group_size": gs, "bits": bits}
    folder.mkdir()
    mx.save_safetensors(str(folder / "model.safetensors"), src, metadata={"format": "mlx"})
    (folder / "config.json").write_text(json.dumps(cfg))
    modules = check_dequantize(run, folder, tmp_path / "f32")
    assert {m: modules[m][:2] for m in changes} == changes
    res = make_residual(src, {m: changes[m] for m in changes}, tmp_path / "r.safetensors", seed=7)
    out = tmp_path / "out"
    run("apply", "--base", folder, "--residual", tmp_path / "r.safetensors", "-o", out, "--quiet")
    got = read_all(out)
    for m, (gs, bits) in changes.items():
        exact = deq(src, m, gs, bits).astype(mx.float32) + mx.array(res[m + ".weight"]).astype(mx.float32)
        qq, s, b = mx.quantize(exact.astype(mx.bfloat16), group_size=gs, bits=bits)
        assert (np.array(got[m + ".weight"]) == np.array(qq)).all(), m
        assert (bits_of(got[m + ".scales"]) == bits_of(s)).all(), m
        assert (bits_of(got[m + ".biases"]) == bits_of(b)).all(), m
    model, _ = load_model(out)
    assert bool(mx.all(mx.isfinite(model(mx.array([[1, 5, 9, 42]])))))


def moe_model(folder, mode):
    """A tiny Qwen3-MoE built and quantized by mlx-lm in `mode` (affine: 4 bits in groups of 64;
    mlx-lm keeps the router at 8-bit affine, its override naming no mode), saved in `folder`: its
    experts are stacked SwitchLinear weights `mlp.switch_mlp.{gate,up,down}_proj` of shape
    [experts, out, in]."""
    from mlx.utils import tree_flatten
    from mlx_lm.models import qwen3_moe
    from mlx_lm.utils import quantize_model, save_model
    args = qwen3_moe.ModelArgs(
        model_type="qwen3_moe", hidden_size=128, num_hidden_layers=2, intermediate_size=256,
        num_attention_heads=4, num_experts=4, num_experts_per_tok=2, decoder_sparse_step=1,
        mlp_only_layers=[], moe_intermediate_size=128, rms_norm_eps=1e-6, vocab_size=256,
        num_key_value_heads=2, head_dim=32, rope_theta=10000.0, tie_word_embeddings=False,
        max_position_embeddings=512, norm_topk_prob=True)
    mx.random.seed(4)
    model = qwen3_moe.Model(args)
    mx.eval(model.parameters())
    gs, bits = (64, 4) if mode == "affine" else (None, None)
    model, config = quantize_model(model, dict(vars(args)), group_size=gs, bits=bits, mode=mode)
    folder.mkdir()
    save_model(folder, model)
    (folder / "config.json").write_text(json.dumps(config))
    return dict(tree_flatten(model.parameters()))


@pytest.mark.parametrize("mode", ["affine", "mxfp4", "nvfp4"])
def test_moe_experts_take_per_expert_residuals(run, tmp_path, mode):
    """mlx-lm's stacked experts ([experts, out, in]) dequantize bit-exactly as mx.dequantize, and
    so does the 8-bit affine router of a float-mode model; a residual with the Hugging Face
    per-expert names (`mlp.experts.E.gate_proj.weight`, what `qresidual extract` of an HF pair
    gives) is stacked onto them in expert order: `apply` writes mx.quantize of dequant(base) + Δ
    for every expert, and mlx-lm loads and runs the output."""
    from mlx_lm.generate import generate_step
    from mlx_lm.utils import load_model
    base = tmp_path / "base"
    moe_model(base, mode)
    src, modules, dtype = read_all(base), quantized(base, True), model_dtype(base)
    stacked = [m for m in modules if ".switch_mlp." in m]
    assert len(stacked) == 6 and all(src[m + ".scales"].ndim == 3 for m in stacked)
    assert {modules[m][2] for m in stacked} == {mode}
    assert {modules[m] for m in modules if m.endswith(".mlp.gate")} == {(64, 8, "affine")}
    run("dequantize", base, "-o", tmp_path / "f32", "--type", "f32", "--quiet")
    got = read_all(tmp_path / "f32")
    for m, (gs, bits, md) in modules.items():
        assert (bits_of(got[m + ".weight"]) == bits_of(deq(src, m, gs, bits, md, dtype))).all(), m
    rng = np.random.default_rng(9)
    res, want_delta = {}, {}
    for m in stacked:
        e, out, cols = got[m + ".weight"].shape
        d = (rng.standard_normal((e, out, cols)) * 0.004).astype(np.float16)
        want_delta[m] = d
        for i in range(e):
            res[m.replace(".switch_mlp.", f".experts.{i}.") + ".weight"] = d[i]
    save_file(res, str(tmp_path / "r.safetensors"))
    out = tmp_path / "out"
    run("apply", "--base", base, "--residual", tmp_path / "r.safetensors", "-o", out, "--quiet")
    got = read_all(out)
    for m in stacked:
        gs, bits, md = modules[m]
        want = requantized(src, {m + ".weight": want_delta[m]}, m, gs, bits, md,
                           src[m + ".scales"].dtype if md == "affine" else dtype)
        parts = [".weight", ".scales"] + ([".biases"] if md == "affine" else [])
        for k, w in zip(parts, want):
            assert (bits_of(got[m + k]) == bits_of(w)).all(), (m, k)
    for m in modules:
        if m not in stacked:
            assert (np.array(got[m + ".weight"]) == np.array(src[m + ".weight"])).all(), m
    model, _ = load_model(out)
    tokens = [int(t) for (t, _), _ in zip(generate_step(mx.array([1, 5, 9, 42]), model), range(4))]
    assert len(tokens) == 4
    # One expert missing: refused, naming the stacked weight and the expert; nothing written.
    del res[stacked[0].replace(".switch_mlp.", ".experts.2.") + ".weight"]
    save_file(res, str(tmp_path / "r3.safetensors"))
    p = run("apply", "--base", base, "--residual", tmp_path / "r3.safetensors", "-o", tmp_path / "out3", "-q",
            check=False)
    assert p.returncode != 0 and "experts 2 have no residual" in p.stderr and stacked[0] in p.stderr, p.stderr
    assert not (tmp_path / "out3").exists()
