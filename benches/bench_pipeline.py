#!/usr/bin/env python3
"""End-to-end benchmarks on a synthetic model with Llama-3.2-1B shapes (hidden 2048, ffn 8192,
32 heads / 8 kv heads, vocab 128256, tied embeddings), all ratios measured in the same run:

  (a) `qresidual quantize --type q4_k_m` against llama.cpp's quantizer
      (`llama_cpp.llama_model_quantize`, same thread count) on the same F32 GGUF; the tensor
      bytes must be identical.
  (b) `qresidual apply` (Q4_K_M base + F16 residual -> Q4_K_M) against the pipeline a user has
      today: gguf-py dequantize + numpy add + write an F32 GGUF, then llama.cpp's quantizer with
      allow_requantize. The tensor bytes of both outputs are compared too.
      The default `qresidual apply` (--strategy auto: a size plan from sampled rows, then
      the search) is timed too; it writes other bytes by design.
  (c) `qresidual apply` with 1 and 2 threads.
  (d) peak RSS of every command (ru_maxrss of the child).
  (e) the default `qresidual apply` against `--strategy fresh`, alternating, --repeat pairs:
      the ratio of every pair, their median and spread (`--default-only` runs (e) alone).

The model is generated into target/bench-pipeline/ (not committed). The real model has 16
layers; the default here is --layers 4 to keep the whole run under 10 minutes on 2 cores
(the 128256 x 2048 embedding, a quarter of the 1B weights, is always full size).

Times: wall seconds and CPU seconds (user+sys of the child). On a shared machine the wall time
depends on other load; the CPU time does not, and for single-threaded runs the CPU ratio is the
speed ratio. Thread scaling is reported on wall time (it is only meaningful on an idle machine).

The binary is target/release/qresidual, or $QRESIDUAL_BIN.

Usage: python3 benches/bench_pipeline.py [--layers 4] [--threads 2] [--skip-today]
       python3 benches/bench_pipeline.py --scaling-only [--repeat 3]
       python3 benches/bench_pipeline.py --default-only [--repeat 3]
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "target" / "bench-pipeline"
BIN = pathlib.Path(os.environ.get("QRESIDUAL_BIN", ROOT / "target" / "release" / "qresidual"))

HIDDEN, FFN, N_HEAD, N_HEAD_KV, VOCAB = 2048, 8192, 32, 8, 128256
HEAD_DIM = HIDDEN // N_HEAD


# A small launcher process runs each command: Linux carries a process's peak RSS across fork
# and exec, so a command forked straight from this (large) script would report this script's
# peak instead of its own.
LAUNCH = """
import json, os, subprocess, sys, time
t = time.perf_counter()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
err = p.stderr.read()
_, status, ru = os.wait4(p.pid, 0)
print(json.dumps([time.perf_counter() - t, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024,
                  os.waitstatus_to_exitcode(status), err[-3000:].decode(errors="replace")]))
