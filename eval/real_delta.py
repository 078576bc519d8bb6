#!/usr/bin/env python3
"""Real fine-tuning residuals for the evaluation harness (issue 17): the true base b of
eval/run_eval.py (gemma-3-270m blurred off every quantization grid, or the tiny llama
pretrained here) fully fine-tuned on CPU on an instruction corpus built offline, and the
residual Δ = fine-tuned − b extracted by `qresidual extract` from the Hugging Face pair.

Everything is seeded and needs no network. Steps (each skipped when its output exists):
  1. hf-b/            b as a Hugging Face checkpoint (transformers reads b-f32.gguf)
  2. corpus.jsonl     instruction examples, chat-formatted by the model's template: questions
                      about the Python standard library answered from its docstrings and
                      signatures, arithmetic in words, small text tasks; a fixed held-out split
                      (≥ 20 k answer tokens) that run_eval.py scores for gain retention
  3. ft/step-N/       full fine-tune (AdamW, loss on the answer tokens), checkpoints at the
                      steps of --save (default 15: the small delta, 60: the typical one)
  4. delta-ftN.safetensors   `qresidual extract` of (ft/step-N, hf-b): FP16, Hugging Face names
  5. real-delta.json  the recipe, losses, and Δ's relative size per tensor class

Usage (from the repo root, after `python3 eval/run_eval.py --options base` has built b):
  python3 eval/real_delta.py                       # gemma, work dir target/eval/gemma
  python3 eval/real_delta.py --model tiny          # the tiny llama pair (pretrain + tune)
Then: python3 eval/run_eval.py --delta ft60 (see eval/README.md).
"""
import argparse
import datetime
import inspect
import json
import math
import os
import pathlib
import random
import shutil
import subprocess
import sys
import time
import warnings

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
SEED = 20261203
MAX_LEN = 256
HELD_OUT_TOKENS = 20_000

# Modules whose import has side effects (opens a window, a browser, prints) or is slow.
SKIP_MODULES = {"antigravity", "this", "tkinter", "turtle", "turtledemo", "idlelib", "pydoc_data",
                "lib2to3", "ensurepip", "venv", "webbrowser", "__hello__", "__phello__", "msvcrt",
                "winreg", "winsound", "_winapi", "nt", "test", "unittest", "distutils"}


def log(*a):
    print(f"[{datetime.datetime.now():%H:%M:%S}]", *a, flush=True)


# ---------------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------------
def stdlib_entries():
    """(qualified name, signature or None, first docstring paragraph) of the public functions
    and classes of the standard library, sorted by name."""
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for mod_name in sorted(sys.stdlib_module_names):
            if mod_name.startswith("_") or mod_name in SKIP_MODULES:
                continue
            try:
                mod = __import__(mod_name)
            except Exception:  # noqa: BLE001 -- modules missing on this platform
                continue
            for name in sorted(getattr(mod, "__all__", None) or dir(mod)):
                if name.startswith("_"):
                    continue
                obj = getattr(mod, name, None)
                if not (inspect.isfunction(obj) or inspect.isbuiltin(obj) or inspect.isclass(obj)):
                    continue
                doc = inspect.getdoc(obj) or ""
                para = " ".join(doc.strip().split("\n\n")[0].split())
                words = para.split()
                if len(words) < 6 or para.startswith(name + "(") or len(words) > 90:
                    continue
                try:
                    sig = f"{mod_name}.{name}{inspect.signature(obj)}"
                except (TypeError, ValueError):
                    sig = None
                out.setdefault(f"{mod_name}.{name}", (sig, para))
    return [(k, *out[k]) for k in sorted(out)]


NUMBER_WORDS = "zero one two three four five six seven eight nine".split()


