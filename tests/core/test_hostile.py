"""Hostile files and faults (issue 17): each test is one of the audit's findings.

Every file here is valid except for the one fault named; each refusal is asserted by its
code. Memory figures are measured in a child process (resource.getrusage).
"""

import json
import os
import socket
import stat
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from pathlib import Path

import msgpack
import numpy as np
import pytest

import optstate_format as osf
from optstate_format import _header, _io
from optstate_format.cli import main

from crafting import (container, doc_of, edit_doc, globals_file, good_bytes, join, split,
                      with_blob, with_doc)
from helpers import adam_state

ROOT = Path(__file__).resolve().parents[2]


def _code(path):
    with pytest.raises(osf.OptStateError) as e:
        osf.read(path)
    rep = osf.check(path)
    assert not rep.valid and rep.code == e.value.code
    return e.value.code


def _put(tmp_path, raw, name="h.optstate"):
    p = tmp_path / name
    p.write_bytes(raw)
    return p


# --- 2 and 5: the bytes verified are the bytes used; no SIGBUS -----------------------------

def test_read_returns_private_writable_arrays_unaffected_by_rewriting_the_file(tmp_path):
    st = adam_state()
    p = osf.write(st, tmp_path / "a.optstate")
    back = osf.read(p)
    m = back.weight("layer_0/kernel").slots["m"]
    assert m.flags.writeable and m.flags.owndata or m.base is not None
    assert not isinstance(m.base, (bytes, memoryview)) and "mmap" not in repr(type(m.base))
    # another process rewrites the file in place, same size, every data byte changed
    raw = bytearray(p.read_bytes())
    start = 8 + struct.unpack("<Q", raw[:8])[0]
    for i in range(start, len(raw)):
        raw[i] ^= 0xFF
    with open(p, "r+b") as f:
        f.write(raw)
    np.testing.assert_array_equal(m, st.weights[0].slots["m"])
    m[...] = 7.0  # writing the array changes nothing on disk
    assert p.read_bytes() == bytes(raw)


def test_a_rewrite_between_validation_and_reading_is_caught_by_the_checksum(tmp_path,
                                                                             monkeypatch):
    p = osf.write(adam_state(), tmp_path / "a.optstate")
    other = osf.write(adam_state(seed=9), tmp_path / "b.optstate").read_bytes()
    real = _io._Container.read_all

    def rewrite_then_read(self, verify, *rest):
        with open(p, "r+b") as f:  # same layout, other values: only the checksums differ
            f.write(other)
        return real(self, verify, *rest)

    monkeypatch.setattr(_io._Container, "read_all", rewrite_then_read)
    with pytest.raises(osf.IntegrityError) as e:
        osf.read(p)
    assert e.value.code == "E_CHECKSUM" and e.value.key.startswith(("global:", "slot:"))


def test_truncation_while_reading_is_a_clean_error(tmp_path, monkeypatch):
    p = osf.write(adam_state(), tmp_path / "a.optstate")
    real = _io._Container.read_all

    def truncate_then_read(self, verify, *rest):
        os.truncate(p, self.data_start + 40)
        return real(self, verify, *rest)

    monkeypatch.setattr(_io._Container, "read_all", truncate_then_read)
    for verify in (True, False):
        p.write_bytes(osf.write(adam_state(), tmp_path / "src.optstate").read_bytes())
        with pytest.raises(osf.FormatError) as e:
            osf.read(p, verify=verify)
        assert e.value.code == "E_TRUNCATED" and "truncated" in e.value.msg