"""


def measured(cmd, env=None, out_path=None):
    """Run cmd; return (wall s, cpu s, peak RSS MiB) of that child alone. An earlier output at
    `out_path` (or after `-o`) is deleted first: replacing a large file makes the filesystem free
    its blocks inside the timed run, a cost that has nothing to do with the tool."""
    cmd = [str(c) for c in cmd]
    if out_path is None and "-o" in cmd:
        out_path = cmd[cmd.index("-o") + 1]
    if out_path is not None:
        pathlib.Path(out_path).unlink(missing_ok=True)
    out = subprocess.run([sys.executable, "-c", LAUNCH, *[str(c) for c in cmd]], env=env,
                         check=True, capture_output=True, text=True).stdout
    wall, cpu, rss, rc, err = json.loads(out.strip().splitlines()[-1])
    if rc != 0:
        raise RuntimeError(f"{cmd[:2]} failed:\n{err}")
    return wall, cpu, rss


def hf_names(n_layer):
    """(hf name, shape in HF layout) for every tensor, embeddings tied."""
    t = [("model.embed_tokens.weight", (VOCAB, HIDDEN)), ("model.norm.weight", (HIDDEN,))]
    for i in range(n_layer):
        p = f"model.layers.{i}."
        t += [(p + "input_layernorm.weight", (HIDDEN,)),
              (p + "post_attention_layernorm.weight", (HIDDEN,)),
              (p + "self_attn.q_proj.weight", (N_HEAD * HEAD_DIM, HIDDEN)),
              (p + "self_attn.k_proj.weight", (N_HEAD_KV * HEAD_DIM, HIDDEN)),
              (p + "self_attn.v_proj.weight", (N_HEAD_KV * HEAD_DIM, HIDDEN)),
              (p + "self_attn.o_proj.weight", (HIDDEN, N_HEAD * HEAD_DIM)),
              (p + "mlp.gate_proj.weight", (FFN, HIDDEN)),
              (p + "mlp.up_proj.weight", (FFN, HIDDEN)),
              (p + "mlp.down_proj.weight", (HIDDEN, FFN))]
    return t


def permute(w, n_head, n_head_kv):
    """LlamaModel.permute of convert_hf_to_gguf.py."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def to_gguf_layout(name, w):
    if name.endswith("q_proj.weight"):
        return permute(w, N_HEAD, N_HEAD)
    if name.endswith("k_proj.weight"):
        return permute(w, N_HEAD, N_HEAD_KV)
    return w


