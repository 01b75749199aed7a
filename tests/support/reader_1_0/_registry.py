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
    ),
        notes="torch.optim.Adam adds epsilon to the bias-corrected root, Keras to the raw root "
              "(epsilon hat): m, v and v_hat move exactly, later steps differ by a term of "
              "order epsilon."),
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
        notes="tf_keras's legacy Adagrad and torch.optim.Adagrad divide by sqrt(a) + epsilon, "
              "Keras 3 and tf_keras's new Adagrad by sqrt(a + epsilon): the accumulator moves "
              "exactly, later steps differ by a term of order epsilon. torch starts the "
              "accumulator at 0 (Keras at 0.1) and has lr_decay."),
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


# ---- PyTorch (torch.optim) -------------------------------------------------------------------
# New algorithms only: torch.optim's Adam, AdamW, Adagrad and Adadelta keep exactly the state of
# `adam`, `adamw`, `adagrad` and `adadelta` above (RELATIONS records where only the update rule
# differs). torch's own state-key names live in converters/torch.py, not here.

# A step counter kept per weight (torch.optim counts each parameter's updates separately: a
# parameter without a gradient in a step is not updated and its count stays behind).
COMMON_SLOTS = COMMON_SLOTS + (Slot(
    name="step", rule="scalar",
    meaning="t: number of updates applied to this weight (frameworks that count per weight)",
    optional="the framework counts steps per weight"),)

_TORCH_ALGORITHMS = [
    Algorithm(id="sgd_torch",
        title="SGD whose momentum buffer excludes the learning rate (torch.optim.SGD)",
        slots=(Slot(name="momentum_buffer", rule="like",
                   meaning="b_1 = g_1, b_t = momentum * b_{t-1} + (1 - dampening) * g_t; the "
                           "step is lr * b_t, or lr * (g_t + momentum * b_t) with Nesterov",
                   optional="momentum > 0"),),
        notes="sgd's momentum is m_t = momentum * m_{t-1} - lr * g_t, which holds the learning "
              "rate: another quantity (see RELATIONS)."),
    Algorithm(id="rmsprop_torch",
        title="RMSprop with epsilon outside the root and a learning-rate-free momentum buffer "
              "(torch.optim.RMSprop)",
        slots=(
            Slot(name="velocity", rule="like",
                meaning="r_t = alpha * r_{t-1} + (1 - alpha) * g_t^2"),
            Slot(name="momentum_buffer", rule="like",
                meaning="b_t = momentum * b_{t-1} + g_t / (sqrt(r_t - a_t^2) + eps) (a_t = 0 "
                        "unless centered); the step is lr * b_t",
                optional="momentum > 0"),
            Slot(name="average_gradient", rule="like",
                meaning="a_t = alpha * a_{t-1} + (1 - alpha) * g_t", optional="centered"),
        ),
        notes="rmsprop divides by sqrt(r - a^2 + epsilon) and its momentum holds the learning "
              "rate; velocity and average_gradient mean the same in both (see RELATIONS)."),
    Algorithm(id="adamax_torch", title="Adamax with epsilon inside the maximum "
                                            "(torch.optim.Adamax)",
        slots=(
            Slot(name="m", rule="like", meaning=_M),
            Slot(name="u_eps", rule="like",
                meaning="u_t = max(beta_2 * u_{t-1}, |g_t| + eps); the step divides by u_t"),
        ),
        notes="adamax's u_t = max(beta_2 * u_{t-1}, |g_t|) excludes epsilon (added in the "
              "denominator): u_eps is another quantity."),
    Algorithm(id="nadam_torch",
        title="NAdam with a momentum_decay schedule, its product kept per weight "
              "(torch.optim.NAdam)",
        slots=(
            Slot(name="m", rule="like", meaning=_M),
            Slot(name="v", rule="like", meaning=_V),
            Slot(name="mu_product", rule="scalar",
                meaning="prod_{i<=t} beta_1 * (1 - 0.5 * 0.96^(momentum_decay * i)), over "
                        "this weight's own steps"),
        ),
        notes="momentum_decay (default 0.004) sets the momentum schedule: with 0.004 it is "
              "nadam_legacy's (schedule_decay), with 1.0 nadam's (0.96^t); see RELATIONS."),
    Algorithm(id="radam", title="RAdam (rectified Adam)",
        slots=(Slot(name="m", rule="like", meaning=_M),
               Slot(name="v", rule="like", meaning=_V))),
    Algorithm(id="asgd", title="Averaged SGD",
        slots=(
            Slot(name="eta", rule="scalar",
                meaning="eta_t = lr / (1 + lambd * lr * t)^alpha: the weight's step size"),
            Slot(name="mu", rule="scalar",
                meaning="mu_t = 1 / max(1, t - t0): the averaging coefficient"),
            Slot(name="ax", rule="like",
                meaning="ax_t = ax_{t-1} + mu_t * (w_t - ax_{t-1}): the averaged weight"),
        )),
    Algorithm(id="rprop", title="Rprop (resilient backpropagation)",
        slots=(
            Slot(name="prev", rule="like",
                meaning="the previous step's gradient, 0 where its sign flipped"),
            Slot(name="step_size", rule="like",
                meaning="per-element step size: times etaplus where the gradient kept its sign, "
                        "etaminus where it flipped, clamped to step_sizes (initially lr)"),
        )),
    Algorithm(id="adafactor_torch",
        title="Adafactor without relative step or update clipping state (torch.optim."
              "Adafactor)",
        slots=(
            Slot(name="row_var", rule="factored_rows",
                meaning="R_t = R_{t-1} + t^beta2_decay * (mean over the last axis of g_t^2 - "
                        "R_{t-1})", optional="rank >= 2"),
            Slot(name="col_var", rule="factored_cols",
                meaning="C_t = C_{t-1} + t^beta2_decay * (mean over the second-to-last axis "
                        "of g_t^2 - C_{t-1})", optional="rank >= 2"),
            Slot(name="variance", rule="like",
                meaning="V_t = V_{t-1} + t^beta2_decay * (g_t^2 - V_{t-1})",
                optional="rank < 2"),
        ),
        notes="adafactor adds epsilon_1 to g^2 before averaging and keeps r, c and v for every "
              "weight: its state is another quantity."),
    Algorithm(id="sparse_adam", title="Lazy Adam for sparse gradients (torch.optim."
                                           "SparseAdam)",
        slots=(
            Slot(name="m", rule="like",
                meaning="m_t = beta_1 * m_{t-1} + (1 - beta_1) * g_t where g_t has entries; "
                        "unchanged elsewhere"),
            Slot(name="v", rule="like",
                meaning="v_t = beta_2 * v_{t-1} + (1 - beta_2) * g_t^2 where g_t has entries; "
                        "unchanged elsewhere"),
        )),
    Algorithm(id="muon_torch", title="Muon for 2-D weights (torch.optim.Muon)",
        slots=(Slot(name="momentum_buffer", rule="like",
                   meaning="B_t = momentum * B_{t-1} + (1 - momentum) * g_t"),),
        notes="muon's m also covers the weights it hands to Adam; not claimed equal."),
]
ALGORITHMS.update({a.id: a for a in _TORCH_ALGORITHMS})

