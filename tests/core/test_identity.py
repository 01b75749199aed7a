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


# ---- format 1.1: roles of generated names, identities from the inputs -------------------

from pathlib import Path  # noqa: E402

from optstate_format._identity import (ROOT, chain, describe_identities,  # noqa: E402
                                       layer_input_identities, role_tokens)

SPEC = (Path(__file__).resolve().parents[2] / "spec" / "SPEC.md").read_text()


def scale_shift_graph(names):
    """input -> Dense -> ScaleShift (two weights named by the framework's counter)."""
    b = Builder()
    d = b.call("d", "Dense", [("input", 0)])
    b.layers["ss"] = Layer("ScaleShift", [(names[0], "scale"), (names[1], "shift")])
    b.nodes.append(Node("ss", [d]))
    return b.graph([("node", 1, 0)])


def test_spec_worked_example_of_generated_names_is_what_the_code_computes():
    ids = describe_identities(scale_shift_graph(["variable_7", "variable_8"]),
                              generated={"scale", "shift"})
    s = chain(chain(ROOT, "out0"), "ScaleShift")
    assert ids["scale"].structural == "g:" + chain(s, "#0")
    assert ids["shift"].structural == "g:" + chain(s, "#1")
    for value in (s, ids["scale"].structural, ids["shift"].structural,
                  "g:" + chain(s, "variable_7")):
        assert f"`{value}`" in SPEC


def test_spec_worked_example_from_the_inputs_is_what_the_code_computes():
    b = Builder()
    d1 = b.call("d1", "Dense", [("input", 0)])
    drop = b.call("drop", "Dropout", [d1], weights=False)
    b.call("d2", "Dense", [drop])
    ids = describe_identities(b.graph([("node", 2, 0)]))
    j1 = chain(chain(ROOT, "args:in0"), "Dense")
    j2 = chain(chain(ROOT, "args:" + j1), "Dense")
    assert ids["d1.kernel"].structural_in == "g:" + chain(j1, "kernel")
    assert ids["d2.kernel"].structural_in == "g:" + chain(j2, "kernel")
    for value in (chain(ROOT, "args:in0"), j1, chain(ROOT, "args:" + j1), j2,
                  ids["d1.kernel"].structural_in, ids["d2.kernel"].structural_in):
        assert f"`{value}`" in SPEC


def test_generated_names_from_any_counter_give_the_same_identities():
    a = describe_identities(scale_shift_graph(["variable_7", "variable_8"]), {"scale", "shift"})
    b = describe_identities(scale_shift_graph(["variable_41", "variable_42"]),
                            {"scale", "shift"})
    assert {k: (v.structural, v.structural_in) for k, v in a.items()} == {
        k: (v.structural, v.structural_in) for k, v in b.items()}
    assert a["scale"].structural != a["shift"].structural


def test_role_is_the_index_among_the_same_sublayer_variables():
    roles = role_tokens([("gamma", 0), ("variable_3", 1), ("inner/variable_9", 2),
                         ("inner/variable_10", 3), ("variable_4", 4)], {1, 2, 3, 4})
    assert roles == {0: "gamma", 1: "#1", 2: "inner/#0", 3: "inner/#1", 4: "#2"}


def test_attribute_identities_use_roles_too():
    g = Graph({"blocks/0": Layer("ScaleShift", [("variable_3", 0), ("variable_4", 1)])}, None)
    ids = describe_identities(g, {0, 1})
    assert (ids[0].structural, ids[1].structural) == ("a:blocks/0/#0", "a:blocks/0/#1")
    assert ids[0].structural_in is None  # no graph: no input side


def test_a_layer_inserted_near_the_outputs_keeps_the_input_identities_before_it():
    def build(insert):
        b = Builder()
        x = b.call("d1", "Dense", [("input", 0)])
        x = b.call("d2", "Dense", [x])
        if insert:
            x = b.call("new", "Dense", [x])
        b.call("d3", "Dense", [x])
        return layer_input_identities(b.graph([("node", len(b.nodes) - 1, 0)]))

    plain, grown = build(False), build(True)
    assert plain["d1"] == grown["d1"] and plain["d2"] == grown["d2"]
    assert plain["d3"] != grown["d3"] and grown["new"] == plain["d3"]


def test_siblings_fed_the_same_tensor_share_their_input_identity():
    b = Builder()
    b.call("left", "Dense", [("input", 0)])
    b.call("right", "Dense", [("input", 0)])
    b.call("cat", "Concatenate", [("node", 0, 0), ("node", 1, 0)], weights=False)
    ids = layer_input_identities(b.graph([("node", 2, 0)]))
    assert ids["left"] == ids["right"]


def _inputs(ops, outputs, pads, order_seed):
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
    ids = describe_identities(b.graph([refs[o] for o in outputs]))
    return {k: v.structural_in for k, v in ids.items()}


@settings(max_examples=100, deadline=None)
@given(random_dag(), st.integers(0, 2 ** 16))
def test_input_identities_do_not_depend_on_build_order_or_inserted_dropout(dag, other_seed):
    ops, outputs, pads, seed = dag
    assert _inputs(ops, outputs, pads, other_seed) == _inputs(ops, outputs, [], seed)


@settings(max_examples=50, deadline=None)
@given(random_dag())
def test_describe_identities_gives_the_same_output_side_identities_as_1_0(dag):
    """Without generated names, ``structural`` is exactly what format 1.0 computed."""
    ops, outputs, pads, seed = dag
    b = Builder()
    refs = {}
    for i, (kind, args) in enumerate(ops):
        ins = [("input", 0) if a < 0 else refs[a] for a in args]
        refs[i] = b.call(f"L{i}", "Dense" if kind == "dense" else "Concatenate", ins,
                         weights=kind == "dense")
    g = b.graph([refs[o] for o in outputs])
    assert {k: v.structural for k, v in describe_identities(g).items()
            if v.structural is not None} == weight_identities(g)