def add_llama_metadata(w, n_layer, gguf):
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name("Synthetic Llama-3.2-1B shapes")
    w.add_block_count(n_layer)
    w.add_context_length(4096)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(VOCAB)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"t{i}" for i in range(VOCAB - len(tokens))]
    types = [2, 3, 3] + [6] * 256 + [1] * (VOCAB - 259)
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * VOCAB)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def generate(n_layer):
    """F32 GGUF (GGUF layout and names) and an F16 residual (HF layout and names)."""
    import gguf
    from safetensors.numpy import save_file
    d = OUT / f"l{n_layer}"
    d.mkdir(parents=True, exist_ok=True)
    base, res = d / "model-f32.gguf", d / "residual-f16.safetensors"
    if base.exists() and res.exists():
        return d, base, res
    rng = np.random.default_rng(1)
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layer)
    w = gguf.GGUFWriter(str(base), "llama")
    add_llama_metadata(w, n_layer, gguf)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    deltas = {}
    for name, shape in hf_names(n_layer):
        if len(shape) == 1:
            x = (1.0 + 0.05 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
        else:
            x = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
        deltas[name] = (rng.standard_normal(shape, dtype=np.float32) * np.float32(0.001)).astype(np.float16)
        gname = tmap.get_name(name, try_suffixes=(".weight",))
        w.add_tensor(gname, np.ascontiguousarray(to_gguf_layout(name, x)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    save_file(deltas, str(res), metadata={"format": "pt"})
    return d, base, res


LLAMA_QUANTIZE = """
import ctypes, sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
p.nthread = int(sys.argv[3])
p.allow_requantize = True
rc = llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p))
sys.exit(rc)
"""

TODAY = """
import sys, numpy as np, gguf
from gguf.quants import dequantize
from safetensors import safe_open
sys.path.insert(0, sys.argv[5])
from bench_pipeline import to_gguf_layout, add_llama_metadata
base, res, out, n_layer = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
r = gguf.GGUFReader(base)
tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layer)
with safe_open(res, "np") as f:
    hf = {tmap.get_name(k, try_suffixes=(".weight",)): k for k in f.keys()}
    w = gguf.GGUFWriter(out, "llama")
    add_llama_metadata(w, n_layer, gguf)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    for t in r.tensors:
        x = dequantize(t.data, t.tensor_type).reshape([int(v) for v in reversed(t.shape)])
        k = hf[t.name]
        x = (x + to_gguf_layout(k, f.get_tensor(k)).astype(np.float32)).astype(np.float32)
        w.add_tensor(t.name, x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
"""


def tensors_of(path):
    import gguf
    r = gguf.GGUFReader(str(path))
    return {t.name: (int(t.tensor_type), bytes(t.data.tobytes())) for t in r.tensors}


def same_tensors(a, b):
    ta, tb = tensors_of(a), tensors_of(b)
    if ta.keys() != tb.keys():
        return f"different tensor names ({len(ta)} vs {len(tb)})"
    diff = [n for n in ta if ta[n] != tb[n]]
    return "identical" if not diff else f"{len(diff)} of {len(ta)} tensors differ, e.g. {diff[0]}"


def row(label, w, c, rss):
    print(f"  {label:52} wall {w:8.2f} s   cpu {c:8.2f} s   peak RSS {rss:8.0f} MiB", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-today", action="store_true", help="skip (b)'s slow reference pipeline")
    ap.add_argument("--scaling-only", action="store_true", help="only (c), --repeat times")
    ap.add_argument("--default-only", action="store_true", help="only (e), --repeat pairs")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    if a.scaling_only:
        return scaling_only(a)
    if a.default_only:
        return default_vs_fresh(a)
    if not BIN.exists():
        subprocess.run(["cargo", "build", "--release", "--bin", "qresidual"], cwd=ROOT, check=True)
    t = time.perf_counter()
    d, f32, res = generate(a.layers)
    n = sum(int(np.prod(s)) for _, s in hf_names(a.layers))
    print(f"model: {a.layers} layers, {n / 1e6:.0f} M weights, F32 GGUF {f32.stat().st_size / 2**30:.2f} GiB "
          f"(ready in {time.perf_counter() - t:.0f} s); threads {a.threads}", flush=True)
    T = str(a.threads)

    print("(a) quantize F32 -> Q4_K_M")
    ref_q = d / "llama-q4_k_m.gguf"
    our_q = d / "ours-q4_k_m.gguf"
    lw, lc, lr = measured([sys.executable, "-c", LLAMA_QUANTIZE, f32, ref_q, T], out_path=ref_q)
    row(f"llama_model_quantize (nthread {T})", lw, lc, lr)
    ow, oc, orss = measured([BIN, "quantize", "--type", "q4_k_m", "--threads", T, "-q", f32, "-o", our_q])
    row(f"qresidual quantize --threads {T}", ow, oc, orss)
    print(f"  speed-up: wall {lw / ow:.2f}x, cpu {lc / oc:.2f}x; tensor bytes: {same_tensors(ref_q, our_q)}")

    print("(b) apply Q4_K_M base + F16 residual -> Q4_K_M")
    out1 = d / "ours-apply-t1.gguf"
    outn = d / f"ours-apply-t{T}.gguf"
    aw, ac, ar = measured([BIN, "apply", "--base", ref_q, "--residual", res, "--strategy", "fresh", "--type", "q4_k_m",
                           "--threads", T, "-q", "-o", outn])
    row(f"qresidual apply --threads {T}", aw, ac, ar)
    dw, dc, dr = measured([BIN, "apply", "--base", ref_q, "--residual", res, "--threads", T, "-q",
                           "-o", d / "ours-apply-default.gguf"])
    row(f"qresidual apply --threads {T} (default: auto)", dw, dc, dr)
    if not a.skip_today:
        tmp = d / "today-f32.gguf"
        today = d / "today-q4_k_m.gguf"
        env = dict(os.environ, PYTHONPATH=str(ROOT / "benches"))
        tw, tc, tr = measured([sys.executable, "-c", TODAY, ref_q, res, tmp, a.layers, ROOT / "benches"], env)
        row("today: gguf-py dequantize + numpy add + F32 GGUF", tw, tc, tr)
        qw, qc, qr = measured([sys.executable, "-c", LLAMA_QUANTIZE, tmp, today, T], out_path=today)
        row(f"today: llama_model_quantize (nthread {T})", qw, qc, qr)
        print(f"  apply / today: wall {aw / (tw + qw):.3f}x, cpu {ac / (tc + qc):.3f}x; "
              f"tensor bytes: {same_tensors(today, outn)}")
        tmp.unlink()

    print("(c) thread scaling of apply")
    w1, c1, r1 = measured([BIN, "apply", "--base", ref_q, "--residual", res, "--strategy", "fresh", "--type", "q4_k_m",
                           "--threads", "1", "-q", "-o", out1])
    row("qresidual apply --threads 1", w1, c1, r1)
    print(f"  1 -> {T} threads: wall {w1 / aw:.2f}x (cpu {c1:.1f} s vs {ac:.1f} s); "
          f"outputs {same_tensors(out1, outn)}")
    print(f"(d) peak RSS: quantize {orss:.0f} MiB, apply {ar:.0f} MiB (threads {T}), {r1:.0f} MiB (1 thread), "
          f"{dr:.0f} MiB (default strategy)")
    default_vs_fresh(a)


def scaling_only(a):
    """(c) alone: apply with 1 and 2 threads, alternating, repeated. Other load on a shared
    machine only ever slows a run down, so the fastest run of each is the best estimate of
    what the machine does; the ratio of those is reported with every run's."""
    d = OUT / f"l{a.layers}"
    ref_q, res = d / "llama-q4_k_m.gguf", d / "residual-f16.safetensors"
    T = str(a.threads)
    best = {}
    for rep in range(a.repeat):
        r = {}
        for t in ("1", T):
            r[t] = measured([BIN, "apply", "--base", ref_q, "--residual", res, "--strategy", "fresh", "--type", "q4_k_m",
                             "--threads", t, "-q", "-o", d / f"scale-t{t}.gguf"])
            row(f"qresidual apply --threads {t}", *r[t])
            best[t] = min(best.get(t, r[t]), r[t])
        print(f"  run {rep + 1}: 1 -> {T} threads: wall {r['1'][0] / r[T][0]:.2f}x", flush=True)
    print(f"  fastest of {a.repeat}: {best['1'][0]:.2f} s -> {best[T][0]:.2f} s, 1 -> {T} threads: "
          f"{best['1'][0] / best[T][0]:.2f}x (cpu {best['1'][1]:.1f} s vs {best[T][1]:.1f} s)", flush=True)


def default_vs_fresh(a):
    """(e): the default strategy (size plan, then search) against --strategy fresh on the same
    base, alternating fresh/default in pairs so that load from other jobs falls on both alike;
    the ratio of each pair (wall and CPU), their median and range."""
    d = OUT / f"l{a.layers}"
    ref_q, res = d / "llama-q4_k_m.gguf", d / "residual-f16.safetensors"
    T = str(a.threads)
    common = ["apply", "--base", ref_q, "--residual", res, "--threads", T, "-q"]
    print(f"(e) default apply / --strategy fresh, {a.repeat} alternating pairs, threads {T}")
    walls, cpus = [], []
    for rep in range(a.repeat):
        f = measured([BIN, *common, "--strategy", "fresh", "--type", "q4_k_m", "-o", d / "ratio-fresh.gguf"])
        g = measured([BIN, *common, "-o", d / "ratio-default.gguf"])
        walls.append(g[0] / f[0])
        cpus.append(g[1] / f[1])
        print(f"  pair {rep + 1}: fresh wall {f[0]:6.2f} s cpu {f[1]:6.2f} s | default wall {g[0]:6.2f} s "
              f"cpu {g[1]:6.2f} s | ratio wall {walls[-1]:.3f}x cpu {cpus[-1]:.3f}x", flush=True)
    med = lambda v: sorted(v)[len(v) // 2] if len(v) % 2 else sum(sorted(v)[len(v) // 2 - 1:][:2]) / 2
    print(f"  default / fresh: wall median {med(walls):.3f}x (range {min(walls):.3f}-{max(walls):.3f}), "
          f"cpu median {med(cpus):.3f}x (range {min(cpus):.3f}-{max(cpus):.3f})", flush=True)


if __name__ == "__main__":
    main()
