"""Structural identity: stable under inserted parameterless layers and build order."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from optstate_format._identity import Graph, Layer, Node, layer_identities, weight_identities


class Builder:
    """Builds a Graph the way a framework would, in a chosen creation order."""

    def __init__(self):
        self.layers, self.nodes = {}, []

    def call(self, name, cls, inputs, weights=True, n_out=1):
        if name not in self.layers:
            self.layers[name] = Layer(cls, [("kernel", f"{name}.kernel")] if weights else [])
        self.nodes.append(Node(name, list(inputs), n_out))
        return ("node", len(self.nodes) - 1, 0)

    def graph(self, outputs):
        return Graph(self.layers, self.nodes, outputs)


def two_branch(pad_branch=None, build_b_first=False, extra=("Activation",)):
    b = Builder()
    refs = {}
    order = ["b", "a"] if build_b_first else ["a", "b"]
    for br in order:
        x = b.call(f"dense1_{br}", "Dense", [("input", 0)])
        if pad_branch == br:
            for i, cls in enumerate(extra):
                x = b.call(f"pad_{br}_{i}", cls, [x], weights=False)
        refs[br] = b.call(f"dense2_{br}", "Dense", [x])
    cat = b.call("cat", "Concatenate", [refs["a"], refs["b"]], weights=False)
    out = b.call("head", "Dense", [cat])
    return weight_identities(b.graph([out]))


def test_inserted_parameterless_layer_in_one_branch_keeps_every_identity():
    assert two_branch() == two_branch(pad_branch="a") == two_branch(pad_branch="b")


def test_build_order_of_branches_does_not_change_identities():
    assert two_branch() == two_branch(build_b_first=True, pad_branch="b")


def test_equal_shaped_branches_get_distinct_identities():
    ids = two_branch()
    assert len(set(ids.values())) == len(ids) == 5
    assert ids["dense1_a.kernel"] != ids["dense1_b.kernel"]


def test_swapping_merge_arguments_swaps_the_branch_identities():
    ids = two_branch()
    b = Builder()
    xa = b.call("dense2_a", "Dense", [b.call("dense1_a", "Dense", [("input", 0)])])
    xb = b.call("dense2_b", "Dense", [b.call("dense1_b", "Dense", [("input", 0)])])
    out = b.call("head", "Dense", [b.call("cat", "Concatenate", [xb, xa], weights=False)])
    swapped = weight_identities(b.graph([out]))
    assert swapped["dense1_a.kernel"] == ids["dense1_b.kernel"]
    assert swapped["dense1_b.kernel"] == ids["dense1_a.kernel"]


def test_parameterless_merge_layers_are_not_contracted():
    b = Builder()
    x = b.call("d", "Dense", [("input", 0)])
    y = b.call("add", "Add", [x, ("input", 1)], weights=False)
    with_add = weight_identities(b.graph([b.call("h", "Dense", [y])]))
    b2 = Builder()
    x2 = b2.call("d", "Dense", [("input", 0)])
    without = weight_identities(b2.graph([b2.call("h", "Dense", [x2])]))
    assert with_add["h.kernel"] == without["h.kernel"]
    assert with_add["d.kernel"] != without["d.kernel"]


def test_nested_model_weights_compose_with_the_outer_identity():
    inner = Builder()
    i1 = inner.call("inner_dense", "Dense", [("input", 0)])
    g_inner = inner.graph([i1])
    outer = Builder()
    outer.layers["sub"] = Layer("Functional", subgraph=g_inner)
    outer.nodes.append(Node("sub", [("input", 0)]))
    out = outer.call("head", "Dense", [("node", 0, 0)])
    ids = weight_identities(outer.graph([out]))
    assert set(ids) == {"inner_dense.kernel", "head.kernel"}
    assert ids["inner_dense.kernel"].startswith("g:")


def test_unreachable_layers_get_no_identity():
    b = Builder()
    b.call("orphan", "Dense", [("input", 0)])
    out = b.call("used", "Dense", [("input", 0)])
    ids = weight_identities(b.graph([out]))
    assert "orphan.kernel" not in ids and "used.kernel" in ids


def test_attribute_graph_identities_are_attribute_paths():
    g = Graph({"encoder/dense": Layer("Dense", [("kernel", 0)]),
               "head": Layer("Dense", [("kernel", 1)])}, None)
    assert weight_identities(g) == {0: "a:encoder/dense/kernel", 1: "a:head/kernel"}


def test_deep_residual_stack_is_linear_and_complete():
    b = Builder()
    x = ("input", 0)
    for i in range(3000):
        y = b.call(f"d{i}", "Dense", [x])
        y = b.call(f"act{i}", "Activation", [y], weights=False)
        x = b.call(f"add{i}", "Add", [x, y], weights=False)
    ids = layer_identities(b.graph([x]))
    assert len(ids) == 3000 and len(set(ids.values())) == 3000


@st.composite
def random_dag(draw):
    """A random DAG of parametric and merge layers, as (ops, outputs) independent of order."""
    n = draw(st.integers(2, 14))
    ops = []
    for i in range(n):
        kind = draw(st.sampled_from(["dense", "dense", "merge"])) if i else "dense"
        if kind == "merge" and i >= 2:
            a = draw(st.integers(-1, i - 1))
            c = draw(st.integers(-1, i - 1))
            ops.append(("merge", [a, c]))
        else:
            ops.append(("dense", [draw(st.integers(-1, i - 1))]))
    outputs = sorted(set(draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=3))))
    pads = draw(st.lists(st.integers(0, n - 1), max_size=4))
    seed = draw(st.integers(0, 2 ** 16))
    return ops, outputs, pads, seed


def _build(ops, outputs, pads, order_seed):
    """Create nodes in a random topological order, with parameterless layers inserted."""
    b = Builder()
    n = len(ops)
    order, done = [], set()
    rnd = random.Random(order_seed)
    while len(order) < n:
        ready = [i for i in range(n) if i not in done and all(
            a < 0 or a in done for a in ops[i][1])]
        i = rnd.choice(ready)
        order.append(i)
        done.add(i)
    refs = {}
    for i in order:
        kind, args = ops[i]
        ins = [("input", 0) if a < 0 else refs[a] for a in args]
        ref = b.call(f"L{i}", "Dense" if kind == "dense" else "Concatenate", ins,
                     weights=kind == "dense")
        for k in range(pads.count(i)):
            ref = b.call(f"pad{i}_{k}", "Dropout", [ref], weights=False)
        refs[i] = ref
    return weight_identities(b.graph([refs[o] for o in outputs]))


@settings(max_examples=200, deadline=None)
@given(random_dag(), st.integers(0, 2 ** 16))
def test_identities_do_not_depend_on_build_order_or_inserted_dropout(dag, other_seed):
    ops, outputs, pads, seed = dag
    plain = _build(ops, outputs, [], seed)
    assert _build(ops, outputs, pads, other_seed) == plain
    assert len(set(plain.values())) == len(plain)
