"""The real gemma-3-270m Q4_K_M model (F32, Q5_0, Q4_K, Q8_0, Q6_K tensors):
dequantize bit-exact with ggml, apply a GGUF-named residual, load in llama.cpp."""
import json

import numpy as np
from gguf import GGUFReader
from safetensors.numpy import save_file

from conftest import run_qresidual


def test_dequantize_matches_ggml_bit_for_bit(gemma_path, tmp_path, ggml):
    out = tmp_path / "gemma-f32.gguf"
    run_qresidual("dequantize", gemma_path, "-o", out, "-q")
    base = {t.name: t for t in GGUFReader(str(gemma_path)).tensors}
    got = GGUFReader(str(out))
    assert len(got.tensors) == len(base) == 236
    for t in got.tensors:
        b = base[t.name]
        want = ggml.dequantize(int(b.tensor_type), bytes(b.data), int(b.n_elements))
        have = np.asarray(t.data, dtype=np.float32).reshape(-1)
        assert np.array_equal(have.view(np.uint32), want.view(np.uint32)), t.name
    del got


def test_apply_synthetic_residual_and_load_in_llama_cpp(gemma_path, tmp_path, ggml):
    rng = np.random.default_rng(7)
    reader = GGUFReader(str(gemma_path))
    residual = {}
    for t in reader.tensors:
        if len(t.shape) != 2 or t.name == "token_embd.weight":
            continue
        rows, cols = int(t.shape[1]), int(t.shape[0])
        w = ggml.dequantize(int(t.tensor_type), bytes(t.data), int(t.n_elements))
        rms = float(np.sqrt(np.mean(w.astype(np.float64) ** 2)))
        low_rank = rng.standard_normal((rows, 4)) @ rng.standard_normal((4, cols)) / 2.0
        noise = rng.standard_normal((rows, cols))
        residual[t.name] = (0.05 * rms * (low_rank + noise) / np.sqrt(1.25)).astype(np.float16)
    del reader
    res_path = tmp_path / "residual.safetensors"
    save_file(residual, str(res_path))
    out = tmp_path / "gemma-instruct.gguf"
    report = tmp_path / "report.json"
    run_qresidual("apply", "--base", gemma_path, "--residual", res_path, "-o", out, "--report", report, "-q")
    rep = json.loads(report.read_text())
    assert rep["summary"]["with_residual"] == len(residual)
    by_type = rep["summary"]["by_output_type"]
    print(json.dumps(by_type, indent=1))
    for ty, s in by_type.items():
        assert 0.0 < s["error"]["retention"] < 1.5, ty
    from llama_cpp import Llama
    llm = Llama(model_path=str(out), n_ctx=128, verbose=False, seed=1)
    res = llm("The capital of France is", max_tokens=8, temperature=0.0)
    assert res["usage"]["completion_tokens"] > 0
