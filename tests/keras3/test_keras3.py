"""Keras 3 converter: state lands on the weight with the same role, for every optimizer."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import optstate_format as osf  # noqa: E402
from optstate_format import _journal  # noqa: E402
from optstate_format.converters import keras3 as conv  # noqa: E402

from keras_models import Subclassed, seed_model, small_model, two_branch  # noqa: E402

pytestmark = pytest.mark.framework

ADAM_ATTRS = ("_momentums", "_velocities")


def train(model, steps=2, seed=0):
    rng = np.random.default_rng(seed)
    shape = tuple(model.inputs[0].shape)
    batch = shape[0] or 8
    for _ in range(steps):
        x = rng.standard_normal((batch,) + shape[1:]).astype("float32")
        y = rng.standard_normal((batch,) + tuple(model.outputs[0].shape[1:])).astype("float32")
        model.train_on_batch(x, y)


def slots_of(model, layer, attrs=ADAM_ATTRS):
    """Keras's own per-variable index -> {weight name: {attr: array}}: the oracle."""
    opt = model.optimizer
    out = {}
    for v in layer.trainable_weights:
        i = opt._get_variable_index(v)
        out[v.name] = {a: np.array(getattr(opt, a)[i].numpy()) for a in attrs}
    return out


def opt_values(model):
    return [np.array(v.numpy()) for v in model.optimizer.variables]


def assert_roles_equal(src, src_roles, dst, dst_roles, attrs=ADAM_ATTRS):
    n = 0
    for role, layer in src_roles.items():
        a, b = slots_of(src, layer, attrs), slots_of(dst, dst_roles[role], attrs)
        assert a.keys() == b.keys()
        for w in a:
            for attr in attrs:
                np.testing.assert_array_equal(b[w][attr], a[w][attr],
                                              err_msg=f"{role}/{w} {attr}")
                n += 1
    return n


# ---- scenario 1: the seed case -------------------------------------------------------

def test_seed_case_every_slot_of_b_equals_a_slot_of_the_same_role(tmp_path):
    a, ra = seed_model((32, 240, 4))
    b, rb = seed_model((32, 250, 4))
    train(a, 3)
    assert [type(x).__name__ for x in b.layers] != [type(x).__name__ for x in a.layers]
    path = osf.export_state(a, tmp_path / "a.optstate")
    report = osf.import_state(b, path)
    assert len(report.matched) == 10 and report.ok
    assert assert_roles_equal(a, ra, b, rb) == 20
    assert int(b.optimizer.iterations.numpy()) == 3


def test_seed_case_the_native_order_based_load_fails():
    a, _ = seed_model((32, 240, 4))
    b, _ = seed_model((32, 250, 4))
    train(a, 1)
    b.optimizer.build(b.trainable_variables)
    store = {}
    a.optimizer.save_own_variables(store)
    with pytest.raises(ValueError):
        b.optimizer.load_own_variables(store)


# ---- scenario 2: equal shapes ----------------------------------------------------------

def test_equal_shape_branches_land_on_their_roles_where_native_load_swaps(tmp_path):
    a, ra = two_branch()
    train(a, 2)
    path = osf.export_state(a, tmp_path / "a.optstate")

    native, rn = two_branch(insert_activation=True, b_first=True, branch="b")
    native.optimizer.build(native.trainable_variables)
    store = {}
    a.optimizer.save_own_variables(store)
    native.optimizer.load_own_variables(store)  # "succeeds"...
    swapped = any(not np.array_equal(slots_of(native, rn[r])["kernel"]["_momentums"],
                                     slots_of(a, ra[r])["kernel"]["_momentums"])
                  for r in ("a1", "b1", "a2", "b2"))
    assert swapped, "native order-based load was expected to misplace slots here"

    b, rb = two_branch(insert_activation=True, b_first=True, branch="b")
    osf.import_state(b, path)
    assert assert_roles_equal(a, ra, b, rb) == 20


# ---- scenario 3: a real mismatch -----------------------------------------------------

