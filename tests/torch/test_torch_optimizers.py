"""Every torch.optim optimizer's state lands on each weight's role and continues identically."""

import copy

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import optstate_format as osf  # noqa: E402
from optstate_format import UnsupportedError  # noqa: E402
from optstate_format.converters import torch as conv  # noqa: E402

from torch_models import (Net, SparseNet, Twin, by_name, chain, export_state,  # noqa: E402
                          import_state, same_params, state_by_name, train)

pytestmark = pytest.mark.framework

O = torch.optim
OPTIMIZERS = {
    "sgd": lambda ps: O.SGD(ps, lr=0.05),
    "sgd_momentum_dampening": lambda ps: O.SGD(ps, lr=0.05, momentum=0.9, dampening=0.1),
    "sgd_nesterov": lambda ps: O.SGD(ps, lr=0.05, momentum=0.9, nesterov=True,
                                     weight_decay=1e-3),
    "adam": lambda ps: O.Adam(ps, lr=0.01),
    "adam_amsgrad": lambda ps: O.Adam(ps, lr=0.01, amsgrad=True, weight_decay=1e-2),
    "adamw_amsgrad": lambda ps: O.AdamW(ps, lr=0.01, amsgrad=True),
    "adam_fused": lambda ps: O.Adam(ps, lr=0.01, fused=True),
    "sgd_foreach": lambda ps: O.SGD(ps, lr=0.05, momentum=0.9, foreach=True),
    "rmsprop": lambda ps: O.RMSprop(ps, lr=0.01),
    "rmsprop_centered_momentum": lambda ps: O.RMSprop(ps, lr=0.01, momentum=0.5,
                                                      centered=True),
    "adagrad": lambda ps: O.Adagrad(ps, lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1),
    "adadelta": lambda ps: O.Adadelta(ps),
    "adamax": lambda ps: O.Adamax(ps, lr=0.01),
    "nadam": lambda ps: O.NAdam(ps, lr=0.01),
    "nadam_decoupled": lambda ps: O.NAdam(ps, lr=0.01, weight_decay=0.01,
                                          decoupled_weight_decay=True),
    "radam": lambda ps: O.RAdam(ps, lr=0.01, decoupled_weight_decay=True, weight_decay=0.01),
    "asgd": lambda ps: O.ASGD(ps, lr=0.01, t0=1),
    "rprop": lambda ps: O.Rprop(ps, lr=0.01),
    "adafactor": lambda ps: O.Adafactor(ps, lr=0.01),
    "sparse_adam": lambda ps: O.SparseAdam([p for p in ps if p.requires_grad], lr=0.01),
    "muon": lambda ps: O.Muon(ps, lr=0.01),
}
ALGORITHM = {"sgd": "sgd_torch", "adam": "adam", "adamw": "adamw", "rmsprop": "rmsprop_torch",
             "adagrad": "adagrad", "adadelta": "adadelta", "adamax": "adamax_torch",
             "nadam": "nadam_torch", "radam": "radam", "asgd": "asgd", "rprop": "rprop",
             "adafactor": "adafactor_torch", "sparse_adam": "sparse_adam",
             "muon": "muon_torch"}


# Net(changed=True)'s body holds the same Linear layers at other positions
CHANGED = {f"body.{a}.{w}": f"body.{b}.{w}" for a, b in ((1, 0), (5, 2))
           for w in ("weight", "bias")}


def make(kind, changed):
    if kind == "sparse_adam":
        return SparseNet(changed)
    return Net(changed, bias=kind != "muon")  # Muon takes 2-D weights only


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_every_optimizer_continues_identically_in_a_changed_model(kind, tmp_path):
    """Train k steps, export; a model built in another order with inserted parameterless
    layers and a fresh optimizer (no state yet: torch creates it at the first step) imports;
    one more step equals the uninterrupted run's, bit for bit."""
    torch.manual_seed(0)
    src = make(kind, False)
    factory = OPTIMIZERS[kind]
    opt = factory(src.parameters())
    train(src, opt, 3)
    path = export_state(src, tmp_path / "run.optstate", optimizer=opt, include_weights=True)

    dst = make(kind, True)
    dst_opt = factory(dst.parameters())
    lazy = kind != "adagrad"  # Adagrad creates its state in __init__
    assert (len(dst_opt.state) == 0) == lazy
    report = import_state(dst, path, optimizer=dst_opt, include_weights=True)
    assert report.ok and not report.missing and not report.unexpected

    family = kind.split("_")[0] if kind not in ("sparse_adam",) else kind
    assert osf.read(path).optimizer.algorithm == ALGORITHM[family]
    # every state entry is on the parameter of the same role (names equal), bit for bit
    a, b = state_by_name(src, opt), state_by_name(dst, dst_opt)
    b = {CHANGED.get(n, n): v for n, v in b.items()}
    assert a.keys() == b.keys() and (bool(a) or kind == "sgd")  # plain SGD keeps no state
    for n in a:
        assert a[n].keys() == b[n].keys(), n
        for k in a[n]:
            if isinstance(a[n][k], torch.Tensor):
                assert a[n][k].dtype == b[n][k].dtype and torch.equal(a[n][k], b[n][k]), (n, k)
            else:
                assert a[n][k] == b[n][k] and type(a[n][k]) is type(b[n][k]), (n, k)
    assert same_params(src, dst)
    before = {n: p.clone() for n, p in by_name(src).items()}
    train(src, opt, 1, start=3)
    train(dst, dst_opt, 1, start=3)
    assert same_params(src, dst)
    assert any(not torch.equal(before[n], p) for n, p in by_name(src).items())


