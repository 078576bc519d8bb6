"""Every model family against llama.cpp's own converter (fixtures/gen_families.py): a tiny
random model and an instruct copy (base + Δ in Hugging Face space), both converted by the
pinned convert_hf_to_gguf.py --outtype f32. `apply --type f32` of the HF-named Δ to the
converted base must give the converted instruct bit for bit; `extract` of the HF pair and of
the GGUF pair must give instruct − base bit for bit (numpy's float32 subtraction); llama.cpp
must load and run the `apply --type q4_k_m` output.

The generated folders are cached in $QRESIDUAL_CACHE/families/ (keyed by the generator's
hash), so only the first run pays for the conversions."""
import hashlib
import json

import numpy as np
import pytest
from gguf import GGUFReader
from safetensors.numpy import load_file

import gen_families
from conftest import FIXTURES, run_qresidual

# Families `apply` must reproduce exactly, and the transforms each one's converter applies
# (the README's support matrix lists the same).
VERIFIED = ["llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "olmo2",
            "starcoder2", "gemma3", "granite", "smollm3", "mixtral", "qwen2moe", "qwen3moe",
            "olmoe", "granitemoe", "ernie4_5_moe", "glm4moe", "deepseek2", "gpt-oss",
            "gemma4", "gemma4moe", "qwen3next", "qwen35", "qwen35moe"]
# Where the pinned llama.cpp cannot use the converter's own output, whatever the weights:
# it cannot decode the tiny starcoder2 (llama_decode returns 1, "failed to find a memory
# slot"); it refuses the tiny gemma3, whose token list the converter pads to vocab_size
# (272) while it trims token_embd to the tokenizer's 259 tokens.
RUNS_IN_LLAMA_CPP = [f for f in VERIFIED if f not in ("starcoder2", "gemma3")]
# Families whose converter adds 1 to RMSNorm weights (Gemma 1-3, Qwen3-Next/3.5 scale by
# 1 + w; not Qwen3-Next's linear_attn.norm, ssm_norm): the converter rounds (w + Δ) + 1,
# apply (w + 1) + Δ; in those tensors only, the two may differ by one unit in the last place
# of the largest operand of those additions (1, w + 1, and the instruct's HF value
# w + Δ = result − 1): where w ≈ −1 the result is tiny and the difference many of its own
# ulps, but never more than one ulp of 1 or w.
NORM_SHIFT = {"gemma", "gemma2", "gemma3", "qwen3next", "qwen35", "qwen35moe"}
# Tensors the converter stores as a non-linear function of the checkpoint's (Qwen3-Next's
# and Qwen3.5's ssm_a = −exp(A_log)): apply recovers A_log = ln(−ssm_a) from the base, adds Δ and applies
# the function again (in f64, rounded once); the converter rounds A_log + Δ to f32 first and
# then takes exp in f32. At most 2 + |A_log + Δ| / 2 units in the last place of the
# converter's value apart (ValueMap::add in src/model/rows.rs).
NONLINEAR = {"qwen3next": ".ssm_a", "qwen35": ".ssm_a", "qwen35moe": ".ssm_a"}


def nonlinear_ulps(got, want):
    """Distance in ulps of `want` and the bound 2 + |ln(−want)| / 2, elementwise."""
    dist = np.abs(got.astype(np.float64) - want.astype(np.float64)) / np.spacing(np.abs(want))
    return dist, 2 + np.abs(np.log(-want.astype(np.float64))) / 2


def shifted(family, name):
    return (family in NORM_SHIFT and name.endswith("norm.weight")
            and not name.endswith("ssm_norm.weight"))
# Families the converter handles but `apply` refuses (its converter transforms tensors in
# ways qresidual does not restate: granitemoehybrid), naming the architecture and the way out.
REFUSED = [f for f in gen_families.FAMILIES if f not in VERIFIED]
assert REFUSED, "keep one refused family: the refusal is tested through it"


@pytest.fixture(scope="session")
def family_dir():
    key = hashlib.sha256((FIXTURES / "gen_families.py").read_bytes()).hexdigest()[:12]
    root = gen_families.cache_dir() / "families" / key
    made = {}

    def get(family):
        if family not in made:
            made[family] = gen_families.generate(family, root / family)
        return made[family]
    return get


def tensors(path):
    r = GGUFReader(str(path))
    return {t.name: (t.tensor_type.name, [int(x) for x in t.shape], np.array(t.data).reshape(-1))
            for t in r.tensors}


def within_one_ulp(got, want, base):
    """|got − want| ≤ one ulp of max(1, |base|, |want|, |want − 1|) (see NORM_SHIFT), and the
    largest distance seen in that unit."""
    big = np.maximum.reduce([np.ones_like(want), np.abs(base), np.abs(want), np.abs(want - 1)])
    unit = np.spacing(big)
    dist = np.abs(got.astype(np.float64) - want.astype(np.float64)) / unit
    return bool((dist <= 1).all()), float(dist.max())


