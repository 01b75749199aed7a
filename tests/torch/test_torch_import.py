"""PyTorch imports keep the Keras side's promises: checks first, refusals change nothing,
rollback mid-way, strict reports, mapping and partial import; files torch wrote by position."""

import copy

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import optstate_format as osf  # noqa: E402
from optstate_format import MatchError, OptStateError  # noqa: E402
from optstate_format.converters import torch as conv  # noqa: E402

from torch_models import (Net, bitwise_equal, by_name, chain, export_state,  # noqa: E402
                          import_state, same_params, snapshot, state_by_name, train,
                          transfer_state)

pytestmark = pytest.mark.framework
O = torch.optim


class Pair(nn.Module):
    def __init__(self, out=8, extra=None, rename=False):
        super().__init__()
        setattr(self, "enc" if rename else "encoder", nn.Linear(8, 8))
        self.decoder = nn.Linear(8, out)
        if extra:
            setattr(self, extra, nn.Linear(8, 8))

    def forward(self, x):
        enc = self.enc if hasattr(self, "enc") else self.encoder
        h = torch.tanh(enc(x))
        for name in ("extra", "new"):
            if hasattr(self, name):
                h = h + getattr(self, name)(h)
        return self.decoder(h)


def steps(model, opt, n, start=0):
    for i in range(start, start + n):
        x = torch.randn(16, 8, generator=torch.Generator().manual_seed(i))
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()


def fail_adopt_at(monkeypatch, n):
    """Make the n-th adopt of the import raise; returns the handles adopt was called with."""
    calls = []
    real = conv.ADAPTER.adopt

    def failing(handle, value):
        calls.append(handle)
        if len(calls) == n:
            raise RuntimeError("injected failure")
        real(handle, value)
    monkeypatch.setattr(conv.ADAPTER, "adopt", failing)
    return calls


def trained_file(tmp_path, model, opt_cls=O.Adam, n=3, **kw):
    torch.manual_seed(0)
    opt = opt_cls(model.parameters(), lr=0.01)
    steps(model, opt, n)
    return opt, export_state(model, tmp_path / "src.optstate", optimizer=opt, **kw)


@pytest.mark.parametrize("trained", [False, True], ids=["fresh", "trained"])
def test_a_shape_mismatch_is_refused_and_the_optimizer_is_unchanged(trained, tmp_path):
    _, path = trained_file(tmp_path, Pair(8))
    dst = Pair(6)
    dst_opt = O.Adam(dst.parameters(), lr=0.02)
    if trained:
        steps(dst, dst_opt, 2, start=10)
    before = snapshot(dst_opt)
    with pytest.raises(MatchError) as e:
        import_state(dst, path, optimizer=dst_opt)
    shape = [p for p in e.value.problems if p.code == "E_MATCH_SHAPE"]
    assert {p.path for p in shape} == {"decoder/weight", "decoder/bias"}
    assert bitwise_equal(before, snapshot(dst_opt))  # state, groups and lr, bit for bit
    assert (len(dst_opt.state) == 0) == (not trained)  # lazy state stays absent


@pytest.mark.parametrize("trained", [False, True], ids=["fresh", "trained"])
@pytest.mark.parametrize("failure", [RuntimeError, KeyboardInterrupt])
def test_a_failure_mid_way_restores_every_assigned_value(trained, failure, tmp_path,
                                                         monkeypatch):
    _, path = trained_file(tmp_path, Pair(8), include_weights=True)
    dst = Pair(8)
    dst_opt = O.Adam(dst.parameters(), lr=0.02)
    if trained:
        steps(dst, dst_opt, 2, start=10)
    before, weights = snapshot(dst_opt), copy.deepcopy(dst.state_dict())
    calls, raised = [], []

    def failing(real):  # the import's own arrays go through adopt, the rest through assign
        def call(handle, value):
            calls.append(handle)
            if len(calls) == 9:
                raised.append(handle)
                raise failure("injected failure")
            real(handle, value)  # (the rollback's own restores come through here too)
        return call

    monkeypatch.setattr(conv.ADAPTER, "assign", failing(conv.ADAPTER.assign))
    monkeypatch.setattr(conv.ADAPTER, "adopt", failing(conv.ADAPTER.adopt))
    with pytest.raises(OptStateError if failure is RuntimeError else KeyboardInterrupt) as e:
        import_state(dst, path, optimizer=dst_opt, include_weights=True)
    if failure is RuntimeError:
        assert e.value.code == "E_ASSIGN"
    assert raised  # the failure point was reached, after 8 assignments that were undone
    assert bitwise_equal(before, snapshot(dst_opt))
    assert bitwise_equal(weights, dst.state_dict())
    assert (len(dst_opt.state) == 0) == (not trained)


