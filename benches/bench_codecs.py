#!/usr/bin/env python3
"""Per-type codec throughput, ours against ggml's, single-threaded, same data, same run.

Ours: `cargo bench -p qresidual-quant --bench codecs` (JSON lines).
ggml: libggml-base.so from llama-cpp-python through ctypes (ggml_quantize_chunk with no
importance matrix; type_traits->to_float), one thread.

Usage: python3 benches/bench_codecs.py [TYPE ...]
"""
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "fixtures"))
from gen_golden import Ggml, TYPES, TO_FLOAT  # noqa: E402
import ctypes  # noqa: E402

ROW, ROWS = 4096, 256
PASS_ROWS = 16  # 65536 elements: a 256 KiB f32 output, resident in a 1 MiB L2
# Types ggml only produces with an importance matrix: decode is measured on random blocks.
DECODE_ONLY = [("iq2_xxs", 16), ("iq2_xs", 17), ("iq3_xxs", 18), ("iq1_s", 19), ("iq3_s", 21),
               ("iq2_s", 22), ("iq1_m", 29)]


def data():
    """The same LCG as quant/benches/codecs.rs."""
    s = 0x2545F4914F6CDD1D
    out = np.empty(ROW * ROWS, dtype=np.float32)
    mask = (1 << 64) - 1
    for i in range(ROW * ROWS):
        acc = np.float32(0)
        for _ in range(4):
            s = (s * 6364136223846793005 + 1442695040888963407) & mask
            acc = np.float32(acc + np.float32((s >> 40) / float(1 << 24)))
        out[i] = np.float32((acc - np.float32(2.0)) * np.float32(0.03))
    return out.reshape(ROWS, ROW)


def seconds_per_call(f):
    """Best CPU-seconds per call of f (the calling thread's clock: ggml_quantize_chunk and
    to_float run in it; the machine may be shared, and other processes' load must not count.
    The Rust side measures the same clock)."""
    best = float("inf")
    for _ in range(3):
        start = time.thread_time()
        reps = 0
        while time.thread_time() - start < 0.3:
            f()
            reps += 1
        best = min(best, (time.thread_time() - start) / reps)
    return best


def rate(n, f, empty=None):
    """Elements per CPU-second of f over n elements. `empty` is the same call on zero
    elements: its time (the ctypes call itself, ~1 us) is taken off, which matters when a
    call decodes only a cache-sized piece."""
    t = seconds_per_call(f)
    if empty is not None:
        t -= seconds_per_call(empty)
    return n / t


def main():
    wanted = sys.argv[1:]
    ours = {}
    # Decode-only types (ggml needs an importance matrix to make them): random blocks, the
    # same bytes for both sides. Decoding does not branch on values, so timing is representative.
    g = Ggml()
    bdir = ROOT / "target" / "bench-codecs"
    bdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, tid in DECODE_ONLY:
        n = g.lib.ggml_row_size(tid, ROW) * ROWS
        (bdir / f"{name}.q").write_bytes(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
    env = dict(os.environ, QRESIDUAL_BENCH_BYTES=str(bdir))
    p = subprocess.run(["cargo", "bench", "-q", "-p", "qresidual-quant", "--bench", "codecs", "--", *wanted],
                       cwd=ROOT, check=True, capture_output=True, text=True, env=env)
    for line in p.stdout.splitlines():
        if line.startswith("{"):
            j = json.loads(line)
            ours[j["type"]] = j
    x = data()
    print(f"{'type':8} {'quantize ours':>14} {'ggml':>12} {'ratio':>6}   {'dequant ours':>13} {'ggml':>12} {'ratio':>6}"
          f"   {'pass':>6}   {'scalar':>6} {'avx2':>6}  (elements per CPU-second, 1 thread; pass: dequantize "
          f"ratio on one cache-resident pass of {PASS_ROWS} rows; last two: quantize ratio per variant)")
    for name, tid in TYPES + DECODE_ONLY:
        if name not in ours or (wanted and name not in wanted):
            continue
        o = ours[name]
        if o["quantize_eps"] is None:
            q = (bdir / f"{name}.q").read_bytes()
        else:
            q = g.quantize(tid, x)
        qbuf = ctypes.create_string_buffer(q, len(q))
        xp = x.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        y = np.empty_like(x)
        yp = y.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        traits = g.traits(tid)
        to_float = TO_FLOAT(traits.to_float) if traits.to_float else None
        gq = (rate(x.size, lambda: g.lib.ggml_quantize_chunk(tid, xp, qbuf, 0, ROWS, ROW, None))
              if o["quantize_eps"] is not None else None)
        gd = rate(x.size, lambda: to_float(qbuf, yp, x.size)) if to_float else float("nan")
        # Decoding the first rows again and again, in cache: how fast the decoder itself is.
        npass = PASS_ROWS * ROW
        gdp = (rate(npass, lambda: to_float(qbuf, yp, npass), lambda: to_float(qbuf, yp, 0))
               if to_float else float("nan"))
        pass_col = f"   {o['dequantize_eps_pass'] / gdp:6.2f}"
        var = "".join(f" {o[k] / gq:6.2f}" if k in o else f" {'-':>6}"
                      for k in ("quantize_eps_scalar", "quantize_eps_avx2"))
        if gq is None:
            print(f"{name:8} {'(decode only)':>14} {'':12} {'':6}   "
                  f"{o['dequantize_eps']:13.3e} {gd:12.3e} {o['dequantize_eps'] / gd:6.2f}{pass_col}", flush=True)
            continue
        print(f"{name:8} {o['quantize_eps']:14.3e} {gq:12.3e} {o['quantize_eps'] / gq:6.2f}   "
              f"{o['dequantize_eps']:13.3e} {gd:12.3e} {o['dequantize_eps'] / gd:6.2f}{pass_col}  {var}", flush=True)


if __name__ == "__main__":
    main()
