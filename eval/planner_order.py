#!/usr/bin/env python3
"""Does the planner's estimate order the options as the measured KL divergence does? (issue 17)

The budget planner of `qresidual apply` scores a tensor written some way by what it can see
without the model's true weights: the relative error energy against the sum it is asked for,
T = base + Δ, plus λ times the lost part of the residual,

    cost = ‖out − T‖² / ‖T‖²  +  λ · ‖Δ‖² (1 − r)² / ‖T‖²,   r = ⟨out − base, Δ⟩ / ‖Δ‖²,

averaged over the tensors that carry a residual (every tensor weighs 1; the default λ is 0).
This script computes that estimate for the *written* output of every option evaluated by
run_eval.py (and for the base and the ideal), with `qresidual compare` against T
(`qresidual apply --type f32`, cached in the work dir) and against the base, and sets it
beside the measured KL divergence from <work>/results.jsonl: ranks, Kendall's τ, and each
pair of options the estimate orders against a KL difference larger than two standard errors.

  python3 eval/planner_order.py --work /path/to/gemma --delta ft60 --bases q4_k_m
  python3 eval/planner_order.py --work /path/to/tiny-real --delta ft60 --out-md eval/planner-order-tiny.md

Adapters are left out: they do not change the weights the planner measures. The ideals
(the fine-tuned model quantized by llama.cpp) are listed but not ranked: they are made from
the fine-tuned weights, which the planner never sees.
"""
import argparse
import json
import math
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def compare(qr, a, b, cache):
    """Per-tensor {name: (‖b − a‖², ‖a‖², n)} from `qresidual compare a b` (cached as JSON)."""
    if not cache.exists() or cache.stat().st_mtime < max(a.stat().st_mtime, b.stat().st_mtime):
        p = subprocess.run([qr, "compare", a, b, "--json", cache, "-q"], capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"qresidual compare {a} {b} failed:\n{p.stderr[-2000:]}")
    out = {}
    for t in json.loads(cache.read_text())["tensors"]:
        n = t["n_elements"]
        err2 = t["rmse"] ** 2 * n
        rel = t["relative_rmse"]
        ref2 = err2 / rel**2 if rel and math.isfinite(rel) and rel > 0 else None
        out[t["name"]] = (err2, ref2, n)
    return out


def estimate(d_target, d_base, delta2, target2, lam):
    """The planner's cost of an output, averaged over tensors with a residual."""
    costs = []
    for name, dd in delta2.items():
        if dd == 0.0 or name not in d_target or name not in d_base:
            continue
        tt = target2[name]
        if not tt:
            continue
        e_t = d_target[name][0]  # ‖out − T‖²
        e_b = d_base[name][0]  # ‖out − base‖²
        moved = (e_b + dd - e_t) / 2.0  # ⟨out − base, Δ⟩
        r = moved / dd
        costs.append(e_t / tt + lam * dd * (1.0 - r) ** 2 / tt)
    return sum(costs) / len(costs) if costs else float("nan")


def kendall(xs, ys):
    c = d = 0
    for i in range(len(xs)):
        for j in range(i + 1, len(xs)):
            s = (xs[i] - xs[j]) * (ys[i] - ys[j])
            c += s > 0
            d += s < 0
    return (c - d) / max(1, c + d)


