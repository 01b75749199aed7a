"""The header document (spec section 4): decoding it under limits, and the one validation.

:func:`validate` is the only place the rules of sections 4, 5 and 7.2 are written. The
writer calls it on the document it is about to write, the reader on the document it has
decoded, so a file the writer produces is always one the reader accepts, and the two can
never drift apart. ``spec/schema/header-1.schema.json`` states the same rules as far as
JSON Schema can (tests/core/test_header_validation.py keeps the two in agreement).
"""

from __future__ import annotations

import math
import unicodedata
import zlib  # noqa: F401 - the doctest of table_crc32 compares with it

import msgpack

from . import _dtypes, _registry
from ._errors import FormatError, IntegrityError
from ._paths import HEADER_KEY, check_name, check_path
from ._registry import MULTI
from ._versions import FORMAT_ID, parse_version

try:  # the same function as zlib's crc32, faster (see _io)
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - platforms without an isal wheel
    from zlib import crc32

# Reader limits on the header document (spec 9.3). Module variables, so that tests can lower them.
MAX_DOC_BYTES = 64 * 1024 * 1024
MAX_DOC_VALUES = 8_000_000       # map keys + map values + array items, summed over the document
MAX_DOC_CONTAINERS = 2_000_000   # maps + arrays
MAX_DEPTH = 32
MAX_RANK = 64
MAX_ELEMENTS = 2 ** 53           # product of a shape's non-zero dimensions

# The header document's record of the container's tensor table (spec 3.6): a crc32 of its
# canonical form, required in files of this version and later.
TABLE_FIELD = "table_crc32"
TABLE_SINCE = (1, 2)

LEARNING_RATE_KINDS = {"constant": {"value": (int, float)},
                       "schedule": {"class_name": str, "config": dict},
                       "callable": {"repr": str}}


def _fail(msg, code, **kw):
    raise FormatError(msg, code=code, **kw)


# ----------------------------------------------------------------------------- decoding

class _Budget:
    """msgpack hooks: count what the document builds and refuse forbidden forms as they come."""

    __slots__ = ("values", "containers")

    def __init__(self):
        self.values = 0
        self.containers = 0

    def _spend(self, n):
        self.values += n
        self.containers += 1
        if self.values > MAX_DOC_VALUES:
            _fail(f"the header document holds more than {MAX_DOC_VALUES} values (map keys, map "
                  "values and array items); a reader refuses it before it fills memory.",
                  "E_LIMIT")
        if self.containers > MAX_DOC_CONTAINERS:
            _fail(f"the header document holds more than {MAX_DOC_CONTAINERS} maps and arrays; a "
                  "reader refuses it before it fills memory.", "E_LIMIT")

    def pairs(self, pairs):
        self._spend(2 * len(pairs))
        for k, _ in pairs:
            if type(k) is not str:
                _fail(f"a header document map has the key {_short(k)} of type "
                      f"{type(k).__name__}; map keys MUST be msgpack str (spec 4).",
                      "E_HEADER_FORM")
        out = dict(pairs)
        if len(out) != len(pairs):
            seen = set()
            dup = next(k for k, _ in pairs if k in seen or seen.add(k))
            _fail(f"a header document map repeats the key {dup!r}; each key MUST appear once "
                  "(spec 4). The file was not written by a conforming producer.",
                  "E_HEADER_FORM")
        return out

    def items(self, items):
        self._spend(len(items))
        return items


def _refuse_ext(code, data):
    _fail(f"the header document uses msgpack extension type {code}; extension types MUST NOT "
          "be used (spec 4).", "E_HEADER_FORM")


def _short(value, n=60):
    text = repr(value)
    return text if len(text) <= n else text[:n] + "..."


_DATA = (type(None), bool, int, float, str)


