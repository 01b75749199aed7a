"""Structural identity of weights (spec section 8).

A converter describes a model as a :class:`Graph`: layers (class name, whether
they own weights, their weights by local name, an optional nested graph) and
call nodes (which layer, its input arguments in order, how many outputs). This
module computes, for every weight, an identity that depends only on the graph's
shape seen from the outputs: it does not change when parameterless
single-input layers are inserted or removed, or when layers are built (and
auto-named) in another order.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field

ROOT = "optstate-structural-1"


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


def layer_identities(graph: Graph) -> dict:
    """Map each reachable parametric layer key to its structural identity (spec 8.2).

    Breadth-first from the outputs (in order), visiting each node's inputs in
    argument order, with transparent nodes (no weights, one input, one output)
    contracted away; a layer's identity is the hash chain of the first path
    that reaches one of its nodes.
    """
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


def weight_identities(graph: Graph, prefix: str | None = None) -> dict:
    """Map every weight id in ``graph`` (nested graphs included) to its identity string.

    Graph-based identities are ``"g:" + hash``; for a graph without nodes
    (a subclassed model) they are ``"a:" + attribute path`` of the weight.
    Weights of layers that no output reaches get no identity.
    """
    out = {}
    if graph.nodes is None:
        for key, layer in graph.layers.items():
            for local, wid in layer.weights:
                name = f"a:{key}/{local}"
                out[wid] = name if prefix is None else "g:" + chain(prefix, name)
            if layer.subgraph is not None:
                out.update(weight_identities(layer.subgraph, chain(prefix or ROOT, f"a:{key}")))
        return out
    ids = layer_identities(graph)
    for key, layer in graph.layers.items():
        sid = ids.get(key)
        if sid is None:
            continue
        if prefix is not None:
            sid = chain(prefix, sid)
        for local, wid in layer.weights:
            out[wid] = "g:" + chain(sid, local)
        if layer.subgraph is not None:
            out.update(weight_identities(layer.subgraph, sid))
    return out
