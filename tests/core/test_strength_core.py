"""Test strength (issue 18): behaviours no test pinned down, framework-free.

Slot sets in both directions, every conflict refused even with strict=False, full archives
checked before the first assignment, one pinned identity through a multi-output node, and a
test that every matching/import/write code of spec section 11 is asserted somewhere.
"""

import hashlib
import pathlib
import re

import numpy as np
import pytest

import optstate_format as osf
from optstate_format import _api, _identity
from optstate_format._errors import FormatError, MatchError, OptStateError, UnsupportedError
from optstate_format._identity import ROOT, Graph, Layer, Node
from optstate_format._match import plan_import
from optstate_format.adapter import (BaseAdapter, ModelDescription, ModelWeight,
                                     OptimizerDescription, Variable, WeightSlots)

from helpers import adam_state

ROOT_DIR = pathlib.Path(__file__).resolve().parents[2]


def target(state, *, slots=("m", "v"), slot_shape=None, slot_dtype="float32", hints=None,
           component=None, extra=(), algorithm="adam", components=(), global_dtype="int64",
           hyper=None):
    """A target mirroring ``state`` (same paths and hints unless ``hints`` says otherwise)."""
    weights = []
    for w in state.weights:
        shape = (slot_shape or {}).get(w.path, {})
        vs = {s: Variable((w.path, s), shape.get(s, w.shape), slot_dtype) for s in slots}
        weights.append(osf.WeightEntry(
            w.path, w.shape, w.dtype, True, slots=vs,
            hints=dict((hints or {}).get(w.path, w.hints)),
            value=Variable((w.path, "value"), w.shape, w.dtype),
            component=(component or {}).get(w.path, 0)))
    weights.extend(extra)
    globals_ = {k: Variable(k, tuple(np.shape(v)), global_dtype) for k, v in state.globals.items()}
    return osf.OptimizerState(
        osf.OptimizerInfo(algorithm, "Adam", "keras.optimizers", dict(hyper or {}),
                          components=list(components)),
        weights=weights, globals=globals_, producer={"framework": "t"})


def handles(assignments):
    return {v.handle: a for v, a in assignments}


def codes(err):
    return [p.code for p in err.problems]


# ---- slot sets, both directions ----------------------------------------------------------

@pytest.mark.parametrize("slot", ["v_hat", "ema"])
def test_a_file_slot_the_target_does_not_keep_is_refused_naming_the_slot(slot):
    st = adam_state()
    for w in st.weights:  # Adam with amsgrad (v_hat) or use_ema (ema) into plain Adam
        w.slots[slot] = np.ones(w.shape, np.float32)
    with pytest.raises(MatchError) as e:
        plan_import(st, target(st))
    assert codes(e.value) == ["E_MATCH_SLOTS"] * 3
    assert [p.path for p in e.value.problems] == [w.path for w in st.weights]
    for p in e.value.problems:
        assert f"file has slot {slot!r}" in p.message and "does not keep" in p.message
    assert e.value.code == "E_MATCH"
    # non-strict imports the slots both keep and never the one the target lacks
    report, assigns = plan_import(st, target(st), strict=False)
    assert [p.code for p in report.mismatched] == ["E_MATCH_SLOTS"] * 3
    assert sorted(h for h in handles(assigns) if isinstance(h, tuple)) == sorted(
        (w.path, s) for w in st.weights for s in ("m", "v"))


@pytest.mark.parametrize("slot", ["v_hat", "ema"])
def test_a_target_slot_the_file_lacks_is_refused_naming_the_slot(slot):
    st = adam_state()
    with pytest.raises(MatchError) as e:
        plan_import(st, target(st, slots=("m", "v", slot)))
    assert codes(e.value) == ["E_MATCH_SLOTS"] * 3
    for p in e.value.problems:
        assert f"keeps slot {slot!r}" in p.message and "the file has none" in p.message


# ---- every conflict is refused, strict or not --------------------------------------------

def test_a_mapping_sending_two_file_paths_to_one_model_path_is_refused_even_non_strict():
    st = adam_state(n_weights=2)
    a, b = st.weights[0].path, st.weights[1].path
    with pytest.raises(MatchError) as e:
        plan_import(st, target(st), mapping={a: a, b: a}, strict=False)
    assert codes(e.value) == ["E_MATCH_MAPPING"]
    p = e.value.problems[0]
    assert p.path == b and p.message == f"mapping sends it to {a!r}, already the target of {a!r}"


@pytest.mark.parametrize("mapping,why", [
    ({"nope/kernel": "layer_0/kernel"}, "which the file does not contain"),
    ({"layer_0/kernel": "nope/kernel"}, "which the model does not have"),
    (["layer_0/kernel"], "mapping must be a dict"),
])
def test_a_mapping_naming_what_does_not_exist_is_refused_even_non_strict(mapping, why):
    st = adam_state(n_weights=2)
    with pytest.raises(MatchError) as e:
        plan_import(st, target(st), mapping=mapping, strict=False)
    assert codes(e.value) == ["E_MATCH_MAPPING"] and why in e.value.problems[0].message
    first = next(iter(mapping)) if isinstance(mapping, dict) else None
    assert e.value.problems[0].path == first


def test_a_callable_mapping_pairs_what_it_returns_and_leaves_none_to_identity():
    st = adam_state(n_weights=2)
    a, b = st.weights[0].path, st.weights[1].path
    tgt = target(st, hints={a: {"structural": None, "name": None}})
    report, _ = plan_import(st, tgt, mapping=lambda p: p if p == a else None)
    assert sorted(report.matched) == [(a, a, "mapping"), (b, b, "structure")]


def test_a_name_match_and_a_structure_match_landing_on_one_target_refuse_both():
    # Spec 8.4: two file weights claiming one target weight is a conflict, whichever sources
    # made the claims. File weight 0 is "enc/kernel" by name; file weight 1 has the structure
    # of that same model weight. Neither wins: both are refused, naming each other.
    st = adam_state(n_weights=2)
    st.weights[1].shape = st.weights[0].shape
    st.weights[1].slots = {k: v[:2] for k, v in st.weights[1].slots.items()}
    a, b = st.weights[0].path, st.weights[1].path
    st.weights[0].hints = {"structural": "g:" + "a" * 32, "name": a}
    tgt = target(st, hints={a: {"structural": st.weights[1].hints["structural"], "name": a},
                            b: {"structural": None, "name": None}})
    with pytest.raises(MatchError) as e:
        plan_import(st, tgt, strict=False)
    assert codes(e.value) == ["E_MATCH_CONFLICT", "E_MATCH_CONFLICT"]
    by_path = {p.path: p.message for p in e.value.problems}
    assert set(by_path) == {a, b}
    assert f"[{b!r}] all identify model weight {a!r}" in by_path[a]
    assert f"[{a!r}] all identify model weight {a!r}" in by_path[b]
    assert e.value.report.matched == []


def test_a_name_and_a_structure_agreeing_on_one_target_match_as_name_and_structure():
    st = adam_state(n_weights=2)
    a, b = st.weights[0].path, st.weights[1].path
    st.weights[0].hints["name"] = a
    tgt = target(st, hints={a: {"structural": st.weights[0].hints["structural"], "name": a},
                            b: {"structural": st.weights[1].hints["structural"], "name": None}})
    report, _ = plan_import(st, tgt)
    assert sorted(report.matched) == [(a, a, "name+structure"), (b, b, "structure")]


def test_a_name_match_alone_is_reported_as_by_name():
    st = adam_state(n_weights=1)
    a = st.weights[0].path
    st.weights[0].hints = {"structural": None, "name": a}
    report, _ = plan_import(st, target(st, hints={a: {"structural": "g:" + "b" * 32,
                                                      "name": a}}))
    assert report.matched == [(a, a, "name")]


def test_a_name_and_a_structure_disagreeing_are_refused_even_non_strict():
    st = adam_state(n_weights=2)
    a, b = st.weights[0].path, st.weights[1].path
    st.weights[0].hints["name"] = a
    tgt = target(st, hints={a: {"structural": None, "name": a},
                            b: {"structural": st.weights[0].hints["structural"], "name": None}})
    with pytest.raises(MatchError) as e:
        plan_import(st, tgt, strict=False)
    assert codes(e.value) == ["E_MATCH_CONFLICT"] and e.value.problems[0].path == a
    assert (f"name identifies model weight {a!r} but its structure identifies {b!r}"
            in e.value.problems[0].message)


