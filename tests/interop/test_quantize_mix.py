"""`qresidual quantize --type MIX` against llama.cpp's own quantizer.

Builds small synthetic F32 GGUF models (the builders of
fixtures/gen_mix_expectations.py), quantizes each with
`qresidual quantize IN -o OUT --type T` and with `llama_model_quantize` from the
llama-cpp-python package (the llama.cpp the reference source comes from), and
checks that both outputs hold the same tensors with the same type, shape and
bytes, and the same general.file_type.

Run:  QRESIDUAL_BIN=target/release/qresidual python3 -m pytest tests/interop/test_quantize_mix.py
(QRESIDUAL_BIN defaults to target/release/qresidual under the repository root.)
"""
import ctypes
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import gguf
import llama_cpp

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "fixtures"))
import gen_mix_expectations as gen  # noqa: E402

BIN = pathlib.Path(os.environ.get("QRESIDUAL_BIN", ROOT / "target" / "release" / "qresidual"))

# model name -> builder (same shapes as the fixtures of tests/mix.rs)
MODELS = {
    "llama_dense": lambda: gen.model_llama("llama_dense", 8, 256, 768, 4, 4, 320, rope_freqs=True),
    # rows of 320 and 864: Q4_K/Q5_K/Q6_K fall back to Q5_0/Q5_1/Q8_0
    "llama_odd": lambda: gen.model_llama("llama_odd", 12, 320, 864, 5, 5, 288),
    # GQA 4, tied embeddings, layers written out of order, ffn rows of 688 (-> F16)
    "llama_gqa_tied": lambda: gen.model_llama("llama_gqa_tied", 16, 256, 688, 8, 2, 260,
                                              tied=True, shuffle=True),
}

# (qresidual --type, llama ftype, llama --pure)
CASES = [
    ("q4_k_m", "LLAMA_FTYPE_MOSTLY_Q4_K_M", False),
]
EXTRA_CASES = [
    ("q5_k_m", "LLAMA_FTYPE_MOSTLY_Q5_K_M", False),
    ("q3_k_m", "LLAMA_FTYPE_MOSTLY_Q3_K_M", False),
    ("q6_k", "LLAMA_FTYPE_MOSTLY_Q6_K", True),    # a plain type name means --pure
    ("q8_0", "LLAMA_FTYPE_MOSTLY_Q8_0", True),
    ("mix:q4_0", "LLAMA_FTYPE_MOSTLY_Q4_0", False),
]


@pytest.fixture(scope="module")
def qresidual_bin():
    if not BIN.is_file():
        pytest.fail(f"{BIN} not built (cargo build --release, or set QRESIDUAL_BIN)")
    return BIN


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name -> path of the F32 input GGUF, built once per module."""
    d = tmp_path_factory.mktemp("models")
    out = {}
    for name, build in MODELS.items():
        gen.RNG = np.random.default_rng(sum(map(ord, name)))
        mname, arch, kv, tensors, n_vocab = build()
        path = d / f"{mname}.f32.gguf"
        gen.write_gguf(path, arch, kv, tensors, n_vocab)
        out[name] = path
    return out


def llama_quantize(fin, fout, ftype_name, pure):
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype_name)
    params.nthread = 1
    params.pure = pure
    rc = llama_cpp.llama_model_quantize(str(fin).encode(), str(fout).encode(), ctypes.byref(params))
    assert rc == 0, f"llama_model_quantize failed ({rc})"


def qresidual_quantize(binary, fin, fout, target):
    proc = subprocess.run([str(binary), "quantize", str(fin), "-o", str(fout), "--type", target],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (
        f"qresidual quantize --type {target} failed ({proc.returncode}):\n"
        f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")


def field_int(reader, key):
    f = reader.fields.get(key)
    assert f is not None, f"{key} missing"
    return int(f.parts[f.data[0]][0])


def tensors_by_name(reader):
    out = {}
    for t in reader.tensors:
        assert t.name not in out, f"duplicate tensor {t.name}"
        out[t.name] = t
    return out


def compare(ours_path, ref_path):
    ours = gguf.GGUFReader(str(ours_path))
    ref = gguf.GGUFReader(str(ref_path))
    assert field_int(ours, "general.file_type") == field_int(ref, "general.file_type")
    a, b = tensors_by_name(ours), tensors_by_name(ref)
    assert sorted(a) == sorted(b), (
        f"tensor names differ: only ours {sorted(set(a) - set(b))}, only llama.cpp {sorted(set(b) - set(a))}")
    problems = []
    for name in b:
        x, y = a[name], b[name]
        tx = gguf.GGMLQuantizationType(x.tensor_type).name
        ty = gguf.GGMLQuantizationType(y.tensor_type).name
        if tx != ty:
            problems.append(f"{name}: type {tx}, llama.cpp {ty}")
            continue
        if list(x.shape) != list(y.shape):
            problems.append(f"{name}: ne {list(x.shape)}, llama.cpp {list(y.shape)}")
            continue
        bx = np.ascontiguousarray(x.data).view(np.uint8).tobytes()
        by = np.ascontiguousarray(y.data).view(np.uint8).tobytes()
        if len(bx) != len(by):
            problems.append(f"{name} ({ty}): {len(bx)} bytes, llama.cpp {len(by)}")
        elif bx != by:
            first = next(i for i in range(len(bx)) if bx[i] != by[i])
            ndiff = sum(1 for i in range(len(bx)) if bx[i] != by[i])
            problems.append(f"{name} ({ty}): {ndiff} of {len(bx)} bytes differ, first at {first}")
    assert not problems, f"{len(problems)} of {len(b)} tensors differ:\n" + "\n".join(problems)


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("target,ftype,pure", CASES)
def test_q4_k_m_matches_llama_cpp(qresidual_bin, models, tmp_path, model, target, ftype, pure):
    fin = models[model]
    ref = tmp_path / "llama.gguf"
    ours = tmp_path / "ours.gguf"
    llama_quantize(fin, ref, ftype, pure)
    qresidual_quantize(qresidual_bin, fin, ours, target)
    compare(ours, ref)


@pytest.mark.parametrize("target,ftype,pure", EXTRA_CASES)
def test_other_targets_match_llama_cpp(qresidual_bin, models, tmp_path, target, ftype, pure):
    fin = models["llama_odd"]
    ref = tmp_path / "llama.gguf"
    ours = tmp_path / "ours.gguf"
    llama_quantize(fin, ref, ftype, pure)
    qresidual_quantize(qresidual_bin, fin, ours, target)
    compare(ours, ref)
