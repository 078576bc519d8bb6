#!/usr/bin/env python3
"""How many rounds of make_q3_quants' coordinate descent (ggml-quants.c, the Q3_K scale search)
a 16-element sub-block needs, alone and as the slowest of the 16 sub-blocks that share one AVX2
pass. Data like benches/bench_codecs.py's (sum of four uniforms, scaled by 0.03); float64 here,
so the counts are an estimate of the f32 search's, not a bit-exact replay.

Usage: python3 benches/q3k_rounds.py [--sub-blocks 4000]
"""
import argparse

import numpy as np


def rounds(b, nmax=4):
    """Rounds the scalar loop runs for one sub-block (it stops after a round without a change)."""
    amax, mx = 0.0, 0.0
    for v in b:
        if abs(v) > amax:
            amax, mx = abs(v), v
    iscale = -nmax / mx
    L = [max(-nmax, min(nmax - 1, int(np.floor(iscale * v + 0.5)))) for v in b]
    slx = sum(v * v * v * l for v, l in zip(b, L))
    sl2 = sum(v * v * l * l for v, l in zip(b, L))
    for it in range(1, 6):
        changed = 0
        for i, v in enumerate(b):
            w = v * v
            s = slx - w * v * L[i]
            if s > 0:
                s2 = sl2 - w * L[i] * L[i]
                nl = max(-nmax, min(nmax - 1, int(np.floor(v * s2 / s + 0.5))))
                if nl != L[i]:
                    s += w * v * nl
                    s2 += w * nl * nl
                    if s2 > 0 and s * s * sl2 > slx * slx * s2:
                        L[i], slx, sl2 = nl, s, s2
                        changed += 1
        if not changed:
            return it
    return 5


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sub-blocks", type=int, default=4000)
    a = ap.parse_args()
    x = (np.random.default_rng(0).random((a.sub_blocks, 16, 4)).sum(-1) - 2) * 0.03
    r = np.array([rounds(b) for b in x])
    p = np.array([(r <= k).mean() for k in range(6)])
    lanes16 = sum(1 - p[k] ** 16 for k in range(5))
    print(f"rounds per sub-block: mean {r.mean():.2f}, histogram {np.bincount(r, minlength=6)[1:].tolist()}")
    print(f"expected rounds of the slowest of 16 lanes: {lanes16:.2f}")


if __name__ == "__main__":
    main()