def output_path(work, key, kind, base, case):
    if kind == "base":
        return work / f"base-{base}.gguf"
    if key == "ideal":
        return work / f"ideal-{base}-{case}.gguf"
    if key == "ideal-imatrix":
        return work / f"ideal-imatrix-{base}-{case}.gguf"
    return work / f"{key}-{base}-{case}.gguf"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=pathlib.Path, required=True)
    ap.add_argument("--delta", default="ft60", help="the real residual's case (delta-<case>.safetensors)")
    ap.add_argument("--bases", default="q4_k_m,q5_k_m,q4_0,iq4_xs,q8_0")
    ap.add_argument("--lambdas", default="0,1000", help="λ values of the estimate (comma list)")
    ap.add_argument("--qresidual", default=str(ROOT / "target/release/qresidual"))
    ap.add_argument("--out-md", type=pathlib.Path)
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT / "eval"))
    from run_eval import OPTIONS
    kinds = {o["key"]: o["kind"] for o in OPTIONS}
    labels = {o["key"]: o["label"] for o in OPTIONS}
    lams = [float(x) for x in a.lambdas.split(",")]
    rows = [json.loads(line) for line in (a.work / "results.jsonl").read_text().splitlines() if line]
    cache = a.work / "planner-order"
    cache.mkdir(exist_ok=True)
    delta = a.work / f"delta-{a.delta}.safetensors"
    md = [f"Planner estimate vs measured KL, {a.work.name}, residual {a.delta} "
          f"(eval/planner_order.py). est(λ): mean over tensors with a residual of "
          f"‖out − T‖²/‖T‖² + λ·‖Δ‖²(1 − r)²/‖T‖², T = base + Δ.", ""]
    for base in a.bases.split(","):
        latest = {}
        for r in rows:
            if r.get("case") == a.delta and r["base"] == base and kinds.get(r["key"]) in ("base", "apply", "ideal", "class"):
                latest[r["key"]] = r
        if len(latest) < 3:
            continue
        b = a.work / f"base-{base}.gguf"
        target = a.work / f"target-{base}-{a.delta}-f32.gguf"
        if not target.exists():
            subprocess.run([a.qresidual, "apply", "--base", b, "--residual", delta, "--type", "f32",
                            "-o", target, "-q"], check=True)
        d_bt = compare(a.qresidual, b, target, cache / f"base-target-{base}-{a.delta}.json")
        delta2 = {k: v[0] for k, v in d_bt.items()}
        target2 = {}
        for k, v in compare(a.qresidual, target, b, cache / f"target-base-{base}-{a.delta}.json").items():
            target2[k] = v[1]
        table = []
        for key, r in latest.items():
            out = output_path(a.work, key, kinds[key], base, a.delta)
            if not out.exists():
                continue
            tag = f"{key}-{base}-{a.delta}"
            d_t = compare(a.qresidual, target, out, cache / f"{tag}-vs-target.json")
            d_b = compare(a.qresidual, b, out, cache / f"{tag}-vs-base.json")
            est = [estimate(d_t, d_b, delta2, target2, lam) for lam in lams]
            se = r.get("kl_se_chunk") or r.get("kl_se_token") or 0.0
            table.append((key, r["kl"], se, est, r.get("gain_retention")))
        table.sort(key=lambda t: t[1])
        md += [f"### {base}", "",
               "| option | KL | " + " | ".join(f"est(λ={lam:g})" for lam in lams) + " | gain kept |",
               "|---|---|" + "---|" * len(lams) + "---|"]
        for key, kl, se, est, gain in table:
            g = f"{100 * gain:.1f} %" if gain is not None else "–"
            md.append(f"| {labels[key]} | {kl:.4f} ± {se:.4f} | " + " | ".join(f"{e:.3e}" for e in est) + f" | {g} |")
        md.append("")
        # The ideals are quantized from the fine-tuned model itself, which the planner never
        # sees: shown for reference, not ranked.
        ranked = [t for t in table if kinds[t[0]] != "ideal"]
        kl = [t[1] for t in ranked]
        for li, lam in enumerate(lams):
            est = [t[3][li] for t in ranked]
            wrong = []
            for i in range(len(ranked)):
                for j in range(i + 1, len(ranked)):
                    gap = ranked[j][1] - ranked[i][1]
                    if gap > 2 * math.hypot(ranked[i][2], ranked[j][2]) and est[i] > est[j]:
                        wrong.append(f"{labels[ranked[i][0]]} < {labels[ranked[j][0]]}")
            md.append(f"- λ = {lam:g}: Kendall τ {kendall(est, kl):+.2f} over {len(ranked)} outputs made from the base; "
                      f"pairs ordered against a KL difference > 2 SE: "
                      + (", ".join(wrong) if wrong else "none"))
        md.append("")
    text = "\n".join(md)
    print(text)
    if a.out_md:
        a.out_md.write_text(text + "\n")


if __name__ == "__main__":
    main()