def test_changed_units_is_a_match_error_naming_the_weight_and_nothing_changes(tmp_path):
    a, _ = small_model("adam")
    train(a, 2)
    path = osf.export_state(a, tmp_path / "a.optstate")
    import keras as k
    ipt = k.Input((8, 3))
    x = k.layers.Conv1D(4, 3)(ipt)
    x = k.layers.BatchNormalization()(x)
    out = k.layers.Dense(3)(k.layers.Flatten()(x))  # 3 units instead of 2
    b = k.Model(ipt, out)
    b.compile("adam", "mse")
    train(b, 1, seed=5)
    before = opt_values(b)
    weights_before = [w.copy() for w in b.get_weights()]
    with pytest.raises(osf.MatchError) as e:
        osf.import_state(b, path, include_weights=True)
    msg = str(e.value)
    assert "dense" in msg and "kernel" in msg and "E_MATCH_SHAPE" in msg
    for x, y in zip(before, opt_values(b)):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(weights_before, b.get_weights()):
        np.testing.assert_array_equal(x, y)


def fail_assignment(monkeypatch, at, exc):
    """Make the converter's ``at``-th assignment raise ``exc``; return the call counter."""
    calls = {"n": 0}

    def failing(real):  # an import's own arrays go through adopt, the rest through assign
        def call(var, value):
            calls["n"] += 1
            if calls["n"] == at:
                raise exc
            real(var, value)
        return call

    monkeypatch.setattr(conv.ADAPTER, "assign", failing(conv.ADAPTER.assign))
    monkeypatch.setattr(conv.ADAPTER, "adopt", failing(conv.ADAPTER.adopt))
    return calls


def test_failure_injected_during_assignment_rolls_everything_back(tmp_path, monkeypatch):
    a, _ = small_model("adam")
    train(a, 2)
    path = osf.export_state(a, tmp_path / "a.optstate", include_weights=True)
    b, _ = small_model("adam")
    train(b, 1, seed=3)
    before, wbefore = opt_values(b), [w.copy() for w in b.get_weights()]
    calls = fail_assignment(monkeypatch, 7, RuntimeError("device went away"))
    with pytest.raises(osf.OptStateError) as e:
        osf.import_state(b, path, include_weights=True)
    assert e.value.code == "E_ASSIGN" and calls["n"] > 7
    for x, y in zip(before, opt_values(b)):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(wbefore, b.get_weights()):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("opt", ["adam", "adagrad"])
def test_failure_importing_into_a_fresh_model_restores_its_initial_slots(tmp_path, monkeypatch,
                                                                          opt):
    """A rebuilt model's optimizer is journalled as constants (no copy), restored bitwise."""
    a, _ = small_model(opt)
    train(a, 2)
    path = osf.export_state(a, tmp_path / "a.optstate")
    b, _ = small_model(opt)
    b.optimizer.build(b.trainable_variables)
    fresh = opt_values(b)
    entries = [_journal._entry(conv.ADAPTER, v, tuple(v.shape)) for v in b.optimizer.variables]
    assert all(kind == "fill" and value.size == 1 for kind, value, _ in entries)
    if opt == "adagrad":  # a non-zero initial accumulator is a constant too
        assert any(value[0] == np.float32(0.1) for _, value, _ in entries)
    calls = fail_assignment(monkeypatch, 5, RuntimeError("device went away"))
    with pytest.raises(osf.OptStateError) as e:
        osf.import_state(b, path)
    assert e.value.code == "E_ASSIGN" and calls["n"] > 5
    for x, y in zip(fresh, opt_values(b)):
        assert x.tobytes() == y.tobytes()


