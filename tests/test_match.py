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
