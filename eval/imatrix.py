#!/usr/bin/env python3
"""Importance data for the evaluation harness (issue 17): `llama-imatrix` and `llama-quantize`
built from the pinned llama.cpp sources (vendor/llama.cpp of the llama-cpp-python sdist that
the tests pin, checked against PyPI's sha256), and an importance matrix of the true base b.

  python3 eval/imatrix.py [--work /path/to/eval/workdir] [--chunks 64]

writes <work>/imatrix.gguf: llama-imatrix over b-f32.gguf (the unquantized base, as a user's
published quant is calibrated on its unquantized model) and a calibration text made of the
*training* examples of <work>/corpus.jsonl (the held-out ones and the licence text that the
KL divergence is measured on are not seen). run_eval.py's `*-imatrix` options pass it to
`qresidual apply --imatrix` and to llama-quantize --imatrix (the "ideal, imatrix" option).

The build needs cmake (`pip install cmake`) and a C++ compiler; it takes about 15 CPU-minutes
once and is cached in $QRESIDUAL_CACHE (default ~/.cache/qresidual).
"""
import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "fixtures"))
from gen_families import LCP_VERSION, cache_dir, pinned_sdist  # noqa: E402

TOOLS = ("llama-imatrix", "llama-quantize")


def log(*a):
    print("[imatrix]", *a, file=sys.stderr, flush=True)


def tools(jobs=2):
    """Paths of llama-imatrix and llama-quantize, built once from the pinned sources."""
    src = cache_dir() / f"llama.cpp-{LCP_VERSION}-src"
    build = cache_dir() / f"llama.cpp-{LCP_VERSION}-build"
    bins = {t: build / "bin" / t for t in TOOLS}
    if all(b.exists() for b in bins.values()):
        return bins
    if shutil.which("cmake") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "cmake"], check=True)
    if not (src / ".complete").exists():
        tgz, sha = pinned_sdist()
        log(f"extracting vendor/llama.cpp of {tgz.name}")
        top = f"llama_cpp_python-{LCP_VERSION}/vendor/llama.cpp/"
        tmp = cache_dir() / f"llama.cpp-{LCP_VERSION}-src.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(tgz) as tar:
            members = []
            for m in tar.getmembers():
                if m.name.startswith(top):
                    m.name = m.name[len(top):]
                    members.append(m)
            tar.extractall(tmp, members=members, filter="data")
        shutil.rmtree(src, ignore_errors=True)
        tmp.rename(src)
        (src / ".complete").write_text(sha + "\n")
    log(f"building {', '.join(TOOLS)} (about 15 CPU-minutes, once)")
    subprocess.run(["cmake", "-S", src, "-B", build, "-DCMAKE_BUILD_TYPE=Release",
                    "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                    "-DLLAMA_BUILD_SERVER=OFF", "-DBUILD_SHARED_LIBS=OFF"], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", build, "--config", "Release", "-j", str(jobs),
                    "--target", *TOOLS], check=True, stdout=subprocess.DEVNULL)
    return bins


def calibration_text(work):
    """The training examples of the instruction corpus, prompt and answer as the model sees them."""
    rows = [json.loads(line) for line in (work / "corpus.jsonl").read_text().splitlines() if line]
    train = [r for r in rows if r.get("split", "train") == "train"]
    return "\n".join(r["prompt"] + r["answer"] for r in train)


def make_imatrix(work, chunks=64, ctx=512, threads=2):
    """<work>/imatrix.gguf from b-f32.gguf (cached)."""
    out = work / "imatrix.gguf"
    if out.exists():
        return out
    bins = tools()
    calib = work / "imatrix-calibration.txt"
    calib.write_text(calibration_text(work))
    tmp = work / "imatrix.partial.gguf"
    log(f"llama-imatrix over {work / 'b-f32.gguf'}: {chunks} chunks of {ctx} tokens")
    subprocess.run([bins["llama-imatrix"], "-m", work / "b-f32.gguf", "-f", calib, "-o", tmp,
                    "--chunks", str(chunks), "-c", str(ctx), "-t", str(threads),
                    "--output-format", "gguf"], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    os.replace(tmp, out)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=pathlib.Path, default=ROOT / "target/eval/gemma")
    ap.add_argument("--chunks", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--build-only", action="store_true", help="only build the llama.cpp tools")
    a = ap.parse_args()
    if a.build_only:
        print("\n".join(str(p) for p in tools().values()))
        return
    print(make_imatrix(a.work, a.chunks, threads=a.threads))


if __name__ == "__main__":
    main()
