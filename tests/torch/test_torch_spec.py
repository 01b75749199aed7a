"""The spec's PyTorch appendix and the converter's table say the same things."""

import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from optstate_format import _registry  # noqa: E402
from optstate_format._identity import weight_identities  # noqa: E402
from optstate_format.converters import torch as conv  # noqa: E402

pytestmark = pytest.mark.framework

SPEC = (Path(__file__).resolve().parents[2] / "spec" / "SPEC.md").read_text()
APPENDIX = SPEC[SPEC.index("## Appendix: PyTorch"):]


def test_the_state_key_table_is_the_converters():
    section = APPENDIX[APPENDIX.index("### P.3"):APPENDIX.index("### P.4")]
    rows = re.findall(r"^\| `(\w+)` \| `?([\w ]+?)`? \| (.+?) \|$", section, re.M)
    table = {cls: (alg, cells) for cls, alg, cells in rows}
    assert table.pop("LBFGS")[0] == "refused"
    assert set(table) == set(conv.TORCH_OPTIMIZERS)
    for cls, (alg, cells) in table.items():
        spec = conv.TORCH_OPTIMIZERS[cls]
        assert alg == spec.algorithm and alg in _registry.ALGORITHMS, cls
        pairs = re.findall(r"(\w+) -> (\w+)", cells)
        assert pairs == [(k.key, k.slot) for k in spec.keys], cls
        for k in spec.keys:  # every slot is the registry's, with the layout's shape rule
            rule = _registry.slot_rule(spec.algorithm, k.slot)
            assert rule == {"like": "like", "scalar": "scalar", "rows": "factored_rows",
                            "cols": "factored_cols"}[k.layout], (cls, k.slot)


def test_the_naming_table_names_only_registry_algorithms_and_slots():
    from optstate_format.converters import _torch_tables
    assert _torch_tables.TORCH.problems() == []
    assert len(_torch_tables.TORCH.classes) == len(conv.TORCH_OPTIMIZERS)


def test_the_relations_table_is_the_registrys():
    section = APPENDIX[APPENDIX.index("### P.4"):APPENDIX.index("### P.5")]
    rows = re.findall(r"^\| `(\w+)` \| `(\w+)` \|", section, re.M)
    assert rows == [(r["from"], r["to"]) for r in _registry.RELATIONS]
    for r in _registry.RELATIONS:
        assert r["from"] in _registry.ALGORITHMS and r["to"] in _registry.ALGORITHMS


def test_the_worked_example_is_what_the_code_computes():
    for layers in ([nn.Linear(4, 8), nn.ReLU(), nn.Dropout(), nn.Linear(8, 2)],
                   [nn.Linear(4, 8), nn.Linear(8, 2)]):
        md = conv.ADAPTER.describe_model(nn.Sequential(*layers))
        ids = weight_identities(md.graph)
        got = sorted(ids[w.graph_id] for w in md.weights if w.local_name == "weight")
        assert all(g in APPENDIX for g in got) and len(got) == 2

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(3, 4)
            self.body = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))

    md = conv.ADAPTER.describe_model(M())
    ids = weight_identities(md.graph)
    got = {w.path: ids[w.graph_id] for w in md.weights}
    assert got["body/0/weight"] in APPENDIX and "`a:proj/weight`" in APPENDIX
