"""The matching engine and import plans, framework-free."""

import numpy as np
import pytest

import optstate_format as osf
from optstate_format._match import plan_import
from optstate_format.adapter import Variable

from helpers import adam_state


def target_for(state, *, rename=None, structural=None, names=None, shapes=None, alg="adam",
               slot_names=("m", "v")):
    weights = []
    for i, w in enumerate(state.weights):
        path = (rename or {}).get(w.path, f"renamed_{i}/kernel")
        shape = (shapes or {}).get(w.path, w.shape)
        hints = {"structural": (structural or {}).get(w.path, w.hints.get("structural")),
                 "name": (names or {}).get(w.path)}
        slots = {s: Variable((path, s), shape, "float32") for s in slot_names}
        weights.append(osf.WeightEntry(path, shape, "float32", True, slots=slots, hints=hints,
                                       value=Variable((path, "value"), shape, "float32")))
    return osf.OptimizerState(osf.OptimizerInfo(alg, "Adam"), weights=weights,
                              globals={"iterations": Variable("iterations", (), "int64")})


def as_dict(assignments):
    return {v.handle: a for v, a in assignments}


def test_matches_by_structure_when_names_are_auto_generated():
    st = adam_state()
    report, assigns = plan_import(st, target_for(st))
    got = as_dict(assigns)
    for i, w in enumerate(st.weights):
        np.testing.assert_array_equal(got[(f"renamed_{i}/kernel", "m")], w.slots["m"])
    assert got["iterations"] == 4
    assert {m[2] for m in report.matched} == {"structure"}


def test_never_matches_by_position_or_shape_alone():
    st = adam_state()
    for w in st.weights:
        w.hints = {"structural": None, "name": None}
    tgt = target_for(st, structural={w.path: None for w in st.weights})
    with pytest.raises(osf.MatchError) as e:
        plan_import(st, tgt)
    assert len(e.value.report.missing) == 3 and len(e.value.report.unexpected) == 3


def test_structure_and_name_disagreeing_is_a_conflict_naming_both():
    st = adam_state(n_weights=2)
    st.weights[0].hints["name"] = "enc/kernel"
    tgt = target_for(st, rename={st.weights[0].path: "enc/kernel",
                                 st.weights[1].path: "dec/kernel"},
                     names={st.weights[0].path: "enc/kernel"},
                     structural={st.weights[0].path: st.weights[1].hints["structural"],
                                 st.weights[1].path: st.weights[0].hints["structural"]})
    with pytest.raises(osf.MatchError) as e:
        plan_import(st, tgt, strict=False)
    text = str(e.value)
    assert "E_MATCH_CONFLICT" in text and "enc/kernel" in text and "dec/kernel" in text
    assert "mapping=" in text


def test_mapping_wins_over_every_other_source():
    st = adam_state(n_weights=2)
    tgt = target_for(st)
    a, b = st.weights[0].path, st.weights[1].path
    # swap by explicit mapping even though structure says otherwise (shapes differ: fix them)
    st.weights[1].shape = st.weights[0].shape
    st.weights[1].slots = {k: v[:2] for k, v in st.weights[1].slots.items()}
    tgt = target_for(st)
    report, assigns = plan_import(st, tgt, mapping={a: "renamed_1/kernel", b: "renamed_0/kernel"})
    got = as_dict(assigns)
    np.testing.assert_array_equal(got[("renamed_1/kernel", "m")], st.weights[0].slots["m"])
    assert {m[2] for m in report.matched} == {"mapping"}


def test_callable_mapping_and_bad_mapping_entries():
    st = adam_state(n_weights=2)
    tgt = target_for(st)
    report, _ = plan_import(st, tgt, mapping=lambda p: p.replace("layer_", "renamed_"))
    assert len(report.matched) == 2
    with pytest.raises(osf.MatchError) as e:
        plan_import(st, tgt, mapping={"nope/kernel": "renamed_0/kernel"})
    assert "E_MATCH_MAPPING" in str(e.value)


def test_shape_mismatch_names_the_weight_and_assigns_nothing():
    st = adam_state()
    tgt = target_for(st, shapes={st.weights[1].path: (9, 9)})
    with pytest.raises(osf.MatchError) as e:
        plan_import(st, tgt)
    assert "layer_1/kernel" in str(e.value) and "E_MATCH_SHAPE" in str(e.value)


def test_non_strict_imports_what_matches_and_reports_the_rest():
    st = adam_state()
    tgt = target_for(st, shapes={st.weights[1].path: (9, 9)})
    report, assigns = plan_import(st, tgt, strict=False)
    assert len(report.matched) == 2 and report.missing == ["renamed_1/kernel"]
    assert ("renamed_1/kernel", "m") not in as_dict(assigns)


def test_algorithm_mismatch_is_refused_even_when_not_strict():
    st = adam_state()
    with pytest.raises(osf.MatchError) as e:
        plan_import(st, target_for(st, alg="sgd"), strict=False)
    assert "E_MATCH_ALGORITHM" in str(e.value)