def test_truncating_the_file_after_read_never_kills_the_process(tmp_path):
    """Under mmap this died with SIGBUS (-7) when an array was touched."""
    p = osf.write(adam_state(n_weights=3), tmp_path / "a.optstate")
    code = textwrap.dedent(f"""
        import os, optstate_format as osf
        st = osf.read({str(p)!r})
        os.truncate({str(p)!r}, 0)
        print(sum(float(a.sum()) for w in st.weights for a in w.slots.values()))
        print(osf.check({str(p)!r}).code)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert out.stdout.split()[-1] == "E_TRUNCATED"


def test_verify_false_skips_only_the_checksums(tmp_path):
    raw = bytearray(good_bytes(tmp_path))
    table, _ = split(bytes(raw))
    start = 8 + struct.unpack("<Q", raw[:8])[0]
    s, _ = table["slot:layer_0/kernel:m"]["data_offsets"]
    raw[start + s] ^= 0x01
    p = _put(tmp_path, bytes(raw))
    assert _code(p) == "E_CHECKSUM"
    back = osf.read(p, verify=False)
    assert back.weight("layer_0/kernel").slots["m"].shape == (2, 3)
    flags = globals_file({"flag": np.array([0, 1, 2], np.uint8).view(np.bool_)})
    with pytest.raises(osf.FormatError) as e:  # BOOL bytes are checked either way
        osf.read(_put(tmp_path, flags, "b.optstate"), verify=False)
    assert e.value.code == "E_BOOL_VALUE"


# --- 4: special files ------------------------------------------------------------------

def _in_thread(fn, timeout=20):
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "blocked: the reader opened something that never answers"
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_named_pipe_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.optstate"
    os.mkfifo(fifo)
    rep = _in_thread(lambda: osf.check(fifo))
    assert rep.code == "E_NOT_FILE" and "named pipe" in rep.message
    with pytest.raises(osf.FormatError) as e:
        _in_thread(lambda: osf.read(fifo))
    assert e.value.code == "E_NOT_FILE"
    assert _in_thread(lambda: main(["inspect", str(fifo)])) == 1


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_pipe_swapped_in_after_stat_is_caught_by_fstat(tmp_path, monkeypatch):
    fifo = tmp_path / "pipe.optstate"
    os.mkfifo(fifo)
    regular = os.stat(__file__)
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: regular if str(p) == str(fifo)
                        else real_stat(p, *a, **k))
    with pytest.raises(osf.FormatError) as e:
        _in_thread(lambda: osf.read(fifo))
    assert e.value.code == "E_NOT_FILE"


def test_folders_devices_and_sockets_are_refused(tmp_path):
    cases = {tmp_path: "a folder"}
    if os.path.exists("/dev/null"):
        cases[Path("/dev/null")] = "a device"
    if hasattr(socket, "AF_UNIX"):
        sock_path = tmp_path / "s.sock"
        srv = socket.socket(socket.AF_UNIX)
        srv.bind(str(sock_path))
        cases[sock_path] = "a socket"
    for path, kind in cases.items():
        rep = _in_thread(lambda: osf.check(path))
        assert (rep.code, kind in rep.message) == ("E_NOT_FILE", True), (path, rep)


# --- 6: memory proportional to real data ----------------------------------------------

# The child's peak is read from /proc/self/status (VmHWM, its own memory's high-water mark).
# resource.getrusage(RUSAGE_SELF).ru_maxrss is not used on Linux: a child created by
# fork+exec starts with its parent's peak (a 10 MB child of an 800 MB parent reports 811 MB),
# which would make every bound below pass trivially.
_PEAK = """
def _peak_kb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
"""


def _peak_rss_of(code, timeout=300):
    """Run ``code`` in a child; return (its stdout's last line, peak RSS growth in MB)."""
    prog = _PEAK + textwrap.dedent("""
        import optstate_format, numpy
        base = _peak_kb()
    """) + textwrap.dedent(code) + textwrap.dedent("""
        print(round((_peak_kb() - base) / 1024))
    """)
    out = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True,
                         timeout=timeout, cwd=ROOT / "tests" / "support")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.split()
    return lines[-2], int(lines[-1])


def _check_code(path):
    return f"""
        import optstate_format as osf
        print(osf.check({str(path)!r}).code)
    """


def test_a_header_document_of_millions_of_empty_maps_is_refused_early(tmp_path):
    raw = good_bytes(tmp_path)
    doc = msgpack.packb(doc_of(raw), use_bin_type=True)
    # the valid document with one more key whose value is an array of 6 million empty maps
    n = 6_000_000
    blob = bytes([doc[0] + 1]) + doc[1:] + msgpack.packb("junk") + b"\xdd" + struct.pack(
        ">I", n) + b"\x80" * n
    p = _put(tmp_path, with_blob(raw, blob))
    code, mb = _peak_rss_of(_check_code(p))
    assert code == "E_LIMIT"
    assert mb < 300, f"{mb} MB for a {len(blob) >> 20} MiB document"


@pytest.mark.parametrize("flood", ["{},", "[],", '"ab",', "1000,"])
def test_a_container_header_flood_is_refused_without_building_it(tmp_path, flood):
    raw = good_bytes(tmp_path)
    table, data = split(raw)
    text = json.dumps(table, sort_keys=True, separators=(",", ":"))
    key = '"slot:layer_0/kernel:m":{'
    n = (24 << 20) // len(flood)  # 24 MiB of tiny values where a shape belongs
    text = text.replace(key, key + '"junk":[' + flood * n + "0],", 1)
    body = text.encode()
    p = _put(tmp_path, struct.pack("<Q", len(body)) + body + data)
    code, mb = _peak_rss_of(_check_code(p))
    assert code == "E_CONTAINER"
    assert mb < 100, f"{mb} MB for a 24 MiB container header"


def test_zero_byte_tensors_are_limited_by_the_tensors_that_hold_data(tmp_path, monkeypatch):
    monkeypatch.setattr(_io, "MAX_EMPTY_TENSORS", 3)
    empty = {f"e{i}": np.zeros((0, 4), np.float32) for i in range(6)}
    held = {f"d{i}": np.ones(2, np.float32) for i in range(2)}
    p = _put(tmp_path, globals_file({**empty, **held}))
    assert _code(p) == "E_LIMIT"  # 6 empty > 3 + 2 holding data
    held["d2"] = np.ones(2, np.float32)
    assert osf.check(_put(tmp_path, globals_file({**empty, **held}))).valid  # 6 <= 3 + 3
    st = osf.OptimizerState(osf.OptimizerInfo("sgd", "SGD"), globals=dict(empty))
    with pytest.raises(osf.FormatError) as e:  # the writer applies the same limit
        osf.write(st, tmp_path / "w.optstate")
    assert e.value.code == "E_LIMIT"


def test_a_sparse_file_declaring_gigabytes_is_refused_without_touching_its_data(tmp_path):
    size = 8 << 30
    table = {"__metadata__": {"optstate.format": "optstate", "optstate.version": "1.0",
                              "optstate.header": "optstate:header"},
             "global:big": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}}
    doc = {"format": "optstate", "version": "1.0"}  # missing fields: refused by validation
    blob = msgpack.packb(doc)
    table["optstate:header"] = {"dtype": "U8", "shape": [len(blob)],
                                "data_offsets": [size, size + len(blob)]}
    table["__metadata__"]["optstate.header_crc32"] = f"{zlib.crc32(blob):08x}"
    head = join(table, b"")
    p = tmp_path / "sparse.optstate"
    with open(p, "wb") as f:
        f.write(head)
        f.seek(len(head) + size)
        f.write(blob)
    assert os.stat(p).st_blocks * 512 < 1 << 20  # 8 GiB declared, nothing on disk
    code, mb = _peak_rss_of(_check_code(p))
    assert code == "E_SCHEMA" and mb < 100, (code, mb)