def _check_forms(doc):
    """Depth (MAX_DEPTH) and types: only nil, bool, int, float, str, array and map."""
    stack = [(doc, 1)]
    while stack:
        obj, depth = stack.pop()
        if depth > MAX_DEPTH:
            _fail(f"the header document nests deeper than {MAX_DEPTH} levels.", "E_LIMIT")
        for v in (obj.values() if type(obj) is dict else obj):
            t = type(v)
            if t is dict or t is list:
                stack.append((v, depth + 1))
            elif t not in _DATA:
                what = "bin (bytes)" if t is bytes else f"{t.__name__} (an extension type)"
                _fail(f"the header document holds a {what} value {_short(v)}; only nil, bool, "
                      "int, float, str, array and map are allowed (spec 4).", "E_HEADER_FORM")


def decode(raw) -> dict:
    """Decode a header document's bytes, refusing forbidden forms and oversized documents.

    Memory stays proportional to the document: values and containers are counted while
    msgpack builds them, and decoding stops at the first one over the limit.

    >>> decode(msgpack.packb({"step": 1}))
    {'step': 1}
    >>> decode(b"\\x82\\xa1a\\x01\\xa1a\\x02")
    Traceback (most recent call last):
    ...
    optstate_format._errors.FormatError: E_HEADER_FORM: a header document map repeats the key 'a'; each key MUST appear once (spec 4). The file was not written by a conforming producer.
    """
    if len(raw) > MAX_DOC_BYTES:
        _fail(f"header document is {len(raw)} bytes; the limit is {MAX_DOC_BYTES}.", "E_LIMIT")
    budget = _Budget()
    n = max(len(raw), 1)
    try:
        doc = msgpack.unpackb(
            raw, raw=False, use_list=True, strict_map_key=False, ext_hook=_refuse_ext,
            object_pairs_hook=budget.pairs, list_hook=budget.items,
            max_str_len=n, max_bin_len=n, max_ext_len=n,
            max_array_len=MAX_DOC_VALUES, max_map_len=MAX_DOC_VALUES)
    except FormatError:
        raise
    except msgpack.StackError:
        _fail(f"the header document nests deeper than {MAX_DEPTH} levels.", "E_LIMIT")
    except msgpack.ExtraData:
        _fail("the header document is followed by extra bytes inside its tensor; it MUST be "
              "exactly one msgpack map (spec 4).", "E_HEADER_FORM")
    except ValueError as e:
        if "exceeds max_array_len" in str(e) or "exceeds max_map_len" in str(e):
            _fail(f"the header document declares an array or map of more than {MAX_DOC_VALUES} "
                  "values; a reader refuses it before it fills memory.", "E_LIMIT")
        _fail(f"header document is not valid msgpack ({type(e).__name__}: "
              f"{str(e)[:100] or 'undecodable bytes'}).", "E_HEADER_DECODE")
    except Exception as e:  # msgpack raises several unrelated types on bad input
        _fail(f"header document is not valid msgpack ({type(e).__name__}: "
              f"{str(e)[:100] or 'undecodable bytes'}).", "E_HEADER_DECODE")
    if type(doc) is not dict:
        _fail(f"header document must be a map, got {type(doc).__name__}.", "E_SCHEMA")
    _check_forms(doc)
    return doc


# ----------------------------------------------------------------------------- validation

def shape_problem(shape):
    """``(code, why)`` when ``shape`` is not a valid shape, else None (spec 4.2, 9.3)."""
    if type(shape) is not list and type(shape) is not tuple:
        return "E_SCHEMA", f"a shape is an array of integers, got {type(shape).__name__}"
    if len(shape) > MAX_RANK:
        return "E_LIMIT", f"rank {len(shape)} is over the limit of {MAX_RANK}"
    if not all(type(d) is int and d >= 0 for d in shape):
        return "E_SCHEMA", f"shape {_short(list(shape))} holds something other than integers >= 0"
    if math.prod(d for d in shape if d) > MAX_ELEMENTS:
        return "E_LIMIT", (f"shape {_short(list(shape))} has more than 2^53 elements (counting "
                           "non-zero dimensions)")
    return None


