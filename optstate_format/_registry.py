"""The registry of optimizer algorithms and their canonical slot names (spec/optimizers.md).

Converters name slots and global variables only through this table; the spec's
registry document is generated from it (spec/generate.py) and a test keeps the two
in step.
"""

from __future__ import annotations

from dataclasses import dataclass

# Shape rules: how a slot's shape follows from its weight's shape ``s`` (spec 7.2).
SHAPE_RULES = {
    "like": "the weight's shape s",
    "factored_rows": "s[:-1] if rank(s) >= 2 else () (a placeholder scalar)",
    "factored_cols": "s[:-2] + s[-1:] if rank(s) >= 2 else () (a placeholder scalar)",
    "scalar": "() for every weight",
    "any": "recorded as written; only generic optimizers may use it",
}


def slot_shape(rule: str, weight_shape):
    """Expected slot shape for ``rule`` and a weight of ``weight_shape`` (None for "any").

    >>> slot_shape("factored_cols", (3, 4, 5))
    (3, 5)
    """
    s = tuple(weight_shape)
    if rule == "like":
        return s
    if rule == "factored_rows":
        return s[:-1] if len(s) >= 2 else ()
    if rule == "factored_cols":
        return s[:-2] + s[-1:] if len(s) >= 2 else ()
    if rule == "scalar":
        return ()
    return None


@dataclass(frozen=True)
class Slot:
    name: str                  # canonical slot name
    rule: str                  # key of SHAPE_RULES
    meaning: str               # definition as math (g = gradient, t = step)
    keras3: str | None         # Keras 3 optimizer attribute holding the per-variable list
    tf_keras: str | None       # tf_keras.optimizers (new) attribute
    tf_keras_legacy: str | None  # tf_keras.optimizers.legacy slot name
    optional: str | None = None  # hyperparameter condition under which the slot exists


@dataclass(frozen=True)
class Algorithm:
    id: str
    title: str
    keras3: str | None           # class name in keras.optimizers
    tf_keras: str | None         # class name in tf_keras.optimizers
    tf_keras_legacy: str | None  # class name in tf_keras.optimizers.legacy
    slots: tuple = ()
    globals: tuple = ()          # (canonical name, keras3 attr, tf_keras attr, legacy attr, meaning)
    # hyperparameters whose meaning differs between generations: refuse to move across
    notes: str = ""


_M = "m_t = beta_1 * m_{t-1} + (1 - beta_1) * g_t"
_V = "v_t = beta_2 * v_{t-1} + (1 - beta_2) * g_t^2"