def test_document_limits_are_counted_while_decoding(tmp_path, monkeypatch):
    raw = good_bytes(tmp_path)
    for name, value in (("MAX_DOC_VALUES", 50), ("MAX_DOC_CONTAINERS", 5)):
        with monkeypatch.context() as m:
            m.setattr(_header, name, value)
            assert _code(_put(tmp_path, raw)) == "E_LIMIT"
    assert osf.check(_put(tmp_path, raw)).valid

    def nest(levels):
        def edit(doc):
            x = 1
            for _ in range(levels):
                x = [x]
            doc["optimizer"]["hyperparameters"]["deep"] = x
        return edit
    # root map = level 1, optimizer 2, hyperparameters 3, then the arrays
    assert osf.check(_put(tmp_path, edit_doc(raw, nest(29)))).valid
    assert _code(_put(tmp_path, edit_doc(raw, nest(30)))) == "E_LIMIT"
    deep = msgpack.packb(doc_of(raw))
    deep = bytes([deep[0] + 1]) + deep[1:] + msgpack.packb("deep") + b"\x91" * 100_000 + b"\xc0"
    assert _code(_put(tmp_path, with_blob(raw, deep))) == "E_LIMIT"


def test_metadata_entries_and_tensor_count_are_limited_while_parsing(tmp_path, monkeypatch):
    raw = good_bytes(tmp_path)
    monkeypatch.setattr(_io, "MAX_METADATA_ENTRIES", 4)
    table, data = split(raw)
    table["__metadata__"]["extra"] = "x"
    assert _code(_put(tmp_path, join(table, data))) == "E_LIMIT"
    monkeypatch.setattr(_io, "MAX_METADATA_ENTRIES", 1024)
    monkeypatch.setattr(_io, "MAX_TENSORS", 4)
    assert _code(_put(tmp_path, raw)) == "E_LIMIT"  # 5 data tensors + the header