def examples(rng):
    """Instruction examples: list of dicts (kind, question, answer)."""
    ex = []
    for qual, sig, para in stdlib_entries():
        q = rng.choice([f"What does `{qual}` do in Python?", f"Explain what Python's {qual} is for.",
                        f"In one short paragraph, describe `{qual}`."])
        ex.append({"kind": "doc", "q": q, "a": para})
        if sig and len(sig) < 160:
            ex.append({"kind": "sig", "q": f"Give the call signature of `{qual}`.",
                       "a": f"The signature is `{sig}`."})
    words = sorted({w.strip(".,;:()[]\"'`").lower() for _, _, p in stdlib_entries() for w in p.split()
                    if w.isalpha() and 4 <= len(w) <= 12})
    for _ in range(len(ex) // 4):
        a, b = rng.randrange(10, 1000), rng.randrange(10, 1000)
        op = rng.choice(["plus", "minus", "times"])
        r = {"plus": a + b, "minus": a - b, "times": a * b}[op]
        ex.append({"kind": "arith", "q": f"What is {a} {op} {b}?", "a": f"{a} {op} {b} is {r}."})
        w = rng.sample(words, rng.randrange(3, 7))
        task = rng.choice(["sort", "reverse", "count", "upper"])
        if task == "sort":
            ex.append({"kind": "text", "q": "Sort these words alphabetically: " + ", ".join(w) + ".",
                       "a": ", ".join(sorted(w)) + "."})
        elif task == "reverse":
            ex.append({"kind": "text", "q": f"Write the word \"{w[0]}\" backwards.",
                       "a": f"\"{w[0]}\" backwards is \"{w[0][::-1]}\"."})
        elif task == "count":
            ex.append({"kind": "text", "q": "How many words are in this list: " + " ".join(w) + "?",
                       "a": f"There are {NUMBER_WORDS[len(w)] if len(w) < 10 else len(w)} words."})
        else:
            ex.append({"kind": "text", "q": "Write in capital letters: " + " ".join(w),
                       "a": " ".join(w).upper()})
    rng.shuffle(ex)
    return ex


# Gemma's chat format, for checkpoints whose tokenizer carries no template (the GGUF this
# case starts from has none); its markers are single tokens of gemma's vocabulary.
GEMMA_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<start_of_turn>"
                  "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] }}"
                  "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def chat(tokenizer, q, a):
    """(prompt text, answer text) in the model's chat template; the answer includes the
    end-of-turn marker so that the tune learns to stop."""
    if not tokenizer.chat_template:
        tokenizer.chat_template = GEMMA_TEMPLATE
    msgs = [{"role": "user", "content": q}]
    prompt = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": a}], tokenize=False)
    if not full.startswith(prompt):
        raise RuntimeError("chat template: the answer does not extend the prompt")
    return prompt, full[len(prompt):]


class HfTokens:
    """Gemma: the checkpoint's own tokenizer and chat template."""

    def __init__(self, folder):
        from transformers import AutoTokenizer
        self.tok = AutoTokenizer.from_pretrained(str(folder))
        self.bos = self.tok.bos_token_id
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0

    def pair(self, q, a):
        prompt, answer = chat(self.tok, q, a)
        return prompt, answer, self.encode(prompt), self.encode(answer)

    def encode(self, text):
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def save(self, folder):
        self.tok.save_pretrained(folder)


class LlamaCppTokens:
    """The tiny llama: llama.cpp's tokenizer of the GGUF vocabulary (the model has no
    Hugging Face tokenizer), prompts as "Question: …\nAnswer:". The evaluation tokenizes
    the same texts the same way."""

    def __init__(self, gguf_path):
        import ctypes
        import llama_cpp as L
        self.L = L
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        mp.vocab_only = True
        self.model = L.llama_model_load_from_file(str(gguf_path).encode(), mp)
        if not self.model:
            raise RuntimeError(f"llama.cpp cannot read the vocabulary of {gguf_path}")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.bos = L.llama_vocab_bos(self.vocab)
        self.pad = self.bos
        self._ctypes = ctypes

    def pair(self, q, a):
        prompt, answer = f"Question: {q}\nAnswer:", f" {a}\n"
        return prompt, answer, self.encode(prompt), self.encode(answer)

    def encode(self, text):
        L = self.L
        data = text.encode()
        buf = (L.llama_token * (len(data) + 16))()
        n = L.llama_tokenize(self.vocab, data, len(data), buf, len(buf), False, True)
        if n < 0:
            raise RuntimeError("tokenize failed")
        return list(buf[:n])

    def save(self, folder):
        pass


def build_corpus(work, tokens, rng):
    """corpus.jsonl: every example with its prompt/answer texts and token ids and its split
    (the evaluation re-tokenizes the texts with llama.cpp)."""
    path = work / "corpus.jsonl"
    if path.exists():
        return [json.loads(line) for line in open(path)]
    rows, held_tokens = [], 0
    for e in examples(rng):
        prompt, answer, p_ids, a_ids = tokens.pair(e["q"], e["a"])
        if tokens.bos is not None and (not p_ids or p_ids[0] != tokens.bos):
            p_ids = [tokens.bos] + p_ids
        if len(p_ids) + len(a_ids) > MAX_LEN:
            continue
        split = "heldout" if held_tokens < HELD_OUT_TOKENS else "train"
        if split == "heldout":
            held_tokens += len(a_ids)
        rows.append({**e, "prompt": prompt, "answer": answer, "prompt_ids": p_ids, "answer_ids": a_ids,
                     "split": split})
    tmp = str(path) + ".partial"
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)
    return rows


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------
def hf_base_from_gguf(work):
    """hf-b/: b-f32.gguf read by transformers (which undoes the converter's transforms), saved
    as an F32 safetensors checkpoint with its tokenizer."""
    out = work / "hf-b"
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    log("b-f32.gguf -> hf-b/ (transformers)")
    loaded = AutoModelForCausalLM.from_pretrained(str(work), gguf_file="b-f32.gguf", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(work), gguf_file="b-f32.gguf")
    # A model read from GGUF counts as quantized and refuses to be saved: its weights go
    # into a plain model of the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if not k.startswith("lm_head")]:
        raise RuntimeError(f"b-f32.gguf -> HF: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    tmp = work / "hf-b.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


TINY_PRETRAIN = {"steps": 300, "batch": 8, "len": 256, "lr": 1e-3, "warmup": 20}


def tiny_pretrained(work, args):
    """hf-b/ and b-f32.gguf for the tiny llama (fixtures/make_tiny_llama.py's architecture
    and vocabulary): random weights pretrained briefly on the licence texts of
    eval/run_eval.py, so that the instruction tune starts from a model that has seen text.
    b-f32.gguf is written as the converter writes it (q/k rows permuted, F32)."""
    out = work / "hf-b"
    recipe = {"pretrain": TINY_PRETRAIN, "text": "licence texts (eval/run_eval.py licence_text)"}
    if (out / "config.json").exists() and (work / "b-f32.gguf").exists():
        return out, recipe
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    sys.path.insert(0, str(ROOT / "fixtures"))
    sys.path.insert(0, str(ROOT / "eval"))
    import make_tiny_llama as mt
    import run_eval
    vocab = mt.vocab()
    init = mt.hf_weights(np.random.default_rng(SEED), len(vocab[0]))
    tmap = run_eval.gguf.get_tensor_name_map(run_eval.gguf.MODEL_ARCH.LLAMA, mt.N_LAYER)
    vocab_gguf = work / "vocab-f32.gguf"
    mt.write_base_gguf(str(vocab_gguf), init, *vocab, tmap)
    tokens = LlamaCppTokens(vocab_gguf)
    ids = tokens.encode(run_eval.licence_text())
    log(f"tiny: pretraining on {len(ids)} tokens of licence text")
    config = LlamaConfig(hidden_size=mt.HIDDEN, intermediate_size=mt.FFN, num_hidden_layers=mt.N_LAYER,
                         num_attention_heads=mt.N_HEAD, num_key_value_heads=mt.N_HEAD_KV, head_dim=mt.HEAD_DIM,
                         vocab_size=len(vocab[0]), max_position_embeddings=1024, rms_norm_eps=mt.RMS_EPS,
                         rope_theta=mt.ROPE_THETA, hidden_act="silu", tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2)
    torch.manual_seed(SEED)
    torch.set_num_threads(args.threads)
    model = LlamaForCausalLM(config)
    model.load_state_dict({k: torch.from_numpy(v.astype(np.float32)) for k, v in init.items()})
    model.train()
    tp = TINY_PRETRAIN
    opt = torch.optim.AdamW(model.parameters(), lr=tp["lr"], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / tp["warmup"]))
    rng = np.random.default_rng(SEED + 2)
    data = torch.tensor(ids, dtype=torch.long)
    for step in range(1, tp["steps"] + 1):
        starts = rng.integers(0, len(ids) - tp["len"], size=tp["batch"])
        x = torch.stack([data[s:s + tp["len"]] for s in starts])
        x[:, 0] = tokens.bos
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == 1:
            log(f"tiny pretrain step {step}/{tp['steps']}: loss {loss.item():.4f}")
    recipe["loss_last"] = float(loss.detach())
    weights = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    tmp = work / "hf-b.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    b = work / "b-f32.gguf"
    mt.write_base_gguf(str(b) + ".partial", weights, *vocab, tmap)
    os.replace(str(b) + ".partial", b)
    vocab_gguf.unlink()
    return out, recipe


