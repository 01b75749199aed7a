"""Several writers, one archive (spec 14.10), without a framework: two threads stand in for
two processes (broadcast and gather through a barrier), and fake framework arrays expose
their addressable pieces as JAX's do (index, replica_id, data)."""

import os
import sys

import numpy as np
import pytest

import optstate_format as osf
from optstate_format import _archive
from fake_processes import Arr, Handle, Shard, run_processes


KERNEL = np.arange(4 * 8, dtype=np.float32).reshape(4, 8)
KERNEL_V = KERNEL * 10 + 0.5
BIAS = np.arange(8, dtype=np.float32) - 3


def _cols(a, b):
    return (slice(None), slice(a, b))


def _state(p, fail=False):
    """Process ``p`` of 2: the kernel's slots split by columns (p owns replica 0 of half
    ``p``), the bias replicated (replica 0 on process 0), the step a host value."""
    def split(full):
        mine, other = (0, 4) if p == 0 else (4, 8), (4, 8) if p == 0 else (0, 4)
        return Handle(Arr([Shard(_cols(*mine), 0, full[:, slice(*mine)]),
                           Shard(_cols(*other), 1, full[:, slice(*other)])]))

    def boom():
        raise RuntimeError("device lost")

    def never():
        raise AssertionError("a distributed tensor must not be fetched whole")
    bias = Handle(Arr([Shard((slice(None),), p * 2, BIAS), Shard((slice(None),), p * 2 + 1,
                                                                 BIAS)]))
    slots = {"m": _archive.Sourced((4, 8), "float32", never, split(KERNEL)),
             "v": _archive.Sourced((4, 8), "float32", never, split(KERNEL_V))}
    if fail and p == 1:  # process 1's device fails while its half is fetched
        class Lost(Shard):
            data = property(lambda self: boom())
        slots["v"] = _archive.Sourced((4, 8), "float32", never,
                                      Handle(Arr([Lost(_cols(4, 8), 0, None)])))
    return osf.OptimizerState(osf.OptimizerInfo("adam", "Adam"), step=2, weights=[
        osf.WeightEntry("dense/kernel", (4, 8), "float32", slots=slots),
        osf.WeightEntry("dense/bias", (8,), "float32", slots={
            "m": _archive.Sourced((8,), "float32", never, bias),
            "v": _archive.Sourced((8,), "float32", never, bias)})],
        globals={"iterations": np.array(2, np.int64)})


def _run(path, fail=False, size=64):
    return run_processes(2, lambda p, procs: _archive.write_distributed(
        _state(p, fail), path, max_shard_size=size, fsync=False, procs=procs) and None)


def test_two_writers_make_one_archive_that_reads_whole(tmp_path):
    path = tmp_path / "run.optstate"
    assert _run(path) == [None, None]
    st = osf.read(path)
    np.testing.assert_array_equal(st.weight("dense/kernel").slots["m"], KERNEL)
    np.testing.assert_array_equal(st.weight("dense/kernel").slots["v"], KERNEL_V)
    np.testing.assert_array_equal(st.weight("dense/bias").slots["m"], BIAS)
    assert int(st.globals["iterations"]) == 2 and st.step == 2
    assert osf.check(path).valid
    doc = osf.read_header(path)
    pieces = doc["archive"]["pieces"]["slot:dense/kernel:m"]["parts"]
    assert [(p["start"], p["stop"]) for p in pieces] == [([0, 0], [4, 4]), ([0, 4], [4, 8])]
    by = {p["start"][1]: p["file"] for p in pieces}
    assert "-p00000-" in by[0] and "-p00001-" in by[4]  # each process wrote its own half
    # replicated and host values were written once, by process 0
    assert "-p00000-" in doc["archive"]["shards"]["slot:dense/bias:m"]
    assert "-p00000-" in doc["archive"]["shards"]["global:iterations"]
    # and a second export replaces it, the old shards removed
    old = set(os.listdir(path))
    assert _run(path) == [None, None]
    assert not (old - {_archive.INDEX_NAME}) & set(os.listdir(path))
    np.testing.assert_array_equal(osf.read(path).weight("dense/kernel").slots["v"], KERNEL_V)


