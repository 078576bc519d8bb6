#!/usr/bin/env python3
"""Peak resident memory of `qresidual apply` on a 128k x 4096 embedding (Llama-3 vocabulary
size): base F16 GGUF (1 GiB), residual F16 safetensors (1 GiB) with the Hugging Face name.

The synthetic files are generated into target/bench-rss/ (not committed). Prints peak RSS per
output type; the target is well under 2 GiB whatever the model size.

Usage: python3 benches/bench_rss.py [--rows 128256] [--cols 4096]
QRESIDUAL_BIN=path runs that binary instead of building target/release/qresidual (e.g. to
compare two versions on the same inputs).
"""
import argparse
import os
import pathlib
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def make_inputs(d, rows, cols):
    import gguf
    from safetensors.numpy import save_file
    base = d / f"embed-{rows}x{cols}-f16.gguf"
    res = d / f"embed-{rows}x{cols}-residual.safetensors"
    if base.exists() and res.exists():
        return base, res
    rng = np.random.default_rng(0)
    w = np.empty((rows, cols), dtype=np.float16)
    delta = np.empty((rows, cols), dtype=np.float16)
    step = 8192
    for r in range(0, rows, step):
        n = min(step, rows - r)
        w[r:r + n] = rng.standard_normal((n, cols), dtype=np.float32) * 0.02
        delta[r:r + n] = rng.standard_normal((n, cols), dtype=np.float32) * 0.001
    wr = gguf.GGUFWriter(str(base), "llama")
    wr.add_block_count(1)
    wr.add_embedding_length(cols)
    wr.add_head_count(cols // 128)
    wr.add_tensor("token_embd.weight", w)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    save_file({"model.embed_tokens.weight": delta}, str(res))
    return base, res


def peak_rss_of(cmd):
    """Run cmd in a fresh child and return (seconds, its peak RSS in MiB)."""
    script = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
              "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", script, *map(str, cmd)], check=True,
                         capture_output=True, text=True).stdout
    return time.perf_counter() - t, int(out.strip().splitlines()[-1]) / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=128256)
    ap.add_argument("--cols", type=int, default=4096)
    a = ap.parse_args()
    d = ROOT / "target" / "bench-rss"
    d.mkdir(parents=True, exist_ok=True)
    if os.environ.get("QRESIDUAL_BIN"):
        exe = pathlib.Path(os.environ["QRESIDUAL_BIN"])
    else:
        subprocess.run(["cargo", "build", "--release", "-q", "--bin", "qresidual"], cwd=ROOT, check=True)
        exe = ROOT / "target" / "release" / "qresidual"
    base, res = make_inputs(d, a.rows, a.cols)
    size = (base.stat().st_size + res.stat().st_size) / 2**30
    print(f"inputs: {base.name} + {res.name} = {size:.2f} GiB")
    runs = [(f"--type {ty:5} --strategy fresh", ["--type", ty, "--strategy", "fresh"])
            for ty in ["keep", "q4_k", "q8_0"]]
    # The default: --strategy auto plans a size budget from sampled rows first.
    runs.append(("(defaults: auto, keep)", []))
    for i, (label, args) in enumerate(runs):
        out = d / f"out-{i}.gguf"
        out.unlink(missing_ok=True)
        secs, rss = peak_rss_of([exe, "apply", "--base", base, "--residual", res, "-o", out, *args, "-q"])
        print(f"apply {label:28}: peak RSS {rss:8.1f} MiB, {secs:6.1f} s, "
              f"{a.rows * a.cols / secs / 1e6:6.1f} M weights/s")
        os.unlink(out)


if __name__ == "__main__":
    main()
