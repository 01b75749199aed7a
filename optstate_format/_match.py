"""Matching what a file describes to what a model has (spec section 8), and import plans.

Both sides are :class:`OptimizerState` records: the file's holds arrays, the
target's (built by the conductor from an adapter's description) holds
``adapter.Variable`` objects where the file has arrays. :func:`plan_import`
pairs each file weight with a target weight by identity (never by position,
never by shape alone), checks every slot, and returns the list of
(Variable, array) assignments to make. Nothing is assigned here: a plan that
has problems raises :class:`MatchError` before anything is touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import _dtypes, _registry
from ._errors import MatchError
from ._identity import chain, generated_rank, is_generated_weight_name
from ._io import Stored

@dataclass
class Problem:
    code: str
    path: str | None
    message: str

    def __str__(self):
        where = f"{self.path}: " if self.path else ""
        return f"{self.code} {where}{self.message}"


@dataclass
class ImportReport:
    """What an import matched, and everything it could not.

    ``matched`` lists (file path, model path, identity source); the other lists
    hold canonical paths (``mismatched``/``conflicts`` hold :class:`Problem`).
    """

    matched: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    mismatched: list = field(default_factory=list)
    conflicts: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    resized: list = field(default_factory=list)  # (file path, model path, file shape, shape)
    assigned: int = 0
    # tensor bytes this process read from the file, set by an import made by every process
    # of a job, which reads only what this process assigns (spec 14.11); None otherwise
    bytes_read: int | None = None

    @property
    def problems(self):
        out = list(self.conflicts) + list(self.mismatched)
        out += [Problem("E_MATCH_MISSING", p, "target weight has no state in the file")
                for p in self.missing]
        out += [Problem("E_MATCH_UNEXPECTED", p, "file entry matches no target weight")
                for p in self.unexpected]
        return out

    @property
    def ok(self):
        return not self.problems

    def __str__(self):
        rows = [("file path", "model path", "by")] + [tuple(m) for m in self.matched]
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows)
        lines = [f"{r[0]:<{w0}}  {r[1]:<{w1}}  {r[2]}" for r in rows]
        lines.insert(1, f"{'-' * w0}  {'-' * w1}  {'-' * 9}")
        lines.append(f"matched {len(self.matched)}, missing {len(self.missing)}, unexpected "
                     f"{len(self.unexpected)}, mismatched {len(self.mismatched)}, conflicts "
                     f"{len(self.conflicts)}; {self.assigned} variables assigned")
        for fp, tp, a, b in self.resized:
            lines.append(f"  resized: {fp} {list(a)} -> {tp} {list(b)} (overlap copied, the "
                         "rest kept the target's fresh value)")
        for p in self.problems:
            lines.append(f"  ! {p}")
        for n in self.notes:
            lines.append(f"  note: {n}")
        return "\n".join(lines)


def _mapping_pairs(mapping, file_paths, target_paths, problems):
    if mapping is None:
        return {}
    pairs = {}
    if callable(mapping):
        for fp in file_paths:
            tp = mapping(fp)
            if tp is not None:
                pairs[fp] = tp
    elif isinstance(mapping, dict):
        pairs = dict(mapping)
    else:
        problems.append(Problem("E_MATCH_MAPPING", None, "mapping must be a dict of file path "
                                f"-> model path or a callable; received {type(mapping).__name__}"))
        return {}
    out = {}
    used = {}
    for fp, tp in pairs.items():
        if fp not in file_paths:
            problems.append(Problem("E_MATCH_MAPPING", fp, f"mapping names file path {fp!r}, "
                                    f"which the file does not contain"))
        elif tp not in target_paths:
            problems.append(Problem("E_MATCH_MAPPING", fp, f"mapping sends it to {tp!r}, which "
                                    "the model does not have"))
        elif tp in used:
            problems.append(Problem("E_MATCH_MAPPING", fp, f"mapping sends it to {tp!r}, "
                                    f"already the target of {used[tp]!r}"))
        else:
            used[tp] = fp
            out[fp] = tp
    return out


def _index(items, hints_of, hint):
    index, dup = {}, set()
    for it in items:
        key = hints_of(it).get(hint)
        if not isinstance(key, str):
            continue
        if key in index:
            dup.add(key)
        index[key] = it.path
    return index, dup


def _local_name(fw):
    local = fw.hints.get("weight_name")
    return local if isinstance(local, str) and local else fw.path.rsplit("/", 1)[-1]


def file_hints(file_weights, target_weights, file_version=None, notes=None, identities=None):
    """The hints of each file weight as matching uses them: {path: {hint: value}}.

    A weight whose local name the framework generated (spec 8.1) never has a name
    identity. In a 1.0 file its structural hint was hashed from that generated name
    (``variable_18``), which depends on the producing process: its layer is found again
    by recomputing the 1.0 identity of the file's name in each model layer, and its role
    is its rank by the name's counter among that layer's generated weights (spec 8.5).
    ``identities`` maps target paths to their :class:`_identity.WeightIdentity`.
    """
    out = {fw.path: dict(fw.hints) for fw in file_weights}
    generated = [fw for fw in file_weights if is_generated_weight_name(_local_name(fw))]
    for fw in generated:
        out[fw.path]["name"] = None
    if not generated or file_version != "1.0":
        return out
    groups, identities = {}, identities or {}
    for tw in target_weights:
        ident = identities.get(tw.path)
        if ident is not None and ident.generated and ident.v1 is not None:
            local = tw.hints.get("weight_name") or tw.path.rsplit("/", 1)[-1]
            groups.setdefault((ident.layer, local.rpartition("/")[0]), []).append(tw)
    found = {}
    for fw in generated:
        local, hint = _local_name(fw), fw.hints.get("structural")
        out[fw.path]["structural"] = None
        folder = local.rpartition("/")[0]
        for key, tws in groups.items():
            parent, prefix = identities[tws[0].path].v1
            if key[1] == folder and hint == ("g:" + chain(parent, prefix + local)
                                             if parent else prefix + local):
                found.setdefault(key, []).append(fw)
                break
        else:
            if notes is not None and fw.slots:
                notes.append(f"{fw.path!r} (a 1.0 file) has a framework-generated name and no "
                             "layer of the model has its 1.0 identity; pass mapping=")
    for key, fws in found.items():
        tws = groups[key]
        if len(fws) != len(tws):
            if notes is not None:
                notes.append(f"1.0 file: {[f.path for f in fws]} belong to model layer "
                             f"{key[0]!r}, which has {len(tws)} weights with generated names; "
                             "roles cannot be told apart, pass mapping=")
            continue
        fws = sorted(fws, key=lambda f: (not f.trainable, generated_rank(_local_name(f))))
        for fw, tw in zip(fws, tws):
            out[fw.path]["structural"] = tw.hints.get("structural")
    return out


def _layer_key(tw, identities):
    ident = identities.get(tw.path)
    return ident.layer if ident is not None and ident.layer else tw.path


def _file_layer(fw):
    """The file layer of a weight: its path without its local name (spec 8.4)."""
    local = fw.hints.get("weight_name")
    if isinstance(local, str) and local and fw.path.endswith("/" + local):
        return fw.path[:-len(local) - 1]
    return fw.path


def _groups(items, hints_of, hint):
    out = {}
    for it in items:
        key = hints_of(it).get(hint)
        if isinstance(key, str):
            out.setdefault(key, []).append(it.path)
    return out


def align(file_weights, target_weights, fhints, skip_files=(), skip_targets=(),
          identities=None):
    """Pair weights by structure from both ends of the graph (spec 8.4).

    Each model layer proposes the file layer whose weights carry its output-side
    identities (``structural``, unique on both sides) and, through its input-side
    identities (``structural_in``), the file layers that share them (layers fed the same
    way from the inputs, siblings included). A model layer is *anchored* when its
    output-side proposal is among its input-side ones; anchored layers are removed from
    every other input-side group, and a group left with one layer on each side proposes
    that pair. Where a model layer's two proposals differ (a layer with weights was
    inserted or removed), the layers that compete form a chain: its alignments that pair
    the most layers are compared by how many paired weights have equal shapes, and the
    pairs common to every best alignment are taken. Any other layer of the chain is
    ambiguous: never a guess.

    Returns (pairs {file path: (model path, source)}, ambiguous {file path: Problem|None}).
    """
    fws = [fw for fw in file_weights if fw.path not in skip_files]
    tws = [tw for tw in target_weights if tw.path not in skip_targets]
    fshape = {fw.path: tuple(fw.shape) for fw in fws}
    tshape = {tw.path: tuple(tw.shape) for tw in tws}
    tlayer = {tw.path: _layer_key(tw, identities or {}) for tw in tws}
    parent = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for fw in fws:  # one vertex per file layer
        parent[find(fw.path)] = find(("layer", _file_layer(fw)))
    hf = lambda w: fhints[w.path]  # noqa: E731
    ht = lambda w: w.hints  # noqa: E731
    f_out, t_out = _groups(fws, hf, "structural"), _groups(tws, ht, "structural")
    f_in, t_in = _groups(fws, hf, "structural_in"), _groups(tws, ht, "structural_in")
    proposals = {}  # model layer -> {side: {model path: file path}}
    for key, tps in t_out.items():
        fps = f_out.get(key, ())
        if len(tps) == 1 and len(fps) == 1:
            proposals.setdefault(tlayer[tps[0]], {}).setdefault("out", {})[tps[0]] = fps[0]
    in_keys = {tp: key for key, tps in t_in.items() if key in f_in for tp in tps}
    anchored_t, anchored_f = set(), set()
    for layer, props in proposals.items():
        out_m = props["out"]
        if all(in_keys.get(tp) is not None and fp in f_in[in_keys[tp]]
               for tp, fp in out_m.items()):
            anchored_t.update(out_m)
            anchored_f.update(out_m.values())
    for key, tps in t_in.items():
        tps = [tp for tp in tps if tp not in anchored_t]
        fps = [fp for fp in f_in.get(key, ()) if fp not in anchored_f]
        if len(tps) == 1 and len(fps) == 1:
            proposals.setdefault(tlayer[tps[0]], {}).setdefault("in", {})[tps[0]] = fps[0]
    edges = []  # (model layer, file layer, {model path: file path}, source)
    for layer, props in proposals.items():
        for m in props.values():
            first = next(iter(m.values()))
            for fp in m.values():
                parent[find(fp)] = find(first)
    for layer, props in sorted(proposals.items()):
        out_m, in_m = props.get("out"), props.get("in")
        if out_m is not None:
            edges.append((layer, find(next(iter(out_m.values()))), out_m, "structure"))
        if in_m is not None and in_m != out_m:
            edges.append((layer, find(next(iter(in_m.values()))), in_m, "structure-in"))
    at = {}
    for k, (t, f, _, _) in enumerate(edges):
        at.setdefault(("t", t), []).append(k)
        at.setdefault(("f", f), []).append(k)
    pairs, ambiguous, seen = {}, {}, set()
    for k0 in range(len(edges)):
        if k0 in seen:
            continue
        comp, todo = [], [k0]
        while todo:
            k = todo.pop()
            if k in seen:
                continue
            seen.add(k)
            comp.append(k)
            todo += at[("t", edges[k][0])] + at[("f", edges[k][1])]
        chosen, open_ = _best_alignment(sorted(comp), edges, at, fshape, tshape)
        for k in chosen:
            for tp, fp in edges[k][2].items():
                pairs[fp] = (tp, edges[k][3])
        if not open_:
            continue
        layers_t = sorted({edges[k][0] for k in open_} - {edges[k][0] for k in chosen})
        model_paths = [sorted(tp for tp in tlayer if tlayer[tp] == t) for t in layers_t]
        by_file_layer = {}
        for fp in sorted({fp for k in open_ for fp in edges[k][2].values()} - set(pairs)):
            by_file_layer.setdefault(find(fp), []).append(fp)
        for members in by_file_layer.values():
            ambiguous[members[0]] = Problem(
                "E_MATCH_AMBIGUOUS", members[0],
                f"its layer ({members}) could be any of the model layers {model_paths}: a layer"
                " with weights was inserted or removed among layers of the same structure "
                "(class and weight shapes), and several alignments fit equally well; pass "
                "mapping={file path: model path} for these weights to say which")
            for fp in members[1:]:
                ambiguous[fp] = None
    return pairs, ambiguous


def _best_alignment(comp, edges, at, fshape, tshape):
    """(edges taken, edges left ambiguous) for one component of the alignment graph."""
    if len(comp) == 1:
        return comp, []
    # A model layer has at most two proposals (one per side), a file layer is proposed by
    # at most one model layer per side: the component is a path or a cycle.
    if any(len(at[v]) > 2 for k in comp for v in (("t", edges[k][0]), ("f", edges[k][1]))):
        return [], comp
    start = next((v for k in comp for v in (("t", edges[k][0]), ("f", edges[k][1]))
                  if len(at[v]) == 1), None)
    cycle = start is None
    order, used, v = [], set(), start or ("t", edges[comp[0]][0])
    while True:
        nxt = [k for k in at[v] if k not in used]
        if not nxt:
            break
        used.add(nxt[0])
        order.append(nxt[0])
        t, f = ("t", edges[nxt[0]][0]), ("f", edges[nxt[0]][1])
        v = f if v == t else t
    n = len(order)
    if cycle:
        options = [order[0::2], order[1::2]]
    elif n % 2:
        options = [order[0::2]]
    else:  # n/2 pairs, the one layer left over at any of n/2 + 1 places
        options = [order[0:2 * i:2] + order[2 * i + 1::2] for i in range(n // 2 + 1)]

    def score(option):
        return sum(fshape[fp] == tshape[tp] for k in option for tp, fp in edges[k][2].items())

    best = max(score(o) for o in options)
    winners = [set(o) for o in options if score(o) == best]
    common = set.intersection(*winners)
    return sorted(common), sorted(set(comp) - common) if len(winners) > 1 else []


def match(file_weights, target_weights, mapping=None, *, file_version=None, identities=None):
    """Pair file weights with target weights by identity; return (pairs, report).

    ``pairs`` maps file path -> (target path, source). Sources, strongest first:
    the caller's ``mapping``; user-given names (hint ``name``); structural identity
    from the outputs (hint ``structural``) and, since format 1.1, from the inputs
    (``structural_in``), aligned where the two disagree (:func:`align`).
    Auto-generated names are never used. When two sources disagree, or one is
    ambiguous, the weights involved are reported as conflicts. ``file_version``
    ("1.0", ...) says how the file's hints were made (spec 8.5); ``identities`` maps
    target paths to the :class:`_identity.WeightIdentity` the graph gave them (their layer,
    for the alignment; their 1.0 identity, for 1.0 files).
    """
    report = ImportReport()
    fhints = file_hints(file_weights, target_weights, file_version, report.notes, identities)
    fpaths = {w.path: w for w in file_weights}
    tpaths = {w.path: w for w in target_weights}
    problems = []
    mapped = _mapping_pairs(mapping, fpaths, tpaths, problems)
    report.conflicts.extend(problems)
    pairs = {fp: (tp, "mapping") for fp, tp in mapped.items()}
    taken = {tp: fp for fp, tp in mapped.items()}
    (fidx, fdup), (tidx, tdup) = (_index(file_weights, lambda w: fhints[w.path], "name"),
                                  _index(target_weights, lambda w: w.hints, "name"))
    (sfidx, sfdup), (stidx, stdup) = (
        _index(file_weights, lambda w: fhints[w.path], "structural"),
        _index(target_weights, lambda w: w.hints, "structural"))
    structure, ambiguous = align(file_weights, target_weights, fhints, set(mapped),
                                 set(mapped.values()), identities)
    claims = {}  # target path -> list of file paths claiming it
    proposals = {}
    for fw in file_weights:
        if fw.path in pairs:
            continue
        found = {}
        key = fhints[fw.path].get("name")
        if isinstance(key, str) and key in tidx:
            if key in fdup or key in tdup:
                report.conflicts.append(Problem(
                    "E_MATCH_AMBIGUOUS", fw.path,
                    f"its name identity is shared by several weights "
                    f"{'in the file' if key in fdup else 'in the model'}; pass mapping= to "
                    "say which model weight it is"))
                continue
            found["name"] = tidx[key]
        key = fhints[fw.path].get("structural")
        if isinstance(key, str) and key in stidx and (key in sfdup or key in stdup):
            report.conflicts.append(Problem(
                "E_MATCH_AMBIGUOUS", fw.path,
                f"its structure identity is shared by several weights "
                f"{'in the file' if key in sfdup else 'in the model'}; pass mapping= to "
                "say which model weight it is"))
            continue
        if fw.path in structure:
            found["structure"] = structure[fw.path]
        elif fw.path in ambiguous and "name" not in found:
            if ambiguous[fw.path] is not None:
                report.conflicts.append(ambiguous[fw.path])
            continue
        if not found:
            continue
        targets = {v[0] if isinstance(v, tuple) else v for v in found.values()}
        if len(targets) > 1:
            report.conflicts.append(Problem(
                "E_MATCH_CONFLICT", fw.path,
                f"its name identifies model weight {found['name']!r} but its structure "
                f"identifies {found['structure'][0]!r}; pass mapping={{{fw.path!r}: "
                "<model path>} to decide"))
            continue
        tp = targets.pop()
        if tp in taken:
            report.notes.append(f"{fw.path!r} would match {tp!r}, which the mapping gives to "
                                f"{taken[tp]!r}")
            continue
        source = "name" if "name" in found else found["structure"][1]
        if "name" in found and "structure" in found:
            source = "name+" + found["structure"][1]
        proposals[fw.path] = (tp, source)
        claims.setdefault(tp, []).append(fw.path)
    for tp, fps in claims.items():
        if len(fps) > 1:
            for fp in fps:
                report.conflicts.append(Problem(
                    "E_MATCH_CONFLICT", fp, f"it and {[p for p in fps if p != fp]} all identify"
                    f" model weight {tp!r}; pass mapping= to decide"))
            continue
        pairs[fps[0]] = proposals[fps[0]]
    return pairs, report


def _convertible(src: str, dst: str) -> bool:
    if src == dst:
        return True
    order = ["float16", "float32", "float64"]
    if src in order and dst in order:
        return order.index(src) <= order.index(dst)
    if src == "bfloat16" and dst in ("float32", "float64"):
        return True
    return src.startswith(("int", "uint")) and dst.startswith(("int", "uint"))


def _convert(arr, dst: str, where, problems):
    """``arr`` as dtype ``dst`` if that is exact, else None with a problem recorded."""
    src = _dtypes.name_of(arr.dtype) if not isinstance(arr.dtype, str) else arr.dtype
    if src == "uint16" and dst == "bfloat16":
        src = "bfloat16"
    if not _convertible(src, dst):
        problems.append(Problem("E_MATCH_DTYPE", where, f"file holds {src}, the target is "
                                f"{dst}; converting would lose precision"))
        return None
    if src == dst:
        return arr
    if src == "bfloat16":
        bf = np.asarray(arr).view(np.uint16).astype(np.uint32) << 16
        return bf.view(np.float32).astype(dst)
    if src.startswith(("int", "uint")) and not _fits(arr, dst):
        problems.append(Problem("E_MATCH_DTYPE", where, f"an integer value of the file's {src} "
                                f"does not fit the target's {dst} (range {_range(dst)})"))
        return None
    return np.asarray(arr).astype(_dtypes.storage_dtype(dst))


def _range(dtype: str):
    info = np.iinfo(_dtypes.storage_dtype(dtype))
    return int(info.min), int(info.max)


def _fits(arr, dst: str) -> bool:
    """Whether every integer of ``arr`` lies in ``dst``'s range (compared as Python ints:
    a signed/unsigned round trip of equal width always "succeeds" and proves nothing)."""
    arr = np.asarray(arr)
    if arr.size == 0:
        return True
    lo, hi = _range(dst)
    return lo <= int(arr.min()) and int(arr.max()) <= hi


def _note_nonfinite(report, arr, what, proven=frozenset()):
    """Note NaN/Inf values in ``arr``; ``proven``: ids of arrays the reader found finite."""
    if isinstance(arr, Stored):  # a tensor not read yet: counted once read (spec 14.11)
        arr.note = what
        return
    bad = _dtypes.count_nonfinite(arr, proven)
    if bad:
        report.notes.append(f"{what}: {bad} NaN/Inf value(s), imported as they are")


def _check_iterations(state, problems):
    """The file's ``iterations`` global, when it has one, must equal its ``step`` (7.3)."""
    it = state.globals.get("iterations")
    if it is None or np.asarray(it).size != 1 or np.asarray(it).dtype.kind not in "iu":
        return
    value = int(np.asarray(it).reshape(-1)[0])
    if value != state.step:
        problems.append(Problem(
            "E_MATCH_STEP", None, f"the file's iterations global is {value} but its step is "
            f"{state.step}: the file is inconsistent (a negative or edited counter?); "
            "re-export it"))


