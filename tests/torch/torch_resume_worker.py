"""Run in a fresh process by test_torch_resume.py: train, export, import, continue.

usage: torch_resume_worker.py MODE FILE OUT   (MODE: full | first | second)

The resuming process builds its model in another attribute order with parameterless layers
inserted, its optimizer groups in another order, and a fresh LR scheduler.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from torch_models import Net, export_state, import_state, np_params, train  # noqa: E402
from optstate_format.converters import torch as conv  # noqa: E402

N, M = 4, 3


def build(changed):
    model = Net(changed=changed)
    named = list(model.named_parameters())
    groups = [{"params": [p for n, p in named if n.endswith("weight")], "weight_decay": 0.05},
              {"params": [p for n, p in named if n.endswith("bias")], "lr": 0.02}]
    opt = torch.optim.AdamW(groups[::-1] if changed else groups, lr=0.01, amsgrad=True)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.7)
    return model, opt, sched


def main(mode, file, out):
    torch.manual_seed(7 if mode != "second" else 12345)
    model, opt, sched = build(changed=mode == "second")
    if mode == "second":
        report = import_state(model, file, optimizer=opt, include_weights=True)
        assert report.ok, report
        conv.restore_scheduler(sched, file)
    start, count = {"full": (0, N + M), "first": (0, N), "second": (N, M)}[mode]
    train(model, opt, count, start=start, scheduler=sched)
    if mode == "first":
        export_state(model, file, optimizer=(opt, sched), include_weights=True)
    params = np_params(model)
    if mode == "second":  # name the changed body's layers as the plain model does
        params = {n.replace("body.1.", "body.0.").replace("body.5.", "body.2."): v
                  for n, v in params.items()}
    np.savez(out, **params, lr=np.array([g["lr"] for g in opt.param_groups]))


if __name__ == "__main__":
    main(*sys.argv[1:4])