def test_missing_or_extra_slot_is_reported():
    st = adam_state()
    with pytest.raises(osf.MatchError) as e:
        plan_import(st, target_for(st, slot_names=("m", "v", "v_hat")))
    assert "E_MATCH_SLOTS" in str(e.value) and "v_hat" in str(e.value)


def test_lossy_dtype_conversion_is_refused_and_widening_is_exact():
    st = adam_state(n_weights=1)
    tgt = target_for(st)
    for s in tgt.weights[0].slots.values():
        s.dtype = "float16"
    with pytest.raises(osf.MatchError) as e:
        plan_import(st, tgt)
    assert "E_MATCH_DTYPE" in str(e.value)
    for s in tgt.weights[0].slots.values():
        s.dtype = "float64"
    _, assigns = plan_import(st, tgt)
    got = as_dict(assigns)[("renamed_0/kernel", "m")]
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, st.weights[0].slots["m"].astype(np.float64))


def test_ambiguous_identity_is_refused():
    st = adam_state(n_weights=2)
    st.weights[1].shape = st.weights[0].shape
    st.weights[1].slots = {k: v[:2] for k, v in st.weights[1].slots.items()}
    st.weights[1].hints["structural"] = st.weights[0].hints["structural"]
    with pytest.raises(osf.MatchError) as e:
        plan_import(st, target_for(st))
    assert "E_MATCH_AMBIGUOUS" in str(e.value)


def test_report_prints_a_table_with_counts():
    st = adam_state()
    report, _ = plan_import(st, target_for(st))
    text = str(report)
    assert "layer_0/kernel" in text and "renamed_0/kernel" in text
    assert "matched 3, missing 0" in text


# ---- two-ended alignment (spec 8.4) and resize (8.6) ------------------------------------

from optstate_format import OptimizerInfo, OptimizerState, WeightEntry  # noqa: E402
from optstate_format._identity import (Graph, Layer, Node,  # noqa: E402
                                       describe_identities)


def dense_chain(units, n_in, insert_after=None, new_units=None, prefix="f"):
    """Graph, weights and slots of in -> Dense(u0) -> ... with an extra Dense if asked.
    Returns [(path, shape, identity)] in layer order (and the inserted layer's paths)."""
    layers, nodes, specs = {}, [], []
    dims = [n_in]
    plan = []
    for i, u in enumerate(units):
        plan.append((f"d{i}", u))
        if insert_after == i:
            plan.append(("new", new_units or u))
    ref = ("input", 0)
    for name, u in plan:
        k, b = f"{prefix}_{name}/kernel", f"{prefix}_{name}/bias"
        layers[name] = Layer("Dense", [("kernel", k), ("bias", b)])
        specs += [(k, (dims[-1], u)), (b, (u,))]
        dims.append(u)
        nodes.append(Node(name, [ref]))
        ref = ("node", len(nodes) - 1, 0)
    ids = describe_identities(Graph(layers, nodes, [ref]))
    return [(p, s, ids[p]) for p, s in specs]


def file_state(specs, seed=0):
    rng = np.random.default_rng(seed)
    weights = []
    for path, shape, ident in specs:
        weights.append(WeightEntry(
            path, shape, "float32",
            slots={"m": rng.standard_normal(shape).astype(np.float32)},
            hints={"structural": ident.structural, "structural_in": ident.structural_in,
                   "name": None, "weight_name": path.split("/", 1)[1]}))
    return OptimizerState(OptimizerInfo("sgd", "SGD"), step=1, weights=weights,
                          globals={"iterations": np.array(1, np.int64)})


def target_from(specs, fill=0.0):
    """A target OptimizerState (slots as Variables) and what the conductor passes with it:
    the graph's identities and a read function (the target's fresh slot values)."""
    values, ids, weights = {}, {}, []
    for path, shape, ident in specs:
        values[(path, "m")] = np.full(shape, fill, np.float32)
        ids[path] = ident
        weights.append(osf.WeightEntry(
            path, shape, "float32", True,
            slots={"m": Variable((path, "m"), shape, "float32")},
            hints={"structural": ident.structural, "structural_in": ident.structural_in,
                   "name": None, "weight_name": path.split("/", 1)[1]},
            value=Variable((path, "value"), shape, "float32")))
    target = osf.OptimizerState(osf.OptimizerInfo("sgd", "SGD"), weights=weights,
                                globals={"iterations": Variable("it", (), "int64")})
    return target, {"identities": ids, "read": lambda v: values[v.handle]}


def test_inserted_layer_is_the_only_one_missing_and_every_other_slot_lands_on_its_layer():
    st = file_state(dense_chain([16, 32, 1], 6))
    tgt, extra = target_from(dense_chain([16, 32, 1], 6, insert_after=0, prefix="t"))
    with pytest.raises(osf.MatchError) as e:
        plan_import(st, tgt, **extra)
    assert sorted(e.value.report.missing) == ["t_new/bias", "t_new/kernel"]
    assert not e.value.report.unexpected
    report, assigns = plan_import(st, tgt, **extra, strict=False)
    got = as_dict(assigns)
    for layer in ("d0", "d1", "d2"):
        for w in ("kernel", "bias"):
            np.testing.assert_array_equal(got[(f"t_{layer}/{w}", "m")],
                                          st.weight(f"f_{layer}/{w}").slots["m"])
    assert ("t_new/bias", "m") not in got


