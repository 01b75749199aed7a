"""tf_keras (Keras 2) adapter: models, the new optimizers and the legacy optimizers.

Describes a tf_keras model (same canonical paths and structural identities as the
Keras 3 adapter, so state moves between generations) and both optimizer families,
whose slots are named through ``_keras_tables.TF_KERAS`` and ``TF_KERAS_LEGACY``.
Legacy optimizers create slots lazily: import creates them with
``_create_all_weights`` (no step taken, no weight changed). Every private name it
touches is in ``PRIVATE`` below.
"""

from __future__ import annotations

import re

import numpy as np
import tensorflow as tf
import tf_keras

from optstate_format import _registry
from optstate_format._errors import UnsupportedError
from optstate_format._state import OptimizerInfo
from optstate_format.adapter import OptimizerDescription

from ._keras_graph import KerasAdapter, PyAttrHandle, dtype_name, generic_or, tf_adopt
from ._keras_tables import TF_KERAS, TF_KERAS_LEGACY
from ._private import PrivateAPI

# The tf_keras releases this converter is tested against (pyproject's tf-keras extra).
SUPPORTED = ">=2.20,<2.22"

PRIVATE = PrivateAPI("tf_keras", tf_keras.__version__, SUPPORTED, attrs={
    "_keras_history": "the (layer, node index, tensor index) that made a symbolic tensor",
    "_inbound_nodes": "a layer's call nodes",
    "_trainable_weights": "the variables a layer owns itself (trainable)",
    "_non_trainable_weights": "the variables a layer owns itself (non-trainable)",
    "_flatten_layers": "a layer's direct sublayers",
    "_create_all_weights": "a legacy optimizer's slot creation without a step",
    "_slots": "a legacy optimizer's slot dictionary",
    "_hyper": "a legacy optimizer's hyperparameter variables",
    "_index_dict": "a new optimizer's variable index",
    "_var_key": "a new optimizer's key of a variable",
    "_learning_rate": "a new optimizer's learning rate (variable or schedule)",
    "_built": "whether a new optimizer has built its variables",
    "_loss_scale": "a loss-scale optimizer's scale state",
    "_current_loss_scale": "the dynamic loss scale variable",
    "_counter": "the dynamic loss scale's step counter",
    "_u_product_counter": "the new Nadam's Python step counter",
    "_training_state": "what fit() asks for the epoch to start at (BackupAndRestore's hook)",
}, modules={
    "tf_keras.src.engine.functional:Functional": "the functional model class",
    "tf_keras.src.mixed_precision.loss_scale_optimizer:LossScaleOptimizer": "loss scaling",
    "tf_keras.src.mixed_precision.loss_scale_optimizer:LossScaleOptimizerV3": "loss scaling",
    "tf_keras.src.optimizers.legacy.optimizer_v2:OptimizerV2": "the legacy optimizer base",
    "tf_keras.src.optimizers.legacy.optimizer_v2:_var_key": "a legacy optimizer's slot key",
})
_LSO_TYPES = (PRIVATE.load("tf_keras.src.mixed_precision.loss_scale_optimizer:LossScaleOptimizer"),
              PRIVATE.load("tf_keras.src.mixed_precision.loss_scale_optimizer:"
                           "LossScaleOptimizerV3"))
OptimizerV2 = PRIVATE.load("tf_keras.src.optimizers.legacy.optimizer_v2:OptimizerV2")
_legacy_var_key = PRIVATE.load("tf_keras.src.optimizers.legacy.optimizer_v2:_var_key")
# add_weight() without a name: tf_keras names it "Variable" (TensorFlow's default), numbered
# by TensorFlow's name scopes; Keras 3 names it "variable"
_GENERATED_WEIGHT = re.compile(r"^(Variable|variable)(_\d+)?$")


