"""The ``optstate`` command: inspect, check, diff, convert, demo.

Exit codes: 0 success (valid / identical), 1 invalid file or differences, 2 usage
or an error that stopped the command.
"""

from __future__ import annotations

import os

# Before anything can import TensorFlow: no start-up log lines in the command's output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402

from ._check import check, dtype_of as _dtype_of, summarize as _summary
from ._errors import OptStateError
from ._io import read, read_with_dtypes


def _shown(text) -> str:
    r"""``text`` with every character a terminal could act on escaped (C0 and C1 controls,
    ESC, DEL, bidirectional and other format characters, lone surrogates): names come
    from files, and a file must not be able to clear the screen or retitle the window.

    >>> _shown("Adam\x1b]0;owned\x07\u202e")
    'Adam\\x1b]0;owned\\x07\\u202e'
    """
    text = str(text)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else
                   f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else
                   f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}"
                   for ch in text)


def _out(text="", file=None):
    """Print ``text`` as one line, escaped (see :func:`_shown`): a newline inside a name
    cannot start a forged line either."""
    file = file or sys.stdout
    line = _shown(text)
    enc = getattr(file, "encoding", None) or "utf-8"
    try:
        line.encode(enc)
    except (UnicodeEncodeError, LookupError):
        line = line.encode(enc, "backslashreplace").decode(enc, "replace")
    print(line, file=file)


def _fmt_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _nbytes(arr):
    return int(math.prod(arr.shape)) * arr.dtype.itemsize


def _file_size(path):
    """Bytes to read: the file's size, or a sharded archive folder's files' (spec 14)."""
    try:
        if os.path.isdir(path):
            return sum(e.stat(follow_symlinks=False).st_size for e in os.scandir(path)
                       if e.is_file(follow_symlinks=False))
        return os.stat(path).st_size
    except OSError:
        return 0


def _read_with_bar(path, verb, **kw):
    """``read(path)`` with a progress bar on multi-GB files (on a terminal only)."""
    from . import _progress
    with _progress.progress(_file_size(path), f"{verb} {os.path.basename(str(path))}") as bar:
        return read(path, progress=bar.update, **kw)


def cmd_inspect(args):
    from . import _progress
    with _progress.progress(_file_size(args.file),
                            f"reading {os.path.basename(str(args.file))}") as bar:
        state, dtypes = read_with_dtypes(args.file, progress=bar.update,
                                         verify=not args.no_verify)
    if args.json:  # the summary of spec 13.1; ensure_ascii escapes every non-ASCII character
        print(json.dumps(_summary(state, dtypes), indent=2, sort_keys=True, allow_nan=False))
        return 0
    opt = state.optimizer
    _out(f"file          {args.file}")
    _out(f"format        optstate {state.version}")
    prod = state.producer
    _out(f"producer      {prod.get('library', '?')} {prod.get('library_version', '')}; "
          f"{prod.get('framework', '?')} {prod.get('framework_version', '')}")
    _out(f"optimizer     {opt.class_name} (algorithm {opt.algorithm})"
          + "".join(f" in {w.get('class_name')}" for w in opt.wrappers))
    for i, comp in enumerate(opt.components):
        owned = sum(1 for w in state.weights if w.component == i)
        _out(f"component {i}   {comp.get('class_name')} (algorithm {comp.get('algorithm')}), "
              f"{owned} weights, learning rate {json.dumps(comp.get('learning_rate', {}))}")
    _out(f"learning rate {json.dumps(opt.learning_rate, sort_keys=True)}")
    hp = ", ".join(f"{k}={v!r}" for k, v in sorted(opt.hyperparameters.items()) if v is not None)
    _out(f"hyperparams   {hp}")
    _out(f"step          {state.step}")
    for k, v in sorted(state.globals.items()):
        val = v.tolist() if v.size == 1 else f"{list(v.shape)}"
        _out(f"global        {k} = {val} ({_dtype_of(v)})")
    rows = [("path", "shape", "dtype", "slots", "bytes")]
    total = 0
    for w in state.weights:
        size = sum(_nbytes(a) for a in w.slots.values()) + (
            _nbytes(w.value) if w.value is not None else 0)
        total += size
        slots = ",".join(sorted(w.slots)) + ("+value" if w.value is not None else "")
        rows.append((_shown(w.path), "x".join(map(str, w.shape)) or "scalar", w.dtype,
                     slots or "-", _fmt_bytes(size)))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for i, r in enumerate(rows):
        _out("  ".join(c.ljust(widths[j]) for j, c in enumerate(r)).rstrip())
        if i == 0:
            _out("  ".join("-" * w for w in widths))
    _out(f"{len(state.weights)} weights, {_fmt_bytes(total)} of tensors")
    return 0