@pytest.mark.parametrize("family", VERIFIED)
def test_apply_equals_converter(family, family_dir, tmp_path):
    d = family_dir(family)
    out = tmp_path / "applied.gguf"
    run_qresidual("apply", "--base", d / "base-f32.gguf", "--residual", d / "delta.safetensors",
                  "--type", "f32", "-o", out, "-q")
    want, got = tensors(d / "instruct-f32.gguf"), tensors(out)
    base = tensors(d / "base-f32.gguf")
    assert list(got) == list(want)
    norms, mapped = [], []
    for name, (ty, shape, w) in want.items():
        gty, gshape, g = got[name]
        assert (gty, gshape) == (ty, shape), name
        if shifted(family, name):
            ok, worst = within_one_ulp(g, w, base[name][2])
            assert ok, (name, worst)
            norms.append(worst)
        elif family in NONLINEAR and name.endswith(NONLINEAR[family]):
            dist, bound = nonlinear_ulps(g, w)
            assert (dist <= bound).all(), (name, dist.max())
            mapped.append(float(dist.max()))
        else:
            assert np.array_equal(g.view(np.uint32), w.view(np.uint32)), name
    if family in NONLINEAR:
        assert mapped, f"no {NONLINEAR[family]} tensor in {family}"
    print(family, len(want) - len(norms) - len(mapped), "tensors equal bit for bit;",
          len(norms), "shifted norms within", max(norms, default=0.0), "ulp;", len(mapped),
          "non-linear within", max(mapped, default=0.0), "ulp")


@pytest.mark.parametrize("family", list(gen_families.FAMILIES))
def test_extract_hf_pair(family, family_dir, tmp_path):
    d = family_dir(family)
    out = tmp_path / "delta.safetensors"
    run_qresidual("extract", "--base", d / "hf-base", "--instruct", d / "hf-instruct",
                  "--dtype", "f32", "-o", out, "-q")
    base = load_file(str(d / "hf-base" / "model.safetensors"))
    inst = load_file(str(d / "hf-instruct" / "model.safetensors"))
    got = load_file(str(out))
    assert sorted(got) == sorted(base)
    for name, b in base.items():
        want = (inst[name] - b).astype(np.float32)
        assert np.array_equal(got[name].view(np.uint32), want.view(np.uint32)), name


@pytest.mark.parametrize("family", list(gen_families.FAMILIES))
def test_extract_gguf_pair(family, family_dir, tmp_path):
    d = family_dir(family)
    out = tmp_path / "delta.safetensors"
    run_qresidual("extract", "--base", d / "base-f32.gguf", "--instruct", d / "instruct-f32.gguf",
                  "--dtype", "f32", "-o", out, "-q")
    base, inst = tensors(d / "base-f32.gguf"), tensors(d / "instruct-f32.gguf")
    got = load_file(str(out))
    assert sorted(got) == sorted(base)
    for name, (_, _, b) in base.items():
        want = (inst[name][2] - b).astype(np.float32)
        assert np.array_equal(got[name].reshape(-1).view(np.uint32), want.view(np.uint32)), name


@pytest.mark.parametrize("family", RUNS_IN_LLAMA_CPP)
def test_llama_cpp_runs_q4_k_m_output(family, family_dir, tmp_path):
    from llama_cpp import Llama
    d = family_dir(family)
    out = tmp_path / "q4_k_m.gguf"
    run_qresidual("apply", "--base", d / "base-f32.gguf", "--residual", d / "delta.safetensors",
                  "--type", "q4_k_m", "-o", out, "-q")
    llm = Llama(model_path=str(out), n_ctx=64, verbose=False, seed=1)
    res = llm("ab", max_tokens=4, temperature=0.0)
    assert res["usage"]["completion_tokens"] > 0


@pytest.mark.parametrize("family", REFUSED)
def test_unsupported_family_is_refused_before_writing(family, family_dir, tmp_path):
    d = family_dir(family)
    out = tmp_path / "out.gguf"
    p = run_qresidual("apply", "--base", d / "base-f32.gguf", "--residual", d / "delta.safetensors",
                      "--type", "f32", "-o", out, check=False)
    assert p.returncode != 0
    arch = gen_families.FAMILIES[family][2]
    assert f"'{arch}'" in p.stderr and "qresidual extract" in p.stderr, p.stderr
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("family", RUNS_IN_LLAMA_CPP)
def test_adapter_of_hf_residual_runs_in_llama_cpp(family, family_dir, tmp_path):
    """`--strategy adapter` from the HF residual: LoRA pairs for 2-D base tensors only (the
    report names every other tensor with a residual and why it was left out: 3-D expert
    stacks and DeepSeek's k_b/v_b, single-row or 1-D tensors, a tied embedding); llama.cpp
    loads the adapter on the base and generates."""
    from llama_cpp import Llama
    d = family_dir(family)
    out, report = tmp_path / "adapter.gguf", tmp_path / "report.json"
    run_qresidual("apply", "--base", d / "base-f32.gguf", "--residual", d / "delta.safetensors",
                  "--strategy", "adapter", "--rank", "4", "-o", out, "--report", report, "-q")
    base = tensors(d / "base-f32.gguf")
    rep = json.loads(report.read_text())["tensors"]
    kept = {t["name"] for t in rep if t["skipped"] is None}
    pairs = {t.name.rsplit(".", 1)[0] for t in GGUFReader(str(out)).tensors}
    assert pairs == kept and all(len(base[n][1]) == 2 for n in pairs)
    skipped_3d = {t["name"] for t in rep if t["skipped"] and len(base[t["name"]][1]) == 3}
    assert skipped_3d == {n for n, (_, shape, _) in base.items() if len(shape) == 3}
    llm = Llama(model_path=str(d / "base-f32.gguf"), lora_path=str(out), n_ctx=64, verbose=False,
                seed=1)
    res = llm("ab", max_tokens=4, temperature=0.0)
    assert res["usage"]["completion_tokens"] > 0
    print(family, len(pairs), "adapter pairs;", len(skipped_3d), "3-D tensors left out")