def test_strict_reports_missing_unexpected_and_shape_problems_at_once(tmp_path):
    src_opt, path = trained_file(tmp_path, Pair(8, extra="extra"))
    dst = Pair(6, extra="new")
    dst_opt = O.Adam(dst.parameters(), lr=0.01)
    with pytest.raises(MatchError) as e:
        import_state(dst, path, optimizer=dst_opt)
    got = {(p.code, p.path) for p in e.value.problems}
    # (a weight refused for its shape is also reported unpaired on both sides)
    assert got == {(c, f"{w}/{k}") for k in ("weight", "bias") for c, w in (
        ("E_MATCH_MISSING", "new"), ("E_MATCH_UNEXPECTED", "extra"), ("E_MATCH_SHAPE", "decoder"),
        ("E_MATCH_MISSING", "decoder"), ("E_MATCH_UNEXPECTED", "decoder"))}
    assert len(dst_opt.state) == 0

    # partial import: what matches is imported, the rest keeps no state (torch creates it)
    report = import_state(dst, path, optimizer=dst_opt, strict=False)
    assert [m[0] for m in report.matched] == ["encoder/bias", "encoder/weight"]
    assert set(state_by_name(dst, dst_opt)) == {"encoder.weight", "encoder.bias"}
    src = Pair(8, extra="extra")  # the source's encoder moments, by name
    assert torch.equal(dst_opt.state[dst.encoder.weight]["exp_avg"],
                       src_opt.state[next(p for p in src_opt.param_groups[0]["params"]
                                          if p.shape == (8, 8))]["exp_avg"])
    steps(dst, dst_opt, 1, start=20)  # and torch continues, creating the rest
    assert len(dst_opt.state) == 6


def test_a_mapping_pairs_renamed_weights(tmp_path):
    src = Pair(8)
    src_opt, path = trained_file(tmp_path, src, include_weights=True)
    dst = Pair(8, rename=True)
    dst_opt = O.Adam(dst.parameters(), lr=0.01)
    with pytest.raises(MatchError, match="E_MATCH_MISSING"):
        import_state(dst, path, optimizer=dst_opt, include_weights=True)
    report = import_state(dst, path, optimizer=dst_opt, include_weights=True,
                          mapping={"encoder/weight": "enc/weight", "encoder/bias": "enc/bias"})
    assert ("encoder/weight", "enc/weight", "mapping") in report.matched
    steps(src, src_opt, 1, start=3)
    steps(dst, dst_opt, 1, start=3)
    assert torch.equal(src.encoder.weight, dst.enc.weight)
    assert torch.equal(src.decoder.weight, dst.decoder.weight)


class WithPooler(Pair):
    """An unused pooler (BERT's, in token classification): held by the optimizer, never
    given a gradient, so torch never creates its state."""

    def __init__(self):
        super().__init__(8, extra="pooler")

    def forward(self, x, pool=False):
        h = torch.tanh(self.encoder(x))
        return self.decoder(self.pooler(h) if pool else h)


def _pooled_step(model, opt):
    opt.zero_grad()
    model(torch.ones(2, 8), pool=True).sum().backward()
    opt.step()


def test_a_weight_torch_has_not_stepped_yet_imports_exactly(tmp_path):
    src = WithPooler()
    src_opt, path = trained_file(tmp_path, src)
    state = osf.read(path)
    # held by the optimizer, no state yet: recorded slot-less so an import can pair it
    assert state.weight("pooler/weight").slots == {} and state.weight("pooler/bias").slots == {}
    dst = WithPooler()
    dst.load_state_dict(src.state_dict())
    dst_opt = O.Adam(dst.parameters(), lr=0.01)
    report = import_state(dst, path, optimizer=dst_opt)  # strict
    assert report.ok and not report.missing
    assert dst.pooler.weight not in dst_opt.state  # absent, as in the source
    _pooled_step(src, src_opt)
    _pooled_step(dst, dst_opt)
    assert same_params(src, dst)


