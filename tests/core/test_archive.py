"""Sharded archives (spec section 14): a folder of safetensors shards and an index."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest

import optstate_format as osf
from optstate_format import _archive, _io
from optstate_format._check import summarize
from optstate_format.cli import main

from helpers import adam_state

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from archive_writer import SHARD, state as big_state  # noqa: E402

INDEX = _archive.INDEX_NAME


def _shards(path):
    return sorted(n for n in os.listdir(path) if n.startswith("shard-"))


def _assert_same_state(a, b):
    """Equal summaries and equal arrays; ``b`` may be the in-memory state (no library in its
    producer yet)."""
    sa, sb = summarize(a), summarize(b)
    if "library" not in b.producer:
        sa["producer"] = {k: v for k, v in sa["producer"].items() if not k.startswith("library")}
    assert sa == sb
    for wa, wb in zip(a.weights, b.weights):
        assert wa.path == wb.path and sorted(wa.slots) == sorted(wb.slots)
        for k in wa.slots:
            assert wa.slots[k].dtype == wb.slots[k].dtype
            np.testing.assert_array_equal(wa.slots[k], wb.slots[k])
        if wa.value is not None or wb.value is not None:
            np.testing.assert_array_equal(wa.value, wb.value)
    for k in a.globals:
        np.testing.assert_array_equal(a.globals[k], b.globals[k])


def _edit_index(path, edit):
    """Rewrite the index of ``path`` with ``edit(doc)`` applied (crc32 made right again)."""
    arch = _archive.Archive(path, shards=False)
    arch.close()
    doc = arch.doc
    edit(doc)
    (Path(path) / INDEX).unlink()
    tmp = _archive._write_temp(Path(path), INDEX, 0o644, False, _archive._fill_index(doc))
    os.replace(tmp, Path(path) / INDEX)


# --- round trip --------------------------------------------------------------------------

def test_archive_reads_to_the_same_state_as_the_single_file(tmp_path):
    st = adam_state(n_weights=5, with_values=True)
    one = osf.write(st, tmp_path / "one.optstate")
    arc = osf.write(st, tmp_path / "arc.optstate", max_shard_size=64)
    assert arc.is_dir() and len(_shards(arc)) > 3
    a, b = osf.read(one), osf.read(arc)
    _assert_same_state(a, b)
    # the values are the state's, not only equal between the two
    np.testing.assert_array_equal(b.weight("layer_3/kernel").slots["m"],
                                  st.weight("layer_3/kernel").slots["m"])
    assert int(b.globals["iterations"]) == 4
    ha, hb = osf.read_header(one), osf.read_header(arc)
    assert set(hb) - set(ha) == {"archive"}
    hb.pop("archive")
    assert ha == hb
    rep = osf.check(arc)
    assert rep.valid and rep.tensors == 5 * 3 + 1, rep


def test_a_tensor_larger_than_the_shard_size_gets_a_shard_of_its_own(tmp_path):
    st = adam_state(n_weights=2)
    st.weights.append(osf.WeightEntry("big/kernel", (64, 64), "float32", slots={
        "m": np.arange(64 * 64, dtype=np.float32).reshape(64, 64),
        "v": np.ones((64, 64), np.float32)}))
    arc = osf.write(st, tmp_path / "a", max_shard_size=1000)
    where = osf.read_header(arc)["archive"]["shards"]
    big = {where["slot:big/kernel:m"], where["slot:big/kernel:v"]}
    assert len(big) == 2
    for name in big:
        assert [k for k, v in where.items() if v == name] in (
            ["slot:big/kernel:m"], ["slot:big/kernel:v"])
    got = osf.read(arc).weight("big/kernel").slots["m"]
    assert got[63, 63] == 64 * 64 - 1 and got.shape == (64, 64)
    # and one shard holds everything when it fits
    one = osf.write(st, tmp_path / "b", max_shard_size=10 ** 9)
    assert len(_shards(one)) == 1
    _assert_same_state(osf.read(one), osf.read(arc))


def test_every_shard_is_a_plain_safetensors_file_with_its_own_crc32s(tmp_path):
    st = adam_state(n_weights=4)
    arc = osf.write(st, tmp_path / "a", max_shard_size=100)
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    seen = {}
    for name in _shards(arc):
        tensors = safetensors_numpy.load_file(str(arc / name))
        doc = msgpack.unpackb(tensors.pop("optstate:header").tobytes())
        assert doc["format"] == "optstate-shard" and set(doc["checksums"]) == set(tensors)
        for key, arr in tensors.items():
            assert _io.crc32(arr.tobytes()) == doc["checksums"][key]
            seen[key] = arr
    np.testing.assert_array_equal(seen["slot:layer_2/kernel:v"],
                                  st.weight("layer_2/kernel").slots["v"])
    index = safetensors_numpy.load_file(str(arc / INDEX))
    assert list(index) == ["optstate:header"]


def test_rewriting_an_archive_replaces_its_generation_and_removes_the_old_shards(tmp_path):
    arc = tmp_path / "a"
    osf.write(adam_state(seed=1), arc, max_shard_size=64)
    old = _shards(arc)
    osf.write(adam_state(seed=2, step=9), arc, max_shard_size=64)
    new = _shards(arc)
    assert not set(old) & set(new) and len(new) == len(old)
    got = osf.read(arc)
    assert got.step == 9
    np.testing.assert_array_equal(got.weight("layer_0/kernel").slots["m"],
                                  adam_state(seed=2).weight("layer_0/kernel").slots["m"])


def test_unknown_files_are_ignored_and_old_orphans_cleaned(tmp_path):
    arc = osf.write(adam_state(), tmp_path / "a", max_shard_size=64)
    (arc / "README.txt").write_text("notes")
    orphan = arc / _archive.shard_name("ab" * 8, 1, 1)
    orphan.write_bytes(b"junk from a killed export")
    fresh = arc / _archive.shard_name("cd" * 8, 1, 1)
    fresh.write_bytes(b"a live writer's shard")
    _assert_same_state(osf.read(arc), adam_state())
    old = time.time() - _io.STALE_TEMP_SECONDS - 10
    os.utime(orphan, (old, old))
    osf.write(adam_state(step=5), arc, max_shard_size=64)
    names = set(os.listdir(arc))
    assert "README.txt" in names and fresh.name in names and orphan.name not in names
    assert osf.read(arc).step == 5


# --- what the reader refuses -------------------------------------------------------------

def _archive3(tmp_path):
    return osf.write(adam_state(n_weights=3), tmp_path / "a", max_shard_size=64)


def test_a_missing_shard_is_named_with_a_tensor_it_holds(tmp_path):
    arc = _archive3(tmp_path)
    where = osf.read_header(arc)["archive"]["shards"]
    name = where["slot:layer_1/kernel:m"]
    (arc / name).unlink()
    with pytest.raises(osf.FormatError) as e:
        osf.read(arc)
    assert e.value.code == "E_ARCHIVE_MISSING"
    assert name in str(e.value) and "slot:layer_1/kernel:" in str(e.value)
    assert osf.check(arc).code == "E_ARCHIVE_MISSING"


def test_a_damaged_shard_is_an_integrity_error_naming_the_tensor(tmp_path):
    arc = _archive3(tmp_path)
    where = osf.read_header(arc)["archive"]["shards"]
    name = where["slot:layer_2/kernel:v"]
    part = _archive._Part(_archive._Member(None, str(arc), name, "?"), "optstate-shard")
    _, _, start, _ = part.tensors["slot:layer_2/kernel:v"]
    raw = bytearray((arc / name).read_bytes())
    raw[part.data_start + start] ^= 0x40
    (arc / name).write_bytes(bytes(raw))
    with pytest.raises(osf.IntegrityError) as e:
        osf.read(arc)
    assert e.value.code == "E_CHECKSUM" and e.value.key == "slot:layer_2/kernel:v"
    assert name in str(e.value)
    assert osf.read(arc, verify=False).weight("layer_2/kernel").slots["v"].shape == (4, 3)
    rep = osf.check(arc)
    assert (rep.valid, rep.code) == (False, "E_CHECKSUM")


def test_a_truncated_or_grown_shard_is_refused_before_its_bytes_are_read(tmp_path):
    arc = _archive3(tmp_path)
    name = _shards(arc)[0]
    raw = (arc / name).read_bytes()
    (arc / name).write_bytes(raw[:-3])
    assert osf.check(arc).code == "E_TRUNCATED"
    (arc / name).write_bytes(raw + b"xx")
    assert osf.check(arc).code == "E_ARCHIVE_MISMATCH"


def test_a_shard_of_another_export_is_a_mismatch(tmp_path):
    arc = _archive3(tmp_path)
    other = osf.write(adam_state(n_weights=3, seed=7), tmp_path / "b", max_shard_size=64)
    for a, b in zip(_shards(arc), _shards(other)):
        shutil.copyfile(other / b, arc / a)
    rep = osf.check(arc)
    assert rep.code == "E_ARCHIVE_MISMATCH", rep
    # and two shards of one archive swapped
    arc2 = osf.write(adam_state(n_weights=3), tmp_path / "c", max_shard_size=64)
    s = _shards(arc2)
    os.rename(arc2 / s[1], tmp_path / "x")
    os.rename(arc2 / s[2], arc2 / s[1])
    os.rename(tmp_path / "x", arc2 / s[2])
    assert osf.check(arc2).code in ("E_ARCHIVE_MISMATCH", "E_TRUNCATED")


@pytest.mark.parametrize("bad", ["../escape.safetensors", "/etc/passwd", "sub/shard.safetensors",
                                 ".hidden", "..", "a\\b", INDEX, "x" * 256])
def test_shard_names_that_could_leave_the_folder_are_refused(tmp_path, bad):
    arc = _archive3(tmp_path)
    victim = _shards(arc)[0]

    def edit(doc):
        files = doc["archive"]["files"]
        files[bad] = files.pop(victim)
        doc["archive"]["shards"] = {k: (bad if v == victim else v)
                                    for k, v in doc["archive"]["shards"].items()}
    _edit_index(arc, edit)
    (tmp_path / "escape.safetensors").write_bytes((arc / victim).read_bytes())
    with pytest.raises(osf.FormatError) as e:
        osf.read(arc)
    assert e.value.code == "E_ARCHIVE_NAME", e.value


def test_symbolic_links_are_refused_wherever_they_point(tmp_path):
    arc = _archive3(tmp_path)
    name = _shards(arc)[1]
    outside = tmp_path / "outside.safetensors"
    os.rename(arc / name, outside)
    os.symlink(outside, arc / name)
    with pytest.raises(osf.FormatError) as e:
        osf.read(arc)
    assert e.value.code == "E_ARCHIVE_LINK" and name in str(e.value)
    os.unlink(arc / name)
    shutil.copyfile(outside, tmp_path / "inside")
    os.rename(tmp_path / "inside", arc / "copy")
    os.symlink("copy", arc / name)  # a link inside the folder is refused too
    assert osf.check(arc).code == "E_ARCHIVE_LINK"
    os.unlink(arc / name)
    os.rename(outside, arc / name)
    assert osf.check(arc).valid
    os.rename(arc / INDEX, tmp_path / "index")
    os.symlink(tmp_path / "index", arc / INDEX)
    assert osf.check(arc).code == "E_ARCHIVE_LINK"


def test_a_folder_without_an_index_is_not_a_file_and_an_index_is_not_a_single_file(tmp_path):
    rep = osf.check(tmp_path)
    assert rep.code == "E_NOT_FILE" and "a folder" in rep.message
    arc = _archive3(tmp_path / "sub") if (tmp_path / "sub").mkdir() is None else None
    assert osf.check(arc / INDEX).code == "E_NOT_OPTSTATE"
    assert osf.check(arc / _shards(arc)[0]).code == "E_NOT_OPTSTATE"


def test_index_field_forms_are_checked(tmp_path):
    cases = {
        "no archive field": (lambda d: d.pop("archive"), "E_SCHEMA"),
        "bad generation": (lambda d: d["archive"].update(generation="XYZ"), "E_SCHEMA"),
        "unlisted file": (lambda d: d["archive"]["shards"].update(
            {"slot:layer_0/kernel:m": "shard-elsewhere.safetensors"}), "E_SCHEMA"),
        "tensor moved": (lambda d: d["archive"]["shards"].update(
            {"slot:layer_0/kernel:m": d["archive"]["shards"]["slot:layer_2/kernel:v"]})
            if d["archive"]["shards"]["slot:layer_0/kernel:m"] !=
            d["archive"]["shards"]["slot:layer_2/kernel:v"] else None, "E_ARCHIVE_MISMATCH"),
        "crc disagrees": (lambda d: d["checksums"].update({"slot:layer_0/kernel:m": 1}),
                          "E_ARCHIVE_MISMATCH"),
        "file size wrong": (lambda d: [r.update(size=r["size"] - 1)
                                       for r in d["archive"]["files"].values()],
                            "E_ARCHIVE_MISMATCH"),
    }
    for i, (what, (edit, code)) in enumerate(cases.items()):
        arc = osf.write(adam_state(n_weights=3), tmp_path / f"a{i}", max_shard_size=64)
        _edit_index(arc, edit)
        rep = osf.check(arc)
        assert rep.code == code, (what, rep)


def test_the_shard_limit_is_enforced_before_opening_shards(tmp_path, monkeypatch):
    arc = _archive3(tmp_path)
    monkeypatch.setattr(_archive, "MAX_SHARDS", 2)
    assert osf.check(arc).code == "E_LIMIT"


# --- writing: failures leave nothing behind ----------------------------------------------

def test_write_refusals(tmp_path):
    (tmp_path / "file").write_bytes(b"x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep")
    for target in (tmp_path / "file", tmp_path / "full", tmp_path / "no" / "such"):
        with pytest.raises(osf.StorageError) as e:
            osf.write(adam_state(), target, max_shard_size=64)
        assert e.value.code == "E_WRITE", target
    assert (tmp_path / "file").read_bytes() == b"x"
    assert os.listdir(tmp_path / "full") == ["mine.txt"]
    assert sorted(os.listdir(tmp_path)) == ["file", "full"]
    for bad in (0, -1, 1.5, "10"):
        with pytest.raises(osf.UnsupportedError):
            osf.write(adam_state(), tmp_path / "x", max_shard_size=bad)
    (tmp_path / "empty").mkdir()
    osf.write(adam_state(), tmp_path / "empty", max_shard_size=64)
    assert osf.check(tmp_path / "empty").valid


def _failing_state(after):
    st = adam_state(n_weights=4, seed=3, step=8)
    calls = {"n": 0}

    def boom():
        calls["n"] += 1
        raise RuntimeError("device lost")
    w = st.weights[after]
    w.slots["m"] = osf.LazyTensor(w.slots["m"].shape, "float32", boom)
    return st


def test_an_exception_mid_export_leaves_the_previous_archive_and_no_new_files(tmp_path):
    arc = osf.write(adam_state(), tmp_path / "a", max_shard_size=64)
    before = sorted(os.listdir(arc))
    with pytest.raises(RuntimeError):
        osf.write(_failing_state(3), arc, max_shard_size=64)
    assert sorted(os.listdir(arc)) == before
    _assert_same_state(osf.read(arc), adam_state())
    # a new archive: nothing at the path, nothing beside it
    with pytest.raises(RuntimeError):
        osf.write(_failing_state(3), tmp_path / "new", max_shard_size=64)
    assert sorted(os.listdir(tmp_path)) == ["a"]


def test_sigkill_mid_export_leaves_a_complete_archive(tmp_path):
    target = tmp_path / "run.optstate"
    writer = HERE / "archive_writer.py"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(HERE.parents[1])] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    rnd = random.Random(15)
    # first kills while no archive exists yet: nothing or a complete archive under the name
    outcomes = set()
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, str(writer), str(target), "1"],
                                stdout=subprocess.PIPE, text=True, env=env)
        try:
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(rnd.uniform(0.0, 0.08))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            proc.stdout.close()
        if target.exists():
            outcomes.add("complete")
            assert osf.read(target).step == 1
        else:
            outcomes.add("absent")
            for name in os.listdir(tmp_path):  # only a temporary folder beside it
                assert name.startswith(".run.optstate.") and name.endswith(".optstate.tmp")
    if not target.exists():
        osf.write(big_state(1), target, max_shard_size=SHARD)
    steps = set()
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, str(writer), str(target), "2"],
                                stdout=subprocess.PIPE, text=True, env=env)
        try:
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(rnd.uniform(0.0, 0.3))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            proc.stdout.close()
        st = osf.read(target)
        assert st.step in (1, 2)
        np.testing.assert_array_equal(st.weights[0].slots["v"][:4], float(st.step))
        np.testing.assert_array_equal(st.weights[5].slots["m"],
                                      big_state(st.step).weights[5].slots["m"])
        steps.add(st.step)
        live = set(osf.read_header(target)["archive"]["files"])
        for name in os.listdir(target):
            assert (name in live or name == INDEX or name.endswith(".optstate.tmp")
                    or _archive._SHARD_FILE.fullmatch(name)), name
    print("\n[archive kill]", sorted(outcomes), sorted(steps), sorted(os.listdir(target)))
    assert 2 in steps or len(steps) == 1


# --- the command line --------------------------------------------------------------------

def test_cli_inspect_check_and_diff_accept_the_folder(tmp_path, capsys):
    st = adam_state(n_weights=4, with_values=True)
    one = osf.write(st, tmp_path / "one.optstate")
    arc = osf.write(st, tmp_path / "arc.optstate", max_shard_size=100)
    assert main(["inspect", "--json", str(one)]) == 0
    a = json.loads(capsys.readouterr().out)
    assert main(["inspect", "--json", str(arc)]) == 0
    b = json.loads(capsys.readouterr().out)
    assert a == b and b["step"] == 4
    assert main(["inspect", str(arc)]) == 0
    assert "layer_3/kernel" in capsys.readouterr().out
    assert main(["check", str(arc)]) == 0
    assert "valid" in capsys.readouterr().out
    assert main(["diff", str(one), str(arc)]) == 0
    assert "0 differences" in capsys.readouterr().out
    other = osf.write(adam_state(n_weights=4, seed=5, with_values=True), tmp_path / "o",
                      max_shard_size=100)
    assert main(["diff", str(arc), str(other)]) == 1
    capsys.readouterr()
    (arc / _shards(arc)[0]).unlink()
    assert main(["check", str(arc)]) == 1
    assert "E_ARCHIVE_MISSING" in capsys.readouterr().out


# --- conformance vectors (spec 14.8) -----------------------------------------------------

VECTORS = HERE.parents[1] / "spec" / "conformance" / "archives"
VALID = sorted(p for p in (VECTORS / "valid").glob("*.optstate") if p.is_dir())
INVALID = sorted(p for p in (VECTORS / "invalid").glob("*.optstate") if p.is_dir())


def test_there_are_archive_vectors():
    assert len(VALID) >= 3 and len(INVALID) >= 8


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_archive_vector_reads_to_its_expected_summary(path):
    expected = json.loads(path.with_suffix(".expected.json").read_text())
    st = osf.read(path)
    assert json.loads(json.dumps(summarize(st))) == expected
    assert osf.check(path).valid
    # the values too: each vector's first slot is the generator's arange pattern
    w = st.weights[0]
    slot = w.slots[sorted(w.slots)[0]]
    assert slot.size and np.all(np.diff(slot.reshape(-1).astype(np.float64)) == 0.25)


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_archive_vector_is_refused_with_its_code(path):
    expected = json.loads(path.with_suffix(".expected.json").read_text())
    with pytest.raises(osf.OptStateError) as e:
        osf.read(path)
    assert (e.value.code, type(e.value).__name__) == (expected["code"], expected["error"])
    rep = osf.check(path)
    assert not rep.valid and rep.code == expected["code"]


# --- fuzz: only our errors escape --------------------------------------------------------

def test_fuzz_mutated_archives_raise_only_our_errors_or_read_correctly(tmp_path, capsys):
    base = osf.write(adam_state(n_weights=3), tmp_path / "base", max_shard_size=64)
    good = adam_state(n_weights=3)
    names = sorted(os.listdir(base))
    rnd = random.Random(1415)
    codes = {}
    for i in range(300):
        arc = tmp_path / f"f{i}"
        shutil.copytree(base, arc)
        victim = arc / rnd.choice(names)
        raw = bytearray(victim.read_bytes())
        kind = rnd.choice(["flip", "truncate", "extend", "zero"])
        if kind == "flip":
            for _ in range(rnd.randint(1, 4)):
                raw[rnd.randrange(len(raw))] ^= 1 << rnd.randrange(8)
        elif kind == "truncate":
            del raw[rnd.randrange(len(raw)):]
        elif kind == "extend":
            raw += bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 9)))
        else:
            s = rnd.randrange(len(raw))
            raw[s:s + rnd.randint(1, 64)] = bytes(min(64, len(raw) - s))
        victim.write_bytes(bytes(raw))
        try:
            st = osf.read(arc)
        except osf.OptStateError as e:
            assert e.code != "E_FORMAT", e  # E_FORMAT would be a reader bug
            codes[e.code] = codes.get(e.code, 0) + 1
        else:  # a change the format does not protect (padding): the values are still right
            _assert_same_state(st, good)
            codes["read"] = codes.get("read", 0) + 1
        shutil.rmtree(arc)
    assert codes.get("E_CHECKSUM", 0) + codes.get("E_HEADER_CHECKSUM", 0) > 0
    with capsys.disabled():
        print(f"\n[archive fuzz] 300 mutated archives: {dict(sorted(codes.items()))}")


def test_temporary_folders_of_killed_new_exports_are_removed_when_old(tmp_path):
    from optstate_format._io import _HOST
    dead = 2 ** 22 + 12345  # above the default pid_max range used here: no such process
    while _io._pid_alive(dead):
        dead += 1
    stale = tmp_path / f".run.optstate.{_HOST}-{dead}.abcd1234.optstate.tmp"
    stale.mkdir()
    (stale / "shard-x.safetensors").write_bytes(b"half")
    young = tmp_path / f".run.optstate.{_HOST}-{dead}.young123.optstate.tmp"
    young.mkdir()
    old = time.time() - _io.STALE_TEMP_SECONDS - 5
    os.utime(stale, (old, old))
    live = tmp_path / f".run.optstate.{_HOST}-{os.getppid()}.livepid1.optstate.tmp"
    live.mkdir()
    os.utime(live, (old, old))
    osf.write(adam_state(), tmp_path / "run.optstate", max_shard_size=64)
    left = sorted(os.listdir(tmp_path))
    assert stale.name not in left and young.name in left and live.name in left
    assert osf.check(tmp_path / "run.optstate").valid


def test_reading_while_another_process_replaces_the_archive(tmp_path):
    """A reader racing a writer gets a complete state of one export (the reader starts over
    from the new index when a shard it wanted was removed by the commit of a newer export),
    or, after 3 such restarts, an error saying the archive was replaced meanwhile: never a
    mix of two exports."""
    target = tmp_path / "run.optstate"
    osf.write(big_state(1), target, max_shard_size=SHARD)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(HERE.parents[1])] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    proc = subprocess.Popen([sys.executable, str(HERE / "archive_writer.py"), str(target), "2",
                             "6"], stdout=subprocess.PIPE, text=True, env=env)
    outcomes = {}
    try:
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.time() + 60
        while proc.poll() is None and time.time() < deadline:
            try:
                st = osf.read(target)
            except osf.OptStateError as e:
                assert e.code in ("E_ARCHIVE_MISSING", "E_ARCHIVE_MISMATCH"), e
                outcomes[e.code] = outcomes.get(e.code, 0) + 1
                continue
            assert st.step in (1, 2)
            for w in st.weights:  # every tensor from the same export
                np.testing.assert_array_equal(w.slots["v"][:3], float(st.step))
            outcomes[st.step] = outcomes.get(st.step, 0) + 1
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == 0
    assert osf.read(target).step == 2 and outcomes
    print(f"\n[archive race] reads while replaced: {outcomes}")


def test_shards_read_side_by_side_give_the_same_state(tmp_path, monkeypatch):
    st = adam_state(n_weights=6, with_values=True)
    arc = osf.write(st, tmp_path / "a", max_shard_size=64)
    monkeypatch.setattr(_io, "_PARALLEL_VERIFY_BYTES", 0)  # the threaded path, on small data
    got = []
    _assert_same_state(osf.read(arc, progress=got.append), st)
    assert sum(got) == sum(a.nbytes for w in st.weights
                           for a in list(w.slots.values()) + [w.value]) + 8
    name = osf.read_header(arc)["archive"]["shards"]["slot:layer_4/kernel:v"]
    part = _archive._Part(_archive._Member(None, str(arc), name, "?"), "optstate-shard")
    raw = bytearray((arc / name).read_bytes())
    raw[part.data_start + part.tensors["slot:layer_4/kernel:v"][2] + 5] ^= 1
    (arc / name).write_bytes(bytes(raw))
    with pytest.raises(osf.IntegrityError) as e:
        osf.read(arc)
    assert e.value.key == "slot:layer_4/kernel:v" and name in str(e.value)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_named_pipe_or_folder_in_place_of_a_shard_is_refused_without_blocking(tmp_path):
    arc = _archive3(tmp_path)
    name = _shards(arc)[1]
    (arc / name).unlink()
    os.mkfifo(arc / name)
    done = {}

    def go():
        done["rep"] = osf.check(arc)
    import threading
    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "the reader blocked on a named pipe"
    assert done["rep"].code == "E_NOT_FILE" and "named pipe" in done["rep"].message
    os.unlink(arc / name)
    (arc / name).mkdir()
    assert osf.check(arc).code == "E_NOT_FILE"


def test_a_reader_starts_over_when_the_archive_is_replaced_under_it(tmp_path, monkeypatch):
    arc = osf.write(adam_state(seed=1, step=1), tmp_path / "a", max_shard_size=64)
    real = _archive.Archive._read_all
    calls = {"n": 0}

    def racing(self, verify, progress=None):
        calls["n"] += 1
        if calls["n"] == 1:  # another export commits after this reader read the index
            osf.write(adam_state(seed=2, step=2), arc, max_shard_size=64)
        return real(self, verify, progress)
    monkeypatch.setattr(_archive.Archive, "_read_all", racing)
    st = osf.read(arc)
    assert calls["n"] == 2 and st.step == 2
    _assert_same_state(st, adam_state(seed=2, step=2))
    # a shard missing without a new index is reported (when the shards are opened), once
    calls["n"] = 5
    loads = []
    real_load = _archive.Archive._load
    monkeypatch.setattr(_archive.Archive, "_load",
                        lambda self, shards: loads.append(1) or real_load(self, shards))
    (arc / _shards(arc)[0]).unlink()
    with pytest.raises(osf.FormatError) as e:
        osf.read(arc)
    assert e.value.code == "E_ARCHIVE_MISSING" and calls["n"] == 5 and len(loads) == 1
