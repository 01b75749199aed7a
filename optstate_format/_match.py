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
    assigned: int = 0

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


def _index(items, hint):
    index, dup = {}, set()
    for it in items:
        key = it.hints.get(hint)
        if key is None:
            continue
        if key in index:
            dup.add(key)
        index[key] = it.path
    return index, dup


def match(file_weights, target_weights, mapping=None):
    """Pair file weights with target weights by identity; return (pairs, report).

    ``pairs`` maps file path -> (target path, source). Sources, strongest first:
    the caller's ``mapping``; user-given names (hint ``name``); structural identity
    (hint ``structural``). Auto-generated names are never used. When two sources
    disagree, or one is ambiguous, the weights involved are reported as conflicts.
    """
    report = ImportReport()
    fpaths = {w.path: w for w in file_weights}
    tpaths = {w.path: w for w in target_weights}
    problems = []
    mapped = _mapping_pairs(mapping, fpaths, tpaths, problems)
    report.conflicts.extend(problems)
    pairs = {fp: (tp, "mapping") for fp, tp in mapped.items()}
    taken = {tp: fp for fp, tp in mapped.items()}
    indexes = {h: (_index(file_weights, h), _index(target_weights, h))
               for h in ("name", "structural")}
    claims = {}  # target path -> list of file paths claiming it
    proposals = {}
    for fw in file_weights:
        if fw.path in pairs:
            continue
        found = {}
        for hint, source in (("name", "name"), ("structural", "structure")):
            (fidx, fdup), (tidx, tdup) = indexes[hint]
            key = fw.hints.get(hint)
            if key is None or key not in tidx:
                continue
            if key in fdup or key in tdup:
                report.conflicts.append(Problem(
                    "E_MATCH_AMBIGUOUS", fw.path,
                    f"its {source} identity is shared by several weights "
                    f"{'in the file' if key in fdup else 'in the model'}; pass mapping= to "
                    "say which model weight it is"))
                found = None
                break
            found[source] = tidx[key]
        if not found:
            continue
        targets = set(found.values())
        if len(targets) > 1:
            report.conflicts.append(Problem(
                "E_MATCH_CONFLICT", fw.path,
                f"its name identifies model weight {found['name']!r} but its structure "
                f"identifies {found['structure']!r}; pass mapping={{{fw.path!r}: <model path>}}"
                " to decide"))
            continue
        tp = targets.pop()
        if tp in taken:
            report.notes.append(f"{fw.path!r} would match {tp!r}, which the mapping gives to "
                                f"{taken[tp]!r}")
            continue
        source = "name" if "name" in found else "structure"
        if "name" in found and "structure" in found:
            source = "name+structure"
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


_FINITE_CHUNK = 1 << 22


def _nonfinite(arr) -> int:
    """How many NaN/Inf values a floating array holds (0 for other dtypes), chunk by chunk."""
    arr = np.asarray(arr)
    if arr.dtype.kind != "f" or arr.size == 0:
        return 0
    flat = arr.reshape(-1)
    return sum(int(flat[i:i + _FINITE_CHUNK].size - np.count_nonzero(
        np.isfinite(flat[i:i + _FINITE_CHUNK]))) for i in range(0, flat.size, _FINITE_CHUNK))


def _note_nonfinite(report, arr, what):
    bad = _nonfinite(arr)
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
        if fwd.setdefault(fc, tc) != tc or back.setdefault(tc, fc) != fc:
            problems.append(Problem(
                "E_MATCH_COMPONENT", fp, f"the file's inner optimizer {fc} holds weights that the"
                f" target gives to different inner optimizers ({fwd[fc]} and {tc}); the "
                "optimizer maps of the two models disagree"))
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


def plan_import(state, target, *, mapping=None, strict=True, include_weights=False):
    """Resolve ``state`` (from a file) against ``target``; return (report, assignments).

    ``target`` is an :class:`OptimizerState` whose slots, values and globals are
    ``adapter.Variable`` objects. ``assignments`` is a list of (Variable, numpy
    array) ready to assign; every shape and dtype has been checked and every
    conversion done. Raises
    :class:`MatchError` listing all problems at once when the import cannot be
    made exactly (in strict mode, also when anything is missing or unused).
    """
    pairs, report = match(state.weights, target.weights, mapping)
    fmap = {w.path: w for w in state.weights}
    tmap = {w.path: w for w in target.weights}
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
        if tuple(fw.shape) != tuple(tw.shape):
            report.mismatched.append(Problem(
                "E_MATCH_SHAPE", fp, f"file weight has shape {list(fw.shape)}, model weight "
                f"{tp!r} has shape {list(tw.shape)}"))
            continue
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
            if tuple(arr.shape) != tuple(st.shape):
                report.mismatched.append(Problem(
                    "E_MATCH_SHAPE", fp, f"slot {sname!r} has shape {list(arr.shape)}, the "
                    f"target's is {list(st.shape)}"))
                continue
            conv = _convert(arr, st.dtype, fp, report.mismatched)
            if conv is not None:
                assignments.append((st, conv))
                _note_nonfinite(report, conv, f"{fp} slot {sname!r}")
        if include_weights:
            if fw.value is None:
                report.mismatched.append(Problem(
                    "E_MATCH_NO_VALUE", fp, "include_weights=True but the file holds no value "
                    "for this weight (export with include_weights=True)"))
            else:
                conv = _convert(fw.value, tw.dtype, fp, report.mismatched)
                if conv is not None:
                    assignments.append((tw.value, conv))
                    _note_nonfinite(report, conv, f"{fp} value")
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
            _note_nonfinite(report, conv, f"global {name!r}")
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
