"""Structural identity of weights (spec section 8).

A converter describes a model as a :class:`Graph`: layers (class name, whether
they own weights, their weights by local name, an optional nested graph) and
call nodes (which layer, its input arguments in order, how many outputs). This
module computes, for every weight, an identity that depends only on the graph's
shape seen from the outputs (and, since format 1.1, a second one seen from the
inputs): neither changes when parameterless single-input layers are inserted or
removed, or when layers are built (and auto-named) in another order.

A weight's part in an identity is its *role* in its layer: its local name, or,
when the framework generated that name (``variable_12``: a process-wide counter),
its index among the layer's own variables (spec 8.1).
"""

from __future__ import annotations

import hashlib
import re
from collections import deque
from dataclasses import dataclass, field

ROOT = "optstate-structural-1"

# Local weight names a framework generates for a weight created without a name (spec 8.1):
# Keras 3 ``variable``, ``variable_<n>`` (a process-wide counter); TensorFlow / tf_keras
# ``Variable`` (``Variable_<n>`` in graph mode, or made unique within a layer).
GENERATED_WEIGHT_NAME = re.compile(r"^(?:variable|Variable)(?:_[0-9]+)?$")


def is_generated_weight_name(local: str) -> bool:
    """True when the last segment of a weight's local name is framework-generated (8.1).

    >>> is_generated_weight_name("variable_18"), is_generated_weight_name("ls/Variable")
    (True, True)
    >>> is_generated_weight_name("gamma"), is_generated_weight_name("variables")
    (False, False)
    """
    return bool(GENERATED_WEIGHT_NAME.match(local.rsplit("/", 1)[-1]))


def generated_rank(local: str) -> int:
    """The counter a generated name carries (``variable`` is 0, ``variable_7`` is 7)."""
    last = local.rsplit("/", 1)[-1]
    return int(last.rsplit("_", 1)[1]) if "_" in last else 0


def role_tokens(weights, generated=frozenset()) -> dict:
    """Map each weight id of a layer's ``weights`` [(local name, id)] to its role token.

    The token is the local name, except for a weight whose id is in ``generated``:
    then the name's last segment is replaced by ``#<i>``, ``i`` being the weight's
    index among the variables of the same (sub)layer (same name directory), in the
    order the layer lists them (spec 8.1).

    >>> role_tokens([("variable_7", 0), ("gamma", 1), ("ls/variable_9", 2)], {0, 2})
    {0: '#0', 1: 'gamma', 2: 'ls/#0'}
    """
    out, counts = {}, {}
    for local, wid in weights:
        folder = local.rpartition("/")[0]
        index = counts.get(folder, 0)
        counts[folder] = index + 1
        out[wid] = (folder + "/" if folder else "") + f"#{index}" if wid in generated else local
    return out


def chain(parent: str, token: str) -> str:
    """One step of the identity hash chain: hex(sha256(parent + "/" + token))[:32].

    >>> chain("optstate-structural-1", "out0")
    '5fb2b32e02d75888d103d020dd0053b0'
    """
    return hashlib.sha256(f"{parent}/{token}".encode("utf-8")).hexdigest()[:32]


@dataclass
class Layer:
    """A layer as the structural algorithm sees it.

    ``weights`` is a list of (local name, weight id); ``subgraph`` is the graph of
    a nested model used as a layer; ``parametric`` is True when the layer (or
    anything inside it) owns a weight.
    """

    cls: str
    weights: list = field(default_factory=list)
    subgraph: "Graph | None" = None
    parametric: bool | None = None

    def __post_init__(self):
        if self.parametric is None:
            self.parametric = bool(self.weights) or bool(
                self.subgraph and self.subgraph.has_weights())


@dataclass
class Node:
    """One call of a layer. ``inputs`` are refs: ("node", index, output) or ("input", i)."""

    layer: str
    inputs: list
    n_outputs: int = 1


@dataclass
class Graph:
    """A model graph; ``nodes is None`` means no graph (subclassed model): see attr ids."""

    layers: dict
    nodes: list | None = None
    outputs: list = field(default_factory=list)

    def has_weights(self) -> bool:
        return any(layer.parametric for layer in self.layers.values())


def _token(graph, node_index, out_index):
    node = graph.nodes[node_index]
    cls = graph.layers[node.layer].cls
    return f"{cls}@{out_index}" if node.n_outputs > 1 else cls