# --- 7: zero elements, huge dimensions; check never raises ------------------------------

def test_zero_element_tensor_with_huge_dimensions_is_refused_not_a_numpy_error(tmp_path,
                                                                             capsys):
    raw = good_bytes(tmp_path)
    table, data = split(raw)
    table["global:iterations"]["shape"] = [0, 2 ** 40, 2 ** 40]
    table["global:iterations"]["data_offsets"][1] = table["global:iterations"][
        "data_offsets"][0]
    p = _put(tmp_path, join(table, data))
    assert _code(p) == "E_LIMIT"
    for argv in (["inspect", str(p)], ["inspect", "--json", str(p)], ["check", str(p)],
                 ["diff", str(p), str(p)]):
        assert main(argv) == 1
    assert "Traceback" not in capsys.readouterr().err


def test_check_reports_an_unexpected_error_instead_of_raising(tmp_path, monkeypatch):
    p = _put(tmp_path, good_bytes(tmp_path))

    def broken(*a, **k):
        raise TypeError("simulated reader bug")

    monkeypatch.setattr(_io._Container, "read_all", broken)
    rep = osf.check(p)
    assert not rep.valid and rep.code == "E_FORMAT" and "TypeError" in rep.message
    with pytest.raises(osf.FormatError) as e:  # read(): our error, the cause kept
        osf.read(p)
    assert e.value.code == "E_FORMAT" and isinstance(e.value.__cause__, TypeError)


# --- 8: msgpack ext and bin --------------------------------------------------------------

@pytest.mark.parametrize("value", [msgpack.Timestamp(1, 0), msgpack.ExtType(7, b"ab"), b"bin"],
                         ids=["timestamp", "ext", "bin_value"])
def test_msgpack_ext_and_bin_values_are_refused(tmp_path, value, capsys):
    raw = good_bytes(tmp_path)
    d = doc_of(raw)
    d["optimizer"]["hyperparameters"]["x"] = value
    p = _put(tmp_path, with_doc(raw, d))
    assert _code(p) == "E_HEADER_FORM"
    assert main(["inspect", "--json", str(p)]) == 1
    assert main(["diff", str(p), str(p)]) == 1
    err = capsys.readouterr().err
    assert "E_HEADER_FORM" in err and "TypeError" not in err


def test_msgpack_bin_keys_and_non_string_keys_are_refused(tmp_path):
    raw = good_bytes(tmp_path)
    for key in (b"binkey", 5):
        d = doc_of(raw)
        d["producer"][key] = "x"
        blob = msgpack.packb(d, use_bin_type=True, strict_types=False)
        assert _code(_put(tmp_path, with_blob(raw, blob))) == "E_HEADER_FORM"


# --- 9: field types ----------------------------------------------------------------------

@pytest.mark.parametrize("edit,code", [
    (lambda d: d["optimizer"].__setitem__("wrappers", [1, "x"]), "E_SCHEMA"),
    (lambda d: d["optimizer"].__setitem__("wrappers", [{"config": {}}]), "E_SCHEMA"),
    (lambda d: d.__setitem__("producer", {}), "E_SCHEMA"),
    (lambda d: d["producer"].__setitem__("library", 5), "E_SCHEMA"),
    (lambda d: d["producer"].__setitem__("framework", None), "E_SCHEMA"),
    (lambda d: d["optimizer"].__setitem__("learning_rate", {"kind": "evil"}), "E_SCHEMA"),
    (lambda d: d["optimizer"].__setitem__("learning_rate", {"kind": "constant"}), "E_SCHEMA"),
    (lambda d: d["optimizer"].__setitem__("learning_rate", {"kind": "constant",
                                                            "value": True}), "E_SCHEMA"),
    (lambda d: d["optimizer"].__setitem__("learning_rate", {"kind": "schedule",
                                                            "class_name": "X"}), "E_SCHEMA"),
    (lambda d: d.__setitem__("step", True), "E_SCHEMA"),
    (lambda d: d.__setitem__("step", 1.0), "E_SCHEMA"),
    (lambda d: d["weights"][0]["hints"].__setitem__("layer_class", 3), "E_SCHEMA"),
    (lambda d: d["weights"][0].__setitem__("component", 0), "E_SCHEMA"),
    (lambda d: d["checksums"].__setitem__("global:iterations", -1), "E_SCHEMA"),
    (lambda d: d["checksums"].__setitem__("optstate:header", 0), "E_SCHEMA"),
], ids=["wrappers_not_maps", "wrapper_without_class", "producer_empty", "library_int",
        "framework_nil", "lr_kind_evil", "lr_constant_no_value", "lr_value_bool",
        "lr_schedule_no_config", "step_bool", "step_float", "hint_layer_class_int",
        "component_without_multi", "checksum_negative", "checksum_for_header"])
