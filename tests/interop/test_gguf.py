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


@pytest.fixture(scope="module")
def gemma_reader(gemma_path):
    return GGUFReader(str(gemma_path))


def test_gemma_inspect_agrees_with_gguf_py(run, gemma_path, gemma_reader):
    j = inspect_json(run, gemma_path)
    reader = gemma_reader
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


def test_gemma_metadata_edits_read_back_in_gguf_py(run, gemma_path, gemma_reader, tmp_path):
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
    before = gemma_reader
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


# --- gguf.cpp (llama.cpp's own loader, via ctypes) as a second reference ----

def _gguf_cpp():
    import ctypes
    import pathlib
    import llama_cpp
    lib = ctypes.CDLL(str(pathlib.Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))

    class InitParams(ctypes.Structure):
        _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]

    lib.gguf_init_from_file.restype = ctypes.c_void_p
    lib.gguf_init_from_file.argtypes = [ctypes.c_char_p, InitParams]
    lib.gguf_free.argtypes = [ctypes.c_void_p]
    for name in ("gguf_get_n_tensors", "gguf_get_n_kv"):
        getattr(lib, name).restype = ctypes.c_int64
        getattr(lib, name).argtypes = [ctypes.c_void_p]
    lib.gguf_get_data_offset.restype = ctypes.c_size_t
    lib.gguf_get_data_offset.argtypes = [ctypes.c_void_p]
    lib.gguf_get_alignment.restype = ctypes.c_size_t
    lib.gguf_get_alignment.argtypes = [ctypes.c_void_p]
    lib.gguf_get_tensor_offset.restype = ctypes.c_size_t
    lib.gguf_get_tensor_offset.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    lib.gguf_get_tensor_name.restype = ctypes.c_char_p
    lib.gguf_get_tensor_name.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    lib.gguf_get_key.restype = ctypes.c_char_p
    lib.gguf_get_key.argtypes = [ctypes.c_void_p, ctypes.c_int64]

    def load(path):
        """(keys, [(name, offset)], data_offset, alignment) or None if gguf.cpp refuses."""
        ctx = lib.gguf_init_from_file(str(path).encode(), InitParams(True, None))
        if not ctx:
            return None
        try:
            keys = [lib.gguf_get_key(ctx, i).decode() for i in range(lib.gguf_get_n_kv(ctx))]
            tensors = [(lib.gguf_get_tensor_name(ctx, i).decode(), lib.gguf_get_tensor_offset(ctx, i))
                       for i in range(lib.gguf_get_n_tensors(ctx))]
            return keys, tensors, lib.gguf_get_data_offset(ctx), lib.gguf_get_alignment(ctx)
        finally:
            lib.gguf_free(ctx)
    return load


# Files gguf.cpp's header parser accepts but qresidual refuses, and why.
GGUF_CPP_LENIENT = {
    # data bounds are checked by llama-model-loader, not gguf_init (no_alloc)
    "truncated_at_data_start.gguf", "truncated_at_mid_tensor0.gguf", "truncated_at_tensor0.gguf",
    "truncated_at_mid_tensor1.gguf", "data_beyond_eof.gguf", "tensor_100gb_in_1kb.gguf",
    # llama-model-loader refuses a split whose name does not follow the pattern
    "split_without_split_name.gguf",
    # qresidual keeps values exactly (a rewrite must be byte-identical):
    # a bool byte other than 0/1 or a non-UTF-8 string cannot be kept
    "bool_byte_2.gguf", "string_not_utf8.gguf",
}


def test_malformed_corpus_is_refused_by_gguf_cpp_too():
    import pathlib
    load = _gguf_cpp()
    corpus = pathlib.Path(__file__).resolve().parents[2] / "fixtures" / "malformed"
    rows = [line.rstrip("\n").split("\t") for line in open(corpus / "expected.tsv")
            if not line.startswith("#")]
    assert len(rows) >= 50
    for name, phrase in rows:
        accepted = load(corpus / name) is not None
        if phrase == "OK":
            assert accepted, name
        elif name in GGUF_CPP_LENIENT:
            assert accepted, f"{name}: gguf.cpp now refuses it; drop it from GGUF_CPP_LENIENT"
        else:
            assert not accepted, f"{name}: gguf.cpp accepts a file the corpus calls malformed"


def test_gguf_cpp_loads_our_copies(run, synthetic, tmp_path):
    load = _gguf_cpp()
    out = tmp_path / "edited.gguf"
    # gguf.cpp refuses arrays of arrays (gguf-py writes them): drop that key
    assert load(synthetic) is None
    run("metadata", synthetic, "-o", out, "--set", "general.name=str:x", "--remove", "t.arr_nested")
    keys, tensors, data_offset, alignment = load(out)
    j = inspect_json(run, out)
    assert keys == [m["key"] for m in j["metadata"]]
    assert tensors == [(t["name"], t["offset"]) for t in j["tensors"]]
    assert all(t["file_offset"] == data_offset + t["offset"] for t in j["tensors"])
    assert alignment == j["alignment"]


def test_split_set_from_gguf_py_copies_byte_for_byte(run, tmp_path):
    load = _gguf_cpp()
    src = tmp_path / "src"
    src.mkdir()
    w = GGUFWriter(str(src / "m.gguf"), "llama", split_max_tensors=2)
    w.add_uint32("t.u32", 5)
    for i in range(5):
        w.add_tensor(f"t{i}", np.full((3, 8), i, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    inputs = sorted(src.iterdir())
    assert [p.name for p in inputs] == [f"m-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    j = inspect_json(run, inputs[0])
    assert [t["name"] for t in j["tensors"]] == [f"t{i}" for i in range(5)]
    assert [t["file"] for t in j["tensors"]] == [0, 0, 1, 1, 2]
    outs = run("metadata", inputs[0], "-o", tmp_path / "out.gguf").stdout.split()
    assert [p.rsplit("/", 1)[-1] for p in outs] == [f"out-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    for a, b in zip(inputs, outs):
        assert filecmp.cmp(a, b, shallow=False), b
        assert load(b) is not None
    edited = run("metadata", inputs[0], "-o", tmp_path / "ed.gguf", "--set", "t.u32=u32:6").stdout.split()
    assert GGUFReader(edited[0]).fields["t.u32"].contents() == 6
    assert [GGUFReader(p).fields["split.no"].contents() for p in edited] == [0, 1, 2]