def test_interrupt_during_assignment_restores_everything_and_is_reraised(tmp_path, monkeypatch):
    a, _ = small_model("adam")
    train(a, 2)
    path = osf.export_state(a, tmp_path / "a.optstate", include_weights=True)
    b, _ = small_model("adam")
    train(b, 1, seed=3)
    before, wbefore = opt_values(b), [w.copy() for w in b.get_weights()]
    entries = [_journal._entry(conv.ADAPTER, v, tuple(v.shape)) for v in b.optimizer.variables]
    assert any(kind == "value" for kind, _, _ in entries)  # trained slots are kept whole
    calls = fail_assignment(monkeypatch, 9, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        osf.import_state(b, path, include_weights=True)
    assert calls["n"] > 9  # the restores went through assign as well
    for x, y in zip(before, opt_values(b)):
        assert x.tobytes() == y.tobytes()
    for x, y in zip(wbefore, b.get_weights()):
        assert x.tobytes() == y.tobytes()


def test_corrupt_file_changes_nothing(tmp_path):
    a, _ = small_model("adam")
    train(a, 1)
    path = osf.export_state(a, tmp_path / "a.optstate")
    raw = bytearray(path.read_bytes())
    raw[-200] ^= 0xFF
    path.write_bytes(bytes(raw))
    b, _ = small_model("adam")
    train(b, 1, seed=2)
    before = opt_values(b)
    with pytest.raises((osf.IntegrityError, osf.FormatError)):
        osf.import_state(b, path)
    for x, y in zip(before, opt_values(b)):
        np.testing.assert_array_equal(x, y)


# ---- scenario 5: every optimizer -----------------------------------------------------

def _optimizers():
    O = keras.optimizers
    sched = O.schedules.ExponentialDecay(0.01, decay_steps=3, decay_rate=0.5)
    cases = {
        "sgd": lambda: O.SGD(0.01),
        "sgd_momentum_nesterov": lambda: O.SGD(0.01, momentum=0.9, nesterov=True),
        "rmsprop_centered_momentum": lambda: O.RMSprop(0.01, momentum=0.5, centered=True),
        "adam": lambda: O.Adam(0.01),
        "adam_amsgrad": lambda: O.Adam(0.01, amsgrad=True),
        "adamw": lambda: O.AdamW(0.01),
        "adadelta": lambda: O.Adadelta(0.5),
        "adagrad": lambda: O.Adagrad(0.05),
        "adamax": lambda: O.Adamax(0.01),
        "adafactor": lambda: O.Adafactor(0.01),
        "nadam": lambda: O.Nadam(0.01),
        "ftrl": lambda: O.Ftrl(0.05),
        "lion": lambda: O.Lion(0.001),
        "lamb": lambda: O.Lamb(0.01),
        "loss_scale_adam": lambda: O.LossScaleOptimizer(O.Adam(0.01)),
        "adam_ema": lambda: O.Adam(0.01, use_ema=True, ema_overwrite_frequency=None),
        "adam_grad_accum": lambda: O.Adam(0.01, gradient_accumulation_steps=2),
        "sgd_schedule": lambda: O.SGD(sched, momentum=0.9),
    }
    # Keras 3.12's Muon cannot take a step on the TensorFlow backend (it reads
    # variable.path, which a TF variable lacks: a Keras bug fixed in 3.13)
    if hasattr(O, "Muon") and tuple(int(p) for p in keras.__version__.split(".")[:2]) >= (3, 13):
        cases["muon"] = lambda: O.Muon(0.01)
    if hasattr(O, "ScheduleFreeAdamW"):
        cases["schedule_free_adamw"] = lambda: O.ScheduleFreeAdamW(0.01)
    return cases


OPTIMIZERS = _optimizers()


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_roundtrips_and_the_next_step_is_identical(name, tmp_path):
    keras.utils.set_random_seed(1)
    a, _ = small_model(OPTIMIZERS[name]())
    train(a, 3)
    path = osf.export_state(a, tmp_path / f"{name}.optstate")
    b, _ = small_model(OPTIMIZERS[name]())
    b.set_weights(a.get_weights())
    report = osf.import_state(b, path)
    assert report.ok
    va, vb = opt_values(a), opt_values(b)
    assert len(va) == len(vb) and len(va) > 0
    for x, y in zip(va, vb):
        np.testing.assert_array_equal(x, y)
    train(a, 1, seed=42)
    train(b, 1, seed=42)
    for x, y in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(x, y)
    state = osf.read(path)
    assert state.step == 3 or name == "adam_grad_accum"
    if name != "sgd":
        assert all(w.slots for w in state.weights)


def test_schedule_is_recorded_as_data():
    sched = keras.optimizers.schedules.ExponentialDecay(0.01, decay_steps=3, decay_rate=0.5)
    a, _ = small_model(keras.optimizers.SGD(sched))
    state = osf._api.source_state(a)
    lr = state.optimizer.learning_rate
    assert lr["kind"] == "schedule" and lr["class_name"] == "ExponentialDecay"
    assert lr["config"]["decay_steps"] == 3


def test_algorithm_mismatch_is_refused(tmp_path):
    a, _ = small_model("adam")
    train(a, 1)
    path = osf.export_state(a, tmp_path / "a.optstate")
    b, _ = small_model("sgd")
    with pytest.raises(osf.MatchError) as e:
        osf.import_state(b, path)
    assert "E_MATCH_ALGORITHM" in str(e.value)


def test_custom_optimizer_roundtrips_through_the_generic_form(tmp_path):
    class TraceSGD(keras.optimizers.Optimizer):
        def __init__(self, learning_rate=0.01, decay=0.5, **kw):
            super().__init__(learning_rate=learning_rate, **kw)
            self.decay = decay

        def build(self, var_list):
            if self.built:
                return
            super().build(var_list)
            self._traces = [self.add_variable_from_reference(v, "trace") for v in var_list]

        def update_step(self, gradient, variable, learning_rate):
            t = self._traces[self._get_variable_index(variable)]
            self.assign(t, self.decay * t + gradient)
            self.assign_sub(variable, learning_rate * t)

    a, _ = small_model(TraceSGD())
    train(a, 2)
    path = osf.export_state(a, tmp_path / "c.optstate")
    state = osf.read(path)
    assert state.optimizer.algorithm == "generic:TraceSGD"
    assert all(set(w.slots) == {"traces"} for w in state.weights)
    b, _ = small_model(TraceSGD())
    b.set_weights(a.get_weights())
    osf.import_state(b, path)
    for x, y in zip(opt_values(a), opt_values(b)):
        np.testing.assert_array_equal(x, y)
    train(a, 1, seed=9)
    train(b, 1, seed=9)
    for x, y in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(x, y)


# ---- scenario 6: live transfer, and model kinds ----------------------------------------

def test_transfer_state_between_live_seed_models():
    a, ra = seed_model((32, 240, 4))
    b, rb = seed_model((32, 250, 4))
    train(a, 2)
    report = osf.transfer_state(a, b)
    assert report.ok and assert_roles_equal(a, ra, b, rb) == 20


def test_unbuilt_optimizer_is_built_without_a_step_or_weight_change(tmp_path):
    a, ra = seed_model((32, 240, 4))
    train(a, 2)
    path = osf.export_state(a, tmp_path / "a.optstate")
    b, rb = seed_model((32, 250, 4))
    w_before = [w.copy() for w in b.get_weights()]
    assert not b.optimizer.built
    osf.import_state(b, path)
    for x, y in zip(w_before, b.get_weights()):
        np.testing.assert_array_equal(x, y)
    assert int(b.optimizer.iterations.numpy()) == 2
    assert_roles_equal(a, ra, b, rb)


def test_include_weights_restores_model_weights_by_role(tmp_path):
    a, ra = seed_model((32, 240, 4))
    train(a, 2)
    path = osf.export_state(a, tmp_path / "a.optstate", include_weights=True)
    b, rb = seed_model((32, 240, 4))
    osf.import_state(b, path, include_weights=True)
    for role in ra:
        for x, y in zip(ra[role].get_weights(), rb[role].get_weights()):
            np.testing.assert_array_equal(x, y)


def test_sequential_nested_and_subclassed_models_roundtrip(tmp_path):
    def nested():
        inner = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4),
                                  keras.layers.Activation("tanh"), keras.layers.Dense(3)])
        ipt = keras.Input((5,))
        m = keras.Model(ipt, keras.layers.Dense(1)(inner(ipt)))
        m.compile("adam", "mse")
        return m

    def subclassed():
        m = Subclassed()
        m.compile("adam", "mse")
        m(np.zeros((2, 5), "float32"))
        return m

    def sequential():
        m = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4), keras.layers.Dense(1)])
        m.compile("rmsprop", "mse")
        return m

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 5)).astype("float32"), rng.standard_normal((8, 1)).astype(
        "float32")
    for build in (nested, subclassed, sequential):
        a = build()
        a.train_on_batch(x, y)
        path = osf.export_state(a, tmp_path / f"{build.__name__}.optstate")
        b = build()
        b.set_weights(a.get_weights())
        rep = osf.import_state(b, path)
        assert rep.ok, build.__name__
        for p, q in zip(opt_values(a), opt_values(b)):
            np.testing.assert_array_equal(p, q)
        a.train_on_batch(x, y)
        b.train_on_batch(x, y)
        for p, q in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_array_equal(p, q)