def test_a_weight_torch_has_not_stepped_yet_imports_strictly(tmp_path):
    src = WithPooler()
    _, path = trained_file(tmp_path, src)
    dst = WithPooler()
    dst_opt = O.Adam(dst.parameters(), lr=0.01)
    report = import_state(dst, path, optimizer=dst_opt)
    assert report.ok and any("no optimizer state yet" in n for n in report.notes)
    assert dst.pooler.weight not in dst_opt.state  # left to be created at its first step
    stepped = [p for n, p in dst.named_parameters() if not n.startswith("pooler")]
    assert stepped and all(p in dst_opt.state for p in stepped)


def _hf_groups(model):
    """The split Hugging Face Trainer makes: weight decay on weights, none on biases."""
    decay = [p for n, p in model.named_parameters() if not n.endswith("bias")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    return [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}]


def _warmup(step):
    return min(1.0, (step + 1) / 4)


def test_a_trainer_optimizer_pt_is_converted_and_imported_into_a_changed_model(tmp_path):
    torch.manual_seed(0)
    src = Net()
    opt = O.AdamW(_hf_groups(src), lr=0.01)
    sched = O.lr_scheduler.LambdaLR(opt, _warmup)
    train(src, opt, 3, scheduler=sched)
    ckpt = tmp_path / "checkpoint-3"
    ckpt.mkdir()
    torch.save(opt.state_dict(), ckpt / "optimizer.pt")
    torch.save(sched.state_dict(), ckpt / "scheduler.pt")

    # torch's own load into the changed model pairs by position without a word: moments of
    # another shape land on each weight (the next step then fails or, with equal shapes,
    # silently trains with the wrong moments)
    changed = Net(changed=True)
    t_opt = O.AdamW(_hf_groups(changed), lr=0.01)
    t_opt.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    assert any(s["exp_avg"].shape != p.shape for p, s in t_opt.state.items())

    # the conversion: the code that wrote the checkpoint, rebuilt, says which position is
    # which parameter; the file is read with weights_only=True
    orig = Net()
    orig_opt = O.AdamW(_hf_groups(orig), lr=0.01)
    orig_sched = O.lr_scheduler.LambdaLR(orig_opt, _warmup)
    orig_sched.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    out = conv.convert_optimizer_pt(orig, orig_opt, ckpt / "optimizer.pt",
                                    tmp_path / "run.optstate", scheduler=orig_sched)
    assert len(orig_opt.state) == 0  # the optimizer given is only a description
    assert out.optimizer.algorithm == "multi" and out.step == 3

    dst = Net(changed=True)
    _copy_by_role(src, dst)
    groups = _hf_groups(dst)
    dst_opt = O.AdamW(groups[::-1], lr=0.01)  # groups built in the other order too
    dst_sched = O.lr_scheduler.LambdaLR(dst_opt, _warmup)
    report = import_state(dst, tmp_path / "run.optstate", optimizer=dst_opt)
    conv.restore_scheduler(dst_sched, tmp_path / "run.optstate")
    assert len(report.matched) == 8 and report.ok
    train(src, opt, 2, start=3, scheduler=sched)
    train(dst, dst_opt, 2, start=3, scheduler=dst_sched)
    assert same_params(src, dst)


def _copy_by_role(src, dst):
    moved = {"body.0.": "body.1.", "body.2.": "body.5."}
    sd = {next((k.replace(a, b) for a, b in moved.items() if k.startswith(a)), k): v
          for k, v in src.state_dict().items()}
    dst.load_state_dict(sd)