def table_crc32(tensors) -> int:
    """The crc32 of the canonical form of a container's tensor table (spec 3.6).

    ``tensors`` maps tensor keys to tuples starting ``(dtype name, shape)``. The form holds
    one line per tensor other than ``optstate:header``, in ascending order of the key's UTF-8
    bytes: the key, a 0x00 byte, the dtype code, a 0x00 byte, the shape's dimensions in
    decimal joined by ``,`` (nothing for a scalar), a 0x0A byte. Offsets are not in it (a
    tool may lay the tensors out again; their checksums still say which bytes are whose).

    >>> table_crc32({"global:iterations": ("int64", ()),
    ...              "slot:dense/kernel:momentum": ("float32", (2, 2))}) == zlib.crc32(
    ...     b"global:iterations\\0I64\\0\\nslot:dense/kernel:momentum\\0F32\\0002,2\\n")
    True
    """
    codes = {name: code for name, (code, _, _) in _dtypes.DTYPES.items()}
    shapes, lines, crc = {}, [], 0
    for key in sorted(k for k in tensors if k != HEADER_KEY):  # code points: UTF-8 order
        name, shape = tensors[key][:2]
        shape = tuple(shape)
        text = shapes.get(shape)
        if text is None:
            text = shapes[shape] = ",".join(map(str, shape))
        lines.append(f"{key}\0{codes.get(name, name)}\0{text}\n")
        if len(lines) >= 4096:
            crc = crc32("".join(lines).encode("utf-8", "surrogatepass"), crc)
            lines = []
    return crc32("".join(lines).encode("utf-8", "surrogatepass"), crc)


def _check_table_crc(doc, tensors, version):
    """``table_crc32``: its type, required from TABLE_SINCE, equal to the table's (3.6)."""
    value = _opt(doc, TABLE_FIELD, int, "header")
    if value is None:
        if tuple(version) >= TABLE_SINCE:
            _fail(f"header lacks the field {TABLE_FIELD!r}, required in files of version "
                  f"{TABLE_SINCE[0]}.{TABLE_SINCE[1]} and later (spec 3.6).", "E_SCHEMA")
        return
    if not 0 <= value < 2 ** 32:
        _fail(f"header.{TABLE_FIELD} is {value}; a crc32 is 0 .. 2^32-1.", "E_SCHEMA")
    got = table_crc32(tensors)
    if got != value:
        raise IntegrityError(
            f"the container's tensor table (keys, dtypes, shapes) has crc32 {got:08x} but the "
            f"header document recorded {value:08x}: a tensor's dtype or shape was changed in "
            "the container header after the file was written (or a tensor renamed). Its bytes "
            "would be read as something they are not; restore the file from a copy.",
            code="E_TABLE_CHECKSUM")


def _req(doc, field, types, where):
    if field not in doc:
        _fail(f"{where} lacks the required field {field!r}.", "E_SCHEMA")
    return _typed(doc[field], types, f"{where}.{field}")


def _opt(doc, field, types, where):
    return _typed(doc[field], types, f"{where}.{field}") if field in doc else None


def _typed(val, types, where):
    types = types if isinstance(types, tuple) else (types,)
    if type(val) not in types:
        names = " or ".join("nil" if t is type(None) else t.__name__ for t in types)
        _fail(f"{where} is {type(val).__name__} {_short(val)}; expected {names}.", "E_SCHEMA")
    return val


def _str_map(val, where):
    _typed(val, dict, where)
    for k, v in val.items():
        if type(v) is not str:
            _fail(f"{where}.{k} is {type(v).__name__} {_short(v)}; {where} maps strings to "
                  "strings.", "E_SCHEMA")
    return val


def _learning_rate(lr, where):
    _typed(lr, dict, where)
    if not lr:
        return  # {}: not recorded (spec 4.1)
    kind = lr.get("kind")
    if type(kind) is not str or kind not in LEARNING_RATE_KINDS:
        _fail(f"{where}.kind is {_short(kind)}; expected one of "
              f"{sorted(LEARNING_RATE_KINDS)} (spec 4.1), or an empty map.", "E_SCHEMA")
    for field, types in LEARNING_RATE_KINDS[kind].items():
        _req(lr, field, types, where)