def test_a_failing_writer_fails_every_process_and_leaves_the_previous_archive(tmp_path):
    path = tmp_path / "run.optstate"
    assert _run(path) == [None, None]
    before = sorted(os.listdir(path))
    errors = _run(path, fail=True)
    assert all(isinstance(e, osf.StorageError) for e in errors), errors
    assert "device lost" in str(errors[0]) and "process 1" in str(errors[0])
    assert sorted(os.listdir(path)) == before
    np.testing.assert_array_equal(osf.read(path).weight("dense/kernel").slots["m"], KERNEL)
    # a new archive: nothing at the name, nothing beside it
    errors = _run(tmp_path / "new", fail=True)
    assert all(isinstance(e, osf.StorageError) for e in errors)
    assert sorted(os.listdir(tmp_path)) == ["run.optstate"]


@pytest.mark.parametrize("edit, code", [
    (lambda parts: parts[1].update(start=[0, 3]), "E_ARCHIVE_PIECES"),      # overlap
    (lambda parts: parts.pop(), "E_ARCHIVE_PIECES"),                         # a gap
    (lambda parts: parts[0].update(stop=[4, 9]), "E_SCHEMA"),                # out of bounds
    (lambda parts: parts[0].update(crc32=parts[0]["crc32"] ^ 1), "E_ARCHIVE_MISMATCH"),
])
def test_pieces_that_do_not_tile_their_tensor_are_refused(tmp_path, edit, code):
    path = tmp_path / "run.optstate"
    assert _run(path) == [None, None]
    arch = _archive.Archive(path, shards=False)
    arch.close()
    doc = arch.doc
    edit(doc["archive"]["pieces"]["slot:dense/kernel:m"]["parts"])
    tmp = _archive._write_temp(path, _archive.INDEX_NAME, 0o644, False,
                               _archive._fill_index(doc))
    os.replace(tmp, path / _archive.INDEX_NAME)
    assert osf.check(path).code == code


def test_crc32_combine_is_zlibs():
    import zlib
    rng = np.random.default_rng(0)
    for n1, n2 in ((0, 5), (1, 1), (7, 1000), (4096, 3), (12345, 65537)):
        a, b = rng.bytes(n1), rng.bytes(n2)
        assert _archive.crc32_combine(zlib.crc32(a), zlib.crc32(b), n2) == zlib.crc32(a + b)


def test_writers_naming_different_paths_all_fail_and_write_nothing(tmp_path):
    errors = run_processes(2, lambda p, procs: _archive.write_distributed(
        _state(p), tmp_path / f"run{p}.optstate", max_shard_size=64, fsync=False, procs=procs))
    assert all(isinstance(e, osf.StorageError) for e in errors), errors
    assert "same archive" in str(errors[0])
    assert os.listdir(tmp_path) == []


def test_a_split_variable_in_a_single_file_export_is_a_clear_error(tmp_path):
    st = _state(0)
    with pytest.raises(osf.UnsupportedError) as e:
        osf.write(st, tmp_path / "one.optstate")
    assert "max_shard_size" in str(e.value)
    assert os.listdir(tmp_path) == []


def test_an_index_the_writers_cannot_complete_is_never_committed(tmp_path, monkeypatch):
    """Process 1 holds no replica 0 of its half (the processes disagree about the layout):
    the kernel's pieces do not tile it, process 0 finds it before replacing the index, every
    process fails with E_WRITE naming E_ARCHIVE_PIECES and the previous archive stays."""
    path = tmp_path / "run.optstate"
    assert _run(path) == [None, None]
    before = sorted(os.listdir(path))
    real = _state

    def lopsided(p, fail=False):
        st = real(p, fail)
        if p == 1:
            for s in st.weight("dense/kernel").slots.values():
                for shard in s.handle.value.addressable_shards:
                    shard.replica_id = 1
        return st
    monkeypatch.setattr(sys.modules[__name__], "_state", lopsided)
    errors = _run(path)
    assert all(isinstance(e, osf.StorageError) for e in errors), errors
    assert "E_ARCHIVE_PIECES" in str(errors[0])
    assert sorted(os.listdir(path)) == before
    np.testing.assert_array_equal(osf.read(path).weight("dense/kernel").slots["v"], KERNEL_V)
