"""Weights nobody named (issue 10, items 1-2): ``add_weight(shape=...)`` gets a name from a
process-wide counter (Keras 3 ``variable_<n>``, tf_keras ``Variable``), so a weight's role in
its layer is its index among the layer's variables (spec 8.1). Every test checks each slot of
the rebuilt model against the source model's slot for the same layer's same weight."""

from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf_keras = pytest.importorskip("tf_keras")

import optstate_format as osf  # noqa: E402
from optstate_format import _api  # noqa: E402
from unnamed_models import (assert_filled_by_role, branches, move_counters,  # noqa: E402
                            role_weights, slot, subclassed, train)

pytestmark = pytest.mark.framework
FRAMEWORKS = {"keras3": keras, "tf_keras": tf_keras}
DATA = Path(__file__).resolve().parents[1] / "support" / "data" / "v1.0"


def assert_slots_by_role(a, ra, b, rb):
    """Every Adam slot of ``b`` equals ``a``'s slot for the weight playing the same role."""
    checked = 0
    wa, wb = dict(role_weights(ra)), dict(role_weights(rb))
    assert set(wa) == set(wb)
    for name in sorted(wa):
        for s in ("m", "v"):
            np.testing.assert_array_equal(slot(b.optimizer, wb[name], s),
                                          slot(a.optimizer, wa[name], s), err_msg=name)
            checked += 1
    return checked


def generated_paths(model):
    return {w.path for w in _api.adapter_for(model).describe_model(model).weights
            if w.generated_name}


@pytest.mark.parametrize("framework", ["keras3", "tf_keras"])
@pytest.mark.parametrize("build", [branches, subclassed], ids=["functional", "subclassed"])
def test_unnamed_equal_shape_weights_land_on_their_role_after_counters_moved(
        framework, build, tmp_path):
    K = FRAMEWORKS[framework]
    a, ra = build(K)
    train(a)
    scale, shift = (slot(a.optimizer, ra["a_ss"].scale, "m"),
                    slot(a.optimizer, ra["a_ss"].shift, "m"))
    assert not np.array_equal(scale, shift)  # equal shapes, different state: a swap would show
    path = osf.export_state(a, tmp_path / "a.optstate")
    state = osf.read(path)
    generated = [w for w in state.weights if "ariable" in w.hints["weight_name"]]
    assert len(generated) == 4 and all(w.hints["name"] is None for w in generated)
    move_counters(K, 2)
    b, rb = build(K, b_first=True)  # the other branch built first: other counters again
    b_names = {v.path if hasattr(v, "path") else v.name for _, v in role_weights(rb)}
    a_names = {v.path if hasattr(v, "path") else v.name for _, v in role_weights(ra)}
    if K is keras:
        assert b_names.isdisjoint(a_names)  # every generated name differs
    report = osf.import_state(b, path)
    assert report.ok and len(report.matched) == len(state.weights) == 10
    assert assert_slots_by_role(a, ra, b, rb) == 20


def test_the_role_of_a_generated_weight_is_its_index_in_its_layer():
    from optstate_format._identity import chain
    a, ra = branches(keras)
    desc = _api.adapter_for(a).describe_model(a)
    ids = _api.identities(desc)
    ss = ra["a_ss"]
    scale, shift = ids[f"{ss.name}/{ss.scale.name}"], ids[f"{ss.name}/{ss.shift.name}"]
    assert scale.generated and (scale.role, shift.role) == ("#0", "#1")
    # both hash the same layer identity with "#0" and "#1" (spec 8.1, 8.2 step 4)
    assert scale.structural == "g:" + chain(scale.v1[0], "#0")
    assert shift.structural == "g:" + chain(scale.v1[0], "#1")
    hints = {w.path: h for w, h in zip(desc.weights, _api._hints(desc))}
    assert hints[f"{ss.name}/{ss.scale.name}"]["name"] is None


def test_tf_keras_state_of_unnamed_weights_moves_into_keras3(tmp_path):
    a, ra = branches(tf_keras)
    train(a)
    path = osf.export_state(a, tmp_path / "k2.optstate")
    move_counters(keras, 1)
    b, rb = branches(keras, b_first=True)
    assert osf.import_state(b, path).ok
    assert assert_slots_by_role(a, ra, b, rb) == 20


@pytest.mark.parametrize("framework", ["keras3", "tf_keras"])
def test_a_1_0_file_with_generated_names_imports_by_role_in_another_process(framework):
    """A 1.0 file hashed ``variable_4`` into the identity. The reader finds each such
    weight's layer again by recomputing the 1.0 identity of the file's own name in every
    model layer, then ranks the layer's weights by their name's counter (spec 8.5)."""
    K = FRAMEWORKS[framework]
    path = DATA / f"{framework}_unnamed_scale_shift.optstate"
    state = osf.read(path)
    assert state.version == "1.0"
    file_names = {w.hints["weight_name"] for w in state.weights if "ariable" in w.path}
    move_counters(K, 4)
    b, rb = branches(K, b_first=True)
    if K is keras:
        assert file_names.isdisjoint({v.name for _, v in role_weights(rb)})
    report = osf.import_state(b, path, include_weights=True)
    assert report.ok and len(report.matched) == 10
    assert assert_filled_by_role(b, rb, include_weights=True) == 20


def test_a_1_0_file_name_hint_on_a_generated_weight_is_never_used():
    """1.0 wrote ``name`` = path for a user-named layer even when the weight's own name was
    generated (``ss/variable_5``): a target weight of that path may play another role."""
    from optstate_format._match import file_hints
    state = osf.read(DATA / "keras3_unnamed_scale_shift.optstate")
    forged = [w for w in state.weights if "variable" in w.path]
    for w in forged:
        w.hints["name"] = w.path
    hints = file_hints(forged, [], "1.0")
    assert all(hints[w.path]["name"] is None for w in forged)
    assert all(hints[w.path]["structural"] is None for w in forged)  # no layer to recover


def test_tf_keras_generated_variable_names_are_recognised():
    a, ra = branches(tf_keras)
    gen = generated_paths(a)
    assert len(gen) == 4 and all(p.rsplit("/", 1)[-1].startswith("Variable") for p in gen)
