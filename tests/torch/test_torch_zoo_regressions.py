"""Regressions the model zoo (tests/torch/zoo.py) found: training wrappers are no part of a
path; an import that creates state creates it in torch's key and parameter order; a lazy
module that has not run is refused with the project's own error; resize="overlap" works into
an optimizer that has not stepped yet."""

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import optstate_format as osf  # noqa: E402
from optstate_format import UnsupportedError  # noqa: E402
from optstate_format.converters import torch as conv  # noqa: E402

from torch_models import Net, bitwise_equal, snapshot, train  # noqa: E402

pytestmark = pytest.mark.framework
O = torch.optim


def trained(model_wrapper=lambda m: m, steps=2):
    torch.manual_seed(0)
    model = Net()
    wrapped = model_wrapper(model)
    opt = O.Adam(wrapped.parameters(), lr=0.01)
    train(model, opt, steps)
    return model, wrapped, opt


def data_parallel(m):
    return nn.DataParallel(m)


def compiled(m):
    return torch.compile(m)  # lazy: never called here, so nothing is compiled


def compiled_data_parallel(m):
    return torch.compile(nn.DataParallel(m))


WRAPPERS = [data_parallel, compiled, compiled_data_parallel]


@pytest.mark.parametrize("wrapper", WRAPPERS, ids=lambda f: f.__name__)
def test_a_wrapper_adds_nothing_to_paths_or_identities(wrapper):
    plain = conv.ADAPTER.describe_model(Net())
    wrapped = conv.ADAPTER.describe_model(wrapper(Net()))
    assert [w.path for w in wrapped.weights] == [w.path for w in plain.weights]
    assert "module" not in str([w.path for w in wrapped.weights])
    assert conv.unwrap(wrapper(Net())).__class__ is Net