ALGORITHMS = {a.id: a for a in [
    Algorithm("sgd", "Stochastic gradient descent (momentum, Nesterov)", "SGD", "SGD",
              "SGD", slots=(
                  Slot("momentum", "like", "b_t = momentum * b_{t-1} - lr * g_t",
                       "momentums", "momentums", "momentum", optional="momentum > 0"),)),
    Algorithm("rmsprop", "RMSprop (centered, momentum)", "RMSprop", "RMSprop", "RMSprop", slots=(
        Slot("velocity", "like", "r_t = rho * r_{t-1} + (1 - rho) * g_t^2",
             "_velocities", "_velocities", "rms"),
        Slot("momentum", "like", "b_t = momentum * b_{t-1} + lr * g_t / denom_t",
             "_momentums", "_momentums", "momentum", optional="momentum > 0"),
        Slot("average_gradient", "like", "a_t = rho * a_{t-1} + (1 - rho) * g_t",
             "_average_gradients", "_average_gradients", "mg", optional="centered"),
    )),
    Algorithm("adam", "Adam (amsgrad)", "Adam", "Adam", "Adam", slots=(
        Slot("m", "like", _M, "_momentums", "_momentums", "m"),
        Slot("v", "like", _V, "_velocities", "_velocities", "v"),
        Slot("v_hat", "like", "vhat_t = max(vhat_{t-1}, v_t)", "_velocity_hats",
             "_velocity_hats", "vhat", optional="amsgrad"),
    )),
    Algorithm("adamw", "Adam with decoupled weight decay", "AdamW", "AdamW", None, slots=(
        Slot("m", "like", _M, "_momentums", "_momentums", None),
        Slot("v", "like", _V, "_velocities", "_velocities", None),
        Slot("v_hat", "like", "vhat_t = max(vhat_{t-1}, v_t)", "_velocity_hats",
             "_velocity_hats", None, optional="amsgrad"),
    )),
    Algorithm("adadelta", "Adadelta", "Adadelta", "Adadelta", "Adadelta", slots=(
        Slot("accumulated_grad", "like", "E[g^2]_t = rho * E[g^2]_{t-1} + (1 - rho) * g_t^2",
             "_accumulated_grads", "_accumulated_grads", "accum_grad"),
        Slot("accumulated_delta", "like",
             "E[dx^2]_t = rho * E[dx^2]_{t-1} + (1 - rho) * dx_t^2",
             "_accumulated_delta_vars", "_accumulated_delta_vars", "accum_var"),
    )),
    Algorithm("adagrad", "Adagrad", "Adagrad", "Adagrad", "Adagrad", slots=(
        Slot("accumulator", "like", "a_t = a_{t-1} + g_t^2 (a_0 = initial_accumulator_value)",
             "_accumulators", "_accumulators", "accumulator"),),
        notes="tf_keras's legacy Adagrad divides by sqrt(a) + epsilon, Keras 3 and tf_keras's new "
              "Adagrad by sqrt(a + epsilon): the accumulator moves exactly, later steps differ "
              "by a term of order epsilon."),
    Algorithm("adamax", "Adamax", "Adamax", "Adamax", "Adamax", slots=(
        Slot("m", "like", _M, "_m", "_m", "m"),
        Slot("u", "like", "u_t = max(beta_2 * u_{t-1}, |g_t|)", "_u", "_u", "v"),
    )),
    Algorithm("adafactor", "Adafactor (factored second moments)", "Adafactor", "Adafactor",
              None, slots=(
                  Slot("r", "factored_rows", "row statistics of g^2 (mean over the last axis)",
                       "_r", "_r", None),
                  Slot("c", "factored_cols",
                       "column statistics of g^2 (mean over the second-to-last axis)",
                       "_c", "_c", None),
                  Slot("v", "like", "unfactored second moment (used for rank < 2 weights)",
                       "_v", "_v", None),
              )),
    Algorithm("nadam", "Nadam", "Nadam", "Nadam", None, slots=(
        Slot("m", "like", _M, "_momentums", "_momentums", None),
        Slot("v", "like", _V, "_velocities", "_velocities", None),
    ), globals=(("u_product", "_u_product", "_u_product", None,
                 "prod_{i<=t} beta_1 * (1 - 0.5 * 0.96^i)"),)),
    Algorithm("nadam_legacy", "Nadam with the Keras 2 momentum schedule", None, None, "Nadam",
              slots=(
                  Slot("m", "like", _M, None, None, "m"),
                  Slot("v", "like", _V, None, None, "v"),
              ), globals=(("u_product", None, None, "_m_cache",
                           "prod_{i<=t} beta_1 * (1 - 0.5 * 0.96^(schedule_decay * i))"),),
              notes="tf_keras's legacy Nadam schedules momentum as 0.96^(schedule_decay * t) "
                    "(schedule_decay = 0.004); Keras 3 and tf_keras's new Nadam use 0.96^t. "
                    "Its u_product means another product, so its state cannot continue in "
                    "their Nadam."),
    Algorithm("ftrl", "FTRL-proximal", "Ftrl", "Ftrl", "Ftrl", slots=(
        Slot("accumulator", "like", "n_t = n_{t-1} + g_t^2 (n_0 = initial_accumulator_value)",
             "_accumulators", "_accumulators", "accumulator"),
        Slot("linear", "like", "z_t = z_{t-1} + g_t - (n_t^-p - n_{t-1}^-p) / lr * w",
             "_linears", "_linears", "linear"),
    )),
    Algorithm("lion", "Lion", "Lion", "Lion", None, slots=(
        Slot("m", "like", "m_t = beta_2 * m_{t-1} + (1 - beta_2) * g_t",
             "_momentums", "momentums", None),)),
    Algorithm("lamb", "LAMB", "Lamb", None, None, slots=(
        Slot("m", "like", _M, "_momentums", None, None),
        Slot("v", "like", _V, "_velocities", None, None),
    )),
    Algorithm("muon", "Muon (Adam for the weights Muon does not handle)", "Muon", None, None,
              slots=(
                  Slot("m", "like", "momentum buffer (Muon and Adam weights)",
                       "momentums", None, None),
                  Slot("v", "like", "Adam second moment (Adam-handled weights only)",
                       "adam_velocities", None, None, optional="weight handled by Adam"),
              )),
    Algorithm("schedule_free_adamw", "Schedule-free AdamW", "ScheduleFreeAdamW", None, None,
              slots=(
                  Slot("z", "like", "the z sequence of schedule-free averaging",
                       "_momentums", None, None),
                  Slot("v", "like", _V, "_velocities", None, None),
              )),
]}

# Slots any algorithm may carry, added by optimizer options rather than by the algorithm.
COMMON_SLOTS = (
    Slot("ema", "like", "exponential moving average of the weight (use_ema)",
         "_model_variables_moving_average", "_model_variables_moving_average", None,
         optional="use_ema"),
    Slot("gradient_accumulator", "like", "sum of gradients since the last applied step",
         "_accumulated_gradients", "_accumulated_gradients", None,
         optional="gradient_accumulation_steps"),
)

# Global (not per-weight) state every algorithm may carry.
COMMON_GLOBALS = (
    ("iterations", "number of optimizer steps applied (int64)"),
    ("learning_rate", "current learning-rate variable when it is not a schedule"),
)

GENERIC_PREFIX = "generic:"
# Reserved algorithm id: several inner optimizers, each weight assigned to one (spec 7.6).
MULTI = "multi"

# Hyperparameters that change the update rule itself, with their neutral value. State written
# with a non-neutral value cannot continue exactly in an optimizer that lacks the
# hyperparameter (tf_keras legacy ``decay``, a learning-rate time decay Keras 3 does not have).
UPDATE_RULE_HYPERPARAMETERS = {"decay": 0.0}


def slots_for(algorithm_id: str):
    """All slots (algorithm-specific then common) for a registered algorithm id."""
    alg = ALGORITHMS.get(algorithm_id)
    return (alg.slots if alg else ()) + COMMON_SLOTS


def slot_rule(algorithm_id: str, slot_name: str) -> str:
    """Shape rule of ``slot_name`` under ``algorithm_id`` ("any" for generic or unknown)."""
    for slot in slots_for(algorithm_id):
        if slot.name == slot_name:
            return slot.rule
    return "any"


def algorithm_for_class(framework: str, class_name: str):
    """Registry id for a framework's optimizer class name, or None.

    ``framework`` is one of "keras3", "tf_keras", "tf_keras_legacy".
    """
    for alg in ALGORITHMS.values():
        if getattr(alg, framework) == class_name:
            return alg.id
    return None


def attr_to_slot(framework: str, algorithm_id: str):
    """Map framework attribute/slot names to canonical slot names for one algorithm."""
    return {getattr(s, framework): s.name for s in slots_for(algorithm_id)
            if getattr(s, framework)}
