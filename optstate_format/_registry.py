"""The registry of optimizer algorithms and their canonical slot names (spec/optimizers.md).

Converters name slots and global variables only through this table; the spec's
registry document is generated from it (spec/generate.py) and a test keeps the two
in step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    name: str                    # canonical slot name
    rule: str                    # key of SHAPE_RULES
    meaning: str                 # definition as math (g = gradient, t = step)
    optional: str | None = None  # hyperparameter condition under which the slot exists


@dataclass(frozen=True)
class Global:
    name: str                    # canonical global name
    meaning: str


@dataclass(frozen=True)
class Algorithm:
    id: str
    title: str
    slots: tuple = ()
    globals: tuple = ()          # Global(...) this algorithm keeps besides the common ones
    # how implementations of the algorithm differ, shown when state moves between them
    notes: str = ""


_M = "m_t = beta_1 * m_{t-1} + (1 - beta_1) * g_t"
_V = "v_t = beta_2 * v_{t-1} + (1 - beta_2) * g_t^2"

ALGORITHMS = {a.id: a for a in [
    Algorithm("sgd", "Stochastic gradient descent (momentum, Nesterov)", slots=(
        Slot("momentum", "like", "b_t = momentum * b_{t-1} - lr * g_t", optional="momentum > 0"),
    )),
    Algorithm("rmsprop", "RMSprop (centered, momentum)", slots=(
        Slot("velocity", "like", "r_t = rho * r_{t-1} + (1 - rho) * g_t^2"),
        Slot("momentum", "like", "b_t = momentum * b_{t-1} + lr * g_t / denom_t",
             optional="momentum > 0"),
        Slot("average_gradient", "like", "a_t = rho * a_{t-1} + (1 - rho) * g_t",
             optional="centered"),
    )),
    Algorithm("adam", "Adam (amsgrad)", slots=(
        Slot("m", "like", _M),
        Slot("v", "like", _V),
        Slot("v_hat", "like", "vhat_t = max(vhat_{t-1}, v_t)", optional="amsgrad"),
    )),
    Algorithm("adamw", "Adam with decoupled weight decay", slots=(
        Slot("m", "like", _M),
        Slot("v", "like", _V),
        Slot("v_hat", "like", "vhat_t = max(vhat_{t-1}, v_t)", optional="amsgrad"),
    )),
    Algorithm("adadelta", "Adadelta", slots=(
        Slot("accumulated_grad", "like", "E[g^2]_t = rho * E[g^2]_{t-1} + (1 - rho) * g_t^2"),
        Slot("accumulated_delta", "like", "E[dx^2]_t = rho * E[dx^2]_{t-1} + (1 - rho) * dx_t^2"),
    )),
    Algorithm("adagrad", "Adagrad", slots=(
        Slot("accumulator", "like", "a_t = a_{t-1} + g_t^2 (a_0 = initial_accumulator_value)"),
    ),
        notes="tf_keras's legacy Adagrad divides by sqrt(a) + epsilon, Keras 3 and tf_keras's "
              "new Adagrad by sqrt(a + epsilon): the accumulator moves exactly, later steps "
              "differ by a term of order epsilon."),
    Algorithm("adamax", "Adamax", slots=(
        Slot("m", "like", _M),
        Slot("u", "like", "u_t = max(beta_2 * u_{t-1}, |g_t|)"),
    )),
    Algorithm("adafactor", "Adafactor (factored second moments)", slots=(
        Slot("r", "factored_rows", "row statistics of g^2 (mean over the last axis)"),
        Slot("c", "factored_cols", "column statistics of g^2 (mean over the second-to-last axis)"),
        Slot("v", "like", "unfactored second moment (used for rank < 2 weights)"),
    )),
    Algorithm("nadam", "Nadam", slots=(
        Slot("m", "like", _M),
        Slot("v", "like", _V),
    ), globals=(Global("u_product", "prod_{i<=t} beta_1 * (1 - 0.5 * 0.96^i)"),)),
    Algorithm("nadam_legacy", "Nadam with the Keras 2 momentum schedule", slots=(
        Slot("m", "like", _M),
        Slot("v", "like", _V),
    ), globals=(Global("u_product", "prod_{i<=t} beta_1 * (1 - 0.5 * 0.96^(schedule_decay * i))"),),
        notes="tf_keras's legacy Nadam schedules momentum as 0.96^(schedule_decay * t) "
              "(schedule_decay = 0.004); Keras 3 and tf_keras's new Nadam use 0.96^t. Its "
              "u_product means another product, so its state cannot continue in their Nadam."),
    Algorithm("ftrl", "FTRL-proximal", slots=(
        Slot("accumulator", "like", "n_t = n_{t-1} + g_t^2 (n_0 = initial_accumulator_value)"),
        Slot("linear", "like", "z_t = z_{t-1} + g_t - (n_t^-p - n_{t-1}^-p) / lr * w"),
    )),
    Algorithm("lion", "Lion", slots=(
        Slot("m", "like", "m_t = beta_2 * m_{t-1} + (1 - beta_2) * g_t"),
    )),
    Algorithm("lamb", "LAMB", slots=(
        Slot("m", "like", _M),
        Slot("v", "like", _V),
    )),
    Algorithm("muon", "Muon (Adam for the weights Muon does not handle)", slots=(
        Slot("m", "like", "momentum buffer (Muon and Adam weights)"),
        Slot("v", "like", "Adam second moment (Adam-handled weights only)",
             optional="weight handled by Adam"),
    )),
    Algorithm("schedule_free_adamw", "Schedule-free AdamW", slots=(
        Slot("z", "like", "the z sequence of schedule-free averaging"),
        Slot("v", "like", _V),
    )),
]}

# Slots any algorithm may carry, added by optimizer options rather than by the algorithm.
COMMON_SLOTS = (
    Slot("ema", "like", "exponential moving average of the weight (use_ema)", optional="use_ema"),
    Slot("gradient_accumulator", "like", "sum of gradients since the last applied step",
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


@dataclass(frozen=True)
class FrameworkNames:
    """How one framework names the registry's algorithms, slots and globals.

    A converter keeps its table beside its code (the core knows no framework names);
    spec/optimizers.md shows every converter's table, informatively. ``classes`` maps
    algorithm id -> the framework's class name; ``slots`` maps algorithm id ->
    {framework attribute or slot key: canonical slot}; ``common_slots`` names the slots any
    algorithm may carry; ``globals`` maps algorithm id -> {framework name: canonical global}.

    >>> t = FrameworkNames("x", "X", {"adam": "Adam"}, {"adam": {"_m": "m"}})
    >>> t.algorithm_for_class("Adam"), t.slot_names("adam"), t.framework_name("adam", "m")
    ('adam', {'_m': 'm'}, '_m')
    """

    framework: str
    title: str
    classes: dict
    slots: dict
    common_slots: dict = field(default_factory=dict)
    globals: dict = field(default_factory=dict)

    def algorithm_for_class(self, class_name: str):
        """Registry id for one of this framework's optimizer class names, or None."""
        for alg, cls in self.classes.items():
            if cls == class_name:
                return alg
        return None

    def slot_names(self, algorithm_id: str) -> dict:
        """{framework name: canonical slot} for one algorithm (common slots included)."""
        return {**self.common_slots, **self.slots.get(algorithm_id, {})}

    def global_names(self, algorithm_id: str) -> dict:
        """{framework name: canonical global} for one algorithm."""
        return dict(self.globals.get(algorithm_id, {}))

    def framework_name(self, algorithm_id: str, canonical: str):
        """The framework's name of a canonical slot (the inverse of :meth:`slot_names`)."""
        for fw, can in self.slot_names(algorithm_id).items():
            if can == canonical:
                return fw
        return None

    def problems(self) -> list:
        """Names in this table that the registry does not define (a test keeps it empty)."""
        out = []
        for alg in set(self.classes) | set(self.slots) | set(self.globals):
            if alg not in ALGORITHMS:
                out.append(f"{self.framework}: unknown algorithm {alg!r}")
                continue
            known = {s.name for s in slots_for(alg)}
            out += [f"{self.framework}: {alg} has no slot {c!r}"
                    for c in self.slot_names(alg).values() if c not in known]
            gknown = {g.name for g in ALGORITHMS[alg].globals}
            out += [f"{self.framework}: {alg} has no global {c!r}"
                    for c in self.global_names(alg).values() if c not in gknown]
        return out
