"""Run any optstate reader over the conformance vectors and report where it agrees.

    python spec/conformance/run.py [--vectors DIR] [--timeout S] CMD [ARG...]

For each vector (``valid/``, ``invalid/``, and the sharded archives of ``archives/valid/`` and
``archives/invalid/``, folders), runs ``CMD ARG... <vector path>``; the command prints one JSON value on
stdout: the file's summary (SPEC.md 13.1) when it accepts the file, or an object with the
member ``code`` (``{"code": "E_TRUNCATED"}``) when it refuses it. Its exit status and stderr
are ignored. A valid vector agrees when the output equals ``<name>.expected.json`` as a JSON
value; an invalid one when the output's ``code`` is the expected code. Prints one line per
vector and a total; exits 0 when every vector agrees, 1 otherwise, 2 on a usage error.
Needs only the Python standard library (see README.md beside this file).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def same(a, b) -> bool:
    """Equality of JSON values (SPEC.md 13.1): objects as unordered maps, arrays in order,
    numbers by mathematical value (1 == 1.0, integers exact), true/false never numbers."""
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b  # Python compares int and float exactly
    if isinstance(a, str) or isinstance(b, str):
        return type(a) is type(b) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return False


def _refuse_constant(name):
    raise ValueError(f"{name} is not JSON")


def _first_difference(got, want, where="$"):
    if isinstance(got, dict) and isinstance(want, dict):
        for k in sorted(set(got) | set(want)):
            if k not in got:
                return f"{where}.{k} missing"
            if k not in want:
                return f"{where}.{k} not expected"
            if not same(got[k], want[k]):
                return _first_difference(got[k], want[k], f"{where}.{k}")
    if isinstance(got, list) and isinstance(want, list) and len(got) == len(want):
        for i, (x, y) in enumerate(zip(got, want)):
            if not same(x, y):
                return _first_difference(x, y, f"{where}[{i}]")
    return f"{where}: got {json.dumps(got)[:80]}, expected {json.dumps(want)[:80]}"


def judge(vector: Path, cmd, timeout) -> tuple[bool, str]:
    """(agrees, why) for one vector."""
    want = json.loads(vector.with_suffix(".expected.json").read_text())
    valid = vector.parent.name == "valid"
    try:
        out = subprocess.run(list(cmd) + [str(vector)], capture_output=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return False, f"no answer within {timeout} s"
    except OSError as e:
        return False, f"cannot run the command: {e}"
    try:
        got = json.loads(out.stdout.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as e:
        tail = out.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        return False, f"output is not one JSON value ({str(e)[:60]}) {tail[0][:80]}".rstrip()
    refused = isinstance(got, dict) and set(got) >= {"code"} and (
        not valid or "version" not in got)
    if valid:
        if refused:
            return False, f"refused with {got.get('code')}, expected accepted"
        if same(got, want):
            return True, "accepted, summary equal"
        return False, "summary differs: " + _first_difference(got, want)
    if not refused:
        return False, f"accepted, expected refused with {want['code']}"
    if got["code"] == want["code"]:
        return True, f"refused with {want['code']}"
    return False, f"refused with {got['code']}, expected {want['code']}"


def main(argv) -> int:
    args, vectors, timeout = list(argv), HERE, 60.0
    while args and args[0].startswith("--"):
        opt = args.pop(0)
        if opt == "--":
            break
        if opt in ("--vectors", "--timeout") and args:
            value = args.pop(0)
            if opt == "--vectors":
                vectors = Path(value)
            else:
                timeout = float(value)
        else:
            print(__doc__.strip().splitlines()[2], file=sys.stderr)
            return 2
    if not args:
        print("usage: " + __doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    # single files, then sharded archives (folders named *.optstate, SPEC.md 14) if present
    paths = [p for base in (vectors, vectors / "archives") for kind in ("valid", "invalid")
             for p in sorted((base / kind).glob("*.optstate"))]
    if not paths:
        print(f"no vectors under {vectors}/valid or {vectors}/invalid", file=sys.stderr)
        return 2
    agree = 0
    for path in paths:
        ok, why = judge(path, args, timeout)
        agree += ok
        where = path.relative_to(vectors).parent.as_posix()
        print(f"{'agree   ' if ok else 'DISAGREE'} {where}/{path.stem}: {why}")
    print(f"{agree} of {len(paths)} vectors agree"
          + ("" if agree == len(paths) else f"; {len(paths) - agree} disagree"))
    return 0 if agree == len(paths) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
