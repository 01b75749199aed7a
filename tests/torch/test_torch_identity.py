"""PyTorch identity: attribute names, Sequential chains with contraction, lists, dicts, ties."""

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from optstate_format._identity import weight_identities  # noqa: E402
from optstate_format.converters import torch as conv  # noqa: E402

from torch_models import Net, Twin, chain, named_sequential  # noqa: E402

pytestmark = pytest.mark.framework


def hints(model):
    """{canonical path: (structural identity, name hint)} as the core computes them."""
    md = conv.ADAPTER.describe_model(model)
    ids = weight_identities(md.graph)
    return {w.path: (ids.get(w.graph_id), w.path if w.named else None) for w in md.weights}


def by_role(model):
    """{structural identity: the tensor's name in torch} for every weight."""
    md = conv.ADAPTER.describe_model(model)
    ids = weight_identities(md.graph)
    names = {id(t): n for n, t in model.state_dict(keep_vars=True).items()}
    return {ids[w.graph_id]: names[id(w.variable.handle)] for w in md.weights}


def test_attribute_order_in_init_changes_no_path_and_no_identity():
    a, b = hints(Twin()), hints(Twin(swapped=True))
    assert a == b
    assert a["first/weight"] == ("a:first/weight", "first/weight")
    # torch's own order (what its optimizer's positions follow) does differ
    assert [n for n, _ in Twin().named_parameters()] != [
        n for n, _ in Twin(swapped=True).named_parameters()]


def test_sequential_members_without_parameters_are_contracted():
    plain, inserted = by_role(chain()), by_role(chain(inserted=True))
    assert len(plain) == 6
    # every role is found in both; the torch names (positions) shifted
    assert {plain[k]: inserted[k] for k in plain} == {
        "0.weight": "1.weight", "0.bias": "1.bias", "2.weight": "5.weight",
        "2.bias": "5.bias", "3.weight": "7.weight", "3.bias": "7.bias"}
    # an extra ReLU between the two last Linear layers changes no identity either
    relu = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.ReLU(),
                         nn.Linear(8, 3))
    assert set(by_role(relu)) == set(plain)


def test_sequential_positions_are_not_names_but_ordereddict_keys_are():
    h = hints(chain())
    assert all(name is None for _, name in h.values())
    n = hints(named_sequential())
    assert n["fc1/weight"][1] == "fc1/weight" and n["fc2/bias"][1] == "fc2/bias"
    assert n["fc1/weight"][0].startswith("g:")
    # inside an attribute model: the Sequential's position keeps its paths nameless
    net = hints(Net())
    assert net["proj/weight"][1] == "proj/weight"
    assert net["body/0/weight"][1] is None and net["body/0/weight"][0].startswith("g:")
    assert hints(Net(changed=True))["body/1/weight"][0] == net["body/0/weight"][0]


def test_two_linear_layers_in_a_chain_get_distinct_identities():
    ids = by_role(chain())
    assert len(set(ids)) == len(ids)


def test_modulelist_indices_and_moduledict_keys():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])
            self.heads = nn.ModuleDict({"b": nn.Linear(2, 1), "a": nn.Linear(2, 1)})

    h = hints(M())
    assert h["blocks/1/weight"] == ("a:blocks/1/weight", None)  # a position: no name hint
    assert h["heads/a/weight"] == ("a:heads/a/weight", "heads/a/weight")


def test_tied_parameters_are_one_weight_at_the_first_sorted_path():
    class Tied(nn.Module):
        def __init__(self, order):
            super().__init__()
            for name in order:
                setattr(self, name, nn.Linear(4, 4, bias=False))
            self.emb.weight = self.out.weight

    for order in (("emb", "out"), ("out", "emb")):
        md = conv.ADAPTER.describe_model(Tied(order))
        assert [w.path for w in md.weights] == ["emb/weight"]


def test_buffers_are_weights_that_are_not_trained_and_block_contraction():
    seq = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3, affine=False), nn.Linear(3, 3))
    md = conv.ADAPTER.describe_model(seq)
    kinds = {w.path: w.trainable for w in md.weights}
    assert kinds["1/running_mean"] is False and kinds["0/weight"] is True
    # BatchNorm without parameters still holds state: it is a role, not contracted
    plain = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    assert set(by_role(plain)) != {k for k, v in by_role(seq).items() if "running" not in v
                                   and "num_batches" not in v}


def test_a_module_with_its_own_parameter_and_children():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))
            self.lin = nn.Linear(3, 3)

    h = hints(Scaled())
    assert h["scale"] == ("a:_self/scale", "scale")
    assert h["lin/weight"] == ("a:lin/weight", "lin/weight")
    inner = hints(nn.Sequential(Scaled(), nn.ReLU()))
    assert inner["0/scale"][0].startswith("g:") and inner["0/scale"][1] is None


def test_a_module_that_is_not_a_module_is_refused():
    from optstate_format import UnsupportedError
    with pytest.raises(UnsupportedError, match="torch.nn.Module"):
        conv.ADAPTER.describe_model(object())