def test_an_identity_shared_by_two_model_weights_is_refused_even_non_strict():
    st = adam_state(n_weights=2)
    a, b = st.weights[0].path, st.weights[1].path
    shared = st.weights[0].hints["structural"]
    tgt = target(st, hints={a: {"structural": shared, "name": None},
                            b: {"structural": shared, "name": None}})
    with pytest.raises(MatchError) as e:
        plan_import(st, tgt, strict=False)
    assert codes(e.value) == ["E_MATCH_AMBIGUOUS"]
    p = e.value.problems[0]
    assert p.path == a and "shared by several weights in the model" in p.message


def test_an_identity_shared_by_two_file_weights_is_refused_naming_the_file_side():
    st = adam_state(n_weights=2)
    st.weights[1].hints["structural"] = st.weights[0].hints["structural"]
    with pytest.raises(MatchError) as e:
        plan_import(st, target(st), strict=False)
    assert codes(e.value) == ["E_MATCH_AMBIGUOUS", "E_MATCH_AMBIGUOUS"]
    assert all("shared by several weights in the file" in p.message for p in e.value.problems)


def test_a_weight_the_mapping_takes_is_not_claimed_again_by_identity():
    st = adam_state(n_weights=2)
    a, b = st.weights[0].path, st.weights[1].path
    st.weights[1].shape = st.weights[0].shape
    st.weights[1].slots = {k: v[:2] for k, v in st.weights[1].slots.items()}
    report, assigns = plan_import(st, target(st), mapping={a: b}, strict=False)
    assert report.matched == [(a, b, "mapping")]  # b's own identity never claims b again
    assert report.missing == [a] and report.unexpected == [b]
    np.testing.assert_array_equal(handles(assigns)[(b, "m")], st.weights[0].slots["m"])


def multi_state(file_components, target_components, *, algorithms=("adam", "adam")):
    st = adam_state(n_weights=2)
    st.optimizer.algorithm, st.optimizer.class_name = "multi", "MultiOptimizer"
    st.optimizer.components = [{"algorithm": alg, "class_name": alg} for alg in algorithms]
    for w, c in zip(st.weights, file_components):
        w.component = c
    st.globals = {"iterations": np.array(4, np.int64)}
    for c in range(len(algorithms)):
        st.globals[f"component.{c}.iterations"] = np.array(10 + c, np.int64)
    comp = {w.path: c for w, c in zip(st.weights, target_components)}
    n_target = max(target_components) + 1
    tgt = target(st, algorithm="multi", component=comp,
                 components=[{"algorithm": "adam", "class_name": "Adam"}] * n_target)
    tgt.globals = {k: Variable(k, (), "int64") for k in ["iterations"] + [
        f"component.{c}.iterations" for c in range(n_target)]}
    return st, tgt


def test_two_file_inner_optimizers_owning_one_target_inner_optimizers_weights_are_refused():
    st, tgt = multi_state([0, 1], [0, 0])
    with pytest.raises(MatchError) as e:
        plan_import(st, tgt, strict=False)
    assert codes(e.value) == ["E_MATCH_COMPONENT"]
    assert e.value.problems[0].path == st.weights[1].path
    assert "optimizer maps of the two models disagree" in e.value.problems[0].message
    assert e.value.problems[0].message.startswith(
        "the target's inner optimizer 0 holds weights that the file gives to different inner "
        "optimizers (0 and 1)")


def test_one_file_inner_optimizer_split_over_two_target_inner_optimizers_is_refused():
    st, tgt = multi_state([0, 0], [0, 1])
    with pytest.raises(MatchError) as e:
        plan_import(st, tgt, strict=False)
    assert codes(e.value) == ["E_MATCH_COMPONENT"]
    assert e.value.problems[0].message.startswith(
        "the file's inner optimizer 0 holds weights that the target gives to different inner "
        "optimizers (0 and 1)")


def test_the_component_refusal_message_names_the_two_file_inner_optimizers():
    st, tgt = multi_state([0, 1], [0, 0])
    with pytest.raises(MatchError) as e:
        plan_import(st, tgt, strict=False)
    pair = re.search(r"\((\d+) and (\d+)\)", e.value.problems[0].message)
    assert pair is None or pair.group(1) != pair.group(2)


def test_inner_optimizers_are_paired_by_their_weights_and_their_globals_renamed():
    st, tgt = multi_state([0, 1], [1, 0])  # the same split, numbered the other way round
    report, assigns = plan_import(st, tgt)
    got = handles(assigns)
    assert int(got["component.1.iterations"]) == 10 and int(got["component.0.iterations"]) == 11
    assert int(got["iterations"]) == 4


def test_inner_optimizers_of_different_algorithms_for_the_same_weights_are_refused():
    st, tgt = multi_state([0, 1], [0, 1], algorithms=("adam", "sgd"))
    with pytest.raises(MatchError) as e:
        plan_import(st, tgt, strict=False)
    assert codes(e.value) == ["E_MATCH_ALGORITHM"]
    assert "inner optimizer 1 of the file is 'sgd'" in e.value.problems[0].message


def test_globals_of_an_inner_optimizer_none_of_whose_weights_matched_are_dropped():
    st, tgt = multi_state([0, 1], [0, 0])
    st.weights[1].slots = {}  # weights without slots say nothing about inner optimizers
    tgt.weights[1].slots = {}
    report, assigns = plan_import(st, tgt, strict=False)
    got = handles(assigns)
    assert int(got["component.0.iterations"]) == 10
    assert [p.code for p in report.mismatched] == []


def test_an_update_rule_hyperparameter_the_target_lacks_is_refused_even_non_strict():
    st = adam_state()
    st.optimizer.hyperparameters["decay"] = 0.01
    with pytest.raises(MatchError) as e:
        plan_import(st, target(st), strict=False)
    assert codes(e.value) == ["E_MATCH_HYPER"] and "decay=0.01" in e.value.problems[0].message
    st.optimizer.hyperparameters["decay"] = 0.0  # the neutral value changes nothing
    assert plan_import(st, target(st))[0].ok
    st.optimizer.hyperparameters["decay"] = 0.01  # the target has it: only a note if it differs
    report, _ = plan_import(st, target(st, hyper={"decay": 0.02}))
    assert "hyperparameter 'decay': file 0.01, target 0.02 (target kept)" in report.notes


def test_an_algorithm_mismatch_names_both_and_the_registry_note():
    st = adam_state()
    st.optimizer.algorithm = "nadam_legacy"
    with pytest.raises(MatchError) as e:
        plan_import(st, target(st, algorithm="nadam"), strict=False)
    assert codes(e.value) == ["E_MATCH_ALGORITHM"]
    msg = e.value.problems[0].message
    assert "'nadam_legacy'" in msg and "'nadam'" in msg and "0.96^(schedule_decay * t)" in msg


def test_globals_the_two_sides_do_not_share_are_refused_unless_private():
    st = adam_state()
    st.globals["u_product"] = np.array(1.0, np.float32)
    tgt = target(st)
    del tgt.globals["u_product"]
    tgt.globals["learning_rate"] = Variable("learning_rate", (), "float32")
    with pytest.raises(MatchError) as e:
        plan_import(st, tgt)
    assert codes(e.value) == ["E_MATCH_GLOBALS", "E_MATCH_GLOBALS"]
    msgs = [p.message for p in e.value.problems]
    assert "file holds global 'learning_rate'" not in msgs[0]
    assert any("target optimizer has global 'learning_rate'" in m for m in msgs)
    assert any("file holds global 'u_product'" in m for m in msgs)
    # names private to a framework ("t.<name>", "test.<name>") are noted, never refused
    st.globals = {"iterations": st.globals["iterations"], "test.extra": np.array(1, np.int64)}
    tgt = target(adam_state())
    tgt.globals["t.mine"] = Variable("t.mine", (), "int64")
    report, assigns = plan_import(st, tgt)
    assert "global 'test.extra' is private to another framework; ignored" in report.notes
    assert "target's private global 't.mine' is not in the file; left as it is" in report.notes
    assert set(h for h in handles(assigns) if isinstance(h, str)) == {"iterations"}


def test_a_global_of_another_shape_is_refused():
    st = adam_state()
    tgt = target(st)
    tgt.globals["iterations"] = Variable("iterations", (1,), "int64")
    with pytest.raises(MatchError) as e:
        plan_import(st, tgt)
    assert codes(e.value) == ["E_MATCH_SHAPE"]
    assert "global 'iterations' has shape [], target [1]" in str(e.value)


# ---- full archives: complete and checked before anything is assigned ----------------------

def extra_weight(path="norm/mean", shape=(3,)):
    """A model weight without optimizer slots (an adapted Normalization's mean)."""
    return osf.WeightEntry(path, shape, "float32", False, slots={},
                           hints={"structural": "g:" + "c" * 32, "name": None},
                           value=Variable((path, "value"), shape, "float32"))


