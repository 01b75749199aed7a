"""Damaged and hostile files: only our own errors escape, never a partial or wrong load."""

import contextlib
import io
import json
import os
import struct
from pathlib import Path
from unittest import mock

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import optstate_format as osf
from optstate_format import _io
from optstate_format.cli import main as cli_main

from crafting import doc_of, good_bytes, join_text, split, with_blob
from helpers import adam_state

CASES = {"fuzz": 0, "foreign": 0}


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


def _foreign(what, error):
    CASES["foreign"] += 1
    raise AssertionError(f"{what}: a foreign exception escaped as {error!r}") from error


def _expect_only_our_errors(path, cli=False):
    """read, check (and with ``cli`` the CLI's inspect --json and diff) on ``path``: only our
    own errors may come out, and none of them an E_FORMAT (a wrapped foreign exception)."""
    CASES["fuzz"] += 1
    try:
        osf.read(path)
    except osf.OptStateError as e:
        if e.code == "E_FORMAT":
            _foreign("read", e.__cause__ or e)
        error = e
    except Exception as e:  # noqa: BLE001 - counted, then failed
        _foreign("read", e)
    else:
        error = None
    try:
        rep = osf.check(path)
    except Exception as e:  # noqa: BLE001
        _foreign("check", e)
    if rep.code == "E_FORMAT":
        _foreign("check", RuntimeError(rep.message))
    assert rep.valid == (error is None) and rep.code == getattr(error, "code", None)
    if cli:
        for argv in (["inspect", "--json", str(path)], ["inspect", str(path)],
                     ["diff", str(path), str(path)]):
            out, err = io.StringIO(), io.StringIO()
            try:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    code = cli_main(argv)
            except Exception as e:  # noqa: BLE001
                _foreign(" ".join(argv[:2]), e)
            assert code == (0 if error is None else 1), (argv, err.getvalue())


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


# --- structure-aware: the audit's classes of input (issue 17) ------------------------------

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2 ** 63, 2 ** 64 - 1), st.floats(),
    st.text(max_size=12), st.sampled_from(["\x1b[2J", "\u202e", "caf\u00e9", "e\u0301", "",
                                           "constant", "schedule", "callable", "multi"]))
_hostile_scalars = st.one_of(
    _scalars, st.binary(max_size=8),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8)),
    st.builds(msgpack.Timestamp, st.integers(0, 2 ** 32), st.integers(0, 999_999_999)))
_values = st.recursive(_hostile_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5),
    st.dictionaries(st.one_of(st.text(max_size=10), st.binary(max_size=4)), inner,
                    max_size=5)), max_leaves=20)
# paths into a valid document where a hostile value is put
_SPOTS = [(), ("format",), ("version",), ("producer",), ("producer", "library"),
          ("optimizer",), ("optimizer", "algorithm"), ("optimizer", "class_name"),
          ("optimizer", "learning_rate"), ("optimizer", "learning_rate", "kind"),
          ("optimizer", "learning_rate", "value"), ("optimizer", "wrappers"),
          ("optimizer", "components"), ("optimizer", "hyperparameters", "x"), ("step",),
          ("globals",), ("globals", "iterations"), ("weights",), ("weights", 0),
          ("weights", 0, "path"), ("weights", 0, "shape"), ("weights", 0, "shape", 0),
          ("weights", 0, "dtype"), ("weights", 0, "trainable"), ("weights", 0, "hints"),
          ("weights", 0, "hints", "name"), ("weights", 0, "slots"),
          ("weights", 0, "slots", "m"), ("weights", 0, "value"), ("weights", 0, "component"),
          ("checksum",), ("checksums",), ("checksums", "global:iterations"), ("metadata",),
          ("metadata", "k")]


def _put_at(doc, spot, value):
    if not spot:
        return value
    try:
        obj = doc
        for k in spot[:-1]:
            obj = obj[k]
        obj[spot[-1]] = value
    except (KeyError, IndexError, TypeError):  # an earlier edit removed the spot
        pass
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def _fuzz_hostile_documents(base, tmp_path, data):
    """Valid containers whose header document holds hostile values or msgpack forms."""
    doc = doc_of(base)
    for _ in range(data.draw(st.integers(1, 3))):
        doc = _put_at(doc, data.draw(st.sampled_from(_SPOTS)) if isinstance(doc, dict) else (),
                      data.draw(_values))
    blob = msgpack.packb(doc, use_bin_type=True, strict_types=False)
    tail = data.draw(st.sampled_from([b"", b"\xc0", b"\xa4step\x07",  # extra, repeated key
                                      b"\xdd\xff\xff\xff\xff",          # huge declared array
                                      b"\x91" * 64 + b"\xc0", b"\xdf\x00\x10\x00\x00"]))
    if tail and blob[:1] and 0x80 <= blob[0] < 0x8f and tail.startswith(b"\xa4"):
        blob = bytes([blob[0] + 1]) + blob[1:] + tail
    else:
        blob += tail
    p = tmp_path / "doc.optstate"
    p.write_bytes(with_blob(base, blob))
    _expect_only_our_errors(p, cli=data.draw(st.booleans()))