def _resolver(graph):
    """resolve(ref): ``ref`` with transparent nodes contracted away (spec 8.2 step 1)."""
    nodes = graph.nodes
    layers = graph.layers

    def transparent(i):
        n = nodes[i]
        return not layers[n.layer].parametric and len(n.inputs) == 1 and n.n_outputs == 1

    memo = {}

    def resolve(ref):
        seen = []
        while ref[0] == "node" and transparent(ref[1]):
            if ref[1] in memo:
                ref = memo[ref[1]]
                break
            seen.append(ref[1])
            ref = nodes[ref[1]].inputs[0]
        for i in seen:
            memo[i] = ref
        return ref

    return resolve


def layer_identities(graph: Graph) -> dict:
    """Map each reachable parametric layer key to its structural identity (spec 8.2).

    Breadth-first from the outputs (in order), visiting each node's inputs in
    argument order, with transparent nodes (no weights, one input, one output)
    contracted away; a layer's identity is the hash chain of the first path
    that reaches one of its nodes.
    """
    nodes = graph.nodes
    layers = graph.layers
    resolve = _resolver(graph)
    ids = {}
    visited = set()
    queue = deque()
    for k, ref in enumerate(graph.outputs):
        r = resolve(ref)
        if r[0] == "node":
            queue.append((r[1], chain(chain(ROOT, f"out{k}"), _token(graph, r[1], r[2]))))
    while queue:
        i, sid = queue.popleft()
        if i in visited:
            continue
        visited.add(i)
        layer_key = nodes[i].layer
        if layers[layer_key].parametric and layer_key not in ids:
            ids[layer_key] = sid
        for a, ref in enumerate(nodes[i].inputs):
            r = resolve(ref)
            if r[0] == "node" and r[1] not in visited:
                queue.append((r[1], chain(chain(sid, f"arg{a}"), _token(graph, r[1], r[2]))))
    return ids


def layer_input_identities(graph: Graph) -> dict:
    """Map each parametric layer key to its identity seen from the model inputs (spec 8.2a).

    With transparent nodes contracted as in 8.2, a node's input identity is
    ``H(H(ROOT, "args:" + refs), class)``, where ``refs`` lists its arguments in
    order, each ``in<k>`` for model input ``k`` or the producing node's input
    identity (``@<k>`` appended when that node has several outputs). A layer called
    at several nodes takes the smallest of its nodes' identities. It depends only on
    the graph seen from the inputs, as 8.2 depends only on the graph seen from the
    outputs: a parametric layer inserted near the outputs changes no input identity
    of the layers before it.
    """
    nodes, layers = graph.nodes, graph.layers
    resolve = _resolver(graph)
    node_ids = {}

    def ref_text(ref):
        r = resolve(ref)
        if r[0] == "input":
            return f"in{r[1]}"
        text = node_ids[r[1]]
        return text + (f"@{r[2]}" if nodes[r[1]].n_outputs > 1 else "")

    def deps(i):
        return [r[1] for r in map(resolve, nodes[i].inputs) if r[0] == "node"]

    for start in range(len(nodes)):  # iterative post-order: deep models need no recursion
        if start in node_ids:
            continue
        stack = [(start, False)]
        while stack:
            i, ready = stack.pop()
            if i in node_ids:
                continue
            if not ready:
                stack.append((i, True))
                stack.extend((d, False) for d in deps(i) if d not in node_ids)
                continue
            args = ",".join(ref_text(ref) for ref in nodes[i].inputs)
            node_ids[i] = chain(chain(ROOT, "args:" + args), layers[nodes[i].layer].cls)
    ids = {}
    for i, node in enumerate(nodes):
        if layers[node.layer].parametric:
            if node.layer not in ids or node_ids[i] < ids[node.layer]:
                ids[node.layer] = node_ids[i]
    return ids


@dataclass
class WeightIdentity:
    """Everything the core derives about one weight from the graph.

    ``structural`` / ``structural_in``: the hints of spec 8.1 (from the outputs, from
    the inputs). ``layer``: a key naming the graph layer that owns the weight (the unit
    the two-ended alignment of 8.4 moves). ``role``: the token hashed for the weight.
    ``v1``: (parent, prefix) such that format 1.0 gave the weight the identity
    ``"g:" + H(parent, prefix + local)`` (``prefix + local`` when parent is None) for
    its local name ``local``; used to read 1.0 files (8.5).
    """

    structural: str | None = None
    structural_in: str | None = None
    layer: str | None = None
    role: str = ""
    v1: tuple | None = None
    generated: bool = False  # the local name was generated by the framework (8.1)


