"""Reader edges (issue 18): each malformation refused with its own code, each limit
tested with the limit lowered, the parallel checksum path run, every code of spec
section 11 that reading or checking can raise asserted by some test."""

import json
import re
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import optstate_format as osf
from optstate_format import _header, _io

from crafting import doc_of, edit_doc, good_bytes, join, join_text, split
from helpers import adam_state

ROOT = Path(__file__).resolve().parents[2]


def _refused(tmp_path, raw, cls=osf.FormatError):
    p = tmp_path / "edge.optstate"
    p.write_bytes(raw)
    with pytest.raises(cls) as e:
        osf.read(p)
    rep = osf.check(p)
    assert not rep.valid and rep.code == e.value.code
    return e.value


def _ordered(table):
    """Data tensors (and the header) by begin offset."""
    return sorted((v["data_offsets"][0], k) for k, v in table.items() if k != "__metadata__")


def _shift_after(table, first_key, by):
    """Shift every tensor that begins at or after the end of ``first_key`` by ``by`` bytes."""
    end = table[first_key]["data_offsets"][1]
    for _, k in _ordered(table):
        if table[k]["data_offsets"][0] >= end and k != first_key:
            table[k]["data_offsets"] = [o + by for o in table[k]["data_offsets"]]
    return end


def test_a_missing_file_cannot_be_opened(tmp_path):
    with pytest.raises(osf.FormatError) as e:
        osf.read(tmp_path / "missing.optstate")
    assert e.value.code == "E_IO" and "No such file" in e.value.msg
    assert osf.check(tmp_path / "missing.optstate").code == "E_IO"


def test_a_one_byte_gap_between_tensors_is_refused(tmp_path):
    table, data = split(good_bytes(tmp_path))
    first = _ordered(table)[0][1]
    end = _shift_after(table, first, 1)
    e = _refused(tmp_path, join(table, data[:end] + b"\0" + data[end:]))
    assert e.code == "E_OFFSETS" and "gap" in e.msg


def test_a_one_byte_overlap_between_tensors_is_refused(tmp_path):
    table, data = split(good_bytes(tmp_path))
    first = _ordered(table)[0][1]
    end = _shift_after(table, first, -1)
    e = _refused(tmp_path, join(table, data[:end - 1] + data[end:]))
    assert e.code == "E_OFFSETS" and "overlaps" in e.msg


def test_one_trailing_byte_is_refused(tmp_path):
    table, data = split(good_bytes(tmp_path))
    e = _refused(tmp_path, join(table, data + b"\0"))
    assert e.code == "E_OFFSETS" and "trailing" in e.msg


def test_offsets_that_disagree_with_dtype_and_shape_are_refused(tmp_path):
    table, data = split(good_bytes(tmp_path))
    table["global:iterations"]["dtype"] = "I32"  # 4 bytes declared by dtype, 8 by offsets
    assert _refused(tmp_path, join(table, data)).code == "E_OFFSETS"


def test_the_container_header_size_limit(tmp_path, monkeypatch):
    raw = good_bytes(tmp_path)
    n = struct.unpack("<Q", raw[:8])[0]
    monkeypatch.setattr(_io, "MAX_JSON_HEADER", n - 1)
    e = _refused(tmp_path, raw)
    assert e.code == "E_HEADER_BOUNDS" and f"limit is {n - 1}" in e.msg
    monkeypatch.setattr(_io, "MAX_JSON_HEADER", n)
    assert osf.check(tmp_path / "edge.optstate").valid


def test_the_header_document_size_limit(tmp_path, monkeypatch):
    raw = good_bytes(tmp_path)
    size = len(_io.msgpack.packb(doc_of(raw), use_bin_type=True))
    monkeypatch.setattr(_header, "MAX_DOC_BYTES", size - 1)
    e = _refused(tmp_path, raw)
    assert e.code == "E_LIMIT" and f"limit is {size - 1}" in e.msg
    monkeypatch.setattr(_header, "MAX_DOC_BYTES", size)
    assert osf.check(tmp_path / "edge.optstate").valid


def test_the_rank_and_depth_limits(tmp_path, monkeypatch):
    raw = good_bytes(tmp_path)
    monkeypatch.setattr(_header, "MAX_RANK", 1)  # slots are 2-D
    assert _refused(tmp_path, raw).code == "E_LIMIT"
    monkeypatch.setattr(_header, "MAX_RANK", 64)
    table, data = split(raw)
    table["global:iterations"]["shape"] = [1] * 65
    assert _refused(tmp_path, join(table, data)).code == "E_LIMIT"
    monkeypatch.setattr(_header, "MAX_DEPTH", 2)  # root, optimizer, hyperparameters...
    assert _refused(tmp_path, raw).code == "E_LIMIT"


def test_a_tensor_named_twice_in_the_container_header_is_refused(tmp_path):
    table, data = split(good_bytes(tmp_path))
    text = json.dumps(table, sort_keys=True, separators=(",", ":"))
    entry = '"global:iterations":' + json.dumps(table["global:iterations"],
                                                separators=(",", ":"))
    assert entry in text
    text = text.replace(entry, entry + "," + entry)
    e = _refused(tmp_path, join_text(text, data))
    assert e.code == "E_DUPLICATE_KEY" and e.key == "global:iterations"


