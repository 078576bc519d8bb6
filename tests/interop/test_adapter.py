"""`qresidual apply --strategy adapter` against llama.cpp: the LoRA adapter GGUF
loads on the untouched base and reproduces base + Δ for an exactly low-rank Δ.

The reference is the merged model `qresidual apply --type f32` writes (every
tensor dequant(base) + αΔ in f32), run by the same llama.cpp."""

import numpy as np
import pytest
from gguf import GGUFReader
from safetensors.numpy import save_file

from conftest import FIXTURES, run_qresidual

TINY = FIXTURES / "tiny"
BASE_Q = TINY / "base-q4_k_m.gguf"
RANK = 4
# Token ids of the tiny vocabulary (370 pieces), BOS first.
TOKENS = [1, 5, 17, 42, 100, 200, 300, 369, 64, 7]


def low_rank_residual(path, rank, seed=0, rel=0.3):
    """An exactly rank-`rank` Δ for every 2-D tensor of the tiny base (GGUF
    names, F32), each at `rel` of its tensor's RMS so logits move visibly."""
    rng = np.random.default_rng(seed)
    reader = GGUFReader(str(BASE_Q))
    out = {}
    for t in reader.tensors:
        if len(t.shape) != 2:
            continue
        n_in, n_out = int(t.shape[0]), int(t.shape[1])
        b = rng.standard_normal((n_out, rank)).astype(np.float32)
        a = rng.standard_normal((rank, n_in)).astype(np.float32)
        d = b @ a
        d *= np.float32(rel * 0.05 / np.sqrt(np.mean(d * d)))
        out[t.name] = d.astype(np.float32)
    save_file(out, str(path))
    return out


def logits(model, lora=None, lora_scale=1.0):
    from llama_cpp import Llama
    kw = {"lora_path": str(lora), "lora_scale": lora_scale} if lora else {}
    llm = Llama(model_path=str(model), n_ctx=64, n_batch=64, logits_all=True,
                verbose=False, seed=1, n_threads=1, **kw)
    llm.eval(TOKENS)
    out = np.array(llm.scores[: len(TOKENS)], dtype=np.float64)
    del llm
    assert np.all(np.isfinite(out))
    return out


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("adapter")
    base = d / "base-f32.gguf"
    run_qresidual("dequantize", BASE_Q, "-o", base)
    residual = d / "residual.safetensors"
    low_rank_residual(residual, RANK)
    return d, base, residual


def test_adapter_layout_is_what_llama_cpp_checks(case):
    d, base, residual = case
    adapter = d / "layout.gguf"
    run_qresidual("apply", "--base", base, "--residual", residual, "--strategy", "adapter",
                  "--rank", RANK, "-o", adapter, "--quiet")
    r = GGUFReader(str(adapter))
    f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("GGUF.")}
    assert f["general.type"] == "adapter"
    assert f["adapter.type"] == "lora"
    assert f["general.architecture"] == "llama"
    assert f["adapter.lora.alpha"] == pytest.approx(RANK)
    base_t = {t.name: [int(x) for x in t.shape] for t in GGUFReader(str(base)).tensors}
    names = {t.name: ([int(x) for x in t.shape], t.tensor_type.name) for t in r.tensors}
    for name, ne in base_t.items():
        if len(ne) != 2:
            assert f"{name}.lora_a" not in names
            continue
        (a_ne, a_ty), (b_ne, b_ty) = names[f"{name}.lora_a"], names[f"{name}.lora_b"]
        assert a_ty == b_ty == "F32"
        if name == "token_embd.weight":
            assert a_ne == [RANK, ne[1]] and b_ne == [RANK, ne[0]]
        else:
            assert a_ne == [ne[0], RANK] and b_ne == [RANK, ne[1]]


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_llama_cpp_lora_equals_merged_model(case, scale):
    """llama.cpp applies the adapter on the F32 base at run time; the logits
    equal those of the merged F32 model base + αΔ up to f32 summation order."""
    d, base, residual = case
    adapter = d / f"adapter-{scale}.gguf"
    merged = d / f"merged-{scale}.gguf"
    run_qresidual("apply", "--base", base, "--residual", residual, "--strategy", "adapter",
                  "--rank", RANK, "--scale", scale, "-o", adapter, "--quiet")
    run_qresidual("apply", "--base", base, "--residual", residual, "--type", "f32",
                  "--scale", scale, "-o", merged, "--quiet")
    with_lora = logits(base, adapter)
    want = logits(merged)
    plain = logits(base)
    moved = np.max(np.abs(plain - want))
    err = np.max(np.abs(with_lora - want))
    # The residual changes the logits by far more than the tolerance ...
    assert moved > 0.05, moved
    # ... and the adapter reproduces that change: |Δlogit| < 2e-4 · max|logit| (measured: 6e-5 of 3.5).
    tol = 2e-4 * np.max(np.abs(want))
    assert err < tol, (err, tol, moved)


def test_llama_cpp_lora_scale_is_linear(case):
    """lora_scale at load time multiplies αΔ: alpha = rank makes llama.cpp's
    alpha / rank factor exactly 1."""
    d, base, residual = case
    adapter = d / "adapter-scale.gguf"
    half = d / "merged-half.gguf"
    run_qresidual("apply", "--base", base, "--residual", residual, "--strategy", "adapter",
                  "--rank", RANK, "-o", adapter, "--quiet")
    run_qresidual("apply", "--base", base, "--residual", residual, "--type", "f32",
                  "--scale", 0.5, "-o", half, "--quiet")
    got = logits(base, adapter, lora_scale=0.5)
    want = logits(half)
    assert np.max(np.abs(got - want)) < 1e-3 * np.max(np.abs(want))


def test_adapter_on_the_quantized_base(case):
    """On the Q4_K_M base (quantized matmuls) the adapter moves the logits to
    the merged model's: the remaining gap is the base's own quantized-matmul
    error, far below the residual's effect."""
    d, _, residual = case
    adapter = d / "adapter-q.gguf"
    merged = d / "merged-q.gguf"
    before = BASE_Q.read_bytes()
    run_qresidual("apply", "--base", BASE_Q, "--residual", residual, "--strategy", "adapter",
                  "--rank", RANK, "-o", adapter, "--quiet")
    assert BASE_Q.read_bytes() == before
    run_qresidual("apply", "--base", BASE_Q, "--residual", residual, "--type", "f32",
                  "-o", merged, "--quiet")
    want = logits(merged)
    moved = np.max(np.abs(logits(BASE_Q) - want))
    err = np.max(np.abs(logits(BASE_Q, adapter) - want))
    assert err < 0.1 * moved, (err, moved)
