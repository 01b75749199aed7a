"""Two Linear(8, 8) defined in swapped order: torch's positional load swaps their Adam moments
without a word; optstate puts each moment on the layer that plays its role.

    python examples/torch_swapped.py
"""

import tempfile
from pathlib import Path

import torch
from torch import nn

import optstate_format as osf


class Twin(nn.Module):
    def __init__(self, swapped=False):
        super().__init__()
        if swapped:  # the same model, its layers defined in the other order
            self.second = nn.Linear(8, 8)
            self.first = nn.Linear(8, 8)
        else:
            self.first = nn.Linear(8, 8)
            self.second = nn.Linear(8, 8)

    def forward(self, x):
        return self.second(torch.tanh(self.first(x)))


def step(model, opt, seed):
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(seed))
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    opt.step()


def main():
    torch.manual_seed(0)
    model = Twin()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for i in range(3):
        step(model, opt, i)

    def moment(o, m, name):
        return o.state[getattr(m, name).weight]["exp_avg"]

    # torch's own way: state_dict() keys by position, load_state_dict pairs positions
    theirs = Twin(swapped=True)
    theirs.load_state_dict(model.state_dict())
    t_opt = torch.optim.Adam(theirs.parameters(), lr=0.01)
    t_opt.load_state_dict(opt.state_dict())
    print("torch.optim load_state_dict:")
    for name in ("first", "second"):
        same = torch.equal(moment(t_opt, theirs, name), moment(opt, model, name))
        print(f"  {name}.weight exp_avg is", "its own" if same else "the OTHER layer's")

    # by role
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "run.optstate"
        osf.export_state(model, path, optimizer=opt)
        ours = Twin(swapped=True)
        ours.load_state_dict(model.state_dict())
        o_opt = torch.optim.Adam(ours.parameters(), lr=0.01)
        report = osf.import_state(ours, path, optimizer=o_opt)
    print("optstate import_state:")
    print("  " + str(report).replace("\n", "\n  "))
    for name in ("first", "second"):
        same = torch.equal(moment(o_opt, ours, name), moment(opt, model, name))
        print(f"  {name}.weight exp_avg is", "its own" if same else "the OTHER layer's")

    for m, o in ((model, opt), (theirs, t_opt), (ours, o_opt)):
        step(m, o, 3)
    print("next step equal to the uninterrupted run: torch",
          torch.equal(theirs.first.weight, model.first.weight), "| optstate",
          torch.equal(ours.first.weight, model.first.weight))


if __name__ == "__main__":
    main()