def batches(rows, batch, rng):
    train = [r for r in rows if r["split"] == "train"]
    while True:
        order = list(range(len(train)))
        rng.shuffle(order)
        for i in range(0, len(order) - batch + 1, batch):
            yield [train[j] for j in order[i:i + batch]]


def collate(group, pad_id):
    import torch
    n = max(len(r["prompt_ids"]) + len(r["answer_ids"]) for r in group)
    ids = torch.full((len(group), n), pad_id, dtype=torch.long)
    labels = torch.full((len(group), n), -100, dtype=torch.long)
    mask = torch.zeros((len(group), n), dtype=torch.long)
    for i, r in enumerate(group):
        seq = r["prompt_ids"] + r["answer_ids"]
        ids[i, :len(seq)] = torch.tensor(seq)
        mask[i, :len(seq)] = 1
        labels[i, len(r["prompt_ids"]):len(seq)] = torch.tensor(r["answer_ids"])
    return ids, mask, labels


def fine_tune(work, base_dir, rows, args, rng, tokens, name="ft"):
    """Full fine-tune of base_dir on the training split; checkpoints at args.save steps.
    Returns {step: checkpoint dir} and the loss curve."""
    import torch
    from transformers import AutoModelForCausalLM
    saves = sorted(args.save)
    dirs = {s: work / name / f"step-{s}" for s in saves}
    curve_path = work / name / "loss.json"
    if all((d / "config.json").exists() for d in dirs.values()) and curve_path.exists():
        return dirs, json.loads(curve_path.read_text())
    torch.manual_seed(SEED)
    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.999))
    it = batches(rows, args.batch, rng)
    curve = []
    t0 = time.time()
    for step in range(1, saves[-1] + 1):
        ids, mask, labels = collate(next(it), tokens.pad)
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        curve.append(float(out.loss.detach()))
        if step % 5 == 0 or step == 1:
            log(f"{name} step {step}/{saves[-1]}: loss {out.loss.item():.4f} ({time.time() - t0:.0f} s)")
        if step in dirs:
            tmp = dirs[step].with_name(dirs[step].name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(tmp, safe_serialization=True)
            tokens.save(tmp)
            shutil.rmtree(dirs[step], ignore_errors=True)
            os.replace(tmp, dirs[step])
    curve_path.write_text(json.dumps(curve))
    return dirs, curve


def extract(qres, base_dir, ft_dir, out, threads):
    if out.exists():
        return
    log(f"qresidual extract {ft_dir.name} - {base_dir.name} -> {out.name}")
    subprocess.run([qres, "extract", "--base", str(base_dir), "--instruct", str(ft_dir), "-o", str(out),
                    "-q", "--threads", str(threads)], check=True)


def tensor_class(name):
    for c in ("embed_tokens", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
              "norm"):
        if c in name:
            return c
    return "other"


def relative_sizes(base_dir, delta_path):
    """Per tensor class: median and RMS-weighted ‖Δ‖/‖W‖ over the class's tensors."""
    from safetensors import safe_open
    base = {}
    for f in sorted(pathlib.Path(base_dir).glob("*.safetensors")):
        with safe_open(str(f), "np") as s:
            for k in s.keys():
                base[k] = f
    per = {}
    with safe_open(str(delta_path), "np") as d:
        for k in d.keys():
            if k not in base:
                continue
            with safe_open(str(base[k]), "np") as s:
                w = s.get_tensor(k).astype(np.float64)
            x = d.get_tensor(k).astype(np.float64)
            nw = float(np.sqrt(np.square(w).sum()))
            if nw == 0.0:
                continue
            per.setdefault(tensor_class(k), []).append(float(np.sqrt(np.square(x).sum())) / nw)
    return {c: {"tensors": len(v), "median": float(np.median(v)), "max": float(max(v))}
            for c, v in sorted(per.items())}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["gemma", "tiny"], default="gemma")
    ap.add_argument("--work", default=None, help="work dir (default target/eval/gemma, target/eval/tiny-real)")
    ap.add_argument("--qresidual", default=str(ROOT / "target/release/qresidual"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=None, help="fine-tune learning rate (default 2e-5)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--save", default="15,60", help="steps whose checkpoint gives a delta (ftN)")
    args = ap.parse_args()
    args.save = [int(s) for s in args.save.split(",")]
    if args.lr is None:
        args.lr = 2e-5
    work = pathlib.Path(args.work) if args.work else ROOT / "target" / "eval" / (
        "gemma" if args.model == "gemma" else "tiny-real")
    work.mkdir(parents=True, exist_ok=True)
    if args.model == "gemma" and not (work / "b-f32.gguf").exists():
        sys.exit(f"{work}/b-f32.gguf missing: run python3 eval/run_eval.py --options base --work {work} first")
    rng = random.Random(SEED)
    if args.model == "gemma":
        base_dir = hf_base_from_gguf(work)
        tokens = HfTokens(base_dir)
    else:
        base_dir, pre = tiny_pretrained(work, args)
        tokens = LlamaCppTokens(work / "b-f32.gguf")
    rows = build_corpus(work, tokens, rng)
    n_train = sum(r["split"] == "train" for r in rows)
    held = [r for r in rows if r["split"] == "heldout"]
    log(f"corpus: {n_train} training, {len(held)} held-out examples "
        f"({sum(len(r['answer_ids']) for r in held)} answer tokens)")
    t = time.time()
    dirs, curve = fine_tune(work, base_dir, rows, args, random.Random(SEED + 1), tokens)
    tune_s = time.time() - t
    recipe = {"model": args.model, "optimizer": "AdamW",
              "base": "b-f32.gguf (eval/run_eval.py)" if args.model == "gemma" else pre,
              "lr": args.lr, "batch": args.batch, "max_len": MAX_LEN, "weight_decay": 0.0,
              "loss": "answer tokens", "seed": SEED, "python": sys.version.split()[0],
              "train_examples": n_train, "heldout_examples": len(held),
              "heldout_answer_tokens": sum(len(r["answer_ids"]) for r in held),
              "loss_first": curve[0], "loss_last": curve[-1], "tune_s": tune_s, "deltas": {}}
    for step, d in dirs.items():
        out = work / f"delta-ft{step}.safetensors"
        extract(args.qresidual, base_dir, d, out, args.threads)
        recipe["deltas"][f"ft{step}"] = {"steps": step, "file": out.name,
                                         "loss_at_step": curve[step - 1],
                                         "relative_size": relative_sizes(base_dir, out)}
    (work / "real-delta.json").write_text(json.dumps(recipe, indent=1))
    log(f"wrote {work / 'real-delta.json'}")


if __name__ == "__main__":
    main()