def test_subclassed_paths_are_attribute_paths(tmp_path):
    m = Subclassed()
    m.compile("adam", "mse")
    m(np.zeros((2, 5), "float32"))
    state = osf._api.source_state(m)
    assert sorted(w.path for w in state.weights) == [
        "encoder/gate/bias", "encoder/gate/kernel", "encoder/proj/bias", "encoder/proj/kernel",
        "head/bias", "head/kernel"]


def test_user_names_and_structure_agree_or_the_import_refuses(tmp_path):
    def named(swap):
        ipt = keras.Input((6,))
        n1, n2 = ("left", "right") if not swap else ("right", "left")
        xa = keras.layers.Dense(8, name=n1)(ipt)
        xb = keras.layers.Dense(8, name=n2)(ipt)
        out = keras.layers.Dense(1, name="head")(keras.layers.concatenate([xa, xb]))
        m = keras.Model(ipt, out)
        m.compile("adam", "mse")
        return m

    a = named(False)
    train(a, 1)
    path = osf.export_state(a, tmp_path / "n.optstate")
    same = named(False)
    rep = osf.import_state(same, path)
    assert {m[2] for m in rep.matched} == {"name+structure"}
    swapped = named(True)
    with pytest.raises(osf.MatchError) as e:
        osf.import_state(swapped, path)
    assert "E_MATCH_CONFLICT" in str(e.value)
    rep = osf.import_state(swapped, path, mapping={
        "left/kernel": "left/kernel", "left/bias": "left/bias",
        "right/kernel": "right/kernel", "right/bias": "right/bias"})
    assert rep.ok
    np.testing.assert_array_equal(
        slots_of(swapped, swapped.get_layer("left"))["kernel"]["_momentums"],
        slots_of(a, a.get_layer("left"))["kernel"]["_momentums"])


