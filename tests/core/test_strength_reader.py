"""Mutation-strength tests of the reader (optstate_format/_io.py, reading half).

Files are crafted by hand (tests/support/crafting.py) and read back: each test asserts the
exact values read, or the exact error class and code (spec section 11) with the tensor it
names, so that a wrong offset, a dropped bound, a swapped condition in the container parser,
the tiling check, the read plan (runs of small tensors, large tensors read alone) or the
checksum comparison fails a test.
"""

import json
import struct
import zlib

import msgpack
import numpy as np
import pytest

import optstate_format as osf
from optstate_format import _header, _io
from optstate_format._errors import FormatError, IntegrityError, VersionError

from crafting import HEADER, container, globals_file, good_bytes, join, join_text, split

SMALL = _io._SMALL_TENSOR


def _write(tmp_path, raw, name="s.optstate"):
    p = tmp_path / name
    p.write_bytes(raw)
    return p


def _refused(tmp_path, raw, cls=FormatError, verify=True):
    p = _write(tmp_path, raw)
    with pytest.raises(cls) as e:
        osf.read(p, verify=verify)
    assert type(e.value) is cls, e.value
    return e.value


def _arrays():
    # at least 1-d: crafting.globals_file stores np.ascontiguousarray(arr), which is never 0-d
    rng = np.random.default_rng(7)
    out = {
        "f64": rng.standard_normal((3, 2)),
        "f32": rng.standard_normal(5).astype(np.float32),
        "f16": rng.standard_normal((2, 2)).astype(np.float16),
        "i64": np.array([-(2 ** 62), 5, 2 ** 62], np.int64),
        "i32": np.array([-7], np.int32),
        "i16": np.array([[-3, 4]], np.int16),
        "i8": np.array([-128, 127], np.int8),
        "u64": np.array([2 ** 64 - 1], np.uint64),
        "u32": np.array([2 ** 32 - 1, 0], np.uint32),
        "u16": np.array([65535], np.uint16),
        "u8": np.arange(9, dtype=np.uint8).reshape(3, 3),
        "flags": np.array([True, False, True]),
        "empty": np.zeros((0, 4), np.float32),
        "no_flags": np.zeros((0,), np.bool_),
    }
    return out


def test_every_dtype_reads_back_its_exact_values(tmp_path):
    arrays = _arrays()
    p = _write(tmp_path, globals_file(arrays))
    for verify in (True, False):
        st = osf.read(p, verify=verify)
        assert sorted(st.globals) == sorted(arrays)
        for name, arr in arrays.items():
            got = st.globals[name]
            assert got.dtype == arr.dtype and got.shape == arr.shape, name
            assert np.array_equal(got, arr), name
            assert got.flags.writeable and got.flags.owndata or got.base is not None