def test_a_positional_file_that_does_not_fit_the_given_model_is_refused(tmp_path):
    torch.manual_seed(0)
    src = Net()
    opt = O.Adam(src.parameters(), lr=0.01)
    train(src, opt, 1)
    wrong = Net(changed=True)  # not the model that wrote it
    with pytest.raises(MatchError) as e:
        conv.from_state_dict(wrong, O.Adam(wrong.parameters()), opt.state_dict())
    assert e.value.code == "E_MATCH_SHAPE" and e.value.problems
    with pytest.raises(osf.FormatError, match="parameter groups"):
        conv.from_state_dict(src, O.Adam(_hf_groups(src)), opt.state_dict())


@pytest.mark.parametrize("flatten", [False, True], ids=["nested", "flattened"])
def test_a_distributed_checkpoint_state_keyed_by_paths_is_converted(flatten, tmp_path):
    from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                         get_optimizer_state_dict)
    torch.manual_seed(0)
    src = chain()
    opt = O.RMSprop(src.parameters(), lr=0.01, momentum=0.5)
    for i in range(3):
        opt.zero_grad()
        src(torch.randn(8, 4, generator=torch.Generator().manual_seed(i))).pow(2).mean() \
            .backward()
        opt.step()
    osd = get_optimizer_state_dict(
        src, opt, options=StateDictOptions(flatten_optimizer_state_dict=flatten))
    # its keys are Sequential positions: "0.weight" is another layer once a Dropout is in
    keys = list(osd["state"]) if not flatten else sorted({k.split(".")[1] for k in osd})
    assert keys[0] == "0" or keys[0] == "0.weight"
    conv.from_dcp_state_dict(src, opt, osd, tmp_path / "d.optstate")
    dst = chain(inserted=True)
    dst.load_state_dict({k.replace("0.", "1.", 1) if k.startswith("0.") else
                         k.replace("2.", "5.", 1) if k.startswith("2.") else
                         k.replace("3.", "7.", 1): v for k, v in src.state_dict().items()})
    dst_opt = O.RMSprop(dst.parameters(), lr=0.01, momentum=0.5)
    import_state(dst, tmp_path / "d.optstate", optimizer=dst_opt)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(9))
    for model, o in ((src, opt), (dst.eval(), dst_opt)):
        o.zero_grad()
        model(x).pow(2).mean().backward()
        o.step()
    assert torch.equal(src[3].weight, dst[7].weight) and torch.equal(src[0].bias, dst[1].bias)


def test_transfer_between_live_models_needs_no_file():
    torch.manual_seed(0)
    src = Pair(8)
    opt = O.NAdam(src.parameters(), lr=0.01)
    steps(src, opt, 2)
    dst = Pair(8)
    dst.load_state_dict(src.state_dict())
    dst_opt = O.NAdam(dst.parameters(), lr=0.01)
    report = transfer_state(src, dst, src_optimizer=opt, optimizer=dst_opt)
    assert report.ok and len(report.matched) == 4
    steps(src, opt, 1, start=2)
    steps(dst, dst_opt, 1, start=2)
    assert all(torch.equal(a, b) for a, b in zip(by_name(src).values(), by_name(dst).values()))


def test_an_import_replaces_state_tensors_and_never_writes_into_the_old_ones(tmp_path,
                                                                             monkeypatch):
    """State tensors are replaced, as load_state_dict does, never written into: the old
    tensor is the rollback snapshot without a copy (issue 16), so a refused import puts the
    very same objects back and one that lands leaves the old objects as they were."""
    src = Pair(8)
    src_opt = O.Adam(src.parameters(), lr=0.01)
    steps(src, src_opt, 3)
    path = export_state(src, tmp_path / "src.optstate", optimizer=src_opt)
    dst = Pair(8)
    dst_opt = O.Adam(dst.parameters(), lr=0.01)
    steps(dst, dst_opt, 2, start=10)
    old = {id(p): dict(dst_opt.state[p]) for p in dst.parameters()}
    old_values = {i: {k: v.clone() for k, v in st.items()} for i, st in old.items()}
    calls = fail_adopt_at(monkeypatch, 5)
    with pytest.raises(OptStateError):
        import_state(dst, path, optimizer=dst_opt)
    assert len(calls) == 5
    for p in dst.parameters():
        for k, v in dst_opt.state[p].items():
            assert torch.equal(v, old_values[id(p)][k])
            if k != "step":  # (a scalar is journalled as its value: a new tensor comes back)
                assert v is old[id(p)][k]  # the same object back
    monkeypatch.undo()
    import_state(dst, path, optimizer=dst_opt)
    for p in dst.parameters():
        for k in ("exp_avg", "exp_avg_sq"):
            assert dst_opt.state[p][k] is not old[id(p)][k]
            assert torch.equal(old[id(p)][k], old_values[id(p)][k])  # never written into
    assert bitwise_equal(state_by_name(dst, dst_opt), state_by_name(src, src_opt))


