#!/usr/bin/env python3
"""Dequantize speed of the FP8 and MLX bases against their references, on the same data.

A synthetic llama (hidden 2048, ffn 5632, 16 heads / 4 kv heads, vocab 32000, --layers 4 by
default, bfloat16) is quantized by the references themselves into target/bench-formats/:
  fp8-block    transformers' Fp8Quantize (128x128 blocks, quant_method fp8)
  fp8-channel  compressed-tensors float-quantized, per channel
  int4         compressed-tensors pack-quantized, symmetric int4, groups of 64
  mlx4         mlx-lm quantize_model (4 bits, groups of 64)
  mxfp4, mxfp8, nvfp4   mlx-lm quantize_model in MLX's float modes
  gptq4        GPTQ v1, 4 bits, groups of 64, act-order, and
  awq4         AWQ GEMM, 4 bits, groups of 64: fixtures/make_tiny_gptq.py's round-to-nearest
               packing (no GPTQ/AWQ package is installed); their references are that script's
               torch references of AutoGPTQ's QuantLinear and AutoAWQ's dequantize_gemm
Then, per format, alternating --repeat times:
  ours         `qresidual dequantize IN -o OUT --type f32` (read, decode, write a folder)
  reference    the reference's dequantization of every quantized weight from the same files
               (transformers' Fp8Dequantize._dequantize_one in f32; compressed-tensors'
               dequantize, after unpack_from_int32 for int4; mx.dequantize, evaluated), then `save_file` of the f32 results,
               so that both sides read the checkpoint and write the same f32 tensors.
Both sides use every core (torch and MLX their default thread pools). Reported: wall seconds
and CPU seconds (user + sys, all threads), each the best of --repeat, and reference / ours
(above 1: ours is faster). On a shared machine the wall time depends on other load. The outputs are compared
weight by weight (f32 bits) after the timing.

Usage: python3 benches/bench_formats.py [--layers 4] [--repeat 3] [--only gptq4,awq4,mxfp4]
"""
import argparse
import os
import pathlib
import resource
import shutil
import subprocess
import tempfile
import time
import types

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "target" / "bench-formats"
BIN = pathlib.Path(os.environ.get("QRESIDUAL_BIN", ROOT / "target" / "release" / "qresidual"))


def llama(layers):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers,
                      num_attention_heads=16, num_key_value_heads=4, vocab_size=32000,
                      max_position_embeddings=256, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).to(torch.bfloat16)


