"""`extract` and `apply --tokenizer-config` against the references: gguf-py reads a
compressed GGUF residual, llama.cpp reads the chat template and end-of-generation
token of a model made from a base."""
import ctypes
import json

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.numpy import load_file

from conftest import FIXTURES, run_qresidual

PAIR = FIXTURES / "pair"
TINY = FIXTURES / "tiny"
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def bf16_to_f32(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def load_hf(folder):
    """safetensors.numpy has no bf16: read raw and decode by hand when needed."""
    path = folder / "model.safetensors"
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        raw = data[8 + n + a:8 + n + b]
        if t["dtype"] == "BF16":
            v = bf16_to_f32(np.frombuffer(raw, dtype=np.uint16))
        else:
            v = np.frombuffer(raw, dtype={"F16": np.float16, "F32": np.float32}[t["dtype"]]).astype(np.float32)
        out[name] = v.reshape(t["shape"])
    return out


def test_q8_0_residual_reads_back_in_gguf_py(tmp_path):
    out = tmp_path / "res.gguf"
    run_qresidual("extract", "--instruct", PAIR / "hf-instruct", "--base", PAIR / "hf-base",
                  "-o", out, "--dtype", "q8_0", "-q")
    inst, base = load_hf(PAIR / "hf-instruct"), load_hf(PAIR / "hf-base")
    reader = GGUFReader(str(out))
    assert "qresidual.base_fingerprint" in reader.fields
    assert len(reader.tensors) == len(base)
    for t in reader.tensors:
        delta = inst[t.name] - base[t.name]
        got = dequantize(t.data, t.tensor_type).reshape(delta.shape)
        if delta.ndim == 2:
            assert t.tensor_type.name == "Q8_0"
        cos = float(np.dot(got.ravel(), delta.ravel()) /
                    (np.linalg.norm(got) * np.linalg.norm(delta) + 1e-30))
        assert cos > 0.9999, (t.name, cos)


def test_f32_residual_equals_numpy(tmp_path):
    out = tmp_path / "res.safetensors"
    run_qresidual("extract", "--instruct", PAIR / "hf-instruct", "--base", PAIR / "hf-base",
                  "-o", out, "--dtype", "f32", "-q")
    inst, base = load_hf(PAIR / "hf-instruct"), load_hf(PAIR / "hf-base")
    got = load_file(str(out))
    assert set(got) == set(base)
    for name, d in got.items():
        assert np.array_equal(d.view(np.uint32), (inst[name] - base[name]).view(np.uint32)), name


def test_llama_cpp_applies_the_chat_template_and_stops_at_the_new_eos(tmp_path):
    import llama_cpp

    tc = tmp_path / "tokenizer_config.json"
    # "<0x0A>" stands in for <|eot_id|>: a token of the tiny vocabulary that is not its eos.
    tc.write_text(json.dumps({"chat_template": LLAMA3_TEMPLATE, "bos_token": "<s>",
                              "eos_token": "<0x0A>"}))
    out = tmp_path / "chat.gguf"
    run_qresidual("apply", "--base", TINY / "base-q4_k_m.gguf", "--residual",
                  TINY / "residual-f16.safetensors", "-o", out, "--tokenizer-config", tc, "-q")

    shown = run_qresidual("inspect", out).stdout
    assert "tokenizer.chat_template" in shown and "tokenizer.ggml.eot_token_id" in shown

    llm = llama_cpp.Llama(model_path=str(out), vocab_only=True, verbose=False)
    assert llm.metadata["tokenizer.chat_template"] == LLAMA3_TEMPLATE
    eos = int(llm.metadata["tokenizer.ggml.eos_token_id"])
    assert eos == 13 and int(llm.metadata["tokenizer.ggml.eot_token_id"]) == 13
    assert llm.token_eos() == 13
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    assert llama_cpp.llama_vocab_is_eog(vocab, 13)

    # llama.cpp's own template engine recognises the Llama 3 template.
    tmpl = llama_cpp.llama_model_chat_template(llm.model, None)
    assert tmpl.decode() == LLAMA3_TEMPLATE
    msgs = (llama_cpp.llama_chat_message * 2)(
        llama_cpp.llama_chat_message(role=b"system", content=b"Be brief."),
        llama_cpp.llama_chat_message(role=b"user", content=b"Hello"))
    buf = ctypes.create_string_buffer(1024)
    n = llama_cpp.llama_chat_apply_template(tmpl, msgs, 2, True, buf, len(buf))
    assert n > 0
    text = buf.raw[:n].decode()
    assert text.endswith("<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
                         "<|start_header_id|>assistant<|end_header_id|>\n\n"), text

    # And llama-cpp-python's Jinja chat handler renders it.
    fmt = llama_cpp.llama_chat_format.Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"], eos_token="<0x0A>", bos_token="<s>")
    r = fmt(messages=[{"role": "user", "content": "Hi"}])
    assert r.prompt == "<s><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>" \
                       "<|start_header_id|>assistant<|end_header_id|>\n\n", r.prompt