def _creations(monkeypatch):
    """The state tensors shaped like a parameter that the adapter creates itself."""
    made = []
    real = conv._create

    def counting(spec, group, p):
        out = real(spec, group, p)
        if isinstance(out, torch.Tensor) and out.shape == p.shape:
            made.append(spec.key)
        return out
    monkeypatch.setattr(conv, "_create", counting)
    return made


def test_a_fresh_import_creates_no_companion_state_it_then_replaces(tmp_path, monkeypatch):
    """Adam's exp_avg and exp_avg_sq are created by torch together: an import assigning
    both into a fresh optimizer makes no zeros for the second (issue 16), and the state it
    leaves is the file's, bit for bit, and steps as the source does."""
    src = Pair(8)
    src_opt, path = trained_file(tmp_path, src)
    dst = Pair(8)
    dst.load_state_dict(src.state_dict())
    dst_opt = O.Adam(dst.parameters(), lr=0.01)
    made = _creations(monkeypatch)
    import_state(dst, path, optimizer=dst_opt)
    assert made == []
    assert not any(isinstance(v, conv._Deferred) for st in dst_opt.state.values()
                   for v in st.values())
    def by_role(model, opt):  # (torch's own state_dict order follows assignment order)
        named = state_by_name(model, opt)
        return {n: {k: named[n][k] for k in sorted(named[n])} for n in sorted(named)}
    assert bitwise_equal(by_role(src, src_opt), by_role(dst, dst_opt))
    steps(src, src_opt, 2, start=20)
    steps(dst, dst_opt, 2, start=20)
    assert bitwise_equal(by_role(src, src_opt), by_role(dst, dst_opt))
    assert same_params(src, dst)


def test_an_import_broken_off_without_rollback_leaves_state_torch_steps_with(tmp_path,
                                                                              monkeypatch):
    """rollback=False and a failure after exp_avg of a parameter: its exp_avg_sq, put off
    until the import ends, is created then as torch would (zeros), so step() runs."""
    _, path = trained_file(tmp_path, Pair(8))
    dst = Pair(8)
    dst_opt = O.Adam(dst.parameters(), lr=0.01)
    made = _creations(monkeypatch)
    calls = fail_adopt_at(monkeypatch, 2)
    with pytest.raises(OptStateError) as e:
        import_state(dst, path, optimizer=dst_opt, rollback=False)
    assert e.value.code == "E_ASSIGN"
    first = calls[0]
    entry = dst_opt.state[first.param]
    assert not any(isinstance(v, conv._Deferred) for st in dst_opt.state.values()
                   for v in st.values())
    companions = {sk.key for sk in first.companions if sk.key != first.spec.key
                  and sk.init != "none" and ":" not in sk.init}
    assert companions and set(made) == companions
    for key in companions:
        assert torch.count_nonzero(entry[key]) == 0
    steps(dst, dst_opt, 1, start=30)  # torch steps with what the broken import left
    assert all(torch.isfinite(v).all() for st in dst_opt.state.values()
               for v in st.values() if isinstance(v, torch.Tensor))


def test_a_rolled_back_fresh_import_leaves_no_state_and_no_waiting_companion(tmp_path,
                                                                              monkeypatch):
    _, path = trained_file(tmp_path, Pair(8))
    dst = Pair(8)
    dst_opt = O.Adam(dst.parameters(), lr=0.01)
    calls = fail_adopt_at(monkeypatch, 3)
    with pytest.raises(OptStateError):
        import_state(dst, path, optimizer=dst_opt)
    assert len(dst_opt.state) == 0
    assert conv.ADAPTER._deferred == []