@pytest.mark.parametrize("wrapper", WRAPPERS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("direction", ["wrapped_to_plain", "plain_to_wrapped"])
def test_state_moves_between_a_wrapped_and_a_plain_model_and_continues(wrapper, direction,
                                                                       tmp_path):
    src_wrap, dst_wrap = ((wrapper, lambda m: m) if direction == "wrapped_to_plain"
                          else (lambda m: m, wrapper))
    src, src_top, src_opt = trained(src_wrap)
    path = osf.export_state(src_top, tmp_path / "w.optstate", optimizer=src_opt)
    torch.manual_seed(1)
    dst = Net(changed=True)
    dst_top = dst_wrap(dst)
    dst_opt = O.Adam(dst_top.parameters(), lr=0.01)
    report = osf.import_state(dst_top, path, optimizer=dst_opt)
    assert report.ok and len(report.matched) == len(list(src.parameters()))
    # Net(changed=True) moves the body's positions; roles by name: proj, head, body ends
    pairs = [(src.proj.weight, dst.proj.weight), (src.head.bias, dst.head.bias),
             (src.body[0].weight, dst.body[1].weight), (src.body[2].weight, dst.body[5].weight)]
    for p, q in pairs:
        assert bitwise_equal(src_opt.state[p], dst_opt.state[q])


def test_ddp_export_imports_into_a_plain_model(tmp_path):
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        src, src_top, src_opt = trained(nn.parallel.DistributedDataParallel)
        path = osf.export_state(src_top, tmp_path / "ddp.optstate", optimizer=src_opt)
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
        dcp = conv.from_dcp_state_dict(src_top, src_opt,
                                       get_optimizer_state_dict(src_top, src_opt))
    finally:
        dist.destroy_process_group()
    paths = {w["path"] for w in osf.read_header(path)["weights"]}
    assert paths == {w.path for w in dcp.weights} and not any("module" in p for p in paths)
    dst = Net()
    dst_opt = O.Adam(dst.parameters(), lr=0.01)
    assert osf.import_state(dst, path, optimizer=dst_opt).ok
    assert bitwise_equal(snapshot(dst_opt)["state"], snapshot(src_opt)["state"])


def test_state_created_by_an_import_has_torchs_key_order(tmp_path):
    _, model, opt = trained()
    path = osf.export_state(model, tmp_path / "o.optstate", optimizer=opt)
    dst = Net()
    dst.load_state_dict(model.state_dict())
    dst_opt = O.Adam(dst.parameters(), lr=0.01)
    osf.import_state(dst, path, optimizer=dst_opt)
    for state in dst_opt.state.values():
        assert list(state) == ["step", "exp_avg", "exp_avg_sq"]
    # the whole state_dict, key order included, is what torch itself holds
    assert bitwise_equal(snapshot(dst_opt), snapshot(opt))
    train(model, opt, 1, start=5)
    train(dst, dst_opt, 1, start=5)
    assert bitwise_equal(snapshot(dst_opt), snapshot(opt))


def test_a_lazy_module_that_never_ran_is_refused_with_its_path(tmp_path):
    def lazy():
        return nn.Sequential(nn.LazyLinear(4), nn.ReLU(), nn.Linear(4, 2))
    src = lazy()
    src_opt = O.Adam(src.parameters())
    src(torch.randn(2, 3)).sum().backward()
    src_opt.step()
    path = osf.export_state(src, tmp_path / "lazy.optstate", optimizer=src_opt)
    dst = lazy()
    dst_opt = O.Adam(dst.parameters())
    for call in (lambda: osf.import_state(dst, path, optimizer=dst_opt),
                 lambda: osf.export_state(dst, tmp_path / "x.optstate", optimizer=dst_opt)):
        with pytest.raises(UnsupportedError) as e:
            call()
        assert e.value.path == "0/weight" and "forward pass" in str(e.value)
    assert not dst_opt.state and not (tmp_path / "x.optstate").exists()
    dst(torch.randn(2, 3))  # once it has run, it imports
    assert osf.import_state(dst, path, optimizer=dst_opt).ok



def test_a_rolled_back_import_keeps_the_order_of_existing_state(tmp_path, monkeypatch):
    _, model, opt = trained()
    path = osf.export_state(model, tmp_path / "o.optstate", optimizer=opt)
    dst = Net()
    dst_opt = O.Adam(dst.parameters(), lr=0.01)
    # the body steps first, then proj: state not in parameter order, and none for head yet
    for trainable in (dst.body, dst.proj):
        dst.requires_grad_(False)
        trainable.requires_grad_(True)
        train(dst, dst_opt, 1)
    dst.requires_grad_(True)
    assert dst.head.weight not in dst_opt.state
    before = snapshot(dst_opt)
    order = [id(p) for p in dst_opt.state]
    calls, real = [], conv.ADAPTER.adopt

    def failing(handle, value):  # fails once the import has created head's state
        calls.append(handle)
        if dst.head.weight in dst_opt.state:
            raise RuntimeError("injected failure")
        real(handle, value)
    monkeypatch.setattr(conv.ADAPTER, "adopt", failing)
    with pytest.raises(osf.OptStateError):
        osf.import_state(dst, path, optimizer=dst_opt)
    assert dst.head.weight not in dst_opt.state and [id(p) for p in dst_opt.state] == order
    assert bitwise_equal(snapshot(dst_opt), before)


class TiedLM(nn.Module):
    """A language model's shape: the output projection is the input embedding (GPT-2's tied
    wte / lm_head), and the vocabulary can grow (resize_token_embeddings)."""

    def __init__(self, vocab=12):
        super().__init__()
        self.embed = nn.Embedding(vocab, 6)
        self.mix = nn.Linear(6, 6)
        self.head = nn.Linear(6, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(torch.tanh(self.mix(self.embed(ids))))


def test_resize_overlap_into_an_optimizer_that_never_stepped(tmp_path):
    torch.manual_seed(0)
    src = TiedLM(12)
    src_opt = O.AdamW(src.parameters(), lr=0.01)
    for i in range(2):
        src_opt.zero_grad()
        src(torch.randint(0, 12, (4, 5), generator=torch.Generator().manual_seed(i))).pow(
            2).mean().backward()
        src_opt.step()
    path = osf.export_state(src, tmp_path / "lm.optstate", optimizer=src_opt)
    dst = TiedLM(16)
    dst_opt = O.AdamW(dst.parameters(), lr=0.01)
    with pytest.raises(osf.MatchError) as e:
        osf.import_state(dst, path, optimizer=dst_opt)
    assert "E_MATCH_SHAPE" in {p.code for p in e.value.problems} and not dst_opt.state
    assert {p.path for p in e.value.problems} == {"embed/weight"}
    report = osf.import_state(dst, path, optimizer=dst_opt, resize="overlap")
    assert [r[0] for r in report.resized] == ["embed/weight"]
    a, b = src_opt.state[src.embed.weight], dst_opt.state[dst.embed.weight]
    assert list(b) == ["step", "exp_avg", "exp_avg_sq"] and torch.equal(a["step"], b["step"])
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(b[key][:12], a[key]) and not b[key][12:].any()
    assert bitwise_equal(dst_opt.state[dst.mix.weight], src_opt.state[src.mix.weight])
    dst(torch.randint(0, 16, (4, 5))).pow(2).mean().backward()
    dst_opt.step()  # torch steps with the state as the import left it
    assert int(b["step"]) == 3



def test_torch_converter_docstring_examples_run():
    import doctest
    result = doctest.testmod(conv, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 2 and result.failed == 0