def _optimizer_fields(opt, where, *, top):
    algorithm = _req(opt, "algorithm", str, where)
    if not algorithm:
        _fail(f"{where}.algorithm is empty.", "E_SCHEMA")
    _req(opt, "class_name", str, where)
    _opt(opt, "module", str, where)
    _opt(opt, "hyperparameters", dict, where)
    if "learning_rate" in opt:
        _learning_rate(opt["learning_rate"], f"{where}.learning_rate")
    if not top:
        if algorithm == MULTI:
            _fail(f"{where}.algorithm: a component cannot itself be {MULTI!r}.", "E_SCHEMA")
        return algorithm
    for i, wrap in enumerate(_opt(opt, "wrappers", list, where) or []):
        _typed(wrap, dict, f"{where}.wrappers[{i}]")
        _req(wrap, "class_name", str, f"{where}.wrappers[{i}]")
        _opt(wrap, "config", dict, f"{where}.wrappers[{i}]")
    return algorithm


def _first_ref(doc, key):
    for name, k in doc["globals"].items():
        if k == key:
            return f"global {name!r}"
    for i, w in enumerate(doc["weights"]):  # the first naming comes before the repeat,
        slots = w.get("slots") if type(w) is dict else None  # among entries already checked
        for sname, k in (slots.items() if type(slots) is dict else ()):
            if k == key:
                return f"weights[{i}].slots.{sname}"
        if type(w) is dict and w.get("value") == key:
            return f"weights[{i}].value"
    return "another reference"  # pragma: no cover - validate() found one