def _map_components(state, target, pairs, fmap, tmap, problems):
    """Pair the file's inner optimizers with the target's through the weights they own.

    Returns the file's globals renamed to the target's component numbers. Inner optimizers
    are numbered in the order a framework met them, so they are matched by their weights,
    never by number.
    """
    fwd, back = {}, {}
    for fp, (tp, _) in pairs.items():
        fw, tw = fmap[fp], tmap[tp]
        if not (fw.slots or tw.slots):
            continue
        fc, tc = fw.component, tw.component
        # the map must be one-to-one: checked from each side, with the same message
        for seen, mine, theirs, side, other in ((fwd, fc, tc, "file", "target"),
                                                (back, tc, fc, "target", "file")):
            if seen.setdefault(mine, theirs) != theirs:
                problems.append(Problem(
                    "E_MATCH_COMPONENT", fp, f"the {side}'s inner optimizer {mine} holds weights "
                    f"that the {other} gives to different inner optimizers ({seen[mine]} and "
                    f"{theirs}); the optimizer maps of the two models disagree"))
                return dict(state.globals)
    for fc, tc in sorted(fwd.items()):
        fa = state.optimizer.components[fc]["algorithm"]
        ta = target.optimizer.components[tc]["algorithm"]
        if fa != ta:
            problems.append(Problem(
                "E_MATCH_ALGORITHM", None, f"inner optimizer {fc} of the file is {fa!r}, the "
                f"target's inner optimizer {tc} for the same weights is {ta!r}"))
    renamed = {}
    for name, arr in state.globals.items():
        parts = name.split(".", 2)
        if len(parts) == 3 and parts[0] == "component" and parts[1].isdigit():
            fc = int(parts[1])
            if fc not in fwd:
                continue  # an inner optimizer none of whose weights matched: never guess
            name = f"component.{fwd[fc]}.{parts[2]}"
        renamed[name] = arr
    return renamed


