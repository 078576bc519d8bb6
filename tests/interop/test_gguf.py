"""qresidual's GGUF reader and writer against gguf-py (an independent
implementation): `inspect --json` must agree with GGUFReader field by field,
`metadata` must copy byte for byte and its edits must read back in gguf-py."""

import filecmp
import json

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

TYPE_NAMES = {
    GGUFValueType.UINT8: "u8", GGUFValueType.INT8: "i8", GGUFValueType.UINT16: "u16",
    GGUFValueType.INT16: "i16", GGUFValueType.UINT32: "u32", GGUFValueType.INT32: "i32",
    GGUFValueType.FLOAT32: "f32", GGUFValueType.BOOL: "bool", GGUFValueType.STRING: "str",
    GGUFValueType.ARRAY: "arr", GGUFValueType.UINT64: "u64", GGUFValueType.INT64: "i64",
    GGUFValueType.FLOAT64: "f64",
}


def inspect_json(run, path):
    return json.loads(run("inspect", "--json", path).stdout)


def reader_fields(reader):
    return [(k, f) for k, f in reader.fields.items() if not k.startswith("GGUF.")]


def assert_agrees_with_gguf_py(j, reader):
    fields = reader_fields(reader)
    assert [m["key"] for m in j["metadata"]] == [k for k, _ in fields]
    for m, (key, field) in zip(j["metadata"], fields):
        assert m["type"] == TYPE_NAMES[field.types[0]], key
        if field.types[0] == GGUFValueType.ARRAY and len(field.types) == 2:
            assert m["elem_type"] == TYPE_NAMES[field.types[1]], key
            assert m["len"] == len(field.data), key
        if len(field.types) <= 2:  # gguf-py's contents() cannot decode nested arrays
            assert m["value"] == field.contents(), key
    assert len(j["tensors"]) == len(reader.tensors)
    for t, rt in zip(j["tensors"], reader.tensors):
        assert t["name"] == rt.name
        assert t["type_id"] == int(rt.tensor_type), t["name"]
        assert t["type"].upper() == rt.tensor_type.name, t["name"]
        assert t["ne"] == [int(d) for d in rt.shape], t["name"]
        assert t["shape"] == [int(d) for d in reversed(rt.shape)], t["name"]
        assert t["file_offset"] == rt.data_offset, t["name"]
        assert t["offset"] == rt.data_offset - reader.data_offset, t["name"]
        assert t["size"] == rt.n_bytes, t["name"]
        assert t["n_elements"] == rt.n_elements, t["name"]
    assert j["totals"]["bytes"] == sum(int(rt.n_bytes) for rt in reader.tensors)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A small model written by gguf-py's GGUFWriter with every value type."""
    path = tmp_path_factory.mktemp("syn") / "syn.gguf"
    w = GGUFWriter(str(path), "llama")
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4_000_000_000)
    w.add_int32("t.i32", -2_000_000_000)
    w.add_float32("t.f32", 0.1)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo ✓")
    w.add_uint64("t.u64", 2**64 - 1)
    w.add_int64("t.i64", -(2**63))
    w.add_float64("t.f64", 1e-300)
    w.add_array("t.arr_str", ["a", "", "ü"])
    w.add_array("t.arr_int", [1, 2, 3])
    w.add_array("t.arr_float", [0.5, -1.25])
    w.add_array("t.arr_nested", [[1, 2], [3]])
    rng = np.random.default_rng(0)
    w.add_tensor("f32", rng.standard_normal((3, 5)).astype(np.float32))
    w.add_tensor("f16", rng.standard_normal((7,)).astype(np.float16))
    w.add_tensor("i32", np.arange(6, dtype=np.int32).reshape(2, 3))
    w.add_tensor("q8_0", rng.integers(0, 255, size=(2, 34), dtype=np.uint8),
                 raw_dtype=GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_synthetic_inspect_agrees_with_gguf_py(run, synthetic):
    j = inspect_json(run, synthetic)
    assert_agrees_with_gguf_py(j, GGUFReader(str(synthetic)))
    nested = next(m for m in j["metadata"] if m["key"] == "t.arr_nested")
    assert nested["elem_type"] == "arr"
    assert [item["value"] for item in nested["value"]] == [[1, 2], [3]]


def test_synthetic_metadata_copy_is_byte_identical(run, synthetic, tmp_path):
    out = tmp_path / "copy.gguf"
    run("metadata", synthetic, "-o", out)
    assert filecmp.cmp(synthetic, out, shallow=False)


def test_gemma_inspect_agrees_with_gguf_py(run, gemma_path):
    j = inspect_json(run, gemma_path)
    reader = GGUFReader(str(gemma_path))
    assert len(j["metadata"]) == 33
    assert len(j["tensors"]) == 236
    assert_agrees_with_gguf_py(j, reader)
    by_type = {t["type"]: t["tensors"] for t in j["totals"]["by_type"]}
    assert by_type == {"f32": 109, "q5_0": 81, "q4_K": 27, "q8_0": 10, "q6_K": 9}


def test_gemma_metadata_without_edit_is_byte_identical(run, gemma_path, tmp_path):
    out = tmp_path / "copy.gguf"
    run("metadata", gemma_path, "-o", out)
    assert filecmp.cmp(gemma_path, out, shallow=False)
    assert [p.name for p in tmp_path.iterdir()] == ["copy.gguf"]


def test_gemma_metadata_edits_read_back_in_gguf_py(run, gemma_path, tmp_path):
    template = tmp_path / "tmpl.jinja"
    template.write_text("{% for m in messages %}{{ m.content }}{% endfor %}\n")
    out = tmp_path / "edited.gguf"
    run("metadata", gemma_path, "-o", out,
        "--set", "general.name=str:Edited name",
        "--set", "tokenizer.ggml.bos_token_id=u32:7",
        "--set", "qresidual.alpha=f32:1.5",
        "--set", "qresidual.count=i64:-3",
        "--set", "qresidual.flag=bool:true",
        "--set-file", f"tokenizer.chat_template={template}",
        "--remove", "general.license")
    before = GGUFReader(str(gemma_path))
    after = GGUFReader(str(out))
    f = after.fields
    assert f["general.name"].contents() == "Edited name"
    assert f["tokenizer.ggml.bos_token_id"].types == [GGUFValueType.UINT32]
    assert f["tokenizer.ggml.bos_token_id"].contents() == 7
    assert f["qresidual.alpha"].types == [GGUFValueType.FLOAT32]
    assert f["qresidual.alpha"].contents() == 1.5
    assert f["qresidual.count"].types == [GGUFValueType.INT64]
    assert f["qresidual.count"].contents() == -3
    assert f["qresidual.flag"].contents() is True
    assert f["tokenizer.chat_template"].contents() == template.read_text()
    assert "general.license" not in f
    keys_before = [k for k, _ in reader_fields(before) if k != "general.license"]
    keys_after = [k for k, _ in reader_fields(after)]
    assert keys_after[:len(keys_before)] == keys_before  # edits in place, additions at the end
    assert len(after.tensors) == len(before.tensors) == 236
    for a, b in zip(after.tensors, before.tensors):
        assert (a.name, a.tensor_type, list(a.shape)) == (b.name, b.tensor_type, list(b.shape))
        assert a.data_offset % 32 == 0
        assert np.array_equal(np.asarray(a.data).view(np.uint8), np.asarray(b.data).view(np.uint8)), a.name


def test_metadata_refuses_to_overwrite_its_input(run, synthetic):
    p = run("metadata", synthetic, "-o", synthetic, check=False)
    assert p.returncode != 0
    assert "is the input" in p.stderr


def test_inspect_names_the_problem_in_a_malformed_file(run, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + (1).to_bytes(4, "little") + bytes(16))
    p = run("inspect", bad, check=False)
    assert p.returncode != 0
    assert "version 1 is no longer supported" in p.stderr
