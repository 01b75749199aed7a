"""Models, optimizers and helpers shared by the PyTorch tests (and their worker script)."""

from __future__ import annotations

import copy
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

import optstate_format as osf
from optstate_format.converters import torch as conv

torch.set_num_threads(1)


# ---- the API under test: the top-level functions, conducted by the core ----------------------
export_state = osf.export_state
import_state = osf.import_state
transfer_state = osf.transfer_state


# ---- models ----------------------------------------------------------------------------------
class Twin(nn.Module):
    """Two Linear(8, 8) held under fixed names; ``swapped`` defines them in the other order in
    ``__init__``, so torch lists (and its optimizer keys) them the other way round."""

    def __init__(self, swapped=False):
        super().__init__()
        if swapped:
            self.second = nn.Linear(8, 8)
            self.first = nn.Linear(8, 8)
        else:
            self.first = nn.Linear(8, 8)
            self.second = nn.Linear(8, 8)

    def forward(self, x):
        return self.second(torch.tanh(self.first(x)))


def chain(inserted=False):
    """Linear -> ReLU -> Linear -> Linear; ``inserted`` adds parameterless members that
    compute nothing in eval mode (Identity, Dropout), shifting every Sequential index."""
    if not inserted:
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 3))
    return nn.Sequential(nn.Identity(), nn.Linear(4, 8), nn.Dropout(0.5), nn.ReLU(),
                         nn.Identity(), nn.Linear(8, 8), nn.Dropout(0.2), nn.Linear(8, 3))


class Net(nn.Module):
    """Attributes and a Sequential body; ``changed`` defines the attributes in another order
    and inserts parameterless members into the body."""

    def __init__(self, changed=False, bias=True):
        super().__init__()
        if changed:
            self.body = _body(True, bias)
            self.head = nn.Linear(8, 3, bias=bias)
            self.proj = nn.Linear(5, 8, bias=bias)
        else:
            self.proj = nn.Linear(5, 8, bias=bias)
            self.head = nn.Linear(8, 3, bias=bias)
            self.body = _body(False, bias)

    def forward(self, x):
        return self.head(self.body(self.proj(x)))


def _body(inserted, bias):
    if inserted:
        return nn.Sequential(nn.Identity(), nn.Linear(8, 8, bias=bias), nn.Dropout(0.1),
                             nn.Tanh(), nn.Identity(), nn.Linear(8, 8, bias=bias))
    return nn.Sequential(nn.Linear(8, 8, bias=bias), nn.Tanh(), nn.Linear(8, 8, bias=bias))


class SparseNet(nn.Module):
    """Two equal-shape sparse embeddings (SparseAdam's case) and a frozen dense output."""

    def __init__(self, changed=False):
        super().__init__()
        names = ("words", "tags") if not changed else ("tags", "words")
        for name in names:
            setattr(self, name, nn.Embedding(20, 6, sparse=True))
        self.out = nn.Linear(6, 2)
        self.out.requires_grad_(False)

    def forward(self, idx):
        return self.out(torch.tanh(self.words(idx)).mean(1) * self.tags(idx + 1).mean(1))


def batch(i, model):
    g = torch.Generator().manual_seed(1000 + i)
    if isinstance(model, SparseNet):
        return torch.randint(0, 19, (4, 3), generator=g), torch.randn(4, 2, generator=g)
    n_in = 5 if isinstance(model, Net) else 8
    n_out = 3 if isinstance(model, Net) else 8
    return torch.randn(16, n_in, generator=g), torch.randn(16, n_out, generator=g)


def train(model, opt, steps, start=0, scheduler=None):
    model.eval()  # dropout off: the changed models compute the same function
    for i in range(start, start + steps):
        x, y = batch(i, model)
        opt.zero_grad(set_to_none=True)
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()


def by_name(model):
    return dict(model.named_parameters())


def same_params(a, b):
    """Equal parameters role by role (Net(changed=True)'s body positions translated)."""
    pa, pb = _roles(a), _roles(b)
    return set(pa) == set(pb) and all(torch.equal(pa[n], pb[n]) for n in pa)


def _roles(model):
    names = by_name(model)
    if isinstance(model, Net) and isinstance(model.body[0], nn.Identity):
        moved = {"body.1.": "body.0.", "body.5.": "body.2."}
        names = {next((n.replace(k, v) for k, v in moved.items() if n.startswith(k)), n): p
                 for n, p in names.items()}
    return names


def state_by_name(model, opt):
    """{parameter name: {state key: value}} for ``opt``: an oracle independent of order."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: dict(s) for p, s in opt.state.items() if s}


def bitwise_equal(a, b):
    """Deep, bitwise comparison of state_dict-like structures (NaN payloads included)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return False
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        return conv._to_numpy(a).tobytes() == conv._to_numpy(b).tobytes()
    if isinstance(a, dict):
        return (isinstance(b, dict) and list(a) == list(b)
                and all(bitwise_equal(a[k], b[k]) for k in a))
    if isinstance(a, (list, tuple)):
        return (type(a) is type(b) and len(a) == len(b)
                and all(bitwise_equal(x, y) for x, y in zip(a, b)))
    return type(a) is type(b) and (a == b or (a != a and b != b))


def snapshot(opt):
    return copy.deepcopy(opt.state_dict())


def named_sequential():
    return nn.Sequential(OrderedDict([("fc1", nn.Linear(4, 8)), ("act", nn.ReLU()),
                                      ("fc2", nn.Linear(8, 2))]))


def np_params(model):
    return {n: p.detach().numpy().copy() for n, p in model.named_parameters()}


__all__ = ["Twin", "Net", "SparseNet", "chain", "batch", "train", "same_params", "by_name",
           "state_by_name", "bitwise_equal", "snapshot", "named_sequential", "np_params",
           "export_state", "import_state", "transfer_state", "np"]