def cmd_check(args):
    from . import _progress
    with _progress.progress(_file_size(args.file), f"checking {args.file}") as bar:
        rep = check(args.file, progress=bar.update)
    if args.json:
        print(json.dumps({"path": rep.path, "valid": rep.valid, "code": rep.code,
                          "message": rep.message, "warnings": rep.warnings}, indent=2))
    else:
        for line in str(rep).split("\n"):  # message and warnings quote names with repr()
            _out(line)
    return 0 if rep.valid else 1


def _max_diff(a, b):
    if a.shape != b.shape:
        return None
    if a.size == 0:
        return 0.0
    with np.errstate(all="ignore"):
        d = np.abs(a.astype(np.float64) - b.astype(np.float64))
        same_nan = np.isnan(a.astype(np.float64)) & np.isnan(b.astype(np.float64))
        d = np.where(same_nan, 0.0, d)
    return float(np.nanmax(d)) if d.size else 0.0


def cmd_diff(args):
    a, b = _read_with_bar(args.a, "reading"), _read_with_bar(args.b, "reading")
    lines, differ = [], 0
    if a.optimizer.algorithm != b.optimizer.algorithm:
        differ += 1
        lines.append(f"optimizer: {a.optimizer.algorithm} vs {b.optimizer.algorithm}")
    if a.step != b.step:
        differ += 1
        lines.append(f"step: {a.step} vs {b.step}")
    for k in sorted(set(a.optimizer.hyperparameters) | set(b.optimizer.hyperparameters)):
        va, vb = a.optimizer.hyperparameters.get(k), b.optimizer.hyperparameters.get(k)
        if va != vb:
            differ += 1
            lines.append(f"hyperparameter {k}: {va!r} vs {vb!r}")
    for k in sorted(set(a.globals) | set(b.globals)):
        if k not in b.globals or k not in a.globals:
            differ += 1
            lines.append(f"global {k}: only in {'A' if k in a.globals else 'B'}")
        elif not np.array_equal(a.globals[k], b.globals[k]):
            differ += 1
            lines.append(f"global {k}: {a.globals[k].tolist()} vs {b.globals[k].tolist()}")
    wa, wb = {w.path: w for w in a.weights}, {w.path: w for w in b.weights}
    same = 0
    for p in sorted(set(wa) | set(wb)):
        if p not in wb or p not in wa:
            differ += 1
            lines.append(f"{p}: only in {'A' if p in wa else 'B'}")
            continue
        x, y = wa[p], wb[p]
        tensors = {f"slot {k}": (x.slots.get(k), y.slots.get(k))
                   for k in set(x.slots) | set(y.slots)}
        if x.value is not None or y.value is not None:
            tensors["value"] = (x.value, y.value)
        for name, (ta, tb) in sorted(tensors.items()):
            if ta is None or tb is None:
                differ += 1
                lines.append(f"{p} {name}: only in {'A' if tb is None else 'B'}")
            elif ta.shape != tb.shape or ta.dtype != tb.dtype:
                differ += 1
                lines.append(f"{p} {name}: {ta.dtype}{list(ta.shape)} vs "
                             f"{tb.dtype}{list(tb.shape)}")
            elif not np.array_equal(ta, tb, equal_nan=ta.dtype.kind == "f"):
                differ += 1
                lines.append(f"{p} {name}: max |A-B| = {_max_diff(ta, tb):.6g}")
            else:
                same += 1
    for line in lines:
        _out(line)
    _out(f"{same} tensors equal, {differ} differences")
    return 1 if differ else 0


