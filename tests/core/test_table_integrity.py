"""Issue 14 point 9: the container header cannot be altered unnoticed (spec 3.6).

The header document of a 1.1 file records ``table_crc32``, the crc32 of the canonical form of
the container's tensor table (keys, dtype codes, shapes). These tests compute that form by
hand (the bytes the spec describes, zlib's crc32), tamper with real files written by the
writer, and check what the reader and the checker say.
"""

import json
import zlib
from pathlib import Path

import numpy as np
import pytest

import optstate_format as osf
from optstate_format import _header
from optstate_format._check import summarize

from crafting import HEADER, container, doc_of, good_bytes, join, minimal_doc, split, with_doc
from helpers import adam_state

ROOT = Path(__file__).resolve().parents[2]
SPEC_TEXT = (ROOT / "spec" / "SPEC.md").read_text()
VALID_DIR = ROOT / "spec" / "conformance" / "valid"
VALID = sorted(VALID_DIR.glob("*.optstate"))


def _canonical_by_hand(table):
    """The canonical form of spec 3.6, from the container JSON itself."""
    keys = sorted((k for k in table if k not in ("__metadata__", HEADER)),
                  key=lambda k: k.encode("utf-8"))
    return b"".join(k.encode() + b"\0" + table[k]["dtype"].encode() + b"\0"
                    + ",".join(str(d) for d in table[k]["shape"]).encode() + b"\n"
                    for k in keys)


def _refused(tmp_path, raw, code, cls=osf.FormatError):
    p = tmp_path / "tampered.optstate"
    p.write_bytes(raw)
    for verify in (True, False):  # verify=False skips crc32s of tensors, not this check
        with pytest.raises(cls) as e:
            osf.read(p, verify=verify)
        assert e.value.code == code
    rep = osf.check(p)
    assert not rep.valid and rep.code == code
    return e.value


@pytest.mark.parametrize("path", [p for p in VALID if p.stem != "v1_1_without_table_crc32"],
                         ids=lambda p: p.stem)
def test_every_valid_vector_records_the_crc32_of_its_table(path):
    table, _ = split(path.read_bytes())
    assert doc_of(path.read_bytes())["table_crc32"] == zlib.crc32(_canonical_by_hand(table))


def test_a_1_1_file_without_the_field_reads_and_one_with_a_wrong_field_does_not(tmp_path):
    """Library 0.2.0 wrote 1.1 files without table_crc32 (required from 1.2 only): they
    read, to the same slots as the 1.2 file they were made from; a 1.1 file that has the
    field is checked like any other."""
    old = VALID_DIR / "v1_1_without_table_crc32.optstate"
    assert "table_crc32" not in doc_of(old.read_bytes())
    a, b = osf.read(old), osf.read(VALID_DIR / "minimal_sgd.optstate")
    assert a.version == "1.1" and b.version == "1.2"
    np.testing.assert_array_equal(a.weights[0].slots["momentum"],
                                  b.weights[0].slots["momentum"])
    raw = old.read_bytes()
    doc = doc_of(raw)
    doc["table_crc32"] = 12345
    _refused(tmp_path, with_doc(raw, doc), "E_TABLE_CHECKSUM", osf.IntegrityError)


def test_the_writer_records_the_table_and_the_reader_accepts_it(tmp_path):
    raw = good_bytes(tmp_path, adam_state(n_weights=3, with_values=True))
    table, _ = split(raw)
    doc = doc_of(raw)
    assert doc["table_crc32"] == zlib.crc32(_canonical_by_hand(table))
    assert list(doc) == sorted(doc)  # still deterministic msgpack (9.1)
    assert len(table) - 2 == len(doc["checksums"]) == 3 * 3 + 1


def test_the_worked_example_of_section_12_is_the_real_file():
    raw = (ROOT / "spec" / "conformance" / "valid" / "minimal_sgd.optstate").read_bytes()
    form = b"global:iterations\0I64\0\nslot:dense/kernel:momentum\0F32\0002,2\n"
    assert _canonical_by_hand(split(raw)[0]) == form
    assert f"the {len(form)} bytes" in SPEC_TEXT
    assert f"table_crc32: {zlib.crc32(form)}" in SPEC_TEXT
    assert doc_of(raw)["table_crc32"] == zlib.crc32(form)
    assert f"({len(raw)} bytes)" in SPEC_TEXT
    table, data = split(raw)
    crc = table["__metadata__"]["optstate.header_crc32"]
    s, e = table[HEADER]["data_offsets"]
    assert f'"optstate.header_crc32":"{crc}"' in SPEC_TEXT
    assert f'"data_offsets":[{s},{e}],"dtype":"U8","shape":[{e - s}]' in SPEC_TEXT
    assert f"{e - s} bytes of msgpack" in SPEC_TEXT
    assert f"end of file (8 + 440 + {len(data)} = {len(raw)})" in SPEC_TEXT


