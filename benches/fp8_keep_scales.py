#!/usr/bin/env python3
"""FP8 `apply --type keep`: scales recomputed from the sum (the default) against the base's
scales kept with the codes re-rounded on them (--keep-scales). Which is nearer the exact sum
dequant(base) + Δ, and which keeps more of Δ (retention)?

Weights: a llama of gemma-3-270m's shapes (hidden 640, ffn 2048, 4 heads of 256, 1 kv head,
--layers 4), every linear weight drawn from a Gaussian (std 0.02) or a heavy-tailed Student t
(3 degrees of freedom, scaled to std 0.02), bfloat16; quantized by the references themselves
(fixtures/make_tiny_fp8.py's functions): transformers' Fp8Quantize (quant_method fp8, 128x128
blocks) and compressed-tensors float-quantized per channel and per 128x128 block.
Δ: a Gaussian of std r · RMS(W) per weight, r = 0.5 % and 5 %, float16.
Reported from qresidual's own report (summary over the tensors with a residual): RMSE and
relative RMSE against the exact f32 sum, and retention ⟨out − base, Δ⟩/‖Δ‖².

Usage: python3 benches/fp8_keep_scales.py [--layers 4]   (QRESIDUAL_BIN: the binary)
"""
import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "target" / "bench-fp8-keep-scales"
BIN = pathlib.Path(os.environ.get("QRESIDUAL_BIN", ROOT / "target" / "release" / "qresidual"))
sys.path.insert(0, str(ROOT / "fixtures"))


def model(layers, dist):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=640, intermediate_size=2048, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=1, head_dim=256, vocab_size=256,
                      max_position_embeddings=128, tie_word_embeddings=True)
    m = LlamaForCausalLM(cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if not name.endswith("_proj.weight"):
                continue
            if dist == "gauss":
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
            else:
                t = torch.distributions.StudentT(3.0).sample(p.shape)
                p.copy_(t / 3.0 ** 0.5 * 0.02)
    return m.to(torch.bfloat16)


def main():
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file
    from make_tiny_fp8 import block_fp8, compressed_tensors_fp8

    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    a = ap.parse_args()
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    rows = []
    for dist in ["gauss", "t3"]:
        src = OUT / f"{dist}-bf16"
        model(a.layers, dist).save_pretrained(src)
        bases = {"fp8 128x128": OUT / f"{dist}-block", "ct channel": OUT / f"{dist}-channel",
                 "ct 128x128": OUT / f"{dist}-ctblock"}
        block_fp8(src, bases["fp8 128x128"])
        compressed_tensors_fp8(src, bases["ct channel"], "channel")
        compressed_tensors_fp8(src, bases["ct 128x128"], "block")
        with safe_open(str(src / "model.safetensors"), "pt") as f:
            weights = {k: f.get_tensor(k).float() for k in f.keys() if k.endswith("_proj.weight")}
        for r in [0.005, 0.05]:
            g = torch.Generator().manual_seed(2)
            res = {k: (torch.randn(w.shape, generator=g) * r * w.pow(2).mean().sqrt()).half()
                   for k, w in weights.items()}
            rpath = OUT / f"{dist}-delta-{r}.safetensors"
            save_file(res, str(rpath))
            for label, base in bases.items():
                got = {}
                for mode, extra in [("recomputed", []), ("base scales", ["--keep-scales"]),
                                    ("search", ["--strategy", "search"])]:
                    out, report = OUT / "out", OUT / "report.json"
                    shutil.rmtree(out, ignore_errors=True)
                    subprocess.run([str(BIN), "apply", "-q", "--base", str(base), "--residual",
                                    str(rpath), "-o", str(out), "--report", str(report), *extra],
                                   check=True)
                    got[mode] = json.loads(report.read_text())["summary"]["residual_tensors"]
                rows.append((dist, r, label, got))
    print(f"{'weights':6} {'Δ/RMS':>6} {'base':12} | {'rel. RMSE':>32} | {'retention':>26}")
    print(f"{'':6} {'':>6} {'':12} | {'recomputed':>10} {'base scales':>11} {'search':>9} |"
          f" {'recomp.':>8} {'base sc.':>8} {'search':>8}")
    for dist, r, label, got in rows:
        a, b, c = got["recomputed"], got["base scales"], got["search"]
        print(f"{dist:6} {r * 100:5.1f}% {label:12} | {a['relative_rmse']:10.5f} {b['relative_rmse']:11.5f}"
              f" {c['relative_rmse']:9.5f} | {a['retention']:8.4f} {b['retention']:8.4f} {c['retention']:8.4f}")


if __name__ == "__main__":
    main()