def test_swapped_attributes_torch_load_swaps_the_moments_ours_lands_each_on_its_role(tmp_path):
    torch.manual_seed(0)
    src = Twin()
    opt = O.Adam(src.parameters(), lr=0.01)
    train(src, opt, 3)
    assert not torch.equal(opt.state[src.first.weight]["exp_avg"],
                           opt.state[src.second.weight]["exp_avg"])

    # torch's own positional load: silently swapped (equal shapes, no error)
    theirs = Twin(swapped=True)
    theirs.load_state_dict(src.state_dict())
    t_opt = O.Adam(theirs.parameters(), lr=0.01)
    t_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert torch.equal(t_opt.state[theirs.first.weight]["exp_avg"],
                       opt.state[src.second.weight]["exp_avg"])
    assert torch.equal(t_opt.state[theirs.second.weight]["exp_avg_sq"],
                       opt.state[src.first.weight]["exp_avg_sq"])

    ours = Twin(swapped=True)
    ours.load_state_dict(src.state_dict())
    o_opt = O.Adam(ours.parameters(), lr=0.01)
    export_state(src, tmp_path / "twin.optstate", optimizer=opt)
    report = import_state(ours, tmp_path / "twin.optstate", optimizer=o_opt)
    assert sorted(m[:2] for m in report.matched) == [
        ("first/bias", "first/bias"), ("first/weight", "first/weight"),
        ("second/bias", "second/bias"), ("second/weight", "second/weight")]
    for name in ("first", "second"):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(o_opt.state[getattr(ours, name).weight][key],
                               opt.state[getattr(src, name).weight][key])

    for model, o in ((src, opt), (theirs, t_opt), (ours, o_opt)):
        train(model, o, 1, start=3)
    assert same_params(src, ours)
    assert not same_params(src, theirs)  # the swapped moments moved the weights differently


def test_sequential_with_inserted_dropout_identity_relu_keeps_every_slot_on_its_role(tmp_path):
    torch.manual_seed(0)
    src = chain()
    opt = O.Adam(src.parameters(), lr=0.01)
    for i in range(3):
        x = torch.randn(8, 4, generator=torch.Generator().manual_seed(i))
        opt.zero_grad()
        src(x).pow(2).mean().backward()
        opt.step()
    export_state(src, tmp_path / "c.optstate", optimizer=opt)
    # torch.distributed.checkpoint's keys are the shifted positions: "0.weight" -> "1.weight"
    dst = chain(inserted=True)
    dst_opt = O.Adam(dst.parameters(), lr=0.01)
    report = import_state(dst, tmp_path / "c.optstate", optimizer=dst_opt)
    assert {(f, t) for f, t, _ in report.matched} == {
        ("0/weight", "1/weight"), ("0/bias", "1/bias"), ("2/weight", "5/weight"),
        ("2/bias", "5/bias"), ("3/weight", "7/weight"), ("3/bias", "7/bias")}
    assert {by for _, _, by in report.matched} == {"structure"}
    for f, t, _ in report.matched:
        fm, fw = f.split("/")
        tm, tw = t.split("/")
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(dst_opt.state[getattr(dst[int(tm)], tw)][key],
                               opt.state[getattr(src[int(fm)], fw)][key])