def test_include_weights_reports_a_model_weight_the_archive_lacks_as_missing():
    st = adam_state(with_values=True)
    with pytest.raises(MatchError) as e:
        plan_import(st, target(st, extra=[extra_weight()]), include_weights=True)
    assert codes(e.value) == ["E_MATCH_MISSING"]
    assert e.value.problems[0].path == "norm/mean"
    report, assigns = plan_import(st, target(st, extra=[extra_weight()]), include_weights=True,
                                  strict=False)
    assert report.missing == ["norm/mean"] and ("norm/mean", "value") not in handles(assigns)
    # without weights, a model weight without slots needs nothing from the file
    report, _ = plan_import(st, target(st, extra=[extra_weight()]))
    assert report.ok and report.missing == []


def test_a_missing_weight_is_reported_with_the_unmatched_file_weights_of_its_shape():
    st = adam_state()
    a = st.weights[0].path
    tgt = target(st, hints={a: {"structural": None, "name": None}})
    report, _ = plan_import(st, tgt, strict=False)
    assert report.missing == [a] and report.unexpected == [a]
    assert (f"{a!r} is unmatched; unmatched file weights of the same shape: [{a!r}] (pass "
            "mapping= if one of them is it)") in report.notes
    with pytest.raises(MatchError) as e:
        plan_import(st, tgt)
    assert codes(e.value) == ["E_MATCH_MISSING", "E_MATCH_UNEXPECTED"]


def test_include_weights_with_a_file_that_holds_no_values_is_refused_per_weight():
    st = adam_state()
    with pytest.raises(MatchError) as e:
        plan_import(st, target(st), include_weights=True)
    assert codes(e.value) == ["E_MATCH_NO_VALUE"] * 3
    report, assigns = plan_import(st, target(st), include_weights=False)
    assert not any(h[1] == "value" for h in handles(assigns) if isinstance(h, tuple))


def test_include_weights_assigns_each_value_to_its_own_weight():
    st = adam_state(with_values=True)
    report, assigns = plan_import(st, target(st), include_weights=True)
    got = handles(assigns)
    for w in st.weights:
        np.testing.assert_array_equal(got[(w.path, "value")], w.value)
    assert report.assigned == len(assigns) == 3 * 3 + 1


@pytest.mark.parametrize("where", ["slot", "value"])
def test_an_int64_value_not_fitting_an_int32_target_is_refused(where):
    st = adam_state(n_weights=1, with_values=True)
    w = st.weights[0]
    big = np.full(w.shape, 2 ** 31, np.int64)
    tgt = target(st)
    if where == "slot":
        w.slots["m"] = big
        tgt.weights[0].slots["m"].dtype = "int32"
    else:
        w.value, w.dtype = big, "int64"
        tgt.weights[0].dtype = tgt.weights[0].value.dtype = "int32"
    with pytest.raises(MatchError) as e:
        plan_import(st, tgt, include_weights=True)
    assert codes(e.value) == ["E_MATCH_DTYPE"] and e.value.problems[0].path == w.path
    assert "does not fit the target's int32 (range (-2147483648, 2147483647))" in str(e.value)
    big[...] = 2 ** 31 - 1  # the largest that fits converts exactly
    _, assigns = plan_import(st, tgt, include_weights=True)
    got = handles(assigns)[(w.path, "m" if where == "slot" else "value")]
    assert got.dtype == np.int32 and int(got.max()) == 2 ** 31 - 1


def test_bfloat16_widens_exactly_and_narrowing_floats_is_refused():
    st = adam_state(n_weights=1)
    w = st.weights[0]
    raw = np.array([0x3FC0, 0xC000], np.uint16)  # bfloat16 1.5, -2.0 as raw 16-bit words
    bf = osf.LazyTensor((2,), "bfloat16", lambda: raw)
    w.shape, w.slots = (2,), {"m": bf, "v": np.ones(2, np.float64)}
    tgt = target(st)
    _, assigns = plan_import(st, tgt, strict=False)
    assert handles(assigns)[(w.path, "m")].tolist() == [1.5, -2.0]
    assert handles(assigns)[(w.path, "m")].dtype == np.float32
    with pytest.raises(MatchError) as e:
        plan_import(st, tgt)
    assert codes(e.value) == ["E_MATCH_DTYPE"]
    assert "file holds float64, the target is float32" in str(e.value)


class CountingAdapter(BaseAdapter):
    """A framework in dicts: describes what it is given, counts every assignment."""

    framework = "counting"

    def __init__(self, desc, opt):
        self.desc, self.opt, self.assigned = desc, opt, []
        self.values, self.described = {}, []

    def describe_model(self, model):
        self.described.append(("model", model))
        return self.desc

    def describe_optimizer(self, model, optimizer, *, create):
        self.described.append(("optimizer", model, optimizer, create))
        return self.opt

    def read(self, handle):
        return self.values[handle]

    def assign(self, handle, value):
        self.assigned.append(handle)
        self.values[handle] = np.array(value)


def counting_model(state, monkeypatch, *, slot_shapes=None):
    """A model (as a CountingAdapter) with the weights, slots and globals of ``state``."""
    weights, slots = [], []
    for w in state.weights:
        var = Variable((w.path, "value"), w.shape, w.dtype)
        weights.append(ModelWeight(w.path, var, True, named=True))
        shapes = (slot_shapes or {}).get(w.path, {})
        slots.append(WeightSlots(var.handle, {
            s: Variable((w.path, s), shapes.get(s, w.shape), "float32") for s in w.slots}))
    opt = OptimizerDescription(osf.OptimizerInfo("adam", "Adam", "keras.optimizers"), 0, slots,
                               {"iterations": Variable("iterations", (), "int64")})
    ad = CountingAdapter(ModelDescription(weights, Graph({}, [], [])), opt)
    ad.values = {v.handle: np.zeros(v.shape, np.float32)
                 for v in [w.variable for w in weights] + [v for ws in slots
                                                           for v in ws.slots.values()]}
    ad.values["iterations"] = np.array(0, np.int64)
    def adapter_for(model):
        assert model is not None, "the conductor lost the model"
        return ad
    monkeypatch.setattr(_api, "adapter_for", adapter_for)
    return ad


def named_state(**kw):
    st = adam_state(**kw)
    for w in st.weights:
        w.hints = {"structural": None, "name": w.path}
    return st


def test_equal_weight_shapes_with_another_slot_shape_are_refused_before_any_assignment(
        monkeypatch):
    st = named_state()
    w = st.weights[2]
    ad = counting_model(st, monkeypatch, slot_shapes={w.path: {"v": (w.shape[0], 1)}})
    before = {k: v.copy() for k, v in ad.values.items()}
    with pytest.raises(MatchError) as e:
        _api.apply_state(object(), st)
    assert codes(e.value) == ["E_MATCH_SHAPE"]
    assert e.value.problems[0].path == w.path
    assert "slot 'v' has shape [4, 3], the target's is [4, 1]" in e.value.problems[0].message
    assert ad.assigned == []  # refused by the plan: adapter.assign was never called
    assert ad.values.keys() == before.keys()
    assert all(np.array_equal(ad.values[k], before[k]) for k in before)


def test_an_import_through_the_conductor_assigns_every_slot_and_global_by_name(monkeypatch):
    st = named_state(with_values=True)
    ad = counting_model(st, monkeypatch)
    report = _api.apply_state(object(), st, include_weights=True)
    assert report.assigned == len(ad.assigned) == 3 * 3 + 1
    assert {m[2] for m in report.matched} == {"name"}
    for w in st.weights:
        np.testing.assert_array_equal(ad.values[(w.path, "m")], w.slots["m"])
        np.testing.assert_array_equal(ad.values[(w.path, "value")], w.value)
    assert int(ad.values["iterations"]) == 4


def test_transfer_between_two_described_models_copies_every_slot(monkeypatch):
    st = named_state()
    ad = counting_model(st, monkeypatch)
    for w in st.weights:
        for s, arr in w.slots.items():
            ad.values[(w.path, s)] = arr
    ad.values["iterations"] = np.array(7, np.int64)
    src = _api.source_state(object(), materialize=True)
    assert [w.path for w in src.weights] == [w.path for w in st.weights]
    np.testing.assert_array_equal(src.weights[1].slots["v"], st.weights[1].slots["v"])
    assert int(src.globals["iterations"]) == 7
    assert all(w.value is None for w in src.weights)
    assert ad.described[-1][3] is False  # exporting never creates optimizer state
    marker = object()
    _api.source_state(marker, optimizer="opt")
    assert ad.described[-2:] == [("model", marker), ("optimizer", marker, "opt", False)]
    lazy = _api.source_state(object(), include_weights=True)
    assert isinstance(lazy.weights[0].value, osf.LazyTensor)
    np.testing.assert_array_equal(np.asarray(lazy.weights[0].slots["m"]), st.weights[0].slots["m"])