def test_strict_false_imports_matching_weights_and_reports_the_rest(tmp_path):
    a, ra = two_branch()
    train(a, 1)
    path = osf.export_state(a, tmp_path / "a.optstate")
    b, rb = two_branch(head_units=2)
    b.optimizer.build(b.trainable_variables)
    rep = osf.import_state(b, path, strict=False)
    assert len(rep.missing) == 2 and len(rep.unexpected) == 2
    assert_roles_equal(a, {k: v for k, v in ra.items() if k != "head"}, b,
                       {k: v for k, v in rb.items() if k != "head"})
    np.testing.assert_array_equal(slots_of(b, rb["head"])["kernel"]["_momentums"], 0)


def test_a_format_1_0_archive_imports_into_the_rebuilt_seed_model():
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "support" / "data" / "v1.0" / "keras3_seed_adam.optstate"
    state = osf.read(path)
    b, rb = seed_model((32, 250, 4))
    report = osf.import_state(b, path, include_weights=True)
    assert report.ok and int(b.optimizer.iterations.numpy()) == state.step == 3
    infos = {w.path: w.variable.handle for w in conv.describe_model(b).weights}
    opt = b.optimizer
    checked = 0
    for file_path, model_path, _ in report.matched:
        var = infos[model_path]
        entry = state.weight(file_path)
        np.testing.assert_array_equal(var.numpy(), entry.value)
        if entry.trainable:
            i = opt._get_variable_index(var)
            np.testing.assert_array_equal(opt._momentums[i].numpy(), entry.slots["m"])
            np.testing.assert_array_equal(opt._velocities[i].numpy(), entry.slots["v"])
            checked += 1
    assert checked == 10