def cmd_demo(args):
    try:
        from .converters.demo import run
    except ImportError as e:  # pragma: no cover - depends on installed extras
        print(f"the demo needs the Keras extra: pip install 'optstate-format[keras]' ({e})",
              file=sys.stderr)
        return 2
    return run(args.out)


# ---- convert (issue 13) ------------------------------------------------------------------
def _quiet_framework_import():
    """Import TensorFlow and Keras with the native stderr held back.

    TensorFlow's C++ start-up lines (absl's "All log messages before absl::InitializeLog()",
    cudart_stub) are written to file descriptor 2 before TF_CPP_MIN_LOG_LEVEL applies; they
    are kept in a temporary file and shown only if the import fails.
    """
    import tempfile
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            import tensorflow as tf
            tf.get_logger().setLevel("ERROR")
            import keras  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    try:
        import absl.logging
        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:  # pragma: no cover
        pass


def _custom_objects(specs):
    """``module:Name`` options -> {Name: object}: code the user named, never the file."""
    import importlib
    out = {}
    for spec in specs or ():
        module, _, name = spec.partition(":")
        if not module or not name:
            raise SystemExit(f"optstate convert: --custom-object takes MODULE:NAME, got {spec!r}")
        sys.path.insert(0, os.getcwd())
        try:
            out[name.rsplit(".", 1)[-1]] = getattr(importlib.import_module(module), name)
        finally:
            sys.path.pop(0)
    return out


def cmd_convert(args):
    custom = _custom_objects(args.custom_object)
    from .converters import _convert
    if not os.path.isdir(args.src):
        _convert.source_kind(args.src)  # a missing or foreign file is refused before TF loads
    try:
        _quiet_framework_import()
    except ImportError as e:
        print(f"optstate convert needs the keras or tf-keras extra: pip install "
              f"'optstate-format[keras]' ({e})", file=sys.stderr)
        return 2
    out = _convert.convert(args.src, args.output, custom_objects=custom or None)
    print(f"wrote {out}")
    return 0


def _add_convert(sub):
    s = sub.add_parser("convert", help="convert a Keras checkpoint (.keras, .h5) into an "
                       "optstate training-state archive (weights + optimizer)")
    s.add_argument("src", help="a Keras 3 .keras file or a Keras .h5 model file")
    s.add_argument("-o", "--output", required=True, help="the archive to write")
    s.add_argument("--custom-object", action="append", metavar="MODULE:NAME",
                   help="a class the file names that is not Keras's (repeatable); nothing "
                   "named in the file itself is imported")
    s.set_defaults(func=cmd_convert)


def build_parser():
    p = argparse.ArgumentParser(prog="optstate", description="Inspect, check and compare "
                                "optstate files (portable optimizer state).")
    from . import FORMAT_VERSION, __version__
    p.add_argument("--version", action="version",
                   version=f"optstate {__version__} (format {FORMAT_VERSION})")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("inspect", help="print a readable summary of a file (or of a sharded "
                       "archive folder, as for check and diff)")
    s.add_argument("file")
    s.add_argument("--json", action="store_true", help="machine-readable summary")
    s.add_argument("--no-verify", action="store_true", help="skip tensor checksums")
    s.set_defaults(func=cmd_inspect)
    s = sub.add_parser("check", help="validate a file against the spec (exit 0 valid, 1 not)")
    s.add_argument("file")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_check)
    s = sub.add_parser("diff", help="compare two files (exit 0 identical, 1 different)")
    s.add_argument("a")
    s.add_argument("b")
    s.set_defaults(func=cmd_diff)
    _add_convert(sub)
    s = sub.add_parser("demo", help="the seed case end to end (needs the keras extra)")
    s.add_argument("--out", default="demo-out", help="folder for the demo's files")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except OptStateError as e:
        for line in f"optstate {args.command}: {e}".split("\n"):
            _out(line, file=sys.stderr)
        return 1 if args.command in ("check", "diff", "inspect") else 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