def test_a_model_with_two_weights_on_one_path_is_unsupported(monkeypatch):
    st = named_state(n_weights=2)
    ad = counting_model(st, monkeypatch)
    ad.desc.weights[1].path = ad.desc.weights[0].path
    with pytest.raises(UnsupportedError) as e:
        _api.apply_state(object(), st)
    assert e.value.code == "E_UNSUPPORTED" and e.value.path == st.weights[0].path
    assert "give the layers distinct names" in str(e.value)
    assert ad.assigned == []


def test_optimizer_state_for_a_variable_outside_the_model_is_unsupported(monkeypatch):
    st = named_state(n_weights=2)
    ad = counting_model(st, monkeypatch)
    ad.opt.slots.append(WeightSlots("stranger", {"m": Variable("s", (1,), "float32")}))
    with pytest.raises(UnsupportedError) as e:
        _api.source_state(object())
    assert e.value.code == "E_UNSUPPORTED" and "not part of the model" in str(e.value)


def test_no_adapter_for_a_foreign_model_is_unsupported():
    with pytest.raises(UnsupportedError) as e:
        _api.adapter_for(3)
    assert e.value.code == "E_UNSUPPORTED" and "type int (module builtins)" in str(e.value)


def test_hints_give_names_only_to_user_named_weights_and_structure_only_to_graph_weights():
    g = Graph({"d": Layer("Dense", [("kernel", 7)])}, [Node("d", [("input", 0)])],
              [("node", 0, 0)])
    var = Variable("h", (2,), "float32")
    desc = ModelDescription([
        ModelWeight("d/kernel", var, True, graph_id=7, named=True),
        ModelWeight("x/variable_3", var, True, named=True, generated_name=True),
        ModelWeight("dense_1/bias", var, True, graph_id=None, named=False,
                    layer_class="Dense", local_name="bias")], g)
    h = _api._hints(desc)
    assert {k: v for k, v in h[0].items() if k != "structural_in"} == {
        "structural": _identity.weight_identities(g)[7], "name": "d/kernel",
        "layer_class": "?", "weight_name": ""}
    assert h[0]["structural_in"].startswith("g:")  # format 1.1: identity from the inputs
    assert h[0]["structural"].startswith("g:")
    assert h[1]["name"] is None and h[1]["structural"] is None
    assert h[2] == {"structural": None, "structural_in": None, "name": None,
                    "layer_class": "Dense", "weight_name": "bias"}


# ---- identity through a parameterless node with several outputs --------------------------

def H(parent, token):  # spec 8.2 step 2, written out independently of _identity.chain
    return hashlib.sha256(f"{parent}/{token}".encode()).hexdigest()[:32]


def split_graph():
    """input -> Dense d0 -> Split (2 outputs) -> Dense d1 on output 0, Dense d2 on output 1
    -> Concatenate -> output."""
    layers = {"d0": Layer("Dense", [("kernel", 0)]), "split": Layer("Split"),
              "d1": Layer("Dense", [("kernel", 1)]), "d2": Layer("Dense", [("kernel", 2)]),
              "cat": Layer("Concatenate")}
    nodes = [Node("d0", [("input", 0)]), Node("split", [("node", 0, 0)], n_outputs=2),
             Node("d1", [("node", 1, 0)]), Node("d2", [("node", 1, 1)]),
             Node("cat", [("node", 2, 0), ("node", 3, 0)])]
    return Graph(layers, nodes, [("node", 4, 0)])


def test_the_identity_through_a_split_node_is_pinned_and_the_split_is_never_contracted():
    ids = _identity.weight_identities(split_graph())
    cat = H(H(ROOT, "out0"), "Concatenate")
    d1, d2 = H(H(cat, "arg0"), "Dense"), H(H(cat, "arg1"), "Dense")
    split = H(H(d1, "arg0"), "Split@0")  # first reached from d1, through output 0
    d0 = H(H(split, "arg0"), "Dense")
    assert ids == {0: "g:" + H(d0, "kernel"), 1: "g:" + H(d1, "kernel"),
                   2: "g:" + H(d2, "kernel")}
    assert ids[0] == "g:33e2d7d06220b381256943dc021d08d0"  # pinned: a change breaks files
    # contracting the split would give d0 the identity of a Dense right after d1
    assert ids[0] != "g:" + H(H(H(d1, "arg0"), "Dense"), "kernel")
    assert ids[1] != ids[2]


def test_a_multi_output_node_with_one_consumer_is_never_contracted():
    layers = {"d0": Layer("Dense", [("kernel", 0)]), "unstack": Layer("Unstack"),
              "d1": Layer("Dense", [("kernel", 1)])}
    nodes = [Node("d0", [("input", 0)]), Node("unstack", [("node", 0, 0)], n_outputs=3),
             Node("d1", [("node", 1, 2)])]
    ids = _identity.weight_identities(Graph(layers, nodes, [("node", 2, 0)]))
    d1 = H(H(ROOT, "out0"), "Dense")
    d0 = H(H(H(H(d1, "arg0"), "Unstack@2"), "arg0"), "Dense")
    assert ids[0] == "g:" + H(d0, "kernel") == "g:abbdf725b185f7e1a7c1ab4b64d58f30"
    # the same graph with a one-output parameterless node in its place contracts it away
    nodes[1].n_outputs, nodes[2].inputs = 1, [("node", 1, 0)]
    contracted = _identity.weight_identities(Graph(layers, nodes, [("node", 2, 0)]))
    assert contracted[0] == "g:" + H(H(H(d1, "arg0"), "Dense"), "kernel")


def test_a_chain_of_transparent_nodes_and_model_inputs_as_outputs_resolve_like_the_spec():
    layers = {"d": Layer("Dense", [("kernel", 0)]), "act": Layer("Activation"),
              "drop": Layer("Dropout"), "add": Layer("Add")}
    nodes = [Node("d", [("input", 0)]), Node("act", [("node", 0, 0)]),
             Node("drop", [("node", 1, 0)]), Node("add", [("node", 2, 0), ("input", 0)])]
    # output 0 is a model input (skipped), output 1 the Add; both Add args go to d or an input
    ids = _identity.weight_identities(Graph(layers, nodes, [("input", 0), ("node", 3, 0)]))
    add = H(H(ROOT, "out1"), "Add")
    assert ids == {0: "g:" + H(H(H(add, "arg0"), "Dense"), "kernel")}


def test_a_layer_no_output_reaches_gets_no_identity():
    layers = {"d": Layer("Dense", [("kernel", 0)]), "orphan": Layer("Dense", [("kernel", 1)])}
    nodes = [Node("d", [("input", 0)]), Node("orphan", [("input", 0)])]
    ids = _identity.weight_identities(Graph(layers, nodes, [("node", 0, 0)]))
    assert list(ids) == [0]


def test_a_graphless_model_gives_attribute_identities_and_prefixes_nested_ones():
    inner = Graph({"d": Layer("Dense", [("kernel", 2)])}, [Node("d", [("input", 0)])],
                  [("node", 0, 0)])
    g = Graph({"enc": Layer("Encoder", [("scale", 1)], subgraph=inner)}, None)
    ids = _identity.weight_identities(g)
    assert ids[1] == "a:enc/scale"
    prefix = H(ROOT, "a:enc")
    assert ids[2] == "g:" + H(H(prefix, H(H(ROOT, "out0"), "Dense")), "kernel")
    nested_graphless = Graph({"x": Layer("X", [("w", 3)])}, None)
    outer = Graph({"m": Layer("Model", [], subgraph=nested_graphless)}, None)
    assert _identity.weight_identities(outer) == {3: "g:" + H(H(ROOT, "a:m"), "a:x/w")}


# ---- paths and registry: the rules other modules rely on --------------------------------

@pytest.mark.parametrize("path,problem", [
    ("", "a path is a non-empty string"),
    (None, "a path is a non-empty string"),
    ("a/" * 64 + "b", "more than 64 segments"),
    ("x" * 1025, "longer than 1024 characters"),
    ("a//b", "empty, '.' or '..' segment in 'a//b'"),
    ("a/./b", "empty, '.' or '..' segment"),
    ("a/../b", "empty, '.' or '..' segment"),
    ("a/b#c", "segment 'b#c' contains a forbidden character ('#')"),
    ("a/b\x7f", "forbidden character"),
])
def test_a_path_outside_the_grammar_is_refused_with_its_reason(path, problem):
    from optstate_format import _paths
    assert problem in _paths.path_problem(path)
    with pytest.raises(FormatError) as e:
        _paths.check_path(path)
    assert e.value.code == "E_PATH" and problem in str(e.value)