def test_removed_layer_is_the_only_one_unexpected():
    st = file_state(dense_chain([16, 32, 1], 6, insert_after=0))
    tgt, extra = target_from(dense_chain([16, 32, 1], 6, prefix="t"))
    report, assigns = plan_import(st, tgt, **extra, strict=False)
    assert sorted(report.unexpected) == ["f_new/bias", "f_new/kernel"] and not report.missing
    np.testing.assert_array_equal(as_dict(assigns)[("t_d1/kernel", "m")],
                                  st.weight("f_d1/kernel").slots["m"])


def test_identical_layers_around_an_insertion_are_ambiguous_but_the_certain_pairs_are_named():
    st = file_state(dense_chain([8, 8, 8, 1], 8))
    tgt, extra = target_from(dense_chain([8, 8, 8, 1], 8, insert_after=1, prefix="t"))
    with pytest.raises(osf.MatchError) as e:
        plan_import(st, tgt, **extra, strict=False)
    amb = [p for p in e.value.problems if p.code == "E_MATCH_AMBIGUOUS"]
    assert sorted(p.path for p in amb) == ["f_d0/bias", "f_d1/bias", "f_d2/bias"]
    for name in ("t_d0/kernel", "t_d1/kernel", "t_new/kernel", "t_d2/kernel"):
        assert name in amb[0].message
    assert "t_d3" not in amb[0].message  # the last layer is certain in every alignment
    mapping = {f"f_{n}/{w}": f"t_{n}/{w}" for n in ("d0", "d1", "d2") for w in ("kernel", "bias")}
    report, _ = plan_import(st, tgt, **extra, strict=False, mapping=mapping)
    assert sorted(report.missing) == ["t_new/bias", "t_new/kernel"]
    assert ("f_d3/kernel", "t_d3/kernel", "structure") in report.matched


def test_without_input_side_hints_matching_is_from_the_outputs_only():
    st = file_state(dense_chain([16, 32, 1], 6))
    for w in st.weights:
        w.hints.pop("structural_in")
    tgt, extra = target_from(dense_chain([16, 32, 1], 6, insert_after=0, prefix="t"))
    report, _ = plan_import(st, tgt, **extra, strict=False)
    assert {m[2] for m in report.matched} == {"structure"}
    # the 1.0 behaviour: the new layer takes the first layer's place (its kernel's shape differs)
    assert ("f_d0/bias", "t_new/bias", "structure") in report.matched


def test_resize_overlap_copies_the_shared_region_and_keeps_the_fresh_value_elsewhere():
    specs = dense_chain([4, 3], 2)
    st = file_state(specs)
    grown = dense_chain([4, 5], 2, prefix="t")  # a head with more classes
    tgt, extra = target_from(grown, fill=0.5)  # a fresh optimizer's initial value (Adagrad-like)
    with pytest.raises(osf.MatchError) as e:
        plan_import(st, tgt, **extra)
    assert "E_MATCH_SHAPE" in str(e.value) and "resize='overlap'" in str(e.value)
    report, assigns = plan_import(st, tgt, **extra, resize="overlap")
    got = as_dict(assigns)
    k = got[("t_d1/kernel", "m")]
    assert k.shape == (4, 5)
    np.testing.assert_array_equal(k[:, :3], st.weight("f_d1/kernel").slots["m"])
    np.testing.assert_array_equal(k[:, 3:], np.full((4, 2), 0.5, np.float32))
    b = got[("t_d1/bias", "m")]
    np.testing.assert_array_equal(b[:3], st.weight("f_d1/bias").slots["m"])
    assert sorted((r[0], r[2], r[3]) for r in report.resized) == [
        ("f_d1/bias", (3,), (5,)), ("f_d1/kernel", (4, 3), (4, 5))]
    assert "resized: f_d1/kernel [4, 3] -> t_d1/kernel [4, 5]" in str(report)


def test_resize_shrinks_and_refuses_a_changed_rank():
    st = file_state(dense_chain([4, 3], 2))
    tgt, extra = target_from(dense_chain([4, 2], 2, prefix="t"))
    _, assigns = plan_import(st, tgt, **extra, resize="overlap")
    np.testing.assert_array_equal(as_dict(assigns)[("t_d1/kernel", "m")],
                                  st.weight("f_d1/kernel").slots["m"][:, :2])
    tgt.weights[-2].shape = (4, 3, 1)
    tgt.weights[-2].slots["m"] = Variable(("t_d1/kernel", "m"), (4, 3, 1), "float32")
    with pytest.raises(osf.MatchError) as e:
        plan_import(st, tgt, **extra, resize="overlap")
    assert "keeps the rank" in str(e.value)
    with pytest.raises(ValueError):
        plan_import(st, tgt, **extra, resize="pad")