def test_shared_layer_state_follows_the_layer_not_the_call(tmp_path):
    def siamese(extra_activation):
        a_in, b_in = keras.Input((5,)), keras.Input((5,))
        enc = keras.layers.Dense(4)
        right = keras.layers.Activation("relu")(b_in) if extra_activation else b_in
        head = keras.layers.Dense(1)
        out = head(keras.layers.concatenate([enc(a_in), enc(right)]))
        m = keras.Model([a_in, b_in], out)
        m.compile("adam", "mse")
        return m, {"enc": enc, "head": head}

    a, ra = siamese(False)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 5)).astype("float32")
    a.train_on_batch([x, x[::-1].copy()], rng.standard_normal((8, 1)).astype("float32"))
    path = osf.export_state(a, tmp_path / "s.optstate")
    b, rb = siamese(True)
    assert osf.import_state(b, path).ok
    assert assert_roles_equal(a, ra, b, rb) == 8


def test_functional_ops_outside_layers_do_not_break_identity(tmp_path):
    def model(extra):
        ipt = keras.Input((6,))
        roles = {"left": keras.layers.Dense(6), "right": keras.layers.Dense(6),
                 "head": keras.layers.Dense(1)}
        a = roles["left"](ipt)
        b = roles["right"](ipt)
        if extra:
            b = keras.ops.tanh(b)  # an operation, not a layer: contracted like one
        x = keras.ops.add(a, b * 2.0)
        m = keras.Model(ipt, roles["head"](x))
        m.compile("adam", "mse")
        return m, roles

    a, ra = model(False)
    train(a, 1)
    path = osf.export_state(a, tmp_path / "ops.optstate")
    b, rb = model(True)
    assert osf.import_state(b, path).ok
    assert assert_roles_equal(a, ra, b, rb) == 12


@pytest.mark.skipif(not hasattr(keras.optimizers, "MultiOptimizer"),
                    reason="Keras 3.12 has no MultiOptimizer")
def test_multi_optimizer_components_are_matched_by_their_weights_not_their_order(tmp_path):
    def build(swap):
        ipt = keras.Input((6,))
        roles = {"enc": keras.layers.Dense(5, name="enc"), "dec": keras.layers.Dense(5, name="dec"),
                 "head": keras.layers.Dense(1, name="head")}
        outs = {"enc": roles["enc"](ipt)}
        outs["dec"] = roles["dec"](ipt)
        out = roles["head"](keras.layers.concatenate([outs["enc"], outs["dec"]]))
        m = keras.Model(ipt, out)
        sgd, adam = keras.optimizers.SGD(0.01, momentum=0.9), keras.optimizers.Adam(0.01)
        if not swap:  # inner optimizers are numbered by map order: [SGD, Adam]
            omap = keras.optimizers.OptimizerMap(default_optimizer=adam)
            omap["enc/.*"] = sgd
        else:  # the same assignment written the other way round: [Adam, SGD]
            omap = keras.optimizers.OptimizerMap(default_optimizer=sgd)
            omap["(dec|head)/.*"] = adam
        m.compile(keras.optimizers.MultiOptimizer(omap), "mse")
        return m, roles

    a, ra = build(False)
    train(a, 2)
    path = osf.export_state(a, tmp_path / "multi.optstate", include_weights=True)
    state = osf.read(path)
    assert state.optimizer.algorithm == "multi"
    assert [c["algorithm"] for c in state.optimizer.components] == ["sgd", "adam"]
    b, rb = build(True)
    b.optimizer.build(b.trainable_variables)
    assert [type(o).__name__ for o in b.optimizer.optimizers] == ["Adam", "SGD"]
    report = osf.import_state(b, path, include_weights=True)
    assert report.ok

    def inner_slot(model, layer, attr):
        opt = model.optimizer
        var = layer.kernel
        inner = opt.optimizers[opt._var_to_optimizer_idx[opt._var_key(var)]]
        return np.array(getattr(inner, attr)[inner._get_variable_index(var)].numpy())

    np.testing.assert_array_equal(inner_slot(b, rb["enc"], "momentums"),
                                  inner_slot(a, ra["enc"], "momentums"))
    for role in ("dec", "head"):
        for attr in ADAM_ATTRS:
            np.testing.assert_array_equal(inner_slot(b, rb[role], attr),
                                          inner_slot(a, ra[role], attr))
    sgd_a = [o for o in a.optimizer.optimizers if type(o).__name__ == "SGD"][0]
    sgd_b = [o for o in b.optimizer.optimizers if type(o).__name__ == "SGD"][0]
    assert int(sgd_b.iterations.numpy()) == int(sgd_a.iterations.numpy()) == 2
    train(a, 1, seed=8)
    train(b, 1, seed=8)
    for role in ra:
        for x, y in zip(ra[role].get_weights(), rb[role].get_weights()):
            np.testing.assert_array_equal(x, y)