def test_a_tensor_named_twice_by_the_header_document_is_refused(tmp_path):
    def twice(doc):
        doc["globals"]["again"] = doc["globals"]["iterations"]
    e = _refused(tmp_path, edit_doc(good_bytes(tmp_path), twice))
    assert e.code == "E_DUPLICATE_KEY" and e.key == "global:iterations"


def test_an_unreferenced_tensor_is_refused(tmp_path):
    def forget(doc):
        del doc["globals"]["iterations"]
    e = _refused(tmp_path, edit_doc(good_bytes(tmp_path), forget))
    assert e.code == "E_UNREFERENCED" and e.key == "global:iterations"


@pytest.mark.parametrize("field,value", [("dtype", "float64"), ("shape", [3, 2])])
def test_a_stored_value_that_differs_from_its_entry_is_refused(tmp_path, field, value):
    st = adam_state(n_weights=2, with_values=True)
    st.weights[0].slots = {}  # a weight stored for its value only: no slot rule applies
    raw = good_bytes(tmp_path, st)
    e = _refused(tmp_path, edit_doc(raw, lambda d: d["weights"][0].__setitem__(field, value)))
    assert e.code == "E_VALUE_SHAPE" and e.path == "layer_0/kernel"


def test_the_parallel_checksum_path_names_the_damaged_tensor(tmp_path, monkeypatch):
    raw = bytearray(good_bytes(tmp_path, adam_state(n_weights=4)))
    table, _ = split(bytes(raw))
    start = 8 + struct.unpack("<Q", raw[:8])[0]
    key = "slot:layer_2/kernel:v"
    s, e = table[key]["data_offsets"]
    raw[start + s + (e - s) // 2] ^= 0x20
    p = tmp_path / "par.optstate"
    p.write_bytes(bytes(raw))
    pools = []

    class Counted(ThreadPoolExecutor):
        def __init__(self, *a, **k):
            pools.append(k.get("max_workers"))
            super().__init__(*a, **k)

    monkeypatch.setattr(_io, "ThreadPoolExecutor", Counted)
    monkeypatch.setattr(_io.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(_io, "_PARALLEL_VERIFY_BYTES", 0)
    monkeypatch.setattr(_io, "_SMALL_TENSOR", 0)  # a job per tensor (one job runs inline)
    with pytest.raises(osf.IntegrityError) as err:
        osf.read(p)
    assert err.value.code == "E_CHECKSUM" and err.value.key == key and pools == [4]
    raw[start + s + (e - s) // 2] ^= 0x20  # undamaged: the parallel path returns every value
    p.write_bytes(bytes(raw))
    back = osf.read(p)
    ref = adam_state(n_weights=4)
    for w in ref.weights:
        for k, arr in w.slots.items():
            np.testing.assert_array_equal(back.weight(w.path).slots[k], arr)
    assert pools == [4, 4]


def _reading_codes():
    spec = (ROOT / "spec" / "SPEC.md").read_text()
    section = spec[spec.index("## 11."):]
    reading = section[:section.index("Importing (")]
    return re.findall(r"^\| `(E_[A-Z_]+)` \|", reading, re.M)


def test_every_reading_code_of_spec_section_11_is_asserted_by_a_test():
    codes = _reading_codes()
    assert len(codes) >= 20 and "E_NOT_FILE" in codes and "E_BOOL_VALUE" in codes
    texts = [p.read_text() for p in (ROOT / "tests").rglob("test_*.py")]
    texts += [p.read_text() for p in (ROOT / "spec" / "conformance" / "invalid").glob(
        "*.expected.json")]  # each asserted by test_conformance.py
    asserted = re.compile(r'(==|code["\]]?\s*[,:)]|\(|,)\s*"({})"'.format("|".join(codes)))
    found = {m.group(2) for t in texts for m in asserted.finditer(t)}
    found |= {json.loads(t)["code"] for t in texts if t.lstrip().startswith("{")}
    missing = [c for c in codes if c not in found]
    assert not missing, f"no test asserts {missing}"


def test_threaded_jobs_raise_the_first_failure_in_order_and_cancel_the_rest(monkeypatch):
    """The reader's threads fail as one thread would (the first failing tensor in file order),
    and an error or interrupt does not wait for the rest of a large read."""
    import threading
    import time as _time
    monkeypatch.setattr(_io.os, "cpu_count", lambda: 4)
    ran, lock = [], threading.Lock()

    def fn(i):
        with lock:
            ran.append(i)
        if i == 2:
            _time.sleep(0.05)  # fails after item 5 has
            raise ValueError("two")
        if i == 5:
            raise ValueError("five")
        _time.sleep(0.01)
        return i
    with pytest.raises(ValueError, match="two"):
        _io.run_jobs(fn, list(range(400)), True)
    assert len(ran) < 400  # the rest was cancelled, not read
    assert _io.run_jobs(lambda i: i * 2, list(range(9)), True) == [i * 2 for i in range(9)]
    assert _io.run_jobs(lambda i: i, [7], True) == [7]