RESIZE_RULES = (None, "overlap")


def overlap(src, dst):
    """``dst`` (a new array) with the region it shares with ``src`` copied from ``src``.

    Every axis keeps its first ``min(len)`` entries: a grown vocabulary or context keeps
    its old rows, a head with more classes its old columns; what lies outside the
    overlap keeps ``dst``'s value.

    >>> overlap(np.arange(4.0).reshape(2, 2), np.full((3, 1), -1.0)).tolist()
    [[0.0], [2.0], [-1.0]]
    """
    out = np.array(dst, copy=True)
    region = tuple(slice(0, min(a, b)) for a, b in zip(np.shape(src), out.shape))
    out[region] = np.asarray(src)[region]
    return out


def _resized(arr, st, read, where, problems):
    """``arr`` fitted to target variable ``st`` by overlap, or None with a problem recorded."""
    if np.ndim(arr) != len(st.shape):
        problems.append(Problem("E_MATCH_SHAPE", where, f"has rank {np.ndim(arr)}, the target "
                                f"{len(st.shape)}: resize='overlap' keeps the rank"))
        return None
    if read is None:
        problems.append(Problem("E_MATCH_SHAPE", where, "resize='overlap' needs the target's "
                                "current values (plan_import(read=...))"))
        return None
    conv = _convert(arr, st.dtype, where, problems)
    if conv is None:
        return None
    fresh = np.asarray(read(st)).astype(conv.dtype, copy=False)
    return overlap(conv, fresh)


