"""How torch.optim names the registry's optimizers and slots: the PyTorch side of the mapping.

The core's registry knows algorithms and canonical slot names only; this is the one table of
torch's own state keys, kept beside the converter that uses it (and shown, informatively, in
spec/optimizers.md through :data:`TORCH`). No framework is imported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from optstate_format._registry import FrameworkNames

@dataclass(frozen=True)
class StateKey:
    """One entry of a torch.optim optimizer's per-parameter state.

    ``layout``: how torch shapes it for a parameter of shape s: ``like`` (s), ``scalar`` (()),
    ``rows`` (s[:-1] + (1,), written squeezed: the registry's ``factored_rows``), ``cols``
    (s[:-2] + (1,) + s[-1:], written squeezed: ``factored_cols``). ``init``: the value torch
    gives it when it creates the state (used when an import creates it). ``when``: the
    condition under which torch keeps it, from the parameter's group and the parameter.
    ``python``: torch keeps it as a Python number, not a tensor.
    """

    key: str
    slot: str
    layout: str = "like"
    init: str = "zeros"
    when: Callable = None
    python: type | None = None

    def applies(self, group, p) -> bool:
        return self.when is None or bool(self.when(group, p))


def _step(device="capturable"):
    # device: where torch keeps the counter: "capturable" (the parameter's device when the
    # group is capturable or fused, else the CPU), "param" (always the parameter's), "cpu".
    return StateKey("step", "step", "scalar", "step:" + device)


_M, _V = StateKey("exp_avg", "m"), StateKey("exp_avg_sq", "v")


@dataclass(frozen=True)
class TorchAlgorithm:
    algorithm: str   # registry id (optstate_format._registry)
    keys: tuple      # StateKey entries, in torch's creation order


TORCH_OPTIMIZERS = {
    "SGD": TorchAlgorithm("sgd_torch", (
        StateKey("momentum_buffer", "momentum_buffer", init="none",
                 when=lambda g, p: g.get("momentum", 0) != 0),)),
    "Adam": TorchAlgorithm("adam", (_step(), _M, _V, StateKey(
        "max_exp_avg_sq", "v_hat", when=lambda g, p: g.get("amsgrad", False)))),
    "AdamW": TorchAlgorithm("adamw", (_step(), _M, _V, StateKey(
        "max_exp_avg_sq", "v_hat", when=lambda g, p: g.get("amsgrad", False)))),
    "Adagrad": TorchAlgorithm("adagrad", (
        _step(), StateKey("sum", "accumulator", init="initial_accumulator_value"))),
    "Adadelta": TorchAlgorithm("adadelta", (
        _step(), StateKey("square_avg", "accumulated_grad"),
        StateKey("acc_delta", "accumulated_delta"))),
    "Adamax": TorchAlgorithm("adamax_torch", (
        _step(), _M, StateKey("exp_inf", "u_eps"))),
    "NAdam": TorchAlgorithm("nadam_torch", (
        _step(), StateKey("mu_product", "mu_product", "scalar", "one:capturable"), _M, _V)),
    "RAdam": TorchAlgorithm("radam", (_step(), _M, _V)),
    "ASGD": TorchAlgorithm("asgd", (
        _step("param"), StateKey("eta", "eta", "scalar", "lr:param"),
        StateKey("mu", "mu", "scalar", "one:param"), StateKey("ax", "ax"))),
    "Rprop": TorchAlgorithm("rprop", (
        _step(), StateKey("prev", "prev"), StateKey("step_size", "step_size", init="lr"))),
    "RMSprop": TorchAlgorithm("rmsprop_torch", (
        _step(), StateKey("square_avg", "velocity"),
        StateKey("momentum_buffer", "momentum_buffer",
                 when=lambda g, p: g.get("momentum", 0) > 0),
        StateKey("grad_avg", "average_gradient", when=lambda g, p: g.get("centered", False)))),
    "Adafactor": TorchAlgorithm("adafactor_torch", (
        _step("cpu"),
        StateKey("row_var", "row_var", "rows", when=lambda g, p: p.dim() > 1),
        StateKey("col_var", "col_var", "cols", when=lambda g, p: p.dim() > 1),
        StateKey("variance", "variance", when=lambda g, p: p.dim() <= 1))),
    "SparseAdam": TorchAlgorithm("sparse_adam", (
        StateKey("step", "step", "scalar", "zero_int", python=int), _M, _V)),
    "Muon": TorchAlgorithm("muon_torch", (StateKey("momentum_buffer", "momentum_buffer"),)),
}

LBFGS_REASON = (
    "torch.optim.LBFGS keeps one state for all its parameters together (the curvature history "
    "old_dirs/old_stps/ro and the direction d are vectors over every parameter flattened in "
    "parameter order, plus Python counters), not a state per parameter: nothing in it belongs "
    "to one weight's role, so it cannot be keyed by weight. Save it with torch.save and "
    "reload it only into the same model built the same way, or restart LBFGS (its history is "
    "short: history_size steps).")



# The naming table in the registry's common form (spec/optimizers.md, informative).
TORCH = FrameworkNames(
    "torch", "PyTorch (`torch.optim`; slots: keys of `optimizer.state[param]`)",
    classes={spec.algorithm: cls for cls, spec in TORCH_OPTIMIZERS.items()},
    slots={spec.algorithm: {k.key: k.slot for k in spec.keys if k.slot != "step"}
           for spec in TORCH_OPTIMIZERS.values()},
    common_slots={"step": "step"})
