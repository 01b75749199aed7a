"""PyTorch through a sharded archive (spec 14): the same state as the single file."""

import os

import pytest

torch = pytest.importorskip("torch")

import optstate_format as osf  # noqa: E402

from torch_models import Net, bitwise_equal, state_by_name, train  # noqa: E402

pytestmark = pytest.mark.framework


def test_adam_state_through_an_archive_lands_bitwise(tmp_path):
    torch.manual_seed(0)
    src = Net()
    opt = torch.optim.Adam(src.parameters(), lr=1e-3)
    train(src, opt, 3)
    one = osf.export_state(src, tmp_path / "a.optstate", optimizer=opt)
    arc = osf.export_state(src, tmp_path / "a.archive", optimizer=opt, max_shard_size=512)
    assert len([n for n in os.listdir(arc) if n.startswith("shard-")]) > 2
    torch.manual_seed(1)
    dst = Net()
    dst_opt = torch.optim.Adam(dst.parameters(), lr=1e-3)
    report = osf.import_state(dst, arc, optimizer=dst_opt)
    assert report.ok
    a, b = state_by_name(src, opt), state_by_name(dst, dst_opt)
    assert a.keys() == b.keys() and len(a) == 8  # 4 Linear layers, weight and bias
    for n in a:  # every entry on the parameter of the same name, bit for bit
        assert a[n].keys() == b[n].keys()
        for k in a[n]:
            assert bitwise_equal(a[n][k], b[n][k]), (n, k)
    a, b = osf.read(one), osf.read(arc)
    for wa, wb in zip(a.weights, b.weights):
        assert wa.path == wb.path
        for k in wa.slots:
            assert wa.slots[k].tobytes() == wb.slots[k].tobytes()