def make_models(layers):
    import torch
    from safetensors.torch import load_file, save_file
    import json
    if (OUT / "done").is_file() and (OUT / "done").read_text() == str(layers):
        return
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    src = OUT / "bf16"
    llama(layers).save_pretrained(src)
    # quant_method fp8, by transformers' own quantizer.
    from transformers import FineGrainedFP8Config
    from transformers.integrations.finegrained_fp8 import Fp8Quantize
    qc = FineGrainedFP8Config(weight_block_size=(128, 128))
    op = Fp8Quantize(types.SimpleNamespace(quantization_config=qc))
    tensors = {}
    for name, t in load_file(src / "model.safetensors").items():
        tensors.update(op.convert({name: t}) if name.endswith("_proj.weight") else {name: t})
    (OUT / "fp8-block").mkdir()
    save_file(tensors, OUT / "fp8-block" / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = qc.to_dict()
    (OUT / "fp8-block" / "config.json").write_text(json.dumps(cfg))
    # compressed-tensors, per channel (as fixtures/make_tiny_fp8.py).
    import sys
    sys.path.insert(0, str(ROOT / "fixtures"))
    from make_tiny_fp8 import compressed_tensors_fp8
    compressed_tensors_fp8(src, OUT / "fp8-channel", "channel")
    # compressed-tensors pack-quantized int4, groups of 64 (as fixtures/make_tiny_packed.py).
    from make_tiny_packed import packed
    packed(src, OUT / "int4", 4, 64, True)
    # MLX 4-bit by mlx-lm.
    from mlx_lm.utils import load_model, quantize_model, save_config, save_model
    model, config = load_model(src)
    model, config = quantize_model(model, config, 64, 4)
    (OUT / "mlx4").mkdir()
    save_model(OUT / "mlx4", model)
    save_config(config, OUT / "mlx4" / "config.json")
    (OUT / "done").write_text(str(layers))


GPTQ = {"gptq4": "gptq_w4g64_act", "awq4": "awq_w4g64"}
MLX_FLOAT = ["mxfp4", "mxfp8", "nvfp4"]


def bf16_source(layers):
    """The bf16 model (made here if make_models has not run)."""
    src = OUT / "bf16"
    if not (src / "config.json").is_file():
        OUT.mkdir(parents=True, exist_ok=True)
        llama(layers).save_pretrained(src)
    return src


def make_mlx_float(layers, names):
    """MLX's float modes by mlx-lm, from the bf16 model."""
    from mlx_lm.utils import load_model, quantize_model, save_config, save_model
    src = bf16_source(layers)
    for mode in names:
        if not (OUT / mode / "config.json").is_file():
            model, config = load_model(src)
            model, config = quantize_model(model, config, None, None, mode=mode)
            (OUT / mode).mkdir()
            save_model(OUT / mode, model)
            save_config(config, OUT / mode / "config.json")


def make_gptq(layers):
    """gptq4 and awq4 from the bf16 model."""
    import sys
    import torch
    sys.path.insert(0, str(ROOT / "fixtures"))
    from make_tiny_gptq import VARIANTS, write_variant
    src = bf16_source(layers)
    gen = torch.Generator().manual_seed(3)
    for name, variant in GPTQ.items():
        if not (OUT / name / "config.json").is_file():
            write_variant(src, OUT / name, VARIANTS[variant], gen)


def reference_gptq(folder, out):
    import json
    import sys
    from safetensors.torch import load_file, save_file
    sys.path.insert(0, str(ROOT / "fixtures"))
    from make_tiny_gptq import VARIANTS, reference_of
    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    v = VARIANTS[GPTQ["awq4" if qc["quant_method"] == "awq" else "gptq4"]]
    t = load_file(folder / "model.safetensors")
    res = {}
    for k, x in t.items():
        if k.endswith(".qweight"):
            m = k[: -len(".qweight")]
            res[m + ".weight"] = reference_of(t, m, v).float()
        elif not k.endswith((".qzeros", ".scales", ".g_idx")):
            res[k] = x.float()
    save_file(res, out / "model.safetensors")
    return res


def reference_fp8(folder, out):
    import json
    import torch
    from safetensors.torch import load_file, save_file
    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    t = load_file(folder / "model.safetensors")
    res = {}
    if qc["quant_method"] == "fp8":
        from transformers.integrations.finegrained_fp8 import Fp8Dequantize
        op = Fp8Dequantize(None)
        for k, v in t.items():
            if v.dtype == torch.float8_e4m3fn:
                res[k] = op._dequantize_one(v, t[k + "_scale_inv"], output_dtype=torch.float32)
            elif not k.endswith("_scale_inv"):
                res[k] = v.float()
    else:
        from compressed_tensors.quantization import QuantizationArgs
        from compressed_tensors.quantization.lifecycle.forward import dequantize
        (group,) = qc["config_groups"].values()
        args = QuantizationArgs(**group["weights"])
        for k, v in t.items():
            if v.dtype == torch.float8_e4m3fn:
                res[k] = dequantize(x_q=v, scale=t[k + "_scale"], args=args).float()
            elif not k.endswith("_scale"):
                res[k] = v.float()
    save_file(res, out / "model.safetensors")
    return res


def reference_packed(folder, out):
    import json
    import torch
    from safetensors.torch import load_file, save_file
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import dequantize
    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    (group,) = qc["config_groups"].values()
    args = QuantizationArgs(**group["weights"])
    t = load_file(folder / "model.safetensors")
    res = {}
    for k, v in t.items():
        if k.endswith(".weight_packed"):
            m = k[: -len(".weight_packed")]
            q = unpack_from_int32(v, args.num_bits, torch.Size(t[m + ".weight_shape"].tolist()))
            res[m + ".weight"] = dequantize(x_q=q, scale=t[m + ".weight_scale"], args=args).float()
        elif not k.endswith((".weight_scale", ".weight_shape")):
            res[k] = v.float()
    save_file(res, out / "model.safetensors")
    return res


def reference_mlx(folder, out):
    import json
    import mlx.core as mx
    q = json.loads((folder / "config.json").read_text())["quantization"]
    t = {}
    for p in sorted(folder.glob("*.safetensors")):
        t.update(mx.load(str(p)))
    res = {}
    for k in t:
        if k.endswith(".scales"):
            m = k[: -len(".scales")]
            p = {**q, **q.get(m, {})}
            res[m + ".weight"] = mx.dequantize(t[m + ".weight"], t[k], t.get(m + ".biases"),
                                               group_size=p["group_size"], bits=p["bits"],
                                               mode=p.get("mode", "affine")).astype(mx.float32)
        elif not k.endswith((".weight", ".biases")) or k[: -len(".weight")] + ".scales" not in t:
            if not k.endswith(".biases"):
                res[k] = t[k].astype(mx.float32)
    mx.eval(res)
    mx.save_safetensors(str(out / "model.safetensors"), res)
    return res


def timed(f):
    """(wall seconds, CPU seconds of this process and its children, result)."""
    def cpu():
        a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime
    t, c = time.perf_counter(), cpu()
    r = f()
    return time.perf_counter() - t, cpu() - c, r


def compare(ours, ref_folder):
    from safetensors.numpy import load_file
    a = load_file(ours / "model.safetensors") if (ours / "model.safetensors").is_file() else {}
    for p in sorted(ours.glob("*.safetensors")):
        a.update(load_file(p))
    b = load_file(ref_folder / "model.safetensors")
    bad = [k for k in b if a[k].view(np.uint32).tobytes() != b[k].view(np.uint32).tobytes()]
    return len(b), bad


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated formats (default: all)")
    a = ap.parse_args()
    only = set(filter(None, a.only.split(",")))
    if not only or only - set(GPTQ) - set(MLX_FLOAT):
        make_models(a.layers)
    if not only or only & set(GPTQ):
        make_gptq(a.layers)
    make_mlx_float(a.layers, [m for m in MLX_FLOAT if not only or m in only])
    print(f"{'format':<12} {'ours s':>8} {'ref s':>8} {'ref/ours':>9} {'ours cpu':>9} {'ref cpu':>8} "
          f"{'ref/ours':>9}  weights bit-equal")
    formats = [("fp8-block", reference_fp8), ("fp8-channel", reference_fp8), ("int4", reference_packed),
               ("mlx4", reference_mlx), ("gptq4", reference_gptq), ("awq4", reference_gptq)]
    for name, ref in formats + [(m, reference_mlx) for m in MLX_FLOAT]:
        if only and name not in only:
            continue
        folder = OUT / name
        best_ours, best_ref = [float("inf")] * 2, [float("inf")] * 2
        with tempfile.TemporaryDirectory(dir=OUT) as tmp:
            tmp = pathlib.Path(tmp)
            for i in range(a.repeat):
                o, r = tmp / f"ours{i}", tmp / f"ref{i}"
                r.mkdir()
                t, c, _ = timed(lambda: subprocess.run([str(BIN), "dequantize", "-q", str(folder), "-o", str(o),
                                                        "--type", "f32"], check=True))
                best_ours = [min(best_ours[0], t), min(best_ours[1], c)]
                t, c, _ = timed(lambda: ref(folder, r))
                best_ref = [min(best_ref[0], t), min(best_ref[1], c)]
            n, bad = compare(tmp / "ours0", tmp / "ref0")
        (wo, co), (wr, cr) = best_ours, best_ref
        print(f"{name:<12} {wo:>8.2f} {wr:>8.2f} {wr / wo:>8.2f}x {co:>9.2f} {cr:>8.2f} {cr / co:>8.2f}x  "
              f"{n - len(bad)}/{n}" + (f" (differ: {bad[:3]})" if bad else ""))


if __name__ == "__main__":
    main()
