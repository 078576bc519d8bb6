"""GPTQ and AWQ folders in their own layouts (fixtures/tiny_gptq) against torch references that
follow the tools' code (fixtures/make_tiny_gptq.py: `reference_gptq` is AutoGPTQ's torch
QuantLinear / GPTQModel TorchQuantLinear `dequantize_weight`, `reference_awq` is AutoAWQ's
`dequantize_gemm` = `unpack_awq` + `reverse_awq_order`): `dequantize` equals them bit for bit for
every module of every variant; `apply --type keep` keeps qzeros, scales and g_idx and writes the codes
clamp(round(x / s) + z) of x = f16(dequant(base) + Δ) on the base's grid, packed as the tools pack;
`--type f16` output loads in transformers. transformers 5.24 loads GPTQ/AWQ checkpoints themselves
only through gptqmodel / autoawq (not installed here), so `keep` outputs are checked by bytes."""
import json
import pathlib
import sys

import pytest
import torch  # noqa: E402  (tests/interop/requirements.txt installs it; missing = failure, not a skip)
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from conftest import FIXTURES  # noqa: E402

sys.path.insert(0, str(FIXTURES))
from make_tiny_gptq import (  # noqa: E402
    AWQ_ORDER, VARIANTS, pack_cols, pack_rows, reference_of,
)

ROOT = FIXTURES / "tiny_gptq"


def read_all(folder):
    out = {}
    for p in sorted(pathlib.Path(folder).glob("*.safetensors")):
        with safe_open(str(p), "pt") as f:
            for k in f.keys():
                out[k] = f.get_tensor(k)
    return out


def modules(t):
    return [k[: -len(".qweight")] for k in t if k.endswith(".qweight")]


def bits_of(x):
    return x.float().contiguous().view(torch.int32)


def unpack_cols(words, bits, order):
    """int32 [n, m] -> codes [n, m·pf], column k·pf + order[j] from bits bits·j."""
    pf = 32 // bits
    shifts = torch.arange(0, 32, bits)
    c = torch.bitwise_and(torch.bitwise_right_shift(words[:, :, None], shifts), 2 ** bits - 1)
    out = torch.empty_like(c)
    out[:, :, order] = c
    return out.reshape(words.shape[0], -1)


