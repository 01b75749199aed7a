"""Keras 3: export_state(..., max_shard_size=) writes a sharded archive (spec 14) that
import_state reads to the same slots as the single file."""

import os

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import optstate_format as osf  # noqa: E402

from keras_models import seed_model  # noqa: E402
from test_keras3 import assert_roles_equal, train  # noqa: E402

pytestmark = pytest.mark.framework


def test_seed_case_through_a_sharded_archive(tmp_path):
    a, ra = seed_model((32, 240, 4))
    train(a, 3)
    one = osf.export_state(a, tmp_path / "a.optstate", include_weights=True)
    arc = osf.export_state(a, tmp_path / "a.archive", include_weights=True,
                           max_shard_size=4096)
    assert arc.is_dir()
    shards = [n for n in os.listdir(arc) if n.startswith("shard-")]
    assert len(shards) > 2
    x, y = osf.read(one), osf.read(arc)
    for wx, wy in zip(x.weights, y.weights):
        assert wx.path == wy.path
        for k in wx.slots:
            np.testing.assert_array_equal(wx.slots[k], wy.slots[k])
        np.testing.assert_array_equal(wx.value, wy.value)
    b, rb = seed_model((32, 250, 4))
    report = osf.import_state(b, arc, include_weights=True)
    assert report.ok and len(report.matched) == 14  # 10 trainable + 4 batch-norm statistics
    assert assert_roles_equal(a, ra, b, rb) == 20
    assert int(b.optimizer.iterations.numpy()) == 3
    for role in ra:
        for p, q in zip(ra[role].get_weights(), rb[role].get_weights()):
            np.testing.assert_array_equal(p, q)


def test_a_damaged_archive_changes_nothing(tmp_path):
    a, _ = seed_model((32, 240, 4))
    train(a, 2)
    arc = osf.export_state(a, tmp_path / "a.archive", max_shard_size=4096)
    b, _ = seed_model((32, 250, 4))
    train(b, 1, seed=5)
    before = [np.array(v.numpy()) for v in b.optimizer.variables]
    victim = sorted(n for n in os.listdir(arc) if n.startswith("shard-"))[0]
    raw = bytearray((arc / victim).read_bytes())
    raw[-700] ^= 0xFF  # inside the last tensors, before the shard's small document
    (arc / victim).write_bytes(bytes(raw))
    with pytest.raises(osf.OptStateError) as e:
        osf.import_state(b, arc)
    assert e.value.code in ("E_CHECKSUM", "E_HEADER_CHECKSUM")
    for x, v in zip(before, b.optimizer.variables):
        np.testing.assert_array_equal(x, v.numpy())