def test_parameter_groups_pair_through_their_weights_and_keep_their_learning_rates(tmp_path):
    torch.manual_seed(0)
    src = Net()
    opt = O.AdamW([{"params": [p for n, p in src.named_parameters() if "bias" not in n],
                    "weight_decay": 0.1},
                   {"params": [p for n, p in src.named_parameters() if "bias" in n],
                    "weight_decay": 0.0, "lr": 0.003}], lr=0.01)
    sched = O.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    train(src, opt, 3, scheduler=sched)
    path = export_state(src, tmp_path / "g.optstate", optimizer=(opt, sched),
                        include_weights=True)
    st = osf.read(path)
    assert st.optimizer.algorithm == "multi"
    assert [c["algorithm"] for c in st.optimizer.components] == ["adamw", "adamw"]
    assert st.optimizer.learning_rate["class_name"] == "StepLR"
    assert float(st.globals["component.1.learning_rate"]) == opt.param_groups[1]["lr"]

    dst = Net(changed=True)
    # the groups in the other order: pairing goes through the weights each group owns
    dst_opt = O.AdamW([{"params": [p for n, p in dst.named_parameters() if "bias" in n],
                        "weight_decay": 0.0, "lr": 0.003},
                       {"params": [p for n, p in dst.named_parameters() if "bias" not in n],
                        "weight_decay": 0.1}], lr=0.01)
    dst_sched = O.lr_scheduler.StepLR(dst_opt, step_size=2, gamma=0.5)
    import_state(dst, path, optimizer=dst_opt, include_weights=True)
    conv.restore_scheduler(dst_sched, path)
    assert dst_opt.param_groups[0]["lr"] == opt.param_groups[1]["lr"] == 0.0015
    assert dst_opt.param_groups[1]["lr"] == opt.param_groups[0]["lr"] == 0.005
    assert dst_sched.last_epoch == sched.last_epoch == 3
    train(src, opt, 2, start=3, scheduler=sched)
    train(dst, dst_opt, 2, start=3, scheduler=dst_sched)
    assert same_params(src, dst)
    assert dst_opt.param_groups[1]["lr"] == opt.param_groups[0]["lr"] == 0.0025


def test_groups_split_differently_are_refused_with_nothing_created(tmp_path):
    torch.manual_seed(0)
    src = Net()
    opt = O.Adam([{"params": list(src.proj.parameters())},
                  {"params": list(src.head.parameters()) + list(src.body.parameters())}])
    train(src, opt, 1)
    export_state(src, tmp_path / "g.optstate", optimizer=opt)
    dst = Net()
    dst_opt = O.Adam([{"params": list(dst.proj.parameters()) + list(dst.head.parameters())},
                      {"params": list(dst.body.parameters())}])
    with pytest.raises(osf.MatchError) as e:
        import_state(dst, tmp_path / "g.optstate", optimizer=dst_opt)
    assert {p.code for p in e.value.problems} == {"E_MATCH_COMPONENT"}
    assert len(dst_opt.state) == 0


def test_lr_scheduler_state_is_data_and_restores_only_into_its_class(tmp_path):
    src = Twin()
    opt = O.SGD(src.parameters(), lr=0.1)
    sched = O.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=20)
    train(src, opt, 4, scheduler=sched)
    path = export_state(src, tmp_path / "s.optstate", optimizer=(opt, sched))
    lr = osf.read(path).optimizer.learning_rate
    assert lr["kind"] == "schedule" and lr["config"]["last_epoch"] == 4
    dst = Twin()
    dst_opt = O.SGD(dst.parameters(), lr=0.1)
    with pytest.raises(UnsupportedError, match="OneCycleLR"):
        conv.restore_scheduler(O.lr_scheduler.StepLR(dst_opt, 3), path)
    dst_sched = O.lr_scheduler.OneCycleLR(dst_opt, max_lr=0.5, total_steps=20)
    import_state(dst, path, optimizer=dst_opt)
    conv.restore_scheduler(dst_sched, path)
    sched.step()
    dst_sched.step()
    assert dst_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert dst_sched.state_dict() == sched.state_dict()


def test_a_subclass_is_written_in_the_generic_form_and_continues(tmp_path):
    class MyAdam(O.Adam):
        pass

    torch.manual_seed(0)
    src = Twin()
    opt = MyAdam(src.parameters(), lr=0.01)
    train(src, opt, 2)
    path = export_state(src, tmp_path / "x.optstate", optimizer=opt)
    st = osf.read(path)
    assert st.optimizer.algorithm == "generic:MyAdam"
    assert sorted(st.weight("first/weight").slots) == ["exp_avg", "exp_avg_sq", "step"]
    dst = Twin(swapped=True)
    dst.load_state_dict(src.state_dict())
    dst_opt = MyAdam(dst.parameters(), lr=0.01)
    train(dst, dst_opt, 1, start=50)  # generic state cannot be created: let torch create it
    dst.load_state_dict(src.state_dict())
    import_state(dst, path, optimizer=dst_opt)
    train(src, opt, 1, start=2)
    train(dst, dst_opt, 1, start=2)
    assert same_params(src, dst)
    # and a built-in Adam refuses it (another algorithm string)
    with pytest.raises(osf.MatchError, match="E_MATCH_ALGORITHM"):
        import_state(dst, path, optimizer=O.Adam(dst.parameters()))


def test_lbfgs_is_refused_with_the_reason(tmp_path):
    m = Twin()
    with pytest.raises(UnsupportedError, match="not a state per parameter"):
        export_state(m, tmp_path / "l.optstate", optimizer=O.LBFGS(m.parameters()))