def test_header_field_types_are_checked(tmp_path, edit, code, capsys):
    p = _put(tmp_path, edit_doc(good_bytes(tmp_path), edit))
    assert _code(p) == code
    assert main(["inspect", str(p)]) == 1
    assert "Traceback" not in capsys.readouterr().err


def test_the_three_learning_rate_forms_and_an_empty_map_are_accepted(tmp_path):
    raw = good_bytes(tmp_path)
    for lr in ({}, {"kind": "constant", "value": 1}, {"kind": "callable", "repr": "<fn>"},
               {"kind": "schedule", "class_name": "ExponentialDecay", "config": {"a": 1}}):
        p = _put(tmp_path, edit_doc(raw, lambda d: d["optimizer"].__setitem__(
            "learning_rate", lr)))
        assert osf.check(p).valid, lr


def test_bool_tensor_bytes_must_be_0_or_1(tmp_path):
    ok = globals_file({"flag": np.array([True, False, True])})
    assert osf.read(_put(tmp_path, ok)).globals["flag"].tolist() == [True, False, True]
    bad = globals_file({"flag": np.array([0, 1, 2], np.uint8).view(np.bool_)})
    assert _code(_put(tmp_path, bad)) == "E_BOOL_VALUE"


def test_a_repeated_msgpack_key_is_refused_not_last_wins(tmp_path):
    raw = good_bytes(tmp_path)
    doc = msgpack.packb(doc_of(raw), use_bin_type=True)
    blob = bytes([doc[0] + 1]) + doc[1:] + msgpack.packb("step") + msgpack.packb(999)
    p = _put(tmp_path, with_blob(raw, blob))
    assert _code(p) == "E_HEADER_FORM"


# --- 10: format and version first ----------------------------------------------------------

def test_a_version_2_file_with_fp8_is_a_version_error(tmp_path):
    table, data = split(good_bytes(tmp_path))
    table["__metadata__"]["optstate.version"] = "2.0"
    table["global:iterations"]["dtype"] = "F8_E4M3"
    table["global:iterations"]["shape"] = [8]
    p = _put(tmp_path, join(table, data))
    assert _code(p) == "E_VERSION"


def test_a_plain_safetensors_fp8_file_is_not_optstate(tmp_path):
    p = _put(tmp_path, container({"w": ("F8_E4M3", [4], b"\x01\x02\x03\x04")},
                                 meta={"format": "pt"}))
    assert _code(p) == "E_NOT_OPTSTATE"
    p = _put(tmp_path, container({"w": ("F8_E4M3", [4], b"\x01\x02\x03\x04")}, meta={}))
    assert _code(p) == "E_NOT_OPTSTATE"


# --- 12: terminal escapes and Unicode normalization ---------------------------------------

def test_inspect_escapes_terminal_control_characters(tmp_path, capsys):
    evil = "Adam\x1b[2J\x1b]0;owned\x07\x9b31m\u202e\nstep          999"
    st = adam_state()
    st.optimizer.class_name = evil
    st.optimizer.hyperparameters["note"] = "\x1b[5m"
    st.metadata = {"x": "\x1b"}
    st.weights[0].path = "layer_0/ker\u202enel"
    p = osf.write(st, tmp_path / "e.optstate")
    assert main(["inspect", str(p)]) == 0
    assert main(["check", str(p)]) == 0
    assert main(["diff", str(p), str(p)]) == 0
    assert main(["inspect", "--json", str(p)]) == 0
    out = capsys.readouterr().out
    for bad in ("\x1b", "\x07", "\x9b", "\u202e"):
        assert bad not in out
    assert "Adam\\x1b[2J\\x1b]0;owned\\x07\\x9b31m\\u202e\\x0astep" in out
    assert "\nstep          999" not in out  # a newline in a name cannot forge a line