def test_conversion_failing_halfway_changes_nothing(tmp_path, monkeypatch):
    from optstate_format import _match
    a, _ = small_model("adam")
    train(a, 2)
    path = osf.export_state(a, tmp_path / "a.optstate", include_weights=True)
    b, _ = small_model("adam")
    train(b, 1, seed=4)
    before, wbefore = opt_values(b), [w.copy() for w in b.get_weights()]
    real, calls = _match._convert, {"n": 0}

    def failing(arr, dst, where, problems):
        calls["n"] += 1
        if calls["n"] == 5:
            raise MemoryError("simulated failure converting a tensor")
        return real(arr, dst, where, problems)

    monkeypatch.setattr(_match, "_convert", failing)
    with pytest.raises(MemoryError):
        osf.import_state(b, path, include_weights=True)
    assert calls["n"] == 5
    for x, y in zip(before, opt_values(b)):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(wbefore, b.get_weights()):
        np.testing.assert_array_equal(x, y)


def test_exported_header_satisfies_the_json_schema(tmp_path):
    import json
    from pathlib import Path

    import jsonschema
    import msgpack
    a, _ = seed_model((32, 240, 4))
    train(a, 1)
    raw = osf.export_state(a, tmp_path / "a.optstate", include_weights=True).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    table = json.loads(raw[8:8 + n])
    s, e = table["optstate:header"]["data_offsets"]
    doc = msgpack.unpackb(raw[8 + n + s:8 + n + e], raw=False)
    schema = json.loads((Path(__file__).resolve().parents[2] / "spec" / "schema" /
                         "header-1.schema.json").read_text())
    jsonschema.validate(doc, schema)


def test_different_schedule_in_target_is_reported(tmp_path):
    sched = keras.optimizers.schedules.ExponentialDecay(0.01, decay_steps=3, decay_rate=0.5)
    a, _ = small_model(keras.optimizers.SGD(sched))
    train(a, 1)
    path = osf.export_state(a, tmp_path / "s.optstate")
    b, _ = small_model(keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(0.01, 10)))
    report = osf.import_state(b, path)
    assert any("learning rate" in n and "CosineDecay" in n for n in report.notes)


def test_demo_runs_the_seed_case_and_verifies_every_slot(tmp_path, capsys):
    from optstate_format.cli import main
    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Keras failed: ValueError" in out
    assert "20 slot arrays equal to their role's source; iterations = 3" in out
    assert osf.check(tmp_path / "model_a.optstate").valid


def test_optimizer_rebuilt_from_the_file_resumes_identically(tmp_path):
    sched = keras.optimizers.schedules.ExponentialDecay(0.01, decay_steps=2, decay_rate=0.5)
    a, _ = small_model(keras.optimizers.LossScaleOptimizer(
        keras.optimizers.Adam(sched, beta_1=0.8, amsgrad=True)))
    train(a, 3)
    path = osf.export_state(a, tmp_path / "a.optstate", include_weights=True)
    opt = conv.optimizer_from_state(path)
    assert isinstance(opt, keras.optimizers.LossScaleOptimizer)
    inner = opt.inner_optimizer
    assert type(inner).__name__ == "Adam" and inner.beta_1 == 0.8 and inner.amsgrad
    assert isinstance(inner._learning_rate, keras.optimizers.schedules.ExponentialDecay)
    b, _ = small_model(opt)
    assert osf.import_state(b, path, include_weights=True).ok
    train(a, 1, seed=6)
    train(b, 1, seed=6)
    for x, y in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(x, y)