def test_an_nn_module_needs_optimizer(tmp_path):
    with pytest.raises(UnsupportedError, match="pass optimizer="):
        export_state(Twin(), tmp_path / "n.optstate")


def test_step_is_a_per_weight_slot_because_counts_can_differ(tmp_path):
    """A parameter without a gradient in a step is skipped by torch: its count stays behind.
    The per-weight `step` slot keeps that exactly (a single global could not)."""
    torch.manual_seed(0)
    src = Twin()
    opt = O.Adam(src.parameters(), lr=0.01)
    train(src, opt, 2)
    src.second.weight.requires_grad_(False)  # frozen for one step: no grad, not stepped
    train(src, opt, 1, start=2)
    src.second.weight.requires_grad_(True)
    path = export_state(src, tmp_path / "s.optstate", optimizer=opt)
    st = osf.read(path)
    assert float(st.weight("first/weight").slots["step"]) == 3.0
    assert float(st.weight("second/weight").slots["step"]) == 2.0
    assert st.step == 3
    dst = Twin(swapped=True)
    dst.load_state_dict(src.state_dict())
    dst_opt = O.Adam(dst.parameters(), lr=0.01)
    import_state(dst, path, optimizer=dst_opt)
    train(src, opt, 1, start=3)
    train(dst, dst_opt, 1, start=3)
    assert same_params(src, dst)


def test_bfloat16_parameters_and_state_round_trip(tmp_path):
    torch.manual_seed(0)
    src = Twin().to(torch.bfloat16)
    opt = O.Adam(src.parameters(), lr=0.01)
    train_bf16 = [torch.randn(4, 8, generator=torch.Generator().manual_seed(i)).bfloat16()
                  for i in range(3)]
    for x in train_bf16[:2]:
        opt.zero_grad()
        src(x).float().pow(2).mean().backward()
        opt.step()
    path = export_state(src, tmp_path / "b.optstate", optimizer=opt, include_weights=True)
    assert osf.read(path).weight("first/weight").dtype == "bfloat16"
    dst = Twin(swapped=True).to(torch.bfloat16)
    dst_opt = O.Adam(dst.parameters(), lr=0.01)
    import_state(dst, path, optimizer=dst_opt, include_weights=True)
    for model, o in ((src, opt), (dst, dst_opt)):
        o.zero_grad()
        model(train_bf16[2]).float().pow(2).mean().backward()
        o.step()
    assert same_params(src, dst)


def test_an_optimizer_over_parameters_outside_the_model_is_refused(tmp_path):
    m = Twin()
    stray = nn.Parameter(torch.zeros(2))
    opt = O.SGD(list(m.parameters()) + [stray], lr=0.1, momentum=0.9)
    with pytest.raises(UnsupportedError, match="not part of the model"):
        export_state(m, tmp_path / "s.optstate", optimizer=opt)


def _one_cycle(opt):
    return O.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=20)


def _cyclic(opt):
    return O.lr_scheduler.CyclicLR(opt, base_lr=0.01, max_lr=0.5, step_size_up=4)


@pytest.mark.parametrize("opt_cls,key,make", [(O.Adam, "betas", _one_cycle),
                                              (O.SGD, "momentum", _one_cycle),
                                              (O.SGD, "momentum", _cyclic)],
                         ids=["adam-onecycle", "sgd-onecycle", "sgd-cyclic"])
def test_a_scheduler_that_cycles_momentum_resumes_bit_for_bit(opt_cls, key, make, tmp_path):
    """OneCycleLR also sets each group's momentum (Adam's betas[0], SGD's momentum) every
    step: a resumed run must step with the value the source had reached, not the one its
    new scheduler started from."""
    torch.manual_seed(0)
    src = Twin()
    kw = {"momentum": 0.9} if opt_cls is O.SGD else {}
    opt = opt_cls(src.parameters(), lr=0.1, **kw)
    sched = make(opt)
    train(src, opt, 5, scheduler=sched)
    path = export_state(src, tmp_path / "m.optstate", optimizer=(opt, sched),
                        include_weights=True)
    dst = Twin()
    dst_opt = opt_cls(dst.parameters(), lr=0.1, **kw)
    dst_sched = make(dst_opt)
    assert dst_opt.param_groups[0][key] != opt.param_groups[0][key]  # the test means it
    import_state(dst, path, optimizer=dst_opt, include_weights=True)
    conv.restore_scheduler(dst_sched, path)
    assert dst_opt.param_groups[0][key] == opt.param_groups[0][key]
    assert dst_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    train(src, opt, 3, start=5, scheduler=sched)
    train(dst, dst_opt, 3, start=5, scheduler=dst_sched)
    assert same_params(src, dst)