def plan_import(state, target, *, mapping=None, strict=True, include_weights=False,
                resize=None, identities=None, read=None):
    """Resolve ``state`` (from a file) against ``target``; return (report, assignments).

    ``target`` is an :class:`OptimizerState` whose slots, values and globals are
    ``adapter.Variable`` objects. ``assignments`` is a list of (Variable, numpy
    array) ready to assign; every shape and dtype has been checked and every
    conversion done. Raises
    :class:`MatchError` listing all problems at once when the import cannot be
    made exactly (in strict mode, also when anything is missing or unused).

    ``resize="overlap"`` (never the default) lets a paired weight whose shape changed
    (same rank) import anyway: each slot (and the value, with ``include_weights``)
    gets the region both shapes share from the file and keeps the target's current
    value elsewhere (a freshly built optimizer's initial value); every such weight is
    listed in ``report.resized`` (spec 8.6). ``read(Variable)`` gives a target
    variable's current value (the conductor passes its adapter's); only resize needs it.

    ``identities`` ({target path: :class:`_identity.WeightIdentity`}, from the target's
    graph) lets the two-ended alignment group the target's weights by layer and lets a
    1.0 file's generated names be recovered (spec 8.4, 8.5); without it each target
    weight is its own layer and such 1.0 weights stay unmatched.
    """
    if resize not in RESIZE_RULES:
        raise ValueError(f"resize must be None or 'overlap'; received resize={resize!r}")
    pairs, report = match(state.weights, target.weights, mapping,
                          file_version=getattr(state, "version", None), identities=identities)
    fmap = {w.path: w for w in state.weights}
    tmap = {w.path: w for w in target.weights}
    proven = getattr(state, "_proven_finite", frozenset())
    problems = []
    topt = target.optimizer
    if state.optimizer.algorithm != topt.algorithm:
        why = "state of one algorithm means nothing to another"
        for alg in (state.optimizer.algorithm, topt.algorithm):
            if alg in _registry.ALGORITHMS and _registry.ALGORITHMS[alg].notes:
                why = _registry.ALGORITHMS[alg].notes
        problems.append(Problem(
            "E_MATCH_ALGORITHM", None,
            f"the file holds state of {state.optimizer.algorithm!r} "
            f"({state.optimizer.class_name}), the target optimizer is {topt.algorithm!r} "
            f"({topt.class_name}): {why}"))
    elif state.optimizer.module != topt.module:
        alg = _registry.ALGORITHMS.get(topt.algorithm)
        if alg is not None and alg.notes:
            report.notes.append(f"between implementations ({state.optimizer.module} -> "
                                f"{topt.module}): {alg.notes}")
    file_globals = dict(state.globals)
    if not problems and topt.components:
        file_globals = _map_components(state, target, pairs, fmap, tmap, problems)
    assignments = []
    matched_targets = set()
    for fp, (tp, source) in sorted(pairs.items()):
        fw, tw = fmap[fp], tmap[tp]
        grow = False
        if tuple(fw.shape) != tuple(tw.shape):
            if resize != "overlap" or len(fw.shape) != len(tw.shape):
                why = (" (resize='overlap' keeps the rank)" if resize else
                       "; resize='overlap' would import the overlapping region")
                report.mismatched.append(Problem(
                    "E_MATCH_SHAPE", fp, f"file weight has shape {list(fw.shape)}, model weight "
                    f"{tp!r} has shape {list(tw.shape)}{why}"))
                continue
            grow = True
            report.resized.append((fp, tp, tuple(fw.shape), tuple(tw.shape)))
        report.matched.append((fp, tp, source))
        matched_targets.add(tp)
        names = set(fw.slots) | set(tw.slots)
        if not fw.slots and tw.slots and not any(
                getattr(v, "exists", True) for v in tw.slots.values()):
            names = set()  # no state yet on either side: it is created at the first step
            report.notes.append(f"{fp}: no optimizer state yet, in the file and in the target")
        for sname in sorted(names):
            if sname not in tw.slots:
                report.mismatched.append(Problem(
                    "E_MATCH_SLOTS", fp, f"file has slot {sname!r}, which the target "
                    f"optimizer does not keep for {tp!r} (different optimizer options?)"))
                continue
            if sname not in fw.slots:
                report.mismatched.append(Problem(
                    "E_MATCH_SLOTS", fp, f"target optimizer keeps slot {sname!r} for {tp!r}; "
                    "the file has none (different optimizer options?)"))
                continue
            arr, st = fw.slots[sname], tw.slots[sname]
            if grow and tuple(arr.shape) != tuple(st.shape):
                conv = _resized(arr, st, read, fp, report.mismatched)
                if conv is not None:
                    assignments.append((st, conv))
                continue
            if tuple(arr.shape) != tuple(st.shape):
                report.mismatched.append(Problem(
                    "E_MATCH_SHAPE", fp, f"slot {sname!r} has shape {list(arr.shape)}, the "
                    f"target's is {list(st.shape)}"))
                continue
            conv = _convert(arr, st.dtype, fp, report.mismatched)
            if conv is not None:
                assignments.append((st, conv))
                _note_nonfinite(report, conv, f"{fp} slot {sname!r}", proven)
        if include_weights:
            if fw.value is None:
                report.mismatched.append(Problem(
                    "E_MATCH_NO_VALUE", fp, "include_weights=True but the file holds no value "
                    "for this weight (export with include_weights=True)"))
            elif grow:
                conv = _resized(fw.value, tw.value, read, fp, report.mismatched)
                if conv is not None:
                    assignments.append((tw.value, conv))
            else:
                conv = _convert(fw.value, tw.dtype, fp, report.mismatched)
                if conv is not None:
                    assignments.append((tw.value, conv))
                    _note_nonfinite(report, conv, f"{fp} value", proven)
    matched_files = {fp for fp, (tp, _) in pairs.items() if tp in matched_targets}
    for tw in target.weights:
        if tw.path not in matched_targets and (tw.slots or include_weights):
            report.missing.append(tw.path)
            suggest = [f.path for f in state.weights if f.path not in matched_files
                       and tuple(f.shape) == tuple(tw.shape)]
            if suggest:
                report.notes.append(f"{tw.path!r} is unmatched; unmatched file weights of the "
                                    f"same shape: {suggest[:5]} (pass mapping= if one of them "
                                    "is it)")
    for fw in state.weights:
        if fw.path not in matched_files and (fw.slots or include_weights):
            report.unexpected.append(fw.path)
    # Globals named "<framework>.<name>" are private to the framework that wrote them (7.3).
    frameworks = {p.get("framework") for p in (state.producer, target.producer)} - {None, ""}
    for name in sorted(set(file_globals) | set(target.globals)):
        private = "." in name and name.split(".")[0] in frameworks
        if name not in target.globals:
            if private:
                report.notes.append(f"global {name!r} is private to another framework; ignored")
                continue
            report.mismatched.append(Problem("E_MATCH_GLOBALS", None, f"file holds global "
                                             f"{name!r}, which the target optimizer lacks"))
            continue
        if name not in file_globals:
            if private:
                report.notes.append(f"target's private global {name!r} is not in the file; "
                                    "left as it is")
                continue
            report.mismatched.append(Problem("E_MATCH_GLOBALS", None, f"target optimizer has "
                                             f"global {name!r}, which the file lacks"))
            continue
        arr, gt = file_globals[name], target.globals[name]
        if tuple(arr.shape) != tuple(gt.shape):
            report.mismatched.append(Problem("E_MATCH_SHAPE", None, f"global {name!r} has "
                                             f"shape {list(arr.shape)}, target "
                                             f"{list(gt.shape)}"))
            continue
        conv = _convert(arr, gt.dtype, f"global:{name}", report.mismatched)
        if conv is not None:
            assignments.append((gt, conv))
            _note_nonfinite(report, conv, f"global {name!r}", proven)
    _check_iterations(state, problems)
    for key, neutral in sorted(_registry.UPDATE_RULE_HYPERPARAMETERS.items()):
        value = state.optimizer.hyperparameters.get(key, neutral)
        same_algorithm = state.optimizer.algorithm == topt.algorithm
        if same_algorithm and value != neutral and key not in topt.hyperparameters:
            problems.append(Problem(
                "E_MATCH_HYPER", None, f"the file's optimizer used {key}={value!r}, which the "
                f"target optimizer ({topt.class_name}) does not have; its update rule "
                "differs, so the state cannot continue exactly"))
    for key in sorted(set(state.optimizer.hyperparameters) & set(topt.hyperparameters)):
        a, b = state.optimizer.hyperparameters[key], topt.hyperparameters[key]
        if isinstance(a, float) and isinstance(b, float) and np.float32(a) == np.float32(b):
            continue  # the same value, once stored as float32 and once as float64
        if a != b and key not in ("name",):
            report.notes.append(f"hyperparameter {key!r}: file {a!r}, target {b!r} (target "
                                "kept)")
    flr, tlr = state.optimizer.learning_rate, topt.learning_rate
    if flr and tlr and flr.get("kind") != tlr.get("kind") or (
            flr.get("kind") == tlr.get("kind") == "schedule" and flr != tlr):
        report.notes.append(f"learning rate: file {flr}, target {tlr} (target kept; the "
                            "restored iteration count drives the target's schedule)")
    report.conflicts.extend(problems)
    fatal = list(report.conflicts)
    if strict:
        fatal = report.problems
    if fatal:
        raise MatchError(f"cannot import optimizer state: {len(fatal)} problem(s); nothing was "
                         "assigned. Fix the model, pass mapping= for identities, or "
                         "strict=False to import what matches.", problems=fatal, report=report)
    report.assigned = len(assignments)
    return report, assignments