class TfKerasAdapter(KerasAdapter):
    framework = "tf_keras"
    auto_model_names = ("model", "sequential", "functional")

    layer_cls = tf_keras.layers.Layer
    variable_cls = tf.Variable
    input_layer_cls = tf_keras.layers.InputLayer
    sequential_cls = tf_keras.Sequential
    functional_cls = PRIVATE.load("tf_keras.src.engine.functional:Functional")
    model_cls = tf_keras.Model
    private = PRIVATE

    def has_sublayers(self, layer):
        flatten = PRIVATE.get(layer, "_flatten_layers", None)
        if flatten is None:
            return True
        return any(True for _ in flatten(include_self=False, recursive=False))

    def history(self, tensor):
        h = PRIVATE.get(tensor, "_keras_history")
        return h.layer, h.node_index, h.tensor_index

    def node_inputs(self, layer, node_index):
        return list(PRIVATE.get(layer, "_inbound_nodes")[node_index].keras_inputs)

    def node_n_outputs(self, layer, node_index):
        return len(tf.nest.flatten(PRIVATE.get(layer, "_inbound_nodes")[node_index].outputs))

    def own_variables(self, layer):
        return list(PRIVATE.get(layer, "_trainable_weights", [])) + list(
            PRIVATE.get(layer, "_non_trainable_weights", []))

    def is_generated_weight_name(self, name):
        return bool(_GENERATED_WEIGHT.match(name))

    def var_name(self, var):
        return var.name.split(":")[0].split("/")[-1]

    def _fallback_path(self, var):
        return var.name.split(":")[0]

    def var_dtype(self, var):
        if isinstance(var, PyAttrHandle):
            return var.dtype
        return dtype_name(var.dtype)

    def var_numpy(self, var):
        return np.asarray(var.numpy())

    def assign(self, var, value):
        var.assign(value)

    def adopt(self, var, value):
        if not (isinstance(var, tf.Variable) and tf_adopt(var, value)):
            var.assign(value)

    def snapshot(self, var):
        # A TensorFlow read tensor shares the variable's buffer, which an assignment then
        # leaves alone (it writes to a new one): a snapshot without copying.
        if isinstance(var, tf.Variable):
            return var.value()
        return super().snapshot(var)

    def restore(self, var, snapshot):
        self.assign(var, snapshot)

    def framework_version(self):
        return tf_keras.__version__

    def producer_extra(self):
        return {"backend": f"tensorflow {tf.__version__}"}

    # ---- optimizers ------------------------------------------------------------------
    @staticmethod
    def _unwrap(opt):
        while isinstance(opt, _LSO_TYPES):
            opt = opt.inner_optimizer
        return opt

    def ensure_built(self, opt, model):
        inner = self._unwrap(opt)
        tvars = list(model.trainable_variables)
        if isinstance(inner, OptimizerV2):
            with tf.init_scope():
                PRIVATE.get(inner, "_create_all_weights")(tvars)
        elif not PRIVATE.get(inner, "_built", False):
            inner.build(tvars)

    def optimizer_parts(self, opt, model) -> OptimizerDescription:
        self.ensure_built(opt, model)
        wrappers, globals_ = [], {}
        while isinstance(opt, _LSO_TYPES):
            cfg = opt.get_config()
            cfg.pop("inner_optimizer", None)
            wrappers.append({"class_name": "LossScaleOptimizer", "config": self.data_only(cfg)})
            state = PRIVATE.get(opt, "_loss_scale")
            if not isinstance(state, float):
                globals_["loss_scale.dynamic_scale"] = PRIVATE.get(state, "_current_loss_scale")
                globals_["loss_scale.step_counter"] = PRIVATE.get(state, "_counter")
            opt = opt.inner_optimizer
        parts = self._legacy_parts if isinstance(opt, OptimizerV2) else self._new_parts
        alg, slots, lr = parts(opt, model, globals_)
        cls = type(opt).__name__
        cfg = opt.get_config()
        cfg.pop("learning_rate", None)
        info = OptimizerInfo(alg, cls, type(opt).__module__, self.data_only(cfg),
                             self._learning_rate(lr), wrappers)
        return OptimizerDescription(info, int(np.asarray(opt.iterations.numpy())),
                                    self.slot_sets(slots), self.globals_of(globals_))

    def _learning_rate(self, lr):
        if isinstance(lr, tf_keras.optimizers.schedules.LearningRateSchedule):
            return {"kind": "schedule", "class_name": type(lr).__name__,
                    "config": self.data_only(lr.get_config())}
        if isinstance(lr, tf.Variable):
            return {"kind": "constant", "value": float(np.asarray(lr.numpy()))}
        if isinstance(lr, (int, float, np.floating)):
            return {"kind": "constant", "value": float(lr)}
        return {"kind": "callable", "repr": repr(lr)}

    @staticmethod
    def _builtin_names(opt, names, prefix):
        """The algorithm and the slot-name table of a built-in class, else (generic id, None)."""
        cls = type(opt).__name__
        alg = generic_or(names, cls, type(opt).__module__.startswith(prefix))
        return alg, (names.slot_names(alg) if alg in _registry.ALGORITHMS else None)

    def _legacy_parts(self, opt, model, globals_):
        alg, table = self._builtin_names(opt, TF_KERAS_LEGACY, "tf_keras.src.optimizers.legacy")
        slots, slot_ids = {}, set()
        slot_dict = PRIVATE.get(opt, "_slots")
        for v in model.trainable_variables:
            per_var = slot_dict.get(_legacy_var_key(v), {})
            for sname, sv in sorted(per_var.items()):
                if table is not None and sname not in table:
                    PRIVATE.changed(f"{type(opt).__name__} keeps a slot {sname!r} that the "
                                    "converter's table does not name")
                canonical = table[sname] if table is not None else self.global_name(sname)
                slots.setdefault(id(v), (v, {}))[1][canonical] = sv
                slot_ids.add(id(sv))
        globals_["iterations"] = opt.iterations
        hyper = PRIVATE.get(opt, "_hyper")
        lr = hyper.get("learning_rate")
        if isinstance(lr, tf.Variable):
            globals_["learning_rate"] = lr
        hyper_ids = {id(h) for h in hyper.values() if isinstance(h, tf.Variable)}
        alg_globals = TF_KERAS_LEGACY.global_names(alg)
        attr_of = {id(val): attr for attr, val in vars(opt).items() if self.is_variable(val)}
        taken = {id(v) for v in globals_.values()}
        for w in opt.weights:
            if id(w) in slot_ids or id(w) in taken or id(w) in hyper_ids:
                continue
            attr = attr_of.get(id(w), self.var_name(w))
            globals_[alg_globals.get(attr) or self.global_name(attr)] = w
        return alg, slots, lr

    def _new_parts(self, opt, model, globals_):
        alg, table = self._builtin_names(opt, TF_KERAS, "tf_keras.src.optimizers")
        index = PRIVATE.get(opt, "_index_dict", {})
        var_key = PRIVATE.get(opt, "_var_key")
        by_index = {}
        for v in model.trainable_variables:
            i = index.get(var_key(v))
            if i is not None:
                by_index[i] = v
        if len(by_index) != len(index) or sorted(by_index) != list(range(len(by_index))):
            raise UnsupportedError("the optimizer was built for variables that are not all in "
                                   "this model; pass the model it was built for.")
        tvars = [by_index[i] for i in range(len(by_index))]
        variables = opt.variables
        variables = variables() if callable(variables) else variables
        slots = self.family_parts(opt, tvars, table, alg, variables, globals_)
        if isinstance(PRIVATE.get(opt, "_u_product_counter", None), int):
            globals_["tf_keras.u_product_counter"] = PyAttrHandle(opt, "_u_product_counter")
        lr = PRIVATE.get(opt, "_learning_rate")
        if isinstance(lr, tf.Variable) and "learning_rate" not in globals_:
            globals_["learning_rate"] = lr
        return alg, slots, lr


ADAPTER = TfKerasAdapter()
describe_model = ADAPTER.describe_model


def export_state(model, path, **kw):
    """``optstate_format.export_state`` for a tf_keras model."""
    from optstate_format import _api
    return _api.export_state(model, path, **kw)


def import_state(model, path, **kw):
    """``optstate_format.import_state`` for a tf_keras model."""
    from optstate_format import _api
    return _api.import_state(model, path, **kw)
from ._keras_callback import TfKerasOptStateCheckpoint as OptStateCheckpoint  # noqa: E402,F401