def grid(t, m, v):
    """Per element of the HF weight [out, in]: scale (f32) and zero point, as the references read them."""
    bits = v["bits"]
    sc = t[m + ".scales"].float()
    if v["method"] == "awq":
        z = unpack_cols(t[m + ".qzeros"], 4, AWQ_ORDER)
        g = torch.arange(t[m + ".qweight"].shape[0]) // v["group"]
    else:
        z = unpack_cols(t[m + ".qzeros"], bits, list(range(32 // bits)))
        if v["fmt"] == "gptq":
            z = torch.bitwise_and(z + 1, 2 ** bits - 1)
        inp = t[m + ".qweight"].shape[0] * 32 // bits
        size = inp if v["group"] == -1 else v["group"]
        g = t[m + ".g_idx"].long() if m + ".g_idx" in t else torch.arange(inp) // size
    return sc[g].t(), z[g].t().float()


def make_residual(t, v, path, seed=1):
    gen = torch.Generator().manual_seed(seed)
    res = {}
    for m in modules(t):
        qw = t[m + ".qweight"]
        inp = qw.shape[0] if v["method"] == "awq" else qw.shape[0] * 32 // v["bits"]
        res[m + ".weight"] = (torch.randn(t[m + ".scales"].shape[1], inp, generator=gen) * 0.004).half()
    save_file(res, str(path))
    return res


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_dequantize_matches_the_references(run, tmp_path, name):
    v, base = VARIANTS[name], ROOT / name
    src = read_all(base)
    assert len(modules(src)) == 14
    out = tmp_path / "out"
    run("dequantize", base, "-o", out, "--type", "f32", "--quiet")
    got = read_all(out)
    for m in modules(src):
        assert torch.equal(bits_of(got[m + ".weight"]), bits_of(reference_of(src, m, v))), m
        assert m + ".qweight" not in got


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_apply_keep_rerounds_on_the_base_grid(run, tmp_path, name):
    v, base = VARIANTS[name], ROOT / name
    src = read_all(base)
    res = make_residual(src, v, tmp_path / "r.safetensors")
    out = tmp_path / "out"
    run("apply", "--base", base, "--residual", tmp_path / "r.safetensors", "-o", out, "--quiet")
    got = read_all(out)
    assert sorted(got) == sorted(src)
    assert json.loads((out / "config.json").read_text())["quantization_config"] == \
        json.loads((base / "config.json").read_text())["quantization_config"]
    for m in modules(src):
        x = (reference_of(src, m, v).float() + res[m + ".weight"].float()).half().float()
        s, z = grid(src, m, v)
        q = torch.where(s == 0, z, torch.clamp(torch.round(x / s) + z, 0, 2 ** v["bits"] - 1)).to(torch.int32)
        want = pack_cols(q.t().contiguous(), 4, AWQ_ORDER) if v["method"] == "awq" else pack_rows(q.t().contiguous(), v["bits"])
        assert torch.equal(got[m + ".qweight"], want), m
        for part in (".qzeros", ".scales", ".g_idx"):
            if m + part in src:
                assert torch.equal(got[m + part], src[m + part]), m + part


def test_f16_output_loads_in_transformers(run, tmp_path):
    from transformers import AutoModelForCausalLM
    v, base = VARIANTS["gptq_w4g64_act"], ROOT / "gptq_w4g64_act"
    src = read_all(base)
    res = make_residual(src, v, tmp_path / "r.safetensors", seed=3)
    out = tmp_path / "out"
    run("apply", "--base", base, "--residual", tmp_path / "r.safetensors", "-o", out, "--type", "f16", "--quiet")
    model = AutoModelForCausalLM.from_pretrained(out, device_map="cpu")
    name = "model.layers.1.mlp.down_proj"
    loaded = model.model.layers[1].mlp.down_proj.weight.detach()
    want = (reference_of(src, name, v).float() + res[name + ".weight"].float()).half()
    assert torch.equal(loaded, want.to(loaded.dtype))
    with torch.no_grad():
        logits = model(torch.tensor([[1, 5, 9, 42]])).logits
    assert torch.isfinite(logits).all()


def with_g_idx(base, bits, folder):
    """A copy of `base` with the g_idx GPTQModel's loader requires (zeros: one group per column,
    what a folder without g_idx means)."""
    t = read_all(base)
    for m in modules(t):
        if m + ".g_idx" not in t:
            t[m + ".g_idx"] = torch.zeros(t[m + ".qweight"].shape[0] * 32 // bits, dtype=torch.int32)
    folder.mkdir()
    save_file(t, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text((base / "config.json").read_text())
    return folder


def run_in_runtime(folder, out):
    """tests/interop/gptq_runtime.py on `folder` in its own process: its logits, greedy tokens and
    the kernels that ran."""
    import subprocess
    script = pathlib.Path(__file__).with_name("gptq_runtime.py")
    p = subprocess.run([sys.executable, str(script), str(folder), str(out)], capture_output=True, text=True)
    assert p.returncode == 0, f"{folder} does not load in transformers + gptqmodel:\n{p.stderr[-4000:]}"
    return torch.load(out)


def plain_logits(folder):
    """Logits and greedy tokens of a plain (unquantized) checkpoint in transformers."""
    from transformers import AutoModelForCausalLM
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    from gptq_runtime import IDS, NEW_TOKENS
    model = AutoModelForCausalLM.from_pretrained(folder, device_map="cpu", dtype=torch.float16)
    ids = torch.tensor(IDS)
    with torch.no_grad():
        logits = model(ids).logits.float()
        tokens = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)[0, ids.shape[1]:]
    return logits, tokens


# GPTQModel's 4-bit CPU kernels, both computing from the packed codes: its
# fused AVX512-BF16 kernel where the CPU has those instructions, ATen's
# int4pack matmul elsewhere.
KERNELS = {"gptq": {"TorchAtenLinear", "TorchCpuAvx512Linear"},
           "awq": {"TorchAtenAwqLinear", "TorchCpuAvx512AwqLinear"}}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_keep_output_loads_in_gptqmodel(run, tmp_path, name):
    """The `keep` output runs in transformers 5.24 with GPTQModel's CPU kernels (ATen int4pack or
    its AVX512-BF16 kernel for 4 bits, its torch kernel for 8): a forward pass and a greedy generation equal, within f16
    matmul noise, the plain model transformers builds from `dequantize --type f16` of the same
    output, and the residual moved the logits further than that noise."""
    v, base = VARIANTS[name], ROOT / name
    if v["method"] == "gptq" and not any(k.endswith(".g_idx") for k in read_all(base)):
        base = with_g_idx(base, v["bits"], tmp_path / "base")
    make_residual(read_all(base), v, tmp_path / "r.safetensors", seed=5)
    out = tmp_path / "keep"
    run("apply", "--base", base, "--residual", tmp_path / "r.safetensors", "-o", out, "--quiet")
    got = run_in_runtime(out, tmp_path / "keep.pt")
    if v["bits"] == 4:
        assert len(got["kernels"]) == 1 and got["kernels"][0] in KERNELS[v["method"]], got["kernels"]
    run("dequantize", out, "-o", tmp_path / "keep_f16", "--type", "f16", "--quiet")
    want, want_tokens = plain_logits(tmp_path / "keep_f16")
    run("dequantize", base, "-o", tmp_path / "base_f16", "--type", "f16", "--quiet")
    base_logits, _ = plain_logits(tmp_path / "base_f16")
    noise = (got["logits"] - want).abs().max().item()
    moved = (want - base_logits).abs().max().item()
    print(f"{name}: |runtime - dequantized| {noise:.2e}, |keep - base| {moved:.2e}, "
          f"logit scale {want.abs().max().item():.2f}")
    assert noise < 4e-3, noise
    assert moved > 5 * noise, (moved, noise)
    assert torch.equal(got["tokens"], want_tokens), (got["tokens"], want_tokens)