def test_paths_at_the_limits_are_accepted_and_names_follow_their_pattern():
    from optstate_format import _paths
    assert _paths.path_problem("a/" * 63 + "b") is None
    assert _paths.path_problem("x" * 1024) is None
    assert _paths.sanitize_segment("a/b:c") == "a_b_c" and _paths.sanitize_segment("..") == "_.."
    assert _paths.sanitize_segment("") == "_" and _paths.sanitize_segment(".") == "_."
    with pytest.raises(FormatError) as e:
        _paths.check_path("a//b")
    assert e.value.path == "a//b" and "'/'-separated segments without ':', '#'" in str(e.value)
    with pytest.raises(FormatError) as e:
        _paths.check_path(7)
    assert e.value.path is None
    assert (_paths.slot_key("d/k", "m"), _paths.value_key("d/k"), _paths.global_key("it")) == (
        "slot:d/k:m", "weight:d/k", "global:it")
    _paths.check_name("x" * 128, "slot")
    for bad in ("x" * 129, "", "a b", 3):
        with pytest.raises(FormatError) as e:
            _paths.check_name(bad, "slot")
        assert e.value.code == "E_SCHEMA" and f"slot name {bad!r} must match" in str(e.value)


def test_slot_shape_rules_follow_the_spec_table():
    from optstate_format._registry import slot_rule, slot_shape
    assert slot_shape("like", (3, 4)) == (3, 4)
    assert slot_shape("factored_rows", (3, 4, 5)) == (3, 4)
    assert slot_shape("factored_rows", (3, 4)) == (3,)
    assert slot_shape("factored_rows", (5,)) == () == slot_shape("factored_cols", (5,))
    assert slot_shape("factored_cols", (4, 5)) == (5,)
    assert slot_shape("scalar", (3, 4)) == ()
    assert slot_shape("any", (3,)) is None
    assert slot_rule("adafactor", "r") == "factored_rows"
    assert slot_rule("adam", "ema") == "like" and slot_rule("adam", "nope") == "any"
    assert slot_rule("generic:X", "m") == "any"


def test_framework_tables_name_what_the_registry_lacks():
    from optstate_format._registry import FrameworkNames
    t = FrameworkNames("x", "X", {"adam": "Adam", "nope": "Nope"},
                       {"adam": {"_m": "m", "_q": "q"}, "bogus": {"_m": "m"}}, {"_ema": "ema"},
                       {"adam": {"u": "u_product"}, "nadam": {"u": "u_product"},
                        "ghost": {"g": "g"}})
    assert sorted(t.problems()) == [
        "x: adam has no global 'u_product'", "x: adam has no slot 'q'",
        "x: unknown algorithm 'bogus'", "x: unknown algorithm 'ghost'",
        "x: unknown algorithm 'nope'"]
    assert t.algorithm_for_class("Nope") == "nope" and t.algorithm_for_class("Z") is None
    assert t.slot_names("adam") == {"_ema": "ema", "_m": "m", "_q": "q"}
    assert t.framework_name("adam", "ema") == "_ema" and t.framework_name("adam", "v") is None
    assert t.global_names("nadam") == {"u": "u_product"} and t.global_names("sgd") == {}


# ---- the codes other errors carry by default ---------------------------------------------

def test_base_errors_carry_their_default_codes_and_the_path_or_tensor():
    assert OptStateError("x").code == "E_OPTSTATE"
    assert FormatError("x").code == "E_FORMAT"
    assert str(FormatError("bad", path="a/b")) == "E_FORMAT: bad [path='a/b']"
    assert str(OptStateError("bad", key="slot:a:m")) == "E_OPTSTATE: bad [tensor='slot:a:m']"
    err = MatchError("refused", problems=["p1"])
    assert err.code == "E_MATCH" and str(err) == "E_MATCH: refused\n  - p1"


# ---- every matching/import/write code of spec section 11 is asserted ------------------------

def spec_codes():
    text = (ROOT_DIR / "spec" / "SPEC.md").read_text(encoding="utf-8")
    section = text.split("## 11. Error codes", 1)[1].split("\n## ", 1)[0]
    reading, rest = section.split("Importing (", 1)
    return (sorted(set(re.findall(r"`(E_[A-Z_]+)`", reading))),
            sorted(set(re.findall(r"`(E_[A-Z_]+)`", rest))))


def test_every_matching_import_and_write_code_of_spec_section_11_is_asserted_by_a_test():
    reading, codes_ = spec_codes()
    # the reader codes (first table) are covered by the reader's own tests (issue 18, reader)
    assert "E_CHECKSUM" in reading and "E_MATCH_COMPONENT" in codes_ and "E_WRITE" in codes_
    assert len(codes_) >= 21
    tests = "\n".join(p.read_text(encoding="utf-8")
                      for p in sorted((ROOT_DIR / "tests").rglob("test_*.py")))
    missing = [c for c in codes_ if not re.search(rf"[\"']{c}[\"']", tests)]
    assert missing == [], f"spec section 11 codes no test asserts: {missing}"


def test_export_import_and_transfer_through_the_conductor_pass_every_option_on(monkeypatch,
                                                                                tmp_path):
    st = named_state()
    ad = counting_model(st, monkeypatch)
    ad.opt.step = 4
    for w in st.weights:
        for s, arr in w.slots.items():
            ad.values[(w.path, s)] = arr.copy()
    ad.values["iterations"] = np.array(4, np.int64)
    path = _api.export_state(object(), tmp_path / "s.optstate", metadata={"run": "r1"},
                             fsync=False)
    saved = osf.read(path)
    assert saved.metadata == {"run": "r1"} and saved.step == 4
    assert all(w.value is None for w in saved.weights)
    for h in list(ad.values):
        ad.values[h] = np.zeros_like(ad.values[h])
    report = _api.import_state(object(), path)
    assert report.assigned == len(ad.assigned) == 7
    np.testing.assert_array_equal(ad.values[(st.weights[2].path, "v")], st.weights[2].slots["v"])
    a, b = st.weights[0].path, st.weights[1].path
    with pytest.raises(MatchError) as e:  # the mapping reaches the plan: shapes then differ
        _api.import_state(object(), path, mapping={a: b, b: a})
    assert codes(e.value).count("E_MATCH_SHAPE") == 2
    with pytest.raises(MatchError) as e:  # include_weights reaches the plan
        _api.import_state(object(), path, include_weights=True)
    assert codes(e.value) == ["E_MATCH_NO_VALUE"] * 3
    assert [d[0] for d in ad.described[-2:]] == ["model", "optimizer"]
    assert ad.described[-1][3] is True  # the target's optimizer may create its slots
    m = object()
    _api.import_state(m, path, optimizer="o")
    assert ad.described[-2:] == [("model", m), ("optimizer", m, "o", True)]
    _api.export_state(m, tmp_path / "o.optstate", optimizer="o", include_weights=True)
    assert ad.described[-1] == ("optimizer", m, "o", False)
    assert osf.read(tmp_path / "o.optstate").weights[0].value is not None
    m2 = object()
    _api.transfer_state(m, m2, src_optimizer="s", optimizer="d")
    assert ad.described[-4:] == [("model", m), ("optimizer", m, "s", False),
                                 ("model", m2), ("optimizer", m2, "d", True)]
    assert _api.transfer_state(object(), object()).assigned == 7
    assert [d[3] for d in ad.described if d[0] == "optimizer"][-2:] == [False, True]
    full = _api.transfer_state(object(), object(), include_weights=True)
    assert full.assigned == 10


def test_rollback_false_reaches_the_journal_and_a_failure_says_the_import_is_partial(
        monkeypatch, tmp_path):
    st = named_state()
    ad = counting_model(st, monkeypatch)
    real, fail_at = ad.assign, [3]

    def failing(handle, value):  # the third assignment of each import fails, once
        if len(ad.assigned) + 1 == fail_at[0]:
            fail_at[0] = -1
            raise RuntimeError("device")
        real(handle, value)
    ad.assign = failing
    with pytest.raises(OptStateError) as e:
        _api.apply_state(object(), st, rollback=False)
    assert e.value.code == "E_ASSIGN" and "failed (RuntimeError: device) after " in str(e.value)
    assert ("assignments; rollback=False, so the optimizer is partly updated. Import again, or "
            "re-create the optimizer.") in str(e.value)
    ad.assigned, fail_at[0] = [], 3
    for h in ad.values:
        ad.values[h] = np.zeros_like(ad.values[h])
    shapes = {h: v.shape for h, v in ad.values.items()}
    with pytest.raises(OptStateError) as e:
        _api.apply_state(object(), st)
    assert e.value.code == "E_ASSIGN" and ("assigning a variable failed (RuntimeError: device);"
                                           " every variable already assigned was restored."
                                           ) in str(e.value)
    # the variables were all zeros (kept as one repeated value): each comes back whole
    assert {h: v.shape for h, v in ad.values.items()} == shapes
    assert not any(np.any(v) for v in ad.values.values())
    # a restore failing twice names the error and how many variables may differ
    fail_at[0] = 1

    def broken_restore(handle, snapshot):
        raise RuntimeError("gone")
    ad.restore, ad.assigned = broken_restore, []
    with pytest.raises(OptStateError) as e:
        _api.apply_state(object(), st)
    assert e.value.code == "E_ROLLBACK"
    assert ("the import failed (RuntimeError: device) and 1 of 1 variables could not be "
            "restored (RuntimeError: gone); the model may hold a mix of old and new values. "
            "Re-create the optimizer or reload a checkpoint.") in str(e.value)