def describe_identities(graph: Graph, generated=frozenset()) -> dict:
    """Map every weight id in ``graph`` to its :class:`WeightIdentity`.

    ``generated`` holds the ids of weights whose local name the framework generated
    (their role is their index in their layer, not their name).

    >>> g = Graph({"d": Layer("Dense", [("kernel", 0), ("variable_3", 1)])},
    ...           [Node("d", [("input", 0)])], [("node", 0, 0)])
    >>> ids = describe_identities(g, generated={1})
    >>> ids[1].role, ids[1].structural == "g:" + chain(layer_identities(g)["d"], "#1")
    ('#1', True)
    """
    out = {}
    _describe(graph, generated, None, None, "", out)
    for wid, ident in out.items():
        ident.generated = wid in generated
    return out


def _describe(graph, generated, prefix, prefix_in, key_path, out):
    # prefix / prefix_in: None at the top level, "" when the enclosing layer has no identity
    # on that side (nothing inside it has one then), else the enclosing layer's identity.
    if graph.nodes is None:
        for key, layer in graph.layers.items():
            roles = role_tokens(layer.weights, generated)
            text = f"a:{key}/"
            for local, wid in layer.weights:
                name = text + roles[wid]
                out[wid] = WeightIdentity(
                    name if prefix is None else "g:" + chain(prefix, name) if prefix else None,
                    "g:" + chain(prefix_in, name) if prefix_in else None,
                    key_path + key, roles[wid], None if prefix == "" else (prefix, text))
            if layer.subgraph is not None:
                inner = chain(prefix or ROOT, f"a:{key}") if prefix != "" else ""
                inner_in = chain(prefix_in or ROOT, f"a:{key}") if prefix_in != "" else ""
                _describe(layer.subgraph, generated, inner, inner_in, f"{key_path}{key}/", out)
        return
    ids = layer_identities(graph) if prefix != "" else {}
    ids_in = layer_input_identities(graph) if prefix_in != "" else {}
    for key, layer in graph.layers.items():
        sid, sid_in = ids.get(key), ids_in.get(key)
        if prefix and sid is not None:
            sid = chain(prefix, sid)
        if prefix_in and sid_in is not None:
            sid_in = chain(prefix_in, sid_in)
        roles = role_tokens(layer.weights, generated)
        for local, wid in layer.weights:
            out[wid] = WeightIdentity(
                None if sid is None else "g:" + chain(sid, roles[wid]),
                None if sid_in is None else "g:" + chain(sid_in, roles[wid]),
                key_path + key, roles[wid], None if sid is None else (sid, ""))
        if layer.subgraph is not None:
            _describe(layer.subgraph, generated, sid or "", sid_in or "", f"{key_path}{key}/",
                      out)


def weight_identities(graph: Graph, prefix: str | None = None, generated=frozenset()) -> dict:
    """Map every weight id in ``graph`` (nested graphs included) to its identity string.

    Graph-based identities are ``"g:" + hash``; for a graph without nodes
    (a subclassed model) they are ``"a:" + attribute path`` of the weight.
    Weights of layers that no output reaches get no identity.
    """
    out = {}
    if graph.nodes is None:
        for key, layer in graph.layers.items():
            roles = role_tokens(layer.weights, generated)
            for local, wid in layer.weights:
                name = f"a:{key}/{roles[wid]}"
                out[wid] = name if prefix is None else "g:" + chain(prefix, name)
            if layer.subgraph is not None:
                out.update(weight_identities(layer.subgraph, chain(prefix or ROOT, f"a:{key}"),
                                             generated))
        return out
    ids = layer_identities(graph)
    for key, layer in graph.layers.items():
        sid = ids.get(key)
        if sid is None:
            continue
        if prefix is not None:
            sid = chain(prefix, sid)
        roles = role_tokens(layer.weights, generated)
        for local, wid in layer.weights:
            out[wid] = "g:" + chain(sid, roles[wid])
        if layer.subgraph is not None:
            out.update(weight_identities(layer.subgraph, sid, generated))
    return out