def test_optimizer_from_state_never_imports_a_class_named_in_the_file(tmp_path):
    a, _ = small_model("adam")
    train(a, 1)
    state = osf._api.source_state(a, materialize=True)
    state.optimizer.class_name = "Popen"
    with pytest.raises(osf.UnsupportedError) as e:
        conv.optimizer_from_state(state)
    assert "custom_objects" in str(e.value)
    state = osf._api.source_state(a, materialize=True)
    state.optimizer.learning_rate = {"kind": "schedule", "class_name": "os.system",
                                     "config": {}}
    with pytest.raises(osf.UnsupportedError):
        conv.optimizer_from_state(state)

    class MyAdam(keras.optimizers.Adam):
        pass

    state = osf._api.source_state(a, materialize=True)
    state.optimizer.class_name = "MyAdam"
    assert isinstance(conv.optimizer_from_state(state, custom_objects={"MyAdam": MyAdam}),
                      MyAdam)


def test_auto_names_that_coincide_across_sessions_are_never_identities(tmp_path):
    """A fresh session (here: clear_session) restarts Keras's name counters, so the rebuilt
    model's `dense`, `dense_1`... can name other roles than in the file. They must be ignored,
    not trusted and not reported as conflicts."""
    keras.backend.clear_session()
    a, ra = two_branch()
    train(a, 1)
    path = osf.export_state(a, tmp_path / "a.optstate")
    keras.backend.clear_session()
    b, rb = two_branch(insert_activation=True, b_first=True, branch="b")
    assert rb["b1"].name == ra["a1"].name  # the same auto name, another role
    report = osf.import_state(b, path)
    assert report.ok and {m[2] for m in report.matched} == {"structure"}
    assert assert_roles_equal(a, ra, b, rb) == 20


@pytest.mark.parametrize("name,cls", [
    ("conv1d", "Conv1D"), ("conv1d_3", "Conv1D"), ("batch_normalization_1",
                                                    "BatchNormalization"),
    ("global_average_pooling1d", "GlobalAveragePooling1D"), ("conv2d_transpose_2",
                                                             "Conv2DTranspose"),
    ("lstm_4", "LSTM"), ("multi_head_attention", "MultiHeadAttention"), ("dense", "Dense")])
def test_keras_auto_names_are_recognized(name, cls):
    from optstate_format.converters._keras_graph import is_auto_name
    assert is_auto_name(name, cls)
    assert not is_auto_name("encoder", cls) and not is_auto_name(f"{name}_head", cls)


def test_tf_adopt_takes_over_only_arrays_tensorflow_can_keep():
    """The zero-copy assignment of an import's own arrays (issue 16): an aligned, writable,
    C-contiguous array of the variable's dtype becomes its value; anything else is refused
    (the caller then copies), never handed to TensorFlow misaligned (which aborts)."""
    import tensorflow as tf
    from optstate_format._io import _new_array
    from optstate_format.converters._keras_graph import tf_adopt
    var = tf.Variable(np.zeros((512, 1024), np.float32))
    arr = _new_array((512, 1024), np.dtype(np.float32), 512 * 1024 * 4)
    arr[...] = np.arange(512 * 1024, dtype=np.float32).reshape(512, 1024)
    expect = arr.copy()
    assert tf_adopt(var, arr)
    np.testing.assert_array_equal(var.numpy(), expect)
    raw = np.zeros(512 * 1024 * 4 + 64, np.uint8)
    start = 4 + (-raw.ctypes.data % 64)  # 4 bytes past a 64-byte boundary
    misaligned = raw[start:start + 512 * 1024 * 4].view(np.float32).reshape(512, 1024)
    assert misaligned.ctypes.data % 64 == 4
    assert not tf_adopt(var, misaligned)
    ro = expect.copy()
    ro.flags.writeable = False
    assert not tf_adopt(var, ro)
    def aligned(shape, dtype):
        dt = np.dtype(dtype)
        out = _new_array(shape, dt, int(np.prod(shape)) * dt.itemsize)
        out[...] = 5
        assert out.ctypes.data % 64 == 0
        return out
    assert not tf_adopt(var, aligned((1024, 512), np.float32).T)    # not C-contiguous
    assert not tf_adopt(var, aligned((512, 1024), np.float64))      # another dtype
    assert not tf_adopt(var, aligned((1024, 512), np.float32))      # another shape
    assert tf_adopt(var, aligned((512, 1024), np.float32))          # the control: adopted
    np.testing.assert_array_equal(var.numpy(), np.full((512, 1024), 5, np.float32))
    var.assign(expect)
    np.testing.assert_array_equal(var.numpy(), expect)            # untouched by the refusals
