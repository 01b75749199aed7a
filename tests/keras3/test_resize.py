"""Model surgery, opt-in (issue 10, item 4; spec 8.6): weights whose shape changed import their
overlapping region with ``resize="overlap"``; the rest keeps the target optimizer's fresh value.
Never the default: without it the same imports are refused with E_MATCH_SHAPE."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import optstate_format as osf  # noqa: E402
from optstate_format import _api  # noqa: E402

pytestmark = pytest.mark.framework


def adam_slots(model, var):
    opt = model.optimizer
    i = opt._get_variable_index(var)
    return np.array(opt._momentums[i].numpy()), np.array(opt._velocities[i].numpy())


def by_path(model):
    return {w.path: w.variable.handle
            for w in _api.adapter_for(model).describe_model(model).weights}


def gpt2(vocabulary_size=64, max_sequence_length=32):
    keras_hub = pytest.importorskip("keras_hub")
    model = keras_hub.models.GPT2Backbone(
        vocabulary_size=vocabulary_size, num_layers=2, num_heads=2, hidden_dim=16,
        intermediate_dim=32, max_sequence_length=max_sequence_length)
    model.compile(keras.optimizers.Adam(1e-3), "mse", run_eagerly=True)
    return model


def train_gpt2(model, seq=8):
    rng = np.random.default_rng(0)
    x = {"token_ids": rng.integers(1, 60, (2, seq)).astype("int32"),
         "padding_mask": np.ones((2, seq), "int32")}
    model.train_on_batch(x, rng.standard_normal((2, seq, 16)).astype("float32"))


def test_gpt2_longer_context_and_vocabulary_import_by_overlap(tmp_path):
    a = gpt2()
    train_gpt2(a)
    path = osf.export_state(a, tmp_path / "gpt2.optstate")
    b = gpt2(vocabulary_size=80, max_sequence_length=64)
    with pytest.raises(osf.MatchError) as e:
        osf.import_state(b, path)  # the default refuses, naming both weights
    shape_problems = {p.path for p in e.value.problems if p.code == "E_MATCH_SHAPE"}
    assert {p.rsplit("/", 2)[-2] for p in shape_problems} == {"position_embedding",
                                                               "token_embedding"}
    assert "resize='overlap'" in str(e.value)
    report = osf.import_state(b, path, resize="overlap")
    assert report.ok
    resized = {r[1]: (r[2], r[3]) for r in report.resized}
    pa, pb = by_path(a), by_path(b)
    pos = next(p for p in pb if p.endswith("position_embedding/embeddings"))
    tok = next(p for p in pb if p.endswith("token_embedding/embeddings"))
    assert resized == {pos: ((32, 16), (64, 16)), tok: ((64, 16), (80, 16))}
    for path_b, rows in ((pos, 32), (tok, 64)):
        fp = next(r[0] for r in report.resized if r[1] == path_b)
        for new, old in zip(adam_slots(b, pb[path_b]), adam_slots(a, pa[fp])):
            np.testing.assert_array_equal(new[:rows], old)          # the overlap: copied
            np.testing.assert_array_equal(new[rows:], 0 * new[rows:])  # the rest: Adam's fresh
    matched = {fp: tp for fp, tp, _ in report.matched}
    for fp, tp in matched.items():
        if tp in (pos, tok):
            continue
        for new, old in zip(adam_slots(b, pb[tp]), adam_slots(a, pa[fp])):
            np.testing.assert_array_equal(new, old)
    assert len(matched) == len(osf.read(path).weights)


def head_model(classes, optimizer):
    ipt = keras.Input((5,))
    body = keras.layers.Dense(4, name="body")
    head = keras.layers.Dense(classes, name="head")
    model = keras.Model(ipt, head(body(ipt)))
    model.compile(optimizer, "mse")
    return model, body, head


def test_classifier_head_with_more_classes_keeps_adagrads_initial_accumulator_outside(tmp_path):
    a, abody, ahead = head_model(3, keras.optimizers.Adagrad(0.1, initial_accumulator_value=0.25))
    rng = np.random.default_rng(1)
    a.train_on_batch(rng.standard_normal((4, 5)).astype("float32"),
                     rng.standard_normal((4, 3)).astype("float32"))
    path = osf.export_state(a, tmp_path / "head.optstate", include_weights=True)
    b, bbody, bhead = head_model(5, keras.optimizers.Adagrad(0.1,
                                                             initial_accumulator_value=0.25))
    fresh_kernel = np.array(bhead.kernel.numpy())
    report = osf.import_state(b, path, resize="overlap", include_weights=True)
    assert sorted((r[1], r[2], r[3]) for r in report.resized) == [
        ("head/bias", (3,), (5,)), ("head/kernel", (4, 3), (4, 5))]

    def acc(model, var):
        opt = model.optimizer
        return np.array(opt._accumulators[opt._get_variable_index(var)].numpy())

    new, old = acc(b, bhead.kernel), acc(a, ahead.kernel)
    np.testing.assert_array_equal(new[:, :3], old)
    np.testing.assert_array_equal(new[:, 3:], np.full((4, 2), 0.25, np.float32))
    np.testing.assert_array_equal(acc(b, bhead.bias)[3:], np.full(2, 0.25, np.float32))
    np.testing.assert_array_equal(acc(b, bbody.kernel), acc(a, abody.kernel))
    # the weights themselves: old columns from the file, new columns keep their fresh init
    np.testing.assert_array_equal(bhead.kernel.numpy()[:, :3], ahead.kernel.numpy())
    np.testing.assert_array_equal(bhead.kernel.numpy()[:, 3:], fresh_kernel[:, 3:])


def test_transfer_state_threads_resize(tmp_path):
    a, _, ahead = head_model(3, "adam")
    rng = np.random.default_rng(2)
    a.train_on_batch(rng.standard_normal((4, 5)).astype("float32"),
                     rng.standard_normal((4, 3)).astype("float32"))
    b, _, bhead = head_model(2, "adam")
    with pytest.raises(osf.MatchError):
        osf.transfer_state(a, b)
    report = osf.transfer_state(a, b, resize="overlap")
    assert [r[1] for r in sorted(report.resized)] == ["head/bias", "head/kernel"]
    np.testing.assert_array_equal(adam_slots(b, bhead.kernel)[0],
                                  adam_slots(a, ahead.kernel)[0][:, :2])