_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(
        allow_nan=False), st.text(max_size=8), st.sampled_from(["F8_E4M3", "BOOL", "U8"])),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def _fuzz_hostile_tables(base, tmp_path, data):
    """Container headers with hostile members, keys, dtypes, shapes, offsets and metadata."""
    table, blob = split(base)
    keys = sorted(k for k in table if k != "__metadata__")
    for _ in range(data.draw(st.integers(1, 3))):
        kind = data.draw(st.sampled_from(["member", "extra", "dtype", "shape", "offsets",
                                          "meta", "drop", "duplicate", "version", "pad"]))
        key = data.draw(st.sampled_from(keys))
        entry = table.get(key) if isinstance(table.get(key), dict) else None
        if kind == "member" and entry is not None:
            entry[data.draw(st.sampled_from(["dtype", "shape", "data_offsets"]))] = \
                data.draw(_json_values)
        elif kind == "extra" and entry is not None:
            entry[data.draw(st.text(max_size=6))] = data.draw(_json_values)
        elif kind == "dtype" and entry is not None:
            entry["dtype"] = data.draw(st.sampled_from(
                ["F8_E4M3", "F8_E5M2", "BOOL", "U8", "I64", "F64", "C64", "", "f32"]))
        elif kind == "shape" and entry is not None:
            entry["shape"] = data.draw(st.lists(st.sampled_from(
                [0, 1, 2, 3, 2 ** 20, 2 ** 40, 2 ** 53, 2 ** 64]), max_size=70))
        elif kind == "offsets" and entry is not None:
            entry["data_offsets"] = data.draw(st.lists(st.integers(-1, len(blob) + 2),
                                                       min_size=1, max_size=3))
        elif kind == "meta":
            table["__metadata__"][data.draw(st.sampled_from(
                ["optstate.format", "optstate.version", "optstate.header",
                 "optstate.header_crc32", "x"]))] = data.draw(_json_values)
        elif kind == "drop":
            table.pop(key, None)
        elif kind == "version":
            table["__metadata__"]["optstate.version"] = data.draw(st.sampled_from(
                ["2.0", "1.1", "1.0.0", "01.0", "0.9", "1", ""]))
    text = json.dumps(table, sort_keys=True)
    if data.draw(st.booleans()):
        entry = '"global:iterations": ' + json.dumps(table.get("global:iterations"))
        text = text.replace(entry, entry + ", " + entry)  # a key named twice
    p = tmp_path / "table.optstate"
    p.write_bytes(join_text(text, blob))
    _expect_only_our_errors(p, cli=data.draw(st.booleans()))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def _fuzz_truncation_during_read(base, tmp_path, data):
    """The file shrinks (another process truncates it) after validation, while tensors are
    read: E_TRUNCATED or a correct read, never a crash."""
    p = tmp_path / "shrinking.optstate"
    p.write_bytes(base)
    cut = data.draw(st.integers(0, len(base)))
    table, _ = split(base)
    needed = _data_start(base) + max(v["data_offsets"][1] for k, v in table.items()
                                     if k not in ("__metadata__", "optstate:header"))
    real = _io._Container.read_all

    def truncate_then_read(self, verify, *rest):
        os.truncate(p, cut)
        return real(self, verify, *rest)

    with mock.patch.object(_io._Container, "read_all", truncate_then_read):
        CASES["fuzz"] += 1
        try:
            state = osf.read(p, verify=data.draw(st.booleans()))
        except osf.OptStateError as e:
            if e.code == "E_FORMAT":
                _foreign("read", e.__cause__ or e)
            assert e.code == "E_TRUNCATED" and cut < needed, (cut, e)
        else:  # the header document was read before the cut: the tensors are all there
            assert cut >= needed and state.step == 4


def test_fuzz_special_files_are_refused_without_blocking(tmp_path, capsys):
    paths = [tmp_path, tmp_path / "missing"]
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo")
        paths.append(tmp_path / "fifo")
    paths += [p for p in (Path("/dev/null"), Path("/dev/zero"), Path("/dev/urandom"))
              if p.exists()]
    if os.path.exists("/dev/stdin"):
        paths.append(Path("/dev/stdin"))
    for p in paths:
        _expect_only_our_errors(p)
        assert osf.check(p).code in ("E_NOT_FILE", "E_IO"), p
    with capsys.disabled():
        print(f"\n[fuzz] {len(paths)} special files refused without blocking")


def _run_counted(capsys, what, fn, *args):
    start, foreign = CASES["fuzz"], CASES["foreign"]
    fn(*args)
    n = CASES["fuzz"] - start
    with capsys.disabled():
        print(f"\n[fuzz] {n} cases ({what}); {CASES['foreign'] - foreign} foreign "
              "exceptions; only OptStateError escaped")
    return n


def test_fuzz_mutated_valid_files_raise_only_our_errors(good_file, tmp_path, capsys):
    assert _run_counted(capsys, "mutated valid files", _fuzz_mutations, good_file,
                        tmp_path) >= 300


def test_fuzz_random_bytes_raise_only_our_errors(tmp_path, capsys):
    assert _run_counted(capsys, "random inputs", _fuzz_random, tmp_path) >= 300


@pytest.fixture(scope="module")
def base_bytes(tmp_path_factory):
    return good_bytes(tmp_path_factory.mktemp("base"), adam_state(n_weights=2, with_values=True))


def test_fuzz_hostile_header_documents_raise_only_our_errors(base_bytes, tmp_path, capsys):
    assert _run_counted(capsys, "hostile header documents", _fuzz_hostile_documents,
                        base_bytes, tmp_path) >= 300


def test_fuzz_hostile_container_tables_raise_only_our_errors(base_bytes, tmp_path, capsys):
    assert _run_counted(capsys, "hostile container tables", _fuzz_hostile_tables, base_bytes,
                        tmp_path) >= 300


def test_fuzz_truncation_during_read_is_a_clean_error(base_bytes, tmp_path, capsys):
    assert _run_counted(capsys, "files truncated while tensors are read",
                        _fuzz_truncation_during_read, base_bytes, tmp_path) >= 200
