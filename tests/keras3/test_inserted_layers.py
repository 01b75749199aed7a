"""A layer with weights inserted or removed mid-model (issue 10, item 6; spec 8.4).

Identities are computed from both ends; where they disagree the stretch between is aligned
by structure. Oracle: the layers each builder returns by role, independent of optstate."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf_keras = pytest.importorskip("tf_keras")

import optstate_format as osf  # noqa: E402
from optstate_format import _api  # noqa: E402
from unnamed_models import slot  # noqa: E402

pytestmark = pytest.mark.framework
FRAMEWORKS = {"keras3": keras, "tf_keras": tf_keras}


def chain_model(K, units, insert_after=None, new_units=None, n_in=6):
    """in -> Dense(units[0]) -> ... -> Dense(units[-1]); a new Dense after layer i if asked."""
    ipt = K.Input((n_in,))
    x, roles = ipt, {}
    for i, u in enumerate(units):
        layer = K.layers.Dense(u)
        x = layer(x)
        roles[f"d{i}"] = layer
        if insert_after == i:
            new = K.layers.Dense(new_units or u)
            x = new(x)
            roles["new"] = new
    model = K.Model(ipt, x)
    model.compile("adam", "mse")
    return model, roles


def train(model, n_in=6, seed=0):
    rng = np.random.default_rng(seed)
    out = int(model.outputs[0].shape[-1])
    model.train_on_batch(rng.standard_normal((8, n_in)).astype("float32"),
                         rng.standard_normal((8, out)).astype("float32"))


def paths_of(model, K, layer):
    ids = {id(layer.kernel), id(layer.bias)}
    return sorted(w.path for w in _api.adapter_for(model).describe_model(model).weights
                  if id(w.variable.handle) in ids)


def assert_same_slots(a, la, b, lb):
    for wa, wb in ((la.kernel, lb.kernel), (la.bias, lb.bias)):
        for s in ("m", "v"):
            np.testing.assert_array_equal(slot(b.optimizer, wb, s), slot(a.optimizer, wa, s))


def assert_fresh(b, layer):
    for w in (layer.kernel, layer.bias):
        for s in ("m", "v"):
            assert not np.any(slot(b.optimizer, w, s))


@pytest.mark.parametrize("framework", ["keras3", "tf_keras"])
def test_inserted_dense_is_the_only_layer_reported_and_the_others_keep_their_state(
        framework, tmp_path):
    K = FRAMEWORKS[framework]
    a, ra = chain_model(K, [16, 32, 1])
    train(a)
    path = osf.export_state(a, tmp_path / "a.optstate")
    b, rb = chain_model(K, [16, 32, 1], insert_after=0)  # in -> D16 -> new D16 -> D32 -> D1
    with pytest.raises(osf.MatchError) as e:
        osf.import_state(b, path)
    report = e.value.report
    assert sorted(report.missing) == paths_of(b, K, rb["new"])
    assert report.unexpected == [] and report.conflicts == [] and report.mismatched == []
    report = osf.import_state(b, path, strict=False)
    assert sorted(report.missing) == paths_of(b, K, rb["new"]) and len(report.matched) == 6
    for role in ("d0", "d1", "d2"):
        assert_same_slots(a, ra[role], b, rb[role])
    assert_fresh(b, rb["new"])
    assert {m[2] for m in report.matched} == {"structure", "structure-in"}


@pytest.mark.parametrize("framework", ["keras3", "tf_keras"])
def test_removed_dense_is_the_only_file_layer_reported(framework, tmp_path):
    K = FRAMEWORKS[framework]
    a, ra = chain_model(K, [16, 32, 1], insert_after=0)
    train(a)
    path = osf.export_state(a, tmp_path / "a.optstate")
    b, rb = chain_model(K, [16, 32, 1])
    report = osf.import_state(b, path, strict=False)
    assert report.missing == [] and sorted(report.unexpected) == paths_of(a, K, ra["new"])
    for role in ("d0", "d1", "d2"):
        assert_same_slots(a, ra[role], b, rb[role])


@pytest.mark.parametrize("framework", ["keras3", "tf_keras"])
def test_new_dense_among_identical_denses_is_refused_as_ambiguous_even_when_not_strict(
        framework, tmp_path):
    K = FRAMEWORKS[framework]
    a, _ = chain_model(K, [8, 8, 8, 1], n_in=8)
    train(a, n_in=8)
    path = osf.export_state(a, tmp_path / "a.optstate")
    b, rb = chain_model(K, [8, 8, 8, 1], insert_after=1, n_in=8)
    with pytest.raises(osf.MatchError) as e:
        osf.import_state(b, path, strict=False)
    problems = [p for p in e.value.problems if p.code == "E_MATCH_AMBIGUOUS"]
    assert len(problems) == 3  # the three file Dense(8) layers, each named with its candidates
    text = str(e.value)
    for layer in (rb["d0"], rb["d1"], rb["d2"], rb["new"]):
        for p in paths_of(b, K, layer):
            assert p in text
    assert "mapping=" in text
    for layer in rb.values():
        assert_fresh(b, layer)  # refused: nothing was assigned


def test_a_mapping_settles_the_ambiguous_alignment(tmp_path):
    a, ra = chain_model(keras, [8, 8, 8, 1], n_in=8)
    train(a, n_in=8)
    path = osf.export_state(a, tmp_path / "a.optstate")
    b, rb = chain_model(keras, [8, 8, 8, 1], insert_after=1, n_in=8)
    mapping = {}
    for role in ("d0", "d1", "d2"):
        for fp, tp in zip(paths_of(a, keras, ra[role]), paths_of(b, keras, rb[role])):
            mapping[fp] = tp
    report = osf.import_state(b, path, strict=False, mapping=mapping)
    assert sorted(report.missing) == paths_of(b, keras, rb["new"])
    for role in ("d0", "d1", "d2", "d3"):
        assert_same_slots(a, ra[role], b, rb[role])


def test_insertion_inside_one_branch_of_a_two_branch_model(tmp_path):
    def build(insert):
        ipt = keras.Input((6,))
        roles = {}
        outs = []
        for br in ("a", "b"):
            d1, d2 = keras.layers.Dense(12), keras.layers.Dense(5)
            x = d1(ipt)
            if insert and br == "a":
                roles["new"] = keras.layers.Dense(12)
                x = roles["new"](x)
            outs.append(d2(x))
            roles[f"{br}1"], roles[f"{br}2"] = d1, d2
        roles["head"] = keras.layers.Dense(1)
        m = keras.Model(ipt, roles["head"](keras.layers.concatenate(outs)))
        m.compile("adam", "mse")
        return m, roles

    a, ra = build(False)
    train(a)
    path = osf.export_state(a, tmp_path / "a.optstate")
    b, rb = build(True)
    report = osf.import_state(b, path, strict=False)
    assert sorted(report.missing) == paths_of(b, keras, rb["new"]) and not report.unexpected
    for role in ("a1", "a2", "b1", "b2", "head"):
        assert_same_slots(a, ra[role], b, rb[role])


def test_a_1_0_file_has_no_input_side_hint_and_matches_from_the_outputs_only(tmp_path):
    """No ``structural_in`` in a 1.0 file: today's (1.0) matching, loud where it cannot tell."""
    a, ra = chain_model(keras, [16, 32, 1])
    train(a)
    state = _api.source_state(a, materialize=True)
    for w in state.weights:
        w.hints.pop("structural_in")
    state.version = "1.0"
    b, rb = chain_model(keras, [16, 32, 1], insert_after=0)
    with pytest.raises(osf.MatchError) as e:
        _api.apply_state(b, state)
    # from the outputs only, the new layer takes the first layer's identity: its kernel is
    # refused by shape and the first layer's weights are missing (the 1.0 behaviour)
    assert paths_of(b, keras, rb["d0"])[0] in e.value.report.missing
    assert any(p.code == "E_MATCH_SHAPE" for p in e.value.problems)
