"""Spec 10.1's promise, proven with the released 1.0 reader (tests/support/reader_1_0, copied
verbatim from the last 1.0 commit): it reads every valid vector of this version, including the
1.1 field `table_crc32` it does not know, to the same weights, slots, globals and step."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import optstate_format as osf
import reader_1_0

ROOT = Path(__file__).resolve().parents[2]
VALID = sorted((ROOT / "spec" / "conformance" / "valid").glob("*.optstate"))
COPY = ROOT / "tests" / "support" / "reader_1_0"
RELEASED = "764f596"  # the last commit whose _versions.py declared format 1.0


def test_the_copy_is_the_released_1_0_reader():
    assert reader_1_0.CURRENT_VERSION == (1, 0)
    assert [row[:3] for row in reader_1_0.VERSION_TABLE] == [("1.0", "2026-11-27", "0.1.0")]
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("no git history to compare the copy with")
    for path in sorted(COPY.glob("_*.py")):
        if path.name == "__init__.py":
            continue
        released = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{RELEASED}:optstate_format/{path.name}"],
            capture_output=True, check=True).stdout
        assert path.read_bytes() == released, f"{path.name} differs from the 1.0 release"


def _same(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype
    assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_the_1_0_reader_reads_every_valid_vector_as_we_do(path):
    old, new = reader_1_0.read(path), osf.read(path)
    assert (old.step, old.version) == (new.step, new.version)
    assert old.optimizer.algorithm == new.optimizer.algorithm
    assert sorted(old.globals) == sorted(new.globals)
    for name in new.globals:
        _same(old.globals[name], new.globals[name])
    assert [w.path for w in old.weights] == [w.path for w in new.weights]
    for wo, wn in zip(old.weights, new.weights):
        assert (wo.shape, wo.dtype, wo.trainable) == (wn.shape, wn.dtype, wn.trainable)
        assert wo.hints == wn.hints  # structural_in included: a hint it does not use
        assert sorted(wo.slots) == sorted(wn.slots)
        for name in wn.slots:
            _same(wo.slots[name], wn.slots[name])
        assert (wo.value is None) == (wn.value is None)
        if wn.value is not None:
            _same(wo.value, wn.value)
    for a, b in ((old.optimizer.hyperparameters, new.optimizer.hyperparameters),
                 (old.optimizer.learning_rate, new.optimizer.learning_rate),
                 (old.optimizer.components, new.optimizer.components),
                 (old.producer, new.producer), (old.metadata, new.metadata)):
        assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN == NaN


def test_the_vectors_include_the_fields_the_1_0_reader_must_ignore():
    docs = [reader_1_0.read_header(p) for p in VALID]
    assert all("table_crc32" in d for d in docs if d["version"] not in ("1.0", "1.1"))
    assert any("structural_in" in w["hints"] for d in docs for w in d["weights"])
    assert any("future_field" in d for d in docs)


def test_the_1_0_reader_refuses_a_sharded_archive_without_misreading_it():
    """A 1.2 archive is a folder (spec 14): the released 1.0 reader cannot open it, with its
    own coded error (10.1 lets a minor add an artifact earlier readers refuse outright)."""
    archives = sorted((Path(__file__).resolve().parents[2] / "spec" / "conformance" / "archives"
                       / "valid").glob("*.optstate"))
    assert archives
    for path in archives:
        with pytest.raises(reader_1_0.FormatError) as e:
            reader_1_0.read(path)
        assert e.value.code == "E_IO"