def test_a_model_weight_without_slots_is_listed_in_the_target_and_kept_by_component(
        monkeypatch):
    st = named_state(n_weights=2)
    ad = counting_model(st, monkeypatch)
    ad.desc.weights.append(ModelWeight("norm/mean", Variable("mean", (3,), "float32"), False,
                                       named=True))
    ad.values["mean"] = np.zeros(3, np.float32)
    ad.opt.slots[1].component = 1
    src = _api.source_state(object(), materialize=True)
    assert [w.path for w in src.weights] == [w.path for w in st.weights]  # slotless: not kept
    assert [w.component for w in src.weights] == [0, 1]
    assert [w.trainable for w in src.weights] == [True, True]
    ad.desc.producer = {"framework": "counting", "backend": "dicts"}
    assert _api.source_state(object()).producer == {"framework": "counting", "backend": "dicts"}
    full = _api.source_state(object(), include_weights=True, materialize=True)
    assert [w.path for w in full.weights][-1] == "norm/mean" and full.weights[-1].slots == {}
    assert full.weights[-1].trainable is False and full.weights[-1].component == 0
    np.testing.assert_array_equal(full.weights[-1].value, np.zeros(3, np.float32))


def test_an_inner_optimizer_keeping_no_slots_in_the_target_is_still_checked_for_its_algorithm():
    # the file's inner optimizer 1 is Adam for weight 1; the target's inner optimizer 1 for the
    # same weight is plain SGD, which keeps no slots: refused as another algorithm, strict or not
    st, tgt = multi_state([0, 1], [0, 1])
    tgt.optimizer.components = [{"algorithm": "adam", "class_name": "Adam"},
                                {"algorithm": "sgd", "class_name": "SGD"}]
    tgt.weights[1].slots = {}
    with pytest.raises(MatchError) as e:
        plan_import(st, tgt, strict=False)
    assert codes(e.value) == ["E_MATCH_ALGORITHM"]
    assert "target's inner optimizer 1 for the same weights is 'sgd'" in str(e.value)


# ---- the plan's smaller rules: each outcome pinned ------------------------------------------

def test_a_problem_prints_its_code_path_and_message():
    from optstate_format._match import Problem
    assert str(Problem("E_X", "a/k", "bad")) == "E_X a/k: bad"
    assert str(Problem("E_X", None, "bad")) == "E_X bad"


def test_the_report_prints_an_aligned_table_with_problems_and_notes():
    from optstate_format._match import ImportReport, Problem
    r = ImportReport(matched=[("a/kernel", "b/k", "name")], missing=["m/k"],
                     conflicts=[Problem("E_MATCH_CONFLICT", "a/x", "why")], notes=["n1"])
    assert str(r).split("\n") == [
        "file path  model path  by",
        "---------  ----------  ---------",
        "a/kernel   b/k         name",
        "matched 1, missing 1, unexpected 0, mismatched 0, conflicts 1; 0 variables assigned",
        "  ! E_MATCH_CONFLICT a/x: why",
        "  ! E_MATCH_MISSING m/k: target weight has no state in the file",
        "  note: n1"]


def test_one_refused_weight_never_stops_the_others_from_matching():
    st = adam_state(n_weights=4)
    p = [w.path for w in st.weights]
    for w in st.weights[1:3]:  # weights 1 and 2 get one shape so both can claim weight 1
        w.shape = st.weights[1].shape
        w.slots = {k: v[:3] for k, v in w.slots.items()}
    st.weights[0].hints["name"] = p[0]  # name says p0, structure says p2: a conflict
    st.weights[2].hints["structural"] = st.weights[1].hints["structural"]  # 1 and 2 claim p1
    hints = {w.path: dict(w.hints) for w in st.weights}
    hints[p[0]] = {"structural": None, "name": p[0]}
    hints[p[2]] = {"structural": st.weights[0].hints["structural"], "name": None}
    tgt = target(st, hints=hints)
    with pytest.raises(MatchError) as e:
        plan_import(st, tgt, strict=False)
    assert sorted(codes(e.value)) == ["E_MATCH_AMBIGUOUS", "E_MATCH_AMBIGUOUS",
                                      "E_MATCH_CONFLICT"]
    # weight 3 still matches by structure
    assert e.value.report.matched == [(p[3], p[3], "structure")]


def test_a_mapped_target_does_not_stop_later_weights_matching_by_identity():
    st = adam_state(n_weights=3)
    a, b, c = [w.path for w in st.weights]
    st.weights[1].shape = st.weights[0].shape
    st.weights[1].slots = {k: v[:2] for k, v in st.weights[1].slots.items()}
    report, _ = plan_import(st, target(st), mapping={a: b}, strict=False)
    assert sorted(report.matched) == [(a, b, "mapping"), (c, c, "structure")]


def test_two_claims_on_one_target_do_not_stop_other_targets_matching():
    st = adam_state(n_weights=3)
    a, b, c = [w.path for w in st.weights]
    st.weights[1].shape = st.weights[0].shape
    st.weights[1].slots = {k: v[:2] for k, v in st.weights[1].slots.items()}
    st.weights[1].hints["structural"] = "g:" + "e" * 32
    hints = {w.path: dict(w.hints) for w in st.weights}
    hints[a] = {"structural": st.weights[0].hints["structural"], "name": None}
    hints[b] = {"structural": None, "name": None}
    st.weights[1].hints["name"] = a
    hints[a]["name"] = a
    st.weights[0].hints["name"] = None
    with pytest.raises(MatchError) as e:
        plan_import(st, target(st, hints=hints), strict=False)
    assert codes(e.value) == ["E_MATCH_CONFLICT"] * 2
    assert e.value.report.matched == [(c, c, "structure")]


def test_a_slot_refused_for_one_reason_never_stops_the_next_slot():
    st = adam_state(n_weights=1)
    a = st.weights[0].path
    report, assigns = plan_import(st, target(st, slots=("ema", "m", "v")), strict=False)
    assert sorted(h[1] for h in handles(assigns) if isinstance(h, tuple)) == ["m", "v"]
    tgt = target(st, slot_shape={a: {"m": (1, 1)}})
    report, assigns = plan_import(st, tgt, strict=False)
    assert [p.code for p in report.mismatched] == ["E_MATCH_SHAPE"]
    assert sorted(h[1] for h in handles(assigns) if isinstance(h, tuple)) == ["v"]


def test_a_refused_global_never_stops_the_next_global():
    st = adam_state()
    st.producer["framework"] = "aa"
    st.globals = {"aa.private": np.array(1, np.int64), "a_missing": np.array(1, np.int64),
                  "a_shape": np.array([1, 2], np.int64), "iterations": np.array(4, np.int64)}
    tgt = target(adam_state())
    tgt.globals.update({"a_shape": Variable("a_shape", (3,), "int64"),
                        "a_target": Variable("a_target", (), "int64")})
    report, assigns = plan_import(st, tgt, strict=False)
    assert [p.code for p in report.mismatched] == ["E_MATCH_GLOBALS", "E_MATCH_SHAPE",
                                                   "E_MATCH_GLOBALS"]
    assert int(handles(assigns)["iterations"]) == 4
    st.globals = {"aa.private": np.array(1, np.int64), "iterations": np.array(4, np.int64)}
    report, assigns = plan_import(st, target(adam_state()), strict=False)
    assert report.mismatched == [] and int(handles(assigns)["iterations"]) == 4


def test_globals_with_dotted_names_are_private_only_to_a_named_framework():
    st = adam_state()
    st.globals["keras.a.b"] = np.array(2, np.int64)
    tgt = target(st)
    report, assigns = plan_import(st, tgt)
    assert int(handles(assigns)["keras.a.b"]) == 2  # no framework "keras" here: an ordinary name
    st2 = adam_state()
    st2.globals["x.y"] = np.array(2, np.int64)
    with pytest.raises(MatchError) as e:
        plan_import(st2, target(adam_state()))
    assert codes(e.value) == ["E_MATCH_GLOBALS"]