def test_a_dtype_changed_from_f32_to_i32_is_refused(tmp_path):
    raw = good_bytes(tmp_path)
    table, data = split(raw)
    table["slot:layer_0/kernel:m"]["dtype"] = "I32"
    e = _refused(tmp_path, join(table, data), "E_TABLE_CHECKSUM", osf.IntegrityError)
    assert "dtype or shape" in e.msg


def test_a_shape_of_the_same_byte_size_is_refused_before_the_slot_rule(tmp_path):
    raw = good_bytes(tmp_path)
    table, data = split(raw)
    table["slot:layer_0/kernel:v"]["shape"] = [3, 2]  # (2, 3) -> (3, 2): 24 bytes either way
    # [3, 2] also breaks the `like` rule (E_SLOT_SHAPE), which 3.5 checks after the table.
    _refused(tmp_path, join(table, data), "E_TABLE_CHECKSUM", osf.IntegrityError)
    table["slot:layer_0/kernel:v"]["shape"] = [6]
    _refused(tmp_path, join(table, data), "E_TABLE_CHECKSUM", osf.IntegrityError)


def test_a_value_dtype_changed_with_its_entry_is_still_refused(tmp_path):
    """A careful editor who also fixes the weight entry cannot, without rewriting the
    checksummed document: and rewriting it is not editing the container header."""
    raw = good_bytes(tmp_path, adam_state(n_weights=2, with_values=True))
    table, data = split(raw)
    table["weight:layer_0/kernel"]["dtype"] = "I32"
    _refused(tmp_path, join(table, data), "E_TABLE_CHECKSUM", osf.IntegrityError)


def test_tensors_laid_out_again_keep_the_file_valid(tmp_path):
    """Offsets are not in the canonical form: another layout (reversed order) still reads."""
    raw = good_bytes(tmp_path)
    table, data = split(raw)
    keys = sorted((k for k in table if k not in ("__metadata__", HEADER)), reverse=True)
    pieces, pos = [], 0
    for k in keys + [HEADER]:
        s, e = table[k]["data_offsets"]
        pieces.append(data[s:e])
        table[k]["data_offsets"] = [pos, pos + e - s]
        pos += e - s
    p = tmp_path / "relaid.optstate"
    p.write_bytes(join(table, b"".join(pieces)))
    a, b = osf.read(p), osf.read(tmp_path / "good.optstate")
    for wa, wb in zip(a.weights, b.weights):
        for name in wa.slots:
            np.testing.assert_array_equal(wa.slots[name], wb.slots[name])


def test_a_1_2_file_without_the_field_is_refused(tmp_path):
    raw = good_bytes(tmp_path)
    doc = doc_of(raw)
    del doc["table_crc32"]
    e = _refused(tmp_path, with_doc(raw, doc), "E_SCHEMA")
    assert "table_crc32" in e.msg and "1.2" in e.msg


@pytest.mark.parametrize("value", [True, -1, 2 ** 32, 1.0, "0"])
def test_a_table_crc32_outside_its_type_is_a_schema_error(tmp_path, value):
    raw = good_bytes(tmp_path)
    doc = doc_of(raw)
    doc["table_crc32"] = value
    _refused(tmp_path, with_doc(raw, doc), "E_SCHEMA")


def _v10_file(doc_edit=None):
    payload = np.arange(4, dtype=np.float32).tobytes()
    tensors = {"global:acc": ("F32", (4,), payload)}
    doc = minimal_doc({"global:acc": payload})
    if doc_edit:
        doc_edit(doc)
    return container(tensors, doc=doc)


def test_a_1_0_file_without_the_field_reads_as_before(tmp_path):
    p = tmp_path / "v10.optstate"
    p.write_bytes(_v10_file())
    st = osf.read(p)
    assert st.version == "1.0" and st.globals["acc"].tolist() == [0.0, 1.0, 2.0, 3.0]
    # ... and is exactly as (un)protected as 1.0 made it: a changed dtype goes unnoticed.
    table, data = split(p.read_bytes())
    table["global:acc"]["dtype"] = "I32"
    p.write_bytes(join(table, data))
    assert osf.read(p).globals["acc"].dtype == np.int32


def test_a_1_0_file_that_carries_the_field_has_it_checked(tmp_path):
    def add(doc):
        doc["table_crc32"] = 12345
    p = tmp_path / "v10.optstate"
    p.write_bytes(_v10_file(add))
    with pytest.raises(osf.IntegrityError) as e:
        osf.read(p)
    assert e.value.code == "E_TABLE_CHECKSUM"


def test_the_summary_does_not_carry_the_field(tmp_path):
    good_bytes(tmp_path)
    assert "table_crc32" not in json.dumps(summarize(osf.read(tmp_path / "good.optstate")))


def test_the_function_is_the_one_the_spec_describes():
    tensors = {"b": ("float32", (2, 2)), "a": ("int64", ()), HEADER: ("uint8", (9,)),
               "\u00e9": ("bool", (0, 3))}
    form = b"a\0I64\0\nb\0F32\0002,2\n\xc3\xa9\0BOOL\0" + b"0,3\n"
    assert _header.table_crc32(tensors) == zlib.crc32(form)
    assert "`E_TABLE_CHECKSUM`" in SPEC_TEXT