def validate(doc, tensors, version) -> None:
    """Check a header document against spec sections 4, 5, 7.2; raise on the first problem.

    ``tensors`` maps each tensor key of the container (``optstate:header`` may be among
    them) to a tuple that starts ``(dtype name, shape, ...)``; ``version`` is the ``(major, minor)`` of the
    container metadata. Raises :class:`FormatError` with the rule's code.

    >>> validate({"format": "optstate"}, {}, (1, 0))
    Traceback (most recent call last):
    ...
    optstate_format._errors.FormatError: E_SCHEMA: header lacks the required field 'version'.
    """
    _typed(doc, dict, "header")
    if _req(doc, "format", str, "header") != FORMAT_ID:
        _fail(f"header format field is {doc['format']!r}; it MUST be {FORMAT_ID!r}, as the "
              "container metadata says.", "E_SCHEMA")
    if parse_version(_req(doc, "version", str, "header")) != tuple(version):
        _fail(f"header version field {doc['version']!r} disagrees with the container metadata "
              f"({version[0]}.{version[1]}).", "E_SCHEMA")
    producer = _str_map(_req(doc, "producer", dict, "header"), "header.producer")
    for field in ("library", "library_version"):
        _req(producer, field, str, "header.producer")
    opt = _req(doc, "optimizer", dict, "header")
    algorithm = _optimizer_fields(opt, "optimizer", top=True)
    components = _opt(opt, "components", list, "optimizer")
    if (components is not None) != (algorithm == MULTI) or components == []:
        _fail(f"optimizer.components must be a non-empty array exactly when the algorithm is "
              f"{MULTI!r}.", "E_SCHEMA")
    comp_algorithms = []
    for i, comp in enumerate(components or []):
        _typed(comp, dict, f"optimizer.components[{i}]")
        comp_algorithms.append(_optimizer_fields(comp, f"optimizer.components[{i}]", top=False))
    step = _req(doc, "step", int, "header")
    if step < 0:
        _fail(f"step is {step}; it MUST be >= 0.", "E_SCHEMA")
    globals_ = _req(doc, "globals", dict, "header")
    weights = _req(doc, "weights", list, "header")
    if _req(doc, "checksum", str, "header") != "crc32":
        _fail(f"checksum algorithm {doc['checksum']!r} is not supported (expected 'crc32').",
              "E_SCHEMA")
    checksums = _req(doc, "checksums", dict, "header")
    if "metadata" in doc:
        _str_map(doc["metadata"], "header.metadata")
    _check_table_crc(doc, tensors, version)

    referenced = set()  # where a key was named is looked up again only to report a repeat

    def ref(key, where, path=None):
        if type(key) is not str:
            _fail(f"{where}: a tensor key is a string, got {type(key).__name__} {_short(key)}.",
                  "E_SCHEMA", path=path)
        if key not in tensors or key == HEADER_KEY:
            _fail(f"{where} refers to tensor {key!r}, which the file does not contain.",
                  "E_DANGLING_KEY", key=key)
        if key in referenced:
            _fail(f"{where} refers to tensor {key!r}, already named by {_first_ref(doc, key)}; "
                  "each tensor is named once (spec 4.3).", "E_DUPLICATE_KEY", key=key)
        referenced.add(key)
        return tensors[key]

    for name, key in globals_.items():
        check_name(name, "global")
        ref(key, "global " + repr(name))
    seen = {}
    for i, w in enumerate(weights):
        where = f"weights[{i}]"
        _typed(w, dict, where)
        path = _req(w, "path", str, where)
        check_path(path)
        nfc = unicodedata.normalize("NFC", path)
        if nfc in seen:
            other = seen[nfc]
            how = ("appears twice" if other == path else
                   f"and {other!r} are the same path after Unicode NFC normalization")
            _fail(f"the canonical path {path!r} {how} in the weight table; paths MUST be "
                  "unique (spec 5.1).", "E_DUPLICATE_PATH", path=path)
        seen[nfc] = path
        shape = _req(w, "shape", list, where)
        problem = shape_problem(shape)
        if problem:
            _fail(f"{where}.shape: {problem[1]}.", problem[0], path=path)
        dtype = _req(w, "dtype", str, where)
        if dtype not in _dtypes.DTYPES:
            _fail(f"weight dtype {dtype!r} is not in the dtype table of section 6; expected one "
                  f"of {sorted(_dtypes.DTYPES)}.", "E_DTYPE", path=path)
        _req(w, "trainable", bool, where)
        hints = _req(w, "hints", dict, where)
        for hk in ("structural", "structural_in", "name"):
            _opt(hints, hk, (str, type(None)), f"{where}.hints")
        for hk in ("layer_class", "weight_name"):
            _opt(hints, hk, str, f"{where}.hints")
        slots = _req(w, "slots", dict, where)
        alg = algorithm
        if components is not None:
            comp = _req(w, "component", int, where)
            if not 0 <= comp < len(components):
                _fail(f"{where}.component {comp} is not one of the {len(components)} "
                      "components.", "E_SCHEMA", path=path)
            alg = comp_algorithms[comp]
        elif "component" in w:
            _fail(f"{where}.component is only allowed when the algorithm is {MULTI!r}.",
                  "E_SCHEMA", path=path)
        for sname, key in slots.items():
            check_name(sname, "slot")
            sshape = ref(key, f"{where}.slots.{sname}", path)[1]
            rule = _registry.slot_rule(alg, sname)
            expected = _registry.slot_shape(rule, shape)
            if expected is not None and tuple(sshape) != tuple(expected):
                _fail(f"slot {sname!r} has shape {list(sshape)} but the registry rule "
                      f"'{rule}' requires {list(expected)} for weight shape {shape}.",
                      "E_SLOT_SHAPE", path=path)
        vkey = _opt(w, "value", (str, type(None)), where)
        if vkey is not None:
            vname, vshape = ref(vkey, f"{where}.value", path)[:2]
            if list(vshape) != shape or vname != dtype:
                _fail(f"weight value is {vname}{list(vshape)}, expected {dtype}{shape} as its "
                      "entry says.", "E_VALUE_SHAPE", path=path)
    for key in tensors:
        if key != HEADER_KEY and key not in referenced:
            _fail(f"tensor {key!r} is not referenced by the header document.",
                  "E_UNREFERENCED", key=key)
    for key in referenced:
        value = checksums.get(key)
        if type(value) is not int or not 0 <= value < 2 ** 32:
            _fail(f"tensor {key!r} has no crc32 (an integer 0 .. 2^32-1) in the checksum table; "
                  f"got {_short(value)}.", "E_SCHEMA", key=key)
    if len(checksums) != len(referenced):
        extra = sorted(k for k in checksums if k not in referenced)[:3]
        _fail(f"the checksum table names tensors the file does not hold: {extra}.", "E_SCHEMA")