def test_component_globals_keep_the_rest_of_their_dotted_name():
    st, tgt = multi_state([0, 1], [1, 0])
    st.globals = {"component.5.x": np.array(1, np.int64),  # an inner optimizer with no weights
                  "component.0.x.y": np.array(7, np.int64), "iterations": np.array(4, np.int64)}
    tgt.globals = {k: Variable(k, (), "int64") for k in ("component.1.x.y", "iterations")}
    report, assigns = plan_import(st, tgt)
    got = handles(assigns)
    assert int(got["component.1.x.y"]) == 7 and int(got["iterations"]) == 4


def test_notes_between_implementations_and_for_other_hyperparameters_and_schedules():
    st = adam_state()
    st.optimizer.algorithm = "adagrad"
    st.optimizer.module = "tf_keras.optimizers.legacy"
    st.optimizer.hyperparameters = {"beta_1": 0.9, "beta_2": 0.5, "name": "x"}
    tgt = target(st, algorithm="adagrad",
                 hyper={"beta_1": float(np.float32(0.9)), "beta_2": 0.6, "name": "y"})
    report, _ = plan_import(st, tgt)
    from optstate_format._registry import ALGORITHMS
    assert report.notes[0] == ("between implementations (tf_keras.optimizers.legacy -> "
                               f"keras.optimizers): {ALGORITHMS['adagrad'].notes}")
    assert [n for n in report.notes if n.startswith("hyperparameter")] == [
        "hyperparameter 'beta_2': file 0.5, target 0.6 (target kept)"]
    plain = [k for k, a in ALGORITHMS.items() if not a.notes][0]
    st.optimizer.algorithm = plain  # no registry note: no implementation note
    assert not [n for n in plan_import(st, target(st, algorithm=plain))[0].notes
                if "between" in n]
    st.optimizer.module = "keras.optimizers"
    st.optimizer.algorithm = "adagrad"
    assert not [n for n in plan_import(st, target(st, algorithm="adagrad"))[0].notes
                if "between" in n]


@pytest.mark.parametrize("flr,tlr,noted", [
    ({"kind": "constant", "value": 0.1}, {"kind": "schedule", "class_name": "E"}, True),
    ({"kind": "schedule", "class_name": "E", "config": {"a": 1}},
     {"kind": "schedule", "class_name": "E", "config": {"a": 2}}, True),
    ({"kind": "schedule", "class_name": "E"}, {"kind": "schedule", "class_name": "E"}, False),
    ({"kind": "constant", "value": 0.1}, {"kind": "constant", "value": 0.2}, False),
    ({}, {"kind": "schedule", "class_name": "E"}, False),
])
def test_a_learning_rate_of_another_kind_or_schedule_is_noted(flr, tlr, noted):
    st = adam_state()
    st.optimizer.learning_rate = flr
    tgt = target(st)
    tgt.optimizer.learning_rate = tlr
    notes = [n for n in plan_import(st, tgt)[0].notes if n.startswith("learning rate")]
    assert notes == ([f"learning rate: file {flr}, target {tlr} (target kept; the restored "
                      "iteration count drives the target's schedule)"] if noted else [])


def test_an_algorithm_without_a_registry_note_is_refused_with_the_general_reason():
    from optstate_format._registry import ALGORITHMS
    plain = [k for k, a in ALGORITHMS.items() if not a.notes]
    st = adam_state()
    st.optimizer.algorithm = plain[0]
    with pytest.raises(MatchError) as e:
        plan_import(st, target(st, algorithm=plain[1]), strict=False)
    assert "state of one algorithm means nothing to another" in e.value.problems[0].message


def test_nan_in_weight_values_and_scalar_globals_is_noted():
    st = adam_state(n_weights=1, with_values=True)
    st.weights[0].value[0, 0] = np.nan
    st.globals["learning_rate"] = np.array(np.inf, np.float32)
    tgt = target(st, global_dtype="float32")
    tgt.globals["iterations"].dtype = "int64"
    report, _ = plan_import(st, tgt, include_weights=True)
    assert [n for n in report.notes if "NaN" in n] == [
        "layer_0/kernel value: 1 NaN/Inf value(s), imported as they are",
        "global 'learning_rate': 1 NaN/Inf value(s), imported as they are"]


@pytest.mark.parametrize("src,dst,ok", [
    ("float16", "float32", True), ("float32", "float16", False), ("bfloat16", "float64", True),
    ("bfloat16", "float32", True), ("int64", "float32", False), ("float32", "int32", False),
    ("uint8", "int64", True), ("bool", "bool", True), ("float64", "bfloat16", False),
])
def test_dtype_conversions_follow_the_spec_table(src, dst, ok):
    from optstate_format._match import _convertible
    assert _convertible(src, dst) is ok


def test_raw_bfloat16_words_go_into_a_bfloat16_target_unchanged():
    from optstate_format._match import _convert
    raw = np.array([0x3FC0, 0xC000], np.uint16)
    problems = []
    assert _convert(raw, "bfloat16", "w", problems) is raw and problems == []
    out = _convert(np.array([3], np.uint16), "uint32", "w", problems)
    assert out.dtype == np.uint32 and out.tolist() == [3] and problems == []


def test_integer_limits_are_inclusive_and_an_empty_array_always_fits():
    from optstate_format._match import _convert
    problems = []
    lo = _convert(np.array([-2 ** 31, 2 ** 31 - 1], np.int64), "int32", "w", problems)
    assert lo.tolist() == [-2 ** 31, 2 ** 31 - 1] and problems == []
    empty = _convert(np.zeros((0,), np.int64), "int32", "w", problems)
    assert empty.dtype == np.int32 and empty.shape == (0,) and problems == []


def test_only_a_single_integer_iterations_global_is_checked_against_the_step():
    st = adam_state(step=4)
    st.globals["iterations"] = np.array([9, 4], np.int64)  # not a counter: not compared
    tgt = target(st)
    tgt.globals["iterations"] = Variable("iterations", (2,), "int64")
    assert plan_import(st, tgt)[0].ok
    st.globals["iterations"] = np.array(3.0, np.float64)  # a float: left to the dtype check
    with pytest.raises(MatchError) as e:
        plan_import(st, target(st))
    assert codes(e.value) == ["E_MATCH_DTYPE"]


def test_the_journal_holds_interrupts_only_in_the_main_thread_and_works_in_others():
    import threading
    from optstate_format import _journal
    values = {"a": np.ones(2, np.float32)}

    class Ad(BaseAdapter):
        def read(self, h):
            return values[h]

        def assign(self, h, v):
            values[h] = np.array(v)
    out = []
    t = threading.Thread(target=lambda: out.append(_journal.apply(
        Ad(), [(Variable("a", (2,), "float32"), np.full(2, 5.0, np.float32))])))
    t.start()
    t.join()
    assert out == [1] and values["a"].tolist() == [5.0, 5.0]


def test_without_rollback_the_failure_message_counts_the_assignments_made():
    from optstate_format import _journal
    values = {k: np.zeros(2, np.float32) for k in "abc"}

    class Ad(BaseAdapter):
        def read(self, h):
            return values[h]

        def assign(self, h, v):
            if h == "c":
                raise RuntimeError("device")
            values[h] = np.array(v)
    plan = [(Variable(k, (2,), "float32"), np.ones(2, np.float32)) for k in "abc"]
    with pytest.raises(OptStateError) as e:
        _journal.apply(Ad(), plan, rollback=False)
    assert "after 2 of 3 assignments" in str(e.value)


# ---- adopt: an import's own arrays may become the variables' memory (issue 16) -------------

class AdoptingAdapter(CountingAdapter):
    """Keeps an adopted array as the variable itself (no copy), as a zero-copy framework."""

    def __init__(self, desc, opt):
        super().__init__(desc, opt)
        self.adopted = []

    def adopt(self, handle, value):
        self.adopted.append(handle)
        self.values[handle] = value


def adopting_model(state, monkeypatch):
    ad = counting_model(state, monkeypatch)
    new = AdoptingAdapter(ad.desc, ad.opt)
    new.values = ad.values
    monkeypatch.setattr(_api, "adapter_for", lambda model: new)
    return new


def test_an_import_from_a_file_hands_its_own_arrays_to_adopt(monkeypatch, tmp_path):
    st = named_state()
    path = osf.write(st, tmp_path / "a.optstate")
    ad = adopting_model(st, monkeypatch)
    report = _api.import_state(object(), path)
    assert report.assigned == 3 * 2 + 1
    assert sorted(map(str, ad.adopted)) == sorted(map(str, [(w.path, s) for w in st.weights
                                                           for s in w.slots] + ["iterations"]))
    assert ad.assigned == []  # nothing copied
    for w in st.weights:
        for s, arr in w.slots.items():
            np.testing.assert_array_equal(ad.values[(w.path, s)], arr)
            assert ad.values[(w.path, s)] is not arr  # the file's array, not the caller's