def _mixed():
    """Small tensors around large ones, both sides of the 64 KiB boundary."""
    rng = np.random.default_rng(3)
    return {
        "a_small": rng.standard_normal(3).astype(np.float32),
        "b_at_limit": rng.standard_normal(SMALL // 4).astype(np.float32),        # == 64 KiB
        "c_over_limit": rng.standard_normal(SMALL // 4 + 1).astype(np.float32),  # 64 KiB + 4
        "d_small": np.arange(5, dtype=np.int64),
        "e_small": np.array([2.5], np.float64),
        "f_big": rng.standard_normal(40000),
        "g_flags": np.array([True, False]),
        "h_last": np.array([1, 2, 3], np.int16),
    }


@pytest.mark.parametrize("chunk", [None, 7, 64, 1 << 16])
def test_runs_of_small_tensors_and_large_tensors_read_exact_values(tmp_path, monkeypatch,
                                                                   chunk):
    if chunk:
        monkeypatch.setattr(_io, "_READ_CHUNK", chunk)
    arrays = _mixed()
    p = _write(tmp_path, globals_file(arrays))
    seen = []
    st = osf.read(p, progress=seen.append)
    for name, arr in arrays.items():
        assert st.globals[name].dtype == arr.dtype and np.array_equal(st.globals[name], arr)
    table, data = split(p.read_bytes())
    data_bytes = sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in table.items()
                     if k not in ("__metadata__", HEADER))
    assert sum(seen) == data_bytes and all(n >= 0 for n in seen)


def test_the_read_plan_groups_back_to_back_small_tensors(tmp_path, monkeypatch):
    """Reads: one per run of small tensors, one per large tensor (the plan of read_all)."""
    arrays = _mixed()
    p = _write(tmp_path, globals_file(arrays))
    calls = []
    real = _io._File.read_into

    def spy(self, buf, offset, with_crc=False, what="the file"):
        calls.append((offset, len(buf), what))
        return real(self, buf, offset, with_crc, what)
    monkeypatch.setattr(_io._File, "read_into", spy)
    osf.read(p)
    tensor_reads = sorted((o, n) for o, n, what in calls if what.startswith("tensor "))
    sizes = [n for _, n in tensor_reads]
    # (a, b) one run: b is exactly 64 KiB, still small; c alone (64 KiB + 4); (d, e) a run;
    # f alone; (g, h) a run
    assert sizes == [12 + SMALL, SMALL + 4, 40 + 8, 320000, 2 + 6]
    # the runs and the large tensors tile the data (no byte read twice, none skipped)
    for (o1, n1), (o2, _) in zip(tensor_reads, tensor_reads[1:]):
        assert o1 + n1 == o2


def test_a_run_is_cut_at_the_read_chunk(tmp_path, monkeypatch):
    arrays = {f"g{i}": np.full(4, i, np.float32) for i in range(6)}   # 16 bytes each
    p = _write(tmp_path, globals_file(arrays))
    monkeypatch.setattr(_io, "_READ_CHUNK", 32)
    reads = []
    real = _io._Container.read_run

    def spy(self, keys, begin, end, verify):
        reads.append((len(keys), end - begin))
        return real(self, keys, begin, end, verify)
    monkeypatch.setattr(_io._Container, "read_run", spy)
    st = osf.read(p)
    assert all(n <= 32 for _, n in reads) and sum(k for k, _ in reads) == 6
    assert max(k for k, _ in reads) == 2
    for i in range(6):
        assert np.array_equal(st.globals[f"g{i}"], np.full(4, i, np.float32))


def _damage(raw, key, at=0):
    """Flip one bit of tensor ``key``'s byte ``at``."""
    table, data = split(raw)
    s = table[key]["data_offsets"][0] + at
    data = data[:s] + bytes([data[s] ^ 0x10]) + data[s + 1:]
    return join(table, data)


@pytest.mark.parametrize("name,at", [("a_small", 0), ("a_small", 11), ("b_at_limit", SMALL - 1),
                                     ("c_over_limit", 0), ("c_over_limit", SMALL + 3),
                                     ("d_small", 39), ("e_small", 7), ("f_big", 319999),
                                     ("h_last", 5)])
@pytest.mark.parametrize("parallel", [False, True])
def test_a_damaged_byte_anywhere_names_its_tensor(tmp_path, monkeypatch, name, at, parallel):
    if parallel:
        monkeypatch.setattr(_io, "_PARALLEL_VERIFY_BYTES", 0)
        monkeypatch.setattr(_io.os, "cpu_count", lambda: 2)
    raw = _damage(globals_file(_mixed()), f"global:{name}", at)
    e = _refused(tmp_path, raw, IntegrityError)
    assert (e.code, e.key) == ("E_CHECKSUM", f"global:{name}")
    # verify=False returns the damaged bytes as they are
    st = osf.read(tmp_path / "s.optstate", verify=False)
    assert not np.array_equal(st.globals[name], _mixed()[name])
    assert osf.check(tmp_path / "s.optstate").code == "E_CHECKSUM"


def _bool_file(n, byte, at):
    flags = np.zeros(n, np.bool_)
    raw = globals_file({"a": np.arange(3, dtype=np.float32), "flags": flags})
    table, data = split(raw)
    s = table["global:flags"]["data_offsets"][0] + at
    data = data[:s] + bytes([byte]) + data[s + 1:]
    doc_table = table
    # a correct crc32 for the new bytes: the BOOL rule, not the checksum, refuses it
    start, end = doc_table["global:flags"]["data_offsets"]
    from crafting import doc_of, with_doc
    raw = join(table, data)
    doc = doc_of(raw)
    doc["checksums"]["global:flags"] = zlib.crc32(data[start:end])
    return with_doc(raw, doc)


@pytest.mark.parametrize("n", [5, SMALL + 1])
@pytest.mark.parametrize("verify", [True, False])
def test_a_bool_byte_other_than_0_or_1_is_refused_in_runs_and_alone(tmp_path, n, verify):
    for byte in (2, 255):
        e = _refused(tmp_path, _bool_file(n, byte, n - 1), verify=verify)
        assert (e.code, e.key) == ("E_BOOL_VALUE", "global:flags")
    p = _write(tmp_path, _bool_file(n, 1, n - 1))
    got = osf.read(p, verify=verify).globals["flags"]
    assert got.dtype == np.bool_ and got.sum() == 1 and got[-1]


# ------------------------------------------------------------------------ the container

def _good(tmp_path):
    return good_bytes(tmp_path)


@pytest.mark.parametrize("size", [0, 1, 7])
def test_a_file_shorter_than_the_length_field_is_truncated(tmp_path, size):
    raw = _good(tmp_path)[:size]
    assert _refused(tmp_path, raw).code == "E_TRUNCATED"


def test_header_length_bounds(tmp_path, monkeypatch):
    raw = _good(tmp_path)
    (n,) = struct.unpack("<Q", raw[:8])
    # one byte more than the file holds
    bad = struct.pack("<Q", len(raw) - 8 + 1) + raw[8:]
    assert _refused(tmp_path, bad).code == "E_HEADER_BOUNDS"
    # an 8-byte file whose length says more
    assert _refused(tmp_path, struct.pack("<Q", 1)).code == "E_HEADER_BOUNDS"
    # not a JSON object where the header should be
    assert _refused(tmp_path, struct.pack("<Q", 10 ** 6) + b"[" + raw[9:]).code == \
        "E_HEADER_BOUNDS"
    # the size limit, lowered to the header's own length: read; one less: refused
    monkeypatch.setattr(_io, "MAX_JSON_HEADER", n)
    osf.read(_write(tmp_path, raw))
    monkeypatch.setattr(_io, "MAX_JSON_HEADER", n - 1)
    assert _refused(tmp_path, raw).code == "E_HEADER_BOUNDS"


def test_a_header_length_of_the_whole_rest_leaves_no_data(tmp_path):
    raw = _good(tmp_path)
    table, data = split(raw)
    text = json.dumps(table, sort_keys=True, separators=(",", ":"))
    body = text.encode() + b" " * len(data)          # the data replaced by padding
    e = _refused(tmp_path, struct.pack("<Q", len(body)) + body)
    assert e.code in ("E_TRUNCATED",)


def _table_raw(text, data=b""):
    return join_text(text, data)


@pytest.mark.parametrize("text", [
    "", " {}", "[]", '{"a":1}', '{"a":{"dtype":"F32","shape":[],"data_offsets":[0,4]}',
    '{"a":{"dtype":"F32","shape":[],"data_offsets":[0,4]},}',
    '{"a":{"dtype":"F32","shape":[],"data_offsets":[0,4]} "b":1}',
    '{"a":{"dtype":"F32","shape":[],"data_offsets":[0,4],"extra":1}}',
    '{"a":{"dtype":"F32","shape":[]}}',
    '{"a":{"dtype":4,"shape":[],"data_offsets":[0,4]}}',
    '{"a":{"dtype":"F32","shape":"x","data_offsets":[0,4]}}',
    '{"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}',
    '{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}',
    '{"a":{"dtype":"F32","shape":[01],"data_offsets":[0,4]}}',
    '{"a":{"dtype":"F32","dtype":"F32","shape":[],"data_offsets":[0,4]}}',
    '{"a":{}}', '{"a":[]}', '{1:{}}',
    '{"a":{"dtype":"F32","dtype":"F32","shape":[]}}',
    '{"a":{"shape":[],"dtype":[1],"data_offsets":[0,4]}}',
    '{"a":{"shape":"x","dtype":"F32","data_offsets":[0,4]}}',
    '{"a":{"shape":[1e3],"dtype":"F32","data_offsets":[0,4]}}',
    '{"__metadata__":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}',
    '{"__metadata__":[]}', '{"__metadata__":{"a":1}}', '{"__metadata__":{"a":"b",}}',
    '{"__metadata__":{"a":"b"},"__metadata__":{}}',
    '{"__metadata__":{"a":"b","a":"c"}}',
    '{"__metadata__":{"a" "b"}}', '{"__metadata__":{"a":"b"} x}',
    '{} x', '{}{}',
])
def test_malformed_container_headers_are_e_container(tmp_path, text):
    assert _refused(tmp_path, _table_raw(text)).code == "E_CONTAINER", text


@pytest.mark.parametrize("text", [
    '{"a":{"dtype":"F32","shape":[],"data_offsets":[0]}}',
    '{"a":{"dtype":"F32","shape":[],"data_offsets":[0,4,8]}}',
    '{"a":{"dtype":"F32","shape":[],"data_offsets":[]}}',
    '{"a":{"dtype":"F32","shape":[],"data_offsets":[-1,4]}}',
    '{"a":{"dtype":"F32","shape":[],"data_offsets":"0,4"}}',
    '{"a":{"data_offsets":[0,4,8],"dtype":"F32","shape":[]}}',
    '{"a":{"shape":[],"data_offsets":[0],"dtype":"F32"}}',
    '{"a":{"shape":[],"data_offsets":[00,4],"dtype":"F32"}}',
    '{"a":{"shape":[],"data_offsets":[0,4.0],"dtype":"F32"}}',
])
def test_malformed_offsets_are_e_offsets(tmp_path, text):
    e = _refused(tmp_path, _table_raw(text, b"\0" * 8))
    assert (e.code, e.key) == ("E_OFFSETS", "a"), text


@pytest.mark.parametrize("text", [
    '{"a":{"dtype":"F32","shape":[],"data_offsets":[0,4],"extra":1}}',
    '{"a":{"dtype":"F32","shape":[]}}',
    '{"a":{"dtype":4,"shape":[],"data_offsets":[0,4]}}',
    '{"a":{"dtype":"F32","shape":"x","data_offsets":[0,4]}}',
    '{"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}',
    '{"a":{"dtype":"F32","dtype":"F32","shape":[],"data_offsets":[0,4]}}',
    '{"a":{"dtype":"F32","dtype":"F32","shape":[]}}',
    '{"a":{"shape":[],"dtype":[1],"data_offsets":[0,4]}}',
    '{"a":{"shape":"x","dtype":"F32","data_offsets":[0,4]}}',
    '{"a":{"shape":[] "dtype":"F32","data_offsets":[0,4]}}',
    '{"a":{"shape":[],1:"F32","data_offsets":[0,4]}}',
    '{"a":[]}', '{"a":{}}',
])
def test_entry_errors_name_the_tensor(tmp_path, text):
    e = _refused(tmp_path, _table_raw(text, b"\0" * 4))
    assert (e.code, e.key) == ("E_CONTAINER", "a"), (text, e)


def test_container_header_not_utf8(tmp_path):
    body = b'{"\xff":1}'
    assert _refused(tmp_path, join_text("", b"")[:0] + struct.pack("<Q", len(body)) + body
                    ).code == "E_CONTAINER"


def _file_with_table(tmp_path, edit, data_edit=None):
    """The good file with its container table edited (and its data, if given)."""
    table, data = split(_good(tmp_path))
    edit(table)
    if data_edit:
        data = data_edit(data)
    return join(table, data)


def test_metadata_identity_order_and_codes(tmp_path):
    def meta(**kw):
        def edit(table):
            for k, v in kw.items():
                if v is None:
                    table["__metadata__"].pop(k, None)
                else:
                    table["__metadata__"][k] = v
        return edit
    cases = [
        (meta(**{"optstate.format": None}), FormatError, "E_NOT_OPTSTATE"),
        (meta(**{"optstate.format": "Optstate"}), FormatError, "E_NOT_OPTSTATE"),
        (meta(**{"optstate.version": None}), VersionError, "E_VERSION"),
        (meta(**{"optstate.version": "1"}), VersionError, "E_VERSION"),
        (meta(**{"optstate.version": "2.2"}), VersionError, "E_VERSION"),
        (meta(**{"optstate.version": "0.2"}), VersionError, "E_VERSION"),
        # format is checked before version
        (meta(**{"optstate.format": "x", "optstate.version": "9.9"}), FormatError,
         "E_NOT_OPTSTATE"),
        (meta(**{"optstate.header": None}), FormatError, "E_NOT_OPTSTATE"),
        (meta(**{"optstate.header": "optstate:head"}), FormatError, "E_NOT_OPTSTATE"),
        (meta(**{"optstate.header_crc32": None}), FormatError, "E_CONTAINER"),
        (meta(**{"optstate.header_crc32": "2A7B7064"}), FormatError, "E_CONTAINER"),
        (meta(**{"optstate.header_crc32": "2a7b706"}), FormatError, "E_CONTAINER"),
        (meta(**{"optstate.header_crc32": "2a7b70645"}), FormatError, "E_CONTAINER"),
        (meta(**{"optstate.header_crc32": "00000000"}), IntegrityError, "E_HEADER_CHECKSUM"),
    ]
    for edit, cls, code in cases:
        e = _refused(tmp_path, _file_with_table(tmp_path, edit), cls)
        assert e.code == code, (code, e)
    # no metadata at all: not an optstate file
    e = _refused(tmp_path, _file_with_table(tmp_path, lambda t: t.pop("__metadata__")))
    assert e.code == "E_NOT_OPTSTATE"


def test_a_newer_minor_version_reads(tmp_path):
    from crafting import edit_doc

    def edit(table):
        table["__metadata__"]["optstate.version"] = "1.9"
    raw = edit_doc(_file_with_table(tmp_path, edit), lambda d: d.__setitem__("version", "1.9"))
    st = osf.read(_write(tmp_path, raw))
    assert st.version == "1.9"


def test_the_header_tensor_form(tmp_path):
    def dtype(code):
        return lambda t: t[HEADER].__setitem__("dtype", code)
    e = _refused(tmp_path, _file_with_table(tmp_path, dtype("I8")))
    assert (e.code, e.key) == ("E_CONTAINER", HEADER)

    def two_d(t):
        n = t[HEADER]["shape"][0]
        t[HEADER]["shape"] = [1, n]
    e = _refused(tmp_path, _file_with_table(tmp_path, two_d))
    assert (e.code, e.key) == ("E_CONTAINER", HEADER)
    # header tensor absent from the table, though named by the metadata
    def drop(t):
        s = t.pop(HEADER)
    raw = _good(tmp_path)
    table, data = split(raw)
    s, _ = table.pop(HEADER)["data_offsets"]
    assert _refused(tmp_path, join(table, data[:s])).code == "E_NOT_OPTSTATE"


def test_the_header_document_size_limit_is_exact(tmp_path, monkeypatch):
    raw = _good(tmp_path)
    n = split(raw)[0][HEADER]["shape"][0]
    monkeypatch.setattr(_header, "MAX_DOC_BYTES", n)
    osf.read(_write(tmp_path, raw))
    monkeypatch.setattr(_header, "MAX_DOC_BYTES", n - 1)
    assert _refused(tmp_path, raw).code == "E_LIMIT"


# ------------------------------------------------------------------------ the table

def _one(code, shape, offsets, nbytes):
    t = {"__metadata__": {"optstate.format": "optstate", "optstate.version": "1.2",
                          "optstate.header": HEADER}}
    t["global:x"] = {"dtype": code, "shape": shape, "data_offsets": offsets}
    return join(t, b"\0" * nbytes)


@pytest.mark.parametrize("code,shape,offsets,nbytes,want,key", [
    ("F32", [2], [0, 4], 4, "E_OFFSETS", "global:x"),    # span shorter than dtype x shape
    ("F32", [2], [0, 12], 12, "E_OFFSETS", "global:x"),  # longer
    ("F32", [2], [8, 0], 8, "E_OFFSETS", "global:x"),    # end before begin
    ("F32", [2], [0, 8], 4, "E_TRUNCATED", "global:x"),  # past the data buffer
    ("F32", [2], [0, 8], 7, "E_TRUNCATED", "global:x"),  # one byte short
    ("F32", [2], [4, 12], 12, "E_OFFSETS", "global:x"),  # a gap before the first tensor
    ("F32", [2], [0, 8], 9, "E_OFFSETS", None),          # a trailing byte
    ("F8_E4M3", [2], [0, 2], 2, "E_DTYPE", "global:x"),
    ("X", [], [0, 1], 1, "E_DTYPE", "global:x"),
    ("F32", [1] * 65, [0, 4], 4, "E_LIMIT", "global:x"),
    ("U8", [2 ** 27, 2 ** 26 + 1], [0, 0], 0, "E_LIMIT", "global:x"),
    ("U8", [0, 2 ** 53 + 1], [0, 0], 0, "E_LIMIT", "global:x"),
])
def test_table_rules(tmp_path, code, shape, offsets, nbytes, want, key):
    e = _refused(tmp_path, _one(code, shape, offsets, nbytes))
    assert (e.code, e.key) == (want, key)


def test_table_checks_run_before_identity_of_the_document_but_after_format(tmp_path):
    # a damaged table in a non-optstate file: the identity comes first (spec 3.5)
    t = {"__metadata__": {"optstate.format": "other"},
         "global:x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}
    assert _refused(tmp_path, join(t, b"\0" * 4)).code == "E_NOT_OPTSTATE"
    t["__metadata__"] = {"optstate.format": "optstate", "optstate.version": "3.0"}
    assert _refused(tmp_path, join(t, b"\0" * 4), VersionError).code == "E_VERSION"


def test_zero_byte_tensors_limit_is_exact(tmp_path, monkeypatch):
    monkeypatch.setattr(_io, "MAX_EMPTY_TENSORS", 2)
    arrays = {"a": np.zeros(1, np.float32), "e1": np.zeros(0), "e2": np.zeros((0, 3)),
              "e3": np.zeros(0, np.int8)}
    # 3 empty tensors, 2 + 1 holding data allowed (the header tensor is not counted)
    st = osf.read(_write(tmp_path, globals_file(arrays)))
    assert st.globals["e2"].shape == (0, 3)
    arrays["e4"] = np.zeros(0)
    assert _refused(tmp_path, globals_file(arrays)).code == "E_LIMIT"


def test_tensor_count_limit_is_exact(tmp_path, monkeypatch):
    arrays = {f"g{i}": np.array([i], np.int32) for i in range(3)}
    raw = globals_file(arrays)     # 3 globals + the header tensor
    monkeypatch.setattr(_io, "MAX_TENSORS", 4)
    assert sorted(osf.read(_write(tmp_path, raw)).globals) == ["g0", "g1", "g2"]
    monkeypatch.setattr(_io, "MAX_TENSORS", 3)
    assert _refused(tmp_path, raw).code == "E_LIMIT"


def test_metadata_entry_limit_is_exact(tmp_path, monkeypatch):
    raw = _good(tmp_path)
    n = len(split(raw)[0]["__metadata__"])
    monkeypatch.setattr(_io, "MAX_METADATA_ENTRIES", n)
    osf.read(_write(tmp_path, raw))
    monkeypatch.setattr(_io, "MAX_METADATA_ENTRIES", n - 1)
    assert _refused(tmp_path, raw).code == "E_LIMIT"


def _reorder(table, order):
    """The table's JSON text, each entry's members in ``order``, with escapes and spaces."""
    parts = []
    for k in sorted(table):
        v = table[k]
        if k == "__metadata__":
            inner = ", ".join(f"{json.dumps(a)} : {json.dumps(b)}" for a, b in v.items())
        else:
            inner = " , ".join(f'"{m}" :{json.dumps(v[m])}' for m in order)
            k = k.replace("g", "\\u0067", 1)   # a JSON escape in every tensor key
        parts.append(f'"{k}" : {{ {inner} }}')
    return "{ " + " ,\n ".join(parts) + " }"


@pytest.mark.parametrize("order", [("data_offsets", "dtype", "shape"),
                                   ("dtype", "shape", "data_offsets"),
                                   ("shape", "dtype", "data_offsets"),
                                   ("data_offsets", "shape", "dtype")])
def test_every_member_order_and_json_spacing_reads_the_same(tmp_path, order):
    arrays = {"ete": np.arange(4, dtype=np.float32), "x": np.array([3], np.int64),
              "q.uote": np.ones((2, 1), np.int8)}
    raw = globals_file(arrays)
    table, data = split(raw)
    raw2 = join_text(_reorder(table, order), data)
    st = osf.read(_write(tmp_path, raw2))
    for name, arr in arrays.items():
        assert np.array_equal(st.globals[name], arr) and st.globals[name].shape == arr.shape


def test_a_tensor_named_twice_is_a_duplicate_in_any_member_order(tmp_path):
    base = '"k":{"dtype":"F32","shape":[],"data_offsets":[0,4]}'
    slow = '"k":{"shape":[],"dtype":"F32","data_offsets":[0,4]}'
    odd = '"k":{"shape":[] ,"data_offsets":[0,4],"dtype":"F32"}'
    for a, b in ((base, base), (slow, slow), (odd, odd), (base, odd), (odd, base)):
        e = _refused(tmp_path, _table_raw("{" + a + "," + b + "}", b"\0" * 4))
        assert (e.code, e.key) == ("E_DUPLICATE_KEY", "k"), (a, b)


def test_only_json_whitespace_may_follow_the_object(tmp_path):
    raw = _good(tmp_path)
    table, data = split(raw)
    text = json.dumps(table, sort_keys=True, separators=(",", ":"))
    osf.read(_write(tmp_path, join_text(text + " \t\r\n", data)))
    for tail in ("x", "\x00", "\u00a0"):
        assert _refused(tmp_path, join_text(text + tail, data)).code == "E_CONTAINER", tail


def test_an_empty_table_is_not_an_optstate_file(tmp_path):
    assert _refused(tmp_path, _table_raw("{}")).code == "E_NOT_OPTSTATE"
    assert _refused(tmp_path, _table_raw("{ \n}")).code == "E_NOT_OPTSTATE"


def _escaped_members(table, key_of=lambda k: k):
    """The table with every member name written with a JSON escape (the careful parser)."""
    parts = []
    for k in sorted(table):
        v = table[k]
        if k == "__metadata__":
            parts.append(f"{json.dumps(k)}:{json.dumps(v)}")
        else:
            parts.append(f'{json.dumps(key_of(k))}:{{"\\u0064type":{json.dumps(v["dtype"])},'
                         f'"shape":{json.dumps(v["shape"])},'
                         f'"data_offsets":{json.dumps(v["data_offsets"])}}}')
    return "{" + ",".join(parts) + "}"


@pytest.mark.parametrize("rank,ok", [(64, True), (65, False)])
def test_the_rank_limit_in_the_careful_parser(tmp_path, rank, ok):
    raw = globals_file({"deep": np.ones(1, np.float32)})
    table, data = split(raw)
    table["global:deep"]["shape"] = [1] * rank
    from crafting import doc_of, with_doc
    raw = join_text(_escaped_members(table), data)
    if ok:
        raw = with_doc(raw, dict(doc_of(raw), table_crc32=_header.table_crc32(
            {k: (osf._dtypes.CODE_TO_NAME[v["dtype"]], v["shape"]) for k, v in table.items()
             if k != "__metadata__"})))
        got = osf.read(_write(tmp_path, raw)).globals["deep"]
        assert got.shape == (1,) * rank and got.dtype == np.float32
    else:
        e = _refused(tmp_path, raw)
        assert (e.code, e.key) == ("E_LIMIT", "global:deep")


def test_the_careful_parser_reads_the_same_values(tmp_path):
    arrays = _arrays()
    raw = globals_file(arrays)
    table, data = split(raw)
    st = osf.read(_write(tmp_path, join_text(_escaped_members(table), data)))
    for name, arr in arrays.items():
        assert st.globals[name].dtype == arr.dtype and np.array_equal(st.globals[name], arr)


@pytest.mark.parametrize("form", ["fast", "match", "careful"])
def test_tensor_count_limit_is_exact_in_each_parser(tmp_path, monkeypatch, form):
    arrays = {f"g{i}": np.array([i], np.int32) for i in range(3)}
    raw = globals_file(arrays)
    if form != "fast":
        table, data = split(raw)
        text = (_reorder(table, ("shape", "dtype", "data_offsets")) if form == "match"
                else _escaped_members(table))
        raw = join_text(text, data)
    monkeypatch.setattr(_io, "MAX_TENSORS", 4)     # 3 globals + the header tensor
    assert sorted(osf.read(_write(tmp_path, raw)).globals) == ["g0", "g1", "g2"]
    monkeypatch.setattr(_io, "MAX_TENSORS", 3)
    assert _refused(tmp_path, raw).code == "E_LIMIT"


def test_optional_document_fields_read_as_their_defaults(tmp_path):
    from crafting import edit_doc

    def strip(doc):
        for k in ("module", "hyperparameters", "learning_rate", "wrappers"):
            doc["optimizer"].pop(k, None)
        doc.pop("metadata", None)
        for w in doc["weights"]:
            w.pop("value", None)
    st = osf.read(_write(tmp_path, edit_doc(_good(tmp_path), strip)))
    o = st.optimizer
    assert (o.algorithm, o.class_name, o.module, o.hyperparameters, o.learning_rate,
            o.wrappers, o.components) == ("adam", "Adam", "", {}, {}, [], [])
    assert st.metadata == {} and st.step == 4 and st.version == "1.2"
    assert [(w.path, w.shape, w.dtype, w.trainable, w.component, w.value)
            for w in st.weights] == [("layer_0/kernel", (2, 3), "float32", True, 0, None),
                                     ("layer_1/kernel", (3, 3), "float32", True, 0, None)]
    assert st.producer == {"framework": "test", "framework_version": "0",
                           "library": "optstate-format", "library_version": "0.3.0"}


def test_every_document_field_is_read(tmp_path):
    from helpers import adam_state
    st0 = adam_state(n_weights=2, with_values=True)
    st0.optimizer.wrappers = [{"class_name": "LossScale", "config": {"k": 1}}]
    st0.metadata = {"run": "7"}
    st0.weights[1].trainable = False
    p = osf.write(st0, tmp_path / "all.optstate", fsync=False)
    st = osf.read(p)
    o = st.optimizer
    assert (o.algorithm, o.class_name, o.module, o.hyperparameters, o.learning_rate,
            o.wrappers) == ("adam", "Adam", "keras.optimizers", {"beta_1": 0.9, "beta_2": 0.999},
                            {"kind": "constant", "value": 0.001},
                            [{"class_name": "LossScale", "config": {"k": 1}}])
    assert st.metadata == {"run": "7"} and st.step == 4
    for w0, w in zip(st0.weights, st.weights):
        assert (w.path, w.shape, w.dtype, w.trainable, w.hints) == \
            (w0.path, tuple(w0.shape), w0.dtype, w0.trainable, w0.hints)
        assert np.array_equal(w.value, w0.value)
        assert sorted(w.slots) == ["m", "v"]
        for k in w.slots:
            assert np.array_equal(w.slots[k], w0.slots[k])
    assert st.globals["iterations"].shape == () and int(st.globals["iterations"]) == 4


def test_read_with_dtypes_and_read_header(tmp_path):
    raw = _good(tmp_path)
    p = _write(tmp_path, raw)
    st, dtypes = _io.read_with_dtypes(p)
    assert dtypes == {"global:iterations": "int64", HEADER: "uint8",
                      "slot:layer_0/kernel:m": "float32", "slot:layer_0/kernel:v": "float32",
                      "slot:layer_1/kernel:m": "float32", "slot:layer_1/kernel:v": "float32"}
    from crafting import doc_of
    assert osf.read_header(p) == doc_of(raw)
    p.write_bytes(raw[:5])
    with pytest.raises(FormatError) as e:
        osf.read_header(p)
    assert e.value.code == "E_TRUNCATED"


@pytest.mark.parametrize("exc,code", [(MemoryError(), "E_LIMIT"), (KeyError("k"), "E_FORMAT")])
def test_foreign_errors_while_reading_become_format_errors(tmp_path, monkeypatch, exc, code):
    p = _write(tmp_path, _good(tmp_path))

    def boom(*a):
        raise exc
    monkeypatch.setattr(_io._Container, "read_all", boom)
    with pytest.raises(FormatError) as e:
        osf.read(p)
    assert type(e.value) is FormatError and e.value.code == code
    if code == "E_FORMAT":
        assert e.value.msg.startswith("unexpected KeyError while reading ('k'); ")
        assert e.value.__cause__ is exc
    with pytest.raises(FormatError) as e:
        _io.read_with_dtypes(p)
    assert e.value.code == code


def test_large_multi_dimensional_tensors_read_exactly(tmp_path):
    """Tensors over 64 KiB are read alone, and from 2 MiB into a buffer aligned for huge pages:
    both must hold exactly the stored bytes, whatever the tensor's rank and offset."""
    rng = np.random.default_rng(11)
    arrays = {"a_small": np.arange(3, dtype=np.int8),                       # odd offset after
              "b_2d": rng.standard_normal((300, 300)).astype(np.float32),     # 360 KB
              "c_2mib": rng.standard_normal((512, 1024)).astype(np.float32),  # exactly 2 MiB
              "d_3d": rng.standard_normal((3, 700, 400)),                     # 6.7 MB, float64
              "e_bool": rng.random((2100, 1000)) < 0.5}                       # 2.1 MB of BOOL
    p = _write(tmp_path, globals_file(arrays))
    for verify in (True, False):
        st = osf.read(p, verify=verify)
        for name, arr in arrays.items():
            got = st.globals[name]
            assert got.shape == arr.shape and got.dtype == arr.dtype, name
            assert np.array_equal(got, arr), name
    raw = _damage(p.read_bytes(), "global:d_3d", 3 * 700 * 400 * 8 - 1)
    e = _refused(tmp_path, raw, IntegrityError)
    assert (e.code, e.key) == ("E_CHECKSUM", "global:d_3d")


def test_read_with_dtypes_verifies_by_default(tmp_path):
    raw = _damage(_good(tmp_path), "slot:layer_0/kernel:v", 5)
    p = _write(tmp_path, raw)
    with pytest.raises(IntegrityError) as e:
        _io.read_with_dtypes(p)
    assert e.value.key == "slot:layer_0/kernel:v"
    st, _ = _io.read_with_dtypes(p, verify=False)
    assert st.weights[0].slots["v"].shape == (2, 3)


def test_element_limit_boundaries_of_the_table(tmp_path):
    # 2^53 elements is allowed: a U8 tensor that big is refused for its missing bytes
    e = _refused(tmp_path, _one("U8", [2 ** 53], [0, 2 ** 53], 0))
    assert (e.code, e.key) == ("E_TRUNCATED", "global:x")
    e = _refused(tmp_path, _one("U8", [2 ** 53 + 1], [0, 2 ** 53 + 1], 0))
    assert (e.code, e.key) == ("E_LIMIT", "global:x")
    # a zero-element tensor whose other dimensions multiply to exactly 2^53 is not refused by
    # the limit (it fails later, on the missing header tensor)
    assert _refused(tmp_path, _one("U8", [0, 2 ** 53], [0, 0], 0)).code == "E_NOT_OPTSTATE"