def test_paths_equal_after_nfc_are_duplicates(tmp_path):
    st = adam_state(n_weights=2)
    st.weights[0].path = "caf\u00e9/kernel"           # precomposed
    st.weights[1].path = "cafe\u0301/kernel"          # decomposed: prints the same
    st.weights[1].slots = {k: np.zeros((2, 3), np.float32) for k in ("m", "v")}
    st.weights[1].shape = (2, 3)
    with pytest.raises(osf.FormatError) as e:
        osf.write(st, tmp_path / "w.optstate")
    assert e.value.code == "E_DUPLICATE_PATH" and "NFC" in e.value.msg
    raw = edit_doc(good_bytes(tmp_path), lambda d: None)
    d = doc_of(raw)
    d["weights"][0]["path"] = "caf\u00e9"
    d["weights"][1]["path"] = "cafe\u0301"
    d["weights"][1]["shape"] = d["weights"][0]["shape"] = [2, 3]
    table, data = split(raw)
    p = _put(tmp_path, with_doc(join(table, data), d))
    assert _code(p) == "E_DUPLICATE_PATH"


def test_c1_control_characters_are_not_allowed_in_paths():
    from optstate_format._paths import path_problem, sanitize_segment
    assert path_problem("dense\x9b/kernel") and path_problem("dense\x85/kernel")
    assert sanitize_segment("dense\x9b") == "dense_"
    assert path_problem("caf\u00e9/kernel") is None


# --- 13: temp files of killed writers; permissions -----------------------------------------

def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temp_files_of_dead_writers_are_removed_by_the_next_write(tmp_path):
    name = "run.optstate"
    old = time.time() - _io.STALE_TEMP_SECONDS - 60
    dead = _dead_pid()
    stale = tmp_path / f".{name}.{_io._HOST}-{dead}.abc123.optstate.tmp"
    fresh = tmp_path / f".{name}.{_io._HOST}-{dead}.fresh1.optstate.tmp"
    live = tmp_path / f".{name}.{_io._HOST}-{os.getppid()}.live12.optstate.tmp"
    other_host = tmp_path / f".{name}.00000000-{dead}.host12.optstate.tmp"
    other_name = tmp_path / f".other.optstate.{_io._HOST}-{dead}.oth123.optstate.tmp"
    for f in (stale, fresh, live, other_host, other_name):
        f.write_bytes(b"partial")
    for f in (stale, live, other_host, other_name):
        os.utime(f, (old, old))
    osf.write(adam_state(), tmp_path / name)
    left = sorted(f.name for f in tmp_path.iterdir())
    assert stale.name not in left
    assert {fresh.name, live.name, other_host.name, other_name.name, name} == set(left)


def test_a_killed_export_leaves_a_temp_that_the_next_export_removes(tmp_path, monkeypatch):
    dest = tmp_path / "k.optstate"
    code = textwrap.dedent(f"""
        import os, signal, numpy as np, optstate_format as osf
        from optstate_format import LazyTensor
        from helpers import adam_state
        st = adam_state()
        st.weights[1].slots["m"] = LazyTensor((3, 3), "float32",
                                              lambda: os.kill(os.getpid(), signal.SIGKILL))
        osf.write(st, {str(dest)!r})
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "tests" / "support", timeout=60)
    assert out.returncode == -9
    temps = [f for f in tmp_path.iterdir() if f.name.endswith(".optstate.tmp")]
    assert len(temps) == 1 and temps[0].name.startswith(f".k.optstate.{_io._HOST}-")
    monkeypatch.setattr(_io, "STALE_TEMP_SECONDS", 0)
    osf.write(adam_state(), dest)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["k.optstate"]


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
def test_archives_get_a_normal_files_mode_or_keep_the_replaced_ones(tmp_path):
    old = os.umask(0o022)
    try:
        p = osf.write(adam_state(), tmp_path / "a.optstate")
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o644
        os.umask(0o002)
        q = osf.write(adam_state(), tmp_path / "b.optstate")
        assert stat.S_IMODE(os.stat(q).st_mode) == 0o664
        os.chmod(p, 0o640)
        osf.write(adam_state(seed=3), p)
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o640
    finally:
        os.umask(old)


# --- issue 13's `optstate check README.md` ---------------------------------------------------

def test_a_text_file_is_not_an_optstate_or_safetensors_file(capsys):
    assert main(["check", str(ROOT / "README.md")]) == 1
    out = capsys.readouterr().out
    assert "not an optstate or safetensors file" in out
    assert "bytes; the limit" not in out and "E_HEADER_BOUNDS" in out