def test_a_callers_state_is_never_adopted(monkeypatch):
    """apply_state's arrays belong to the caller: adopting one would let a later write to
    the caller's array change the model behind its back."""
    st = named_state()
    ad = adopting_model(st, monkeypatch)
    _api.apply_state(object(), st)
    assert ad.adopted == [] and len(ad.assigned) == 3 * 2 + 1
    w = st.weights[0]
    w.slots["m"][...] = 99.0  # the caller reuses its array
    assert not np.any(ad.values[(w.path, "m")] == 99.0)


def test_a_transfer_adopts_its_own_copies(monkeypatch):
    st = named_state()
    ad = adopting_model(st, monkeypatch)
    for w in st.weights:
        for s, arr in w.slots.items():
            ad.values[(w.path, s)] = arr.copy()
    src = {k: np.array(v) for k, v in ad.values.items()}
    _api.transfer_state(object(), object())
    assert len(ad.adopted) == 3 * 2 + 1 and ad.assigned == []
    for k, v in src.items():
        if k in ad.adopted:
            assert ad.values[k] is not v
            np.testing.assert_array_equal(ad.values[k], v)


def test_one_array_listed_twice_is_adopted_once_and_copied_after():
    from optstate_format import _journal
    ad = AdoptingAdapter(None, None)
    shared = np.arange(4, dtype=np.float32)
    ad.values = {"a": np.zeros(4, np.float32), "b": np.zeros(4, np.float32)}
    n = _journal.apply(ad, [(Variable("a", (4,), "float32"), shared),
                            (Variable("b", (4,), "float32"), shared)], owned=True)
    assert n == 2 and ad.adopted == ["a"] and ad.assigned == ["b"]
    assert ad.values["a"] is shared and ad.values["b"] is not shared
    # two views of one buffer: the second is copied, so the two variables never alias
    ad.adopted, ad.assigned = [], []
    base = np.arange(8, dtype=np.float32)
    _journal.apply(ad, [(Variable("a", (4,), "float32"), base[:4]),
                        (Variable("b", (4,), "float32"), base[4:])], owned=True)
    assert ad.adopted == ["a"] and ad.assigned == ["b"]
    assert not np.shares_memory(ad.values["a"], ad.values["b"])


def test_an_adapter_without_adopt_gets_assign_and_a_failed_adopt_rolls_back(monkeypatch,
                                                                             tmp_path):
    st = named_state()
    path = osf.write(st, tmp_path / "a.optstate")
    ad = counting_model(st, monkeypatch)  # no adopt
    _api.import_state(object(), path)
    assert len(ad.assigned) == 3 * 2 + 1
    ad2 = adopting_model(st, monkeypatch)
    for k in ad2.values:
        ad2.values[k] = np.full_like(ad2.values[k], 7)
    before = {k: v.copy() for k, v in ad2.values.items()}
    real = ad2.adopt

    def failing(handle, value):
        if len(ad2.adopted) == 4:
            raise RuntimeError("device went away")
        real(handle, value)
    ad2.adopt = failing
    with pytest.raises(OptStateError) as e:
        _api.import_state(object(), path)
    assert e.value.code == "E_ASSIGN" and len(ad2.adopted) == 4
    assert ad2.values.keys() == before.keys()
    for k in before:
        np.testing.assert_array_equal(ad2.values[k], before[k])


def test_large_tensors_read_with_nan_are_still_reported_and_finite_ones_proven(monkeypatch,
                                                                               tmp_path):
    """The reader proves large float tensors finite while their bytes are in cache (issue 16);
    a tensor it cannot prove (NaN, Inf, or a sum that overflows) is still counted exactly."""
    st = named_state()
    big = np.linspace(-1, 1, 40_000, dtype=np.float32).reshape(200, 200)  # 160 kB: read alone
    bad = big.copy()
    bad.reshape(-1)[[5, 999, 30_000]] = np.nan
    bad.reshape(-1)[7] = -np.inf
    loud = np.full((200, 200), 60000.0, np.float16)  # finite, but its float16 sum overflows
    for w, arr in zip(st.weights, (big, bad, loud)):
        w.shape, w.dtype = arr.shape, str(arr.dtype)
        w.slots = {"m": arr, "v": np.abs(arr)}
    path = osf.write(st, tmp_path / "big.optstate")
    back = osf.read(path)
    proven = back._proven_finite
    w0, w1, w2 = back.weights
    assert id(w0.slots["m"]) in proven and id(w0.slots["v"]) in proven
    assert id(w1.slots["m"]) not in proven and id(w2.slots["m"]) not in proven
    rep = osf.check(path)
    assert rep.valid and sorted(rep.warnings) == sorted([
        f"{w1.path} slot 'm': 4 NaN/Inf value(s)", f"{w1.path} slot 'v': 4 NaN/Inf value(s)"])
    ad = counting_model(st, monkeypatch)
    for w, arr in zip(st.weights, (big, bad, loud)):
        for s in ("m", "v"):
            ad.values[(w.path, s)] = np.zeros(arr.shape, arr.dtype)
    for ws in ad.opt.slots:
        for var in ws.slots.values():
            var.shape, var.dtype = ad.values[var.handle].shape, str(ad.values[var.handle].dtype)
    for mw, arr in zip(ad.desc.weights, (big, bad, loud)):
        mw.variable.shape, mw.variable.dtype = arr.shape, str(arr.dtype)
    report = _api.import_state(object(), path)
    assert sorted(n for n in report.notes if "NaN" in n) == sorted([
        f"{w1.path} slot 'm': 4 NaN/Inf value(s), imported as they are",
        f"{w1.path} slot 'v': 4 NaN/Inf value(s), imported as they are"])
    np.testing.assert_array_equal(ad.values[(w1.path, "m")], bad)


# ---- finish: an adapter's put-off work, done once whatever the outcome ----------------------

class FinishingAdapter(BaseAdapter):
    """Records every assignment, restore and finish() in one log, in order."""

    def __init__(self, fail_on=None, finish_fails=False):
        self.values = {k: np.zeros(2, np.float32) for k in "abc"}
        self.log, self.fail_on, self.finish_fails = [], fail_on, finish_fails

    def read(self, h):
        return self.values[h]

    def assign(self, h, v):
        if h == self.fail_on:
            self.fail_on = None  # once: the rollback's restore of it goes through
            raise RuntimeError("device")
        self.log.append(("assign", h))
        self.values[h] = np.array(v)

    def finish(self):
        self.log.append(("finish",))
        if self.finish_fails:
            raise RuntimeError("out of memory")


def _plan():
    return [(Variable(k, (2,), "float32"), np.full(2, i + 1, np.float32))
            for i, k in enumerate("abc")]


@pytest.mark.parametrize("rollback", [True, False])
def test_finish_runs_once_after_the_last_assignment(rollback):
    from optstate_format import _journal
    ad = FinishingAdapter()
    assert _journal.apply(ad, _plan(), rollback=rollback) == 3
    assert ad.log == [("assign", "a"), ("assign", "b"), ("assign", "c"), ("finish",)]


@pytest.mark.parametrize("rollback", [True, False])
def test_finish_runs_once_after_a_failed_import_and_after_its_rollback(rollback):
    from optstate_format import _journal
    ad = FinishingAdapter(fail_on="c")
    with pytest.raises(OptStateError) as e:
        _journal.apply(ad, _plan(), rollback=rollback)
    assert e.value.code == "E_ASSIGN"
    restores = [("assign", h) for h in "cba"] if rollback else []  # newest first
    assert ad.log == [("assign", "a"), ("assign", "b"), *restores, ("finish",)]
    assert [ad.values[k][0] for k in "abc"] == ([0, 0, 0] if rollback else [1, 2, 0])


def test_a_failing_finish_is_an_assign_error_unless_another_error_is_on_its_way():
    from optstate_format import _journal
    with pytest.raises(OptStateError) as e:
        _journal.apply(FinishingAdapter(finish_fails=True), _plan())
    assert e.value.code == "E_ASSIGN" and "out of memory" in str(e.value)
    with pytest.raises(OptStateError) as e:
        _journal.apply(FinishingAdapter(fail_on="b", finish_fails=True), _plan())
    assert "device" in str(e.value) and "out of memory" not in str(e.value)
    try:  # an import run while the caller handles an error of its own still reports it
        raise LookupError("the caller's")
    except LookupError:
        with pytest.raises(OptStateError) as e:
            _journal.apply(FinishingAdapter(finish_fails=True), _plan())
    assert "out of memory" in str(e.value)