# torch.optim.Adagrad's lr_decay (lr / (1 + (t - 1) * lr_decay)) changes the update rule.
UPDATE_RULE_HYPERPARAMETERS.setdefault("lr_decay", 0.0)

# How the state of one algorithm relates to another's: data for a converter that moves state
# between them. An import never applies these (different ids are refused, spec 7.5); `exact`
# says when the formula holds bit for bit or only up to rounding ("never" when it is an
# approximation at best). Same-id rows record update-rule differences behind equal state.
RELATIONS = (
    {"from": "sgd_torch", "to": "sgd", "slots": {"momentum": "-lr * momentum_buffer"},
     "exact": "dampening = 0 and the learning rate constant since the first step"},
    {"from": "rmsprop_torch", "to": "rmsprop",
     "slots": {"velocity": "velocity", "average_gradient": "average_gradient",
               "momentum": "lr * momentum_buffer"},
     "exact": "velocity and average_gradient always; momentum never (epsilon is outside the "
              "root in rmsprop_torch, inside in rmsprop)"},
    {"from": "adamax_torch", "to": "adamax", "slots": {"m": "m", "u": "u_eps"},
     "exact": "m always; u never (eps is inside u_eps's maximum, outside u's)"},
    {"from": "nadam_torch", "to": "nadam_legacy",
     "slots": {"m": "m", "v": "v"}, "globals": {"u_product": "mu_product (every weight's)"},
     "exact": "momentum_decay = schedule_decay and every weight's mu_product equal"},
    {"from": "nadam_torch", "to": "nadam",
     "slots": {"m": "m", "v": "v"}, "globals": {"u_product": "mu_product (every weight's)"},
     "exact": "momentum_decay = 1 (nadam's 0.96^t) and every weight's mu_product equal"},
    {"from": "adam", "to": "adam", "slots": {"m": "m", "v": "v", "v_hat": "v_hat"},
     "exact": "state always; torch.optim.Adam divides by sqrt(v_hat_t) + eps with the bias "
              "correction inside (Kingma and Ba's Algorithm 1), Keras by sqrt(v_t) + eps with "
              "it outside (epsilon hat): later steps differ by a term of order eps; torch's "
              "weight_decay is an L2 term in the gradient, Keras's is decoupled"},
    {"from": "adamw", "to": "adamw", "slots": {"m": "m", "v": "v", "v_hat": "v_hat"},
     "exact": "state always; epsilon placement as for adam"},
    {"from": "adagrad", "to": "adagrad", "slots": {"accumulator": "accumulator"},
     "exact": "state always; torch.optim.Adagrad divides by sqrt(a) + eps (Keras 3: sqrt(a + "
              "epsilon)), starts at initial_accumulator_value = 0 (Keras 3: 0.1, part of the "
              "state) and has lr_decay (an update-rule hyperparameter)"},
    {"from": "adadelta", "to": "adadelta",
     "slots": {"accumulated_grad": "accumulated_grad",
               "accumulated_delta": "accumulated_delta"},
     "exact": "state and update rule (epsilon inside both roots in both)"},
)
