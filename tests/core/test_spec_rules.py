"""Issue 14 points 6, 7, 8 and 10: each normative sentence settled in spec 1.1, asserted on
real files written by the writer or crafted from them."""

import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest

import optstate_format as osf

from crafting import HEADER, good_bytes, join, split
from helpers import adam_state

ROOT = Path(__file__).resolve().parents[2]
VALID = ROOT / "spec" / "conformance" / "valid"
# Written by the reference writer (two are crafted by hand, as spec 9.1 says).
CRAFTED = {"newer_minor_version", "optional_fields_absent"}
WRITTEN = sorted(p for p in VALID.glob("*.optstate") if p.stem not in CRAFTED)


def test_the_crafted_vectors_are_the_ones_section_9_1_names():
    text = (ROOT / "spec" / "SPEC.md").read_text()
    section = text[text.index("9.1. **Determinism.**"):text.index("9.2. **Checksums.**")]
    named = re.search(r"\(except the hand-made ([^)]*)\)", section).group(1)
    assert set(re.findall(r"`(\w+)`", named)) == CRAFTED


def _padding_rule(raw):
    """N as spec 9.1 computes it from the placeholder JSON."""
    n = struct.unpack("<Q", raw[:8])[0]
    table = json.loads(raw[8:8 + n])
    begin = table[HEADER]["data_offsets"][0]
    table[HEADER] = {"data_offsets": [begin, begin + 10 ** 15], "dtype": "U8",
                     "shape": [10 ** 15]}
    table["__metadata__"]["optstate.header_crc32"] = "ffffffff"
    length = len(json.dumps(table, sort_keys=True, separators=(",", ":")))
    return n, length + (-(8 + length)) % 64


@pytest.mark.parametrize("path", WRITTEN, ids=lambda p: p.stem)
def test_the_padding_of_every_written_vector_follows_section_9_1(path):
    n, expected = _padding_rule(path.read_bytes())
    assert n == expected and (8 + n) % 64 == 0


def test_the_padding_of_minimal_sgd_is_the_one_section_9_1_quotes():
    raw = (VALID / "minimal_sgd.optstate").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    text = raw[8:8 + n]
    assert (n, len(text.rstrip(b" ")), n - len(text.rstrip(b" "))) == (440, 363, 77)
    assert _padding_rule(raw) == (440, 440)


def test_a_non_ascii_path_is_escaped_and_still_padded_by_the_rule(tmp_path):
    st = adam_state(n_weights=1)
    st.weights[0].path = "caf\u00e9/\U0001d4b3/kernel"
    raw = osf.write(st, tmp_path / "u.optstate", fsync=False).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    assert raw[8:8 + n].isascii() and b"\\u00e9" in raw[8:8 + n]
    assert b"\\ud835\\udcb3" in raw[8:8 + n]  # a surrogate pair beyond U+FFFF
    assert _padding_rule(raw)[1] == n


def test_unknown_algorithm_and_unknown_slot_names_are_read(tmp_path):
    """Spec 10.1a: rule `any`, no E_SLOT_SHAPE, the file is valid."""
    st = adam_state(n_weights=1)
    st.weights[0].slots["zeta"] = np.zeros((7,), np.float32)  # adam has no zeta: rule any
    p = osf.write(st, tmp_path / "a.optstate", fsync=False)
    assert osf.check(p).valid
    assert osf.read(p).weights[0].slots["zeta"].shape == (7,)
    st = adam_state(n_weights=1)
    st.optimizer.algorithm = "lion_2030"  # not in the registry, not generic
    st.weights[0].slots = {"m": np.zeros((11,), np.float32)}
    p = osf.write(st, tmp_path / "b.optstate", fsync=False)
    assert osf.check(p).valid and osf.read(p).optimizer.algorithm == "lion_2030"


def test_a_known_slot_of_a_known_algorithm_keeps_its_rule(tmp_path):
    st = adam_state(n_weights=1)
    st.weights[0].slots["m"] = np.zeros((7,), np.float32)
    with pytest.raises(osf.FormatError) as e:
        osf.write(st, tmp_path / "c.optstate", fsync=False)
    assert e.value.code == "E_SLOT_SHAPE"


def test_a_dtype_outside_section_6_is_refused_in_a_newer_minor_too(tmp_path):
    """Spec 10.1: the dtype table is closed within a major."""
    raw = good_bytes(tmp_path)
    table, data = split(raw)
    table["__metadata__"]["optstate.version"] = "1.9"
    key = "global:iterations"
    table[key]["dtype"] = "F8_E4M3"
    table[key]["shape"] = [8]
    p = tmp_path / "fp8.optstate"
    p.write_bytes(join(table, data))
    with pytest.raises(osf.FormatError) as e:
        osf.read(p)
    assert e.value.code == "E_DTYPE"
