"""Damaged and hostile files: only our own errors escape, never a partial or wrong load."""

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import optstate_format as osf

from helpers import adam_state

CASES = {"fuzz": 0}


@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    return osf.write(adam_state(n_weights=2, with_values=True),
                     tmp_path_factory.mktemp("good") / "good.optstate")


def _data_start(raw):
    return 8 + struct.unpack("<Q", raw[:8])[0]


def test_truncation_at_every_byte_is_a_format_error(good_file, tmp_path):
    raw = good_file.read_bytes()
    p = tmp_path / "t.optstate"
    for cut in range(len(raw)):
        p.write_bytes(raw[:cut])
        with pytest.raises(osf.FormatError):
            osf.read(p)


def test_flipped_bit_in_tensor_data_names_the_tensor(good_file, tmp_path):
    raw = good_file.read_bytes()
    start = _data_start(raw)
    state = osf.read(good_file, verify=False)
    p = tmp_path / "f.optstate"
    import json
    table = json.loads(raw[8:start])
    header_span = table["optstate:header"]["data_offsets"]
    for key, info in table.items():
        if key in ("__metadata__", "optstate:header"):
            continue
        s, e = info["data_offsets"]
        for pos in range(s, e, max(1, (e - s) // 7)):
            for bit in (0, 7):
                bad = bytearray(raw)
                bad[start + pos] ^= 1 << bit
                p.write_bytes(bytes(bad))
                with pytest.raises(osf.IntegrityError) as err:
                    osf.read(p)
                assert err.value.key == key and err.value.code == "E_CHECKSUM"
    assert header_span[1] == len(raw) - start and state.step == 4


def test_flipped_bit_anywhere_in_the_headers_is_refused(good_file, tmp_path):
    raw = good_file.read_bytes()
    start = _data_start(raw)
    import json
    table = json.loads(raw[8:start])
    hs, he = table["optstate:header"]["data_offsets"]
    positions = list(range(0, start)) + list(range(start + hs, start + he))
    p = tmp_path / "h.optstate"
    for pos in positions:
        bad = bytearray(raw)
        bad[pos] ^= 0x04
        p.write_bytes(bytes(bad))
        try:
            osf.read(p)
        except (osf.FormatError, osf.IntegrityError):
            continue
        # A flip inside JSON padding/whitespace or a no-op key change may leave a valid file;
        # then every value read must still be the original.
        back = osf.read(p)
        ref = osf.read(good_file)
        for w in ref.weights:
            for k, arr in w.slots.items():
                np.testing.assert_array_equal(back.weight(w.path).slots[k], arr)


def test_header_declaring_2_pow_60_bytes_is_refused_before_allocation(tmp_path):
    p = tmp_path / "huge.optstate"
    p.write_bytes(struct.pack("<Q", 2 ** 60) + b"{}")
    with pytest.raises(osf.FormatError) as e:
        osf.read(p)
    assert e.value.code == "E_HEADER_BOUNDS"


def test_tensor_declaring_2_pow_60_elements_is_refused(tmp_path):
    import json
    body = json.dumps({"__metadata__": {"optstate.format": "optstate", "optstate.version": "1.0"},
                       "x": {"dtype": "F32", "shape": [2 ** 30, 2 ** 30],
                             "data_offsets": [0, 2 ** 62]}}).encode()
    p = tmp_path / "big.optstate"
    p.write_bytes(struct.pack("<Q", len(body)) + body)
    with pytest.raises(osf.FormatError) as e:
        osf.read(p)
    assert e.value.code == "E_LIMIT"  # 2^60 elements: over the 2^53 limit of spec 9.3


def _expect_only_our_errors(path):
    CASES["fuzz"] += 1
    try:
        osf.read(path)
    except osf.OptStateError:
        return
    rep = osf.check(path)
    assert rep.valid


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def _fuzz_mutations(good_file, tmp_path, data):
    raw = bytearray(good_file.read_bytes())
    n_mut = data.draw(st.integers(1, 8))
    for _ in range(n_mut):
        kind = data.draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        pos = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if kind == "flip" and raw:
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "set" and raw:
            raw[pos] = data.draw(st.integers(0, 255))
        elif kind == "cut":
            raw = raw[:pos]
        elif kind == "insert":
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del raw[pos:pos + data.draw(st.integers(1, 16))]
    p = tmp_path / "fz.optstate"
    p.write_bytes(bytes(raw))
    _expect_only_our_errors(p)


@settings(max_examples=300, deadline=None)
@given(blob=st.binary(max_size=2048), prefix=st.integers(0, 4096))
def _fuzz_random(tmp_path, blob, prefix):
    p = tmp_path / "rnd.optstate"
    p.write_bytes(struct.pack("<Q", prefix) + blob)
    _expect_only_our_errors(p)


def _run_counted(capsys, what, fn, *args):
    start = CASES["fuzz"]
    fn(*args)
    n = CASES["fuzz"] - start
    with capsys.disabled():
        print(f"\n[fuzz] {n} {what} read; only OptStateError escaped")
    return n


def test_fuzz_mutated_valid_files_raise_only_our_errors(good_file, tmp_path, capsys):
    assert _run_counted(capsys, "mutated valid files", _fuzz_mutations, good_file,
                        tmp_path) >= 300


def test_fuzz_random_bytes_raise_only_our_errors(tmp_path, capsys):
    assert _run_counted(capsys, "random inputs", _fuzz_random, tmp_path) >= 300
