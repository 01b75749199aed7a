"""Mutation-strength tests of the header document (optstate_format/_header.py).

Each test names the exact error class and code (spec section 11) a rule of sections 3.6, 4, 5
and 9.3 produces, at the boundary of the rule, so that an off-by-one, a dropped check or a
swapped condition in the validation fails here. The documents are built by hand and checked
with ``_header.validate`` / ``_header.decode`` directly (no file I/O: these run in
milliseconds, so mutation testing reaches them first).
"""

import copy
import zlib

import msgpack
import pytest

import optstate_format as osf
from optstate_format import _header
from optstate_format._errors import FormatError, IntegrityError

HEADER = "optstate:header"


def _tensors():
    return {
        HEADER: ("uint8", (900,)),
        "global:iterations": ("int64", ()),
        "slot:a/k:m": ("float32", (2, 3)),
        "slot:a/k:v": ("float32", (2, 3)),
        "slot:b/k:m": ("float32", (4,)),
        "slot:b/k:v": ("float32", (4,)),
        "value:b/k": ("float32", (4,)),
    }


def _doc(tensors=None):
    tensors = tensors or _tensors()
    doc = {
        "format": "optstate", "version": "1.2",
        "producer": {"library": "x", "library_version": "1"},
        "optimizer": {"algorithm": "adam", "class_name": "Adam", "module": "m",
                      "hyperparameters": {"beta_1": 0.9},
                      "learning_rate": {"kind": "constant", "value": 0.001},
                      "wrappers": [{"class_name": "LossScale", "config": {}}]},
        "step": 3,
        "globals": {"iterations": "global:iterations"},
        "weights": [
            {"path": "a/k", "shape": [2, 3], "dtype": "float32", "trainable": True,
             "hints": {"structural": None, "name": "k"},
             "slots": {"m": "slot:a/k:m", "v": "slot:a/k:v"}, "value": None},
            {"path": "b/k", "shape": [4], "dtype": "float32", "trainable": False,
             "hints": {}, "slots": {"m": "slot:b/k:m", "v": "slot:b/k:v"},
             "value": "value:b/k"},
        ],
        "checksum": "crc32",
        "checksums": {k: 7 for k in tensors if k != HEADER},
        "metadata": {"run": "1"},
    }
    doc["table_crc32"] = _header.table_crc32(tensors)
    return doc


def _validate(doc, tensors=None, version=(1, 2), *, fresh_crc=True):
    tensors = _tensors() if tensors is None else tensors
    if fresh_crc and "table_crc32" in doc:
        doc["table_crc32"] = _header.table_crc32(tensors)
    _header.validate(doc, tensors, version)


def _code(doc, tensors=None, version=(1, 2), *, fresh_crc=True, cls=FormatError):
    with pytest.raises(cls) as e:
        _validate(doc, tensors, version, fresh_crc=fresh_crc)
    assert type(e.value) is cls
    return e.value


def test_the_base_document_is_valid():
    _validate(_doc())


def _edit(fn):
    doc = _doc()
    fn(doc)
    return doc


def _w(i, field, value):
    def fn(doc):
        doc["weights"][i][field] = value
    return fn


def _set(field, value, *under):
    def fn(doc):
        obj = doc
        for k in under:
            obj = obj[k]
        obj[field] = value
    return fn


def _del(field, *under):
    def fn(doc):
        obj = doc
        for k in under:
            obj = obj[k]
        del obj[field]
    return fn


# (edit, exact code): each breaks one rule of sections 4, 5 or 7.2 and nothing else.
SCHEMA_BREAKS = {
    "format_missing": _del("format"),
    "format_other": _set("format", "optstat"),
    "format_int": _set("format", 1),
    "version_missing": _del("version"),
    "version_other": _set("version", "1.1"),
    "version_int": _set("version", 12),
    "producer_missing": _del("producer"),
    "producer_list": _set("producer", ["x"]),
    "producer_value_int": _set("extra", 1, "producer"),
    "producer_no_library": _del("library", "producer"),
    "producer_no_library_version": _del("library_version", "producer"),
    "producer_library_version_int": _set("library_version", 1, "producer"),
    "optimizer_missing": _del("optimizer"),
    "optimizer_list": _set("optimizer", []),
    "algorithm_missing": _del("algorithm", "optimizer"),
    "algorithm_empty": _set("algorithm", "", "optimizer"),
    "algorithm_int": _set("algorithm", 1, "optimizer"),
    "class_name_missing": _del("class_name", "optimizer"),
    "class_name_int": _set("class_name", 1, "optimizer"),
    "module_int": _set("module", 1, "optimizer"),
    "module_nil": _set("module", None, "optimizer"),
    "hyperparameters_list": _set("hyperparameters", [], "optimizer"),
    "lr_list": _set("learning_rate", [], "optimizer"),
    "lr_kind_missing": _set("learning_rate", {"value": 1}, "optimizer"),
    "lr_kind_int": _set("learning_rate", {"kind": 1, "value": 1}, "optimizer"),
    "lr_kind_other": _set("learning_rate", {"kind": "fixed", "value": 1}, "optimizer"),
    "lr_constant_bool": _set("learning_rate", {"kind": "constant", "value": True}, "optimizer"),
    "lr_constant_str": _set("learning_rate", {"kind": "constant", "value": "1"}, "optimizer"),
    "lr_constant_no_value": _set("learning_rate", {"kind": "constant"}, "optimizer"),
    "lr_schedule_config_list": _set("learning_rate", {"kind": "schedule", "class_name": "E",
                                                      "config": []}, "optimizer"),
    "lr_schedule_no_class": _set("learning_rate", {"kind": "schedule", "config": {}},
                                 "optimizer"),
    "lr_callable_repr_int": _set("learning_rate", {"kind": "callable", "repr": 1}, "optimizer"),
    "wrappers_map": _set("wrappers", {}, "optimizer"),
    "wrapper_str": _set("wrappers", ["LossScale"], "optimizer"),
    "wrapper_no_class": _set("wrappers", [{"config": {}}], "optimizer"),
    "wrapper_class_int": _set("wrappers", [{"class_name": 1}], "optimizer"),
    "wrapper_config_list": _set("wrappers", [{"class_name": "L", "config": []}], "optimizer"),
    "second_wrapper_bad": _set("wrappers", [{"class_name": "L"}, {"class_name": 2}],
                               "optimizer"),
    "components_without_multi": _set("components", [{"algorithm": "sgd", "class_name": "S"}],
                                     "optimizer"),
    "step_missing": _del("step"),
    "step_negative": _set("step", -1),
    "step_bool": _set("step", True),
    "step_float": _set("step", 1.0),
    "globals_missing": _del("globals"),
    "globals_list": _set("globals", []),
    "global_name_bad": lambda d: d["globals"].__setitem__("it s", d["globals"].pop(
        "iterations")),
    "global_key_int": _set("iterations", 5, "globals"),
    "weights_missing": _del("weights"),
    "weights_map": _set("weights", {}),
    "weight_not_map": lambda d: d["weights"].append("a/x"),
    "weight_no_path": lambda d: d["weights"][0].pop("path"),
    "weight_path_int": _w(0, "path", 5),
    "shape_missing": lambda d: d["weights"][0].pop("shape"),
    "shape_str": _w(0, "shape", "2,3"),
    "shape_negative": _w(0, "shape", [-2, 3]),
    "shape_bool": _w(0, "shape", [True, 3]),
    "shape_float": _w(0, "shape", [2.0, 3]),
    "dtype_missing": lambda d: d["weights"][0].pop("dtype"),
    "dtype_int": _w(0, "dtype", 1),
    "trainable_missing": lambda d: d["weights"][0].pop("trainable"),
    "trainable_int": _w(0, "trainable", 1),
    "hints_missing": lambda d: d["weights"][0].pop("hints"),
    "hints_list": _w(0, "hints", []),
    "hint_structural_int": _w(0, "hints", {"structural": 1}),
    "hint_structural_in_int": _w(0, "hints", {"structural_in": 1}),
    "hint_name_int": _w(0, "hints", {"name": 1}),
    "hint_layer_class_nil": _w(0, "hints", {"layer_class": None}),
    "hint_weight_name_int": _w(0, "hints", {"weight_name": 1}),
    "slots_missing": lambda d: d["weights"][0].pop("slots"),
    "slots_list": _w(0, "slots", []),
    "slot_name_bad": _w(0, "slots", {"m m": "slot:a/k:m", "v": "slot:a/k:v"}),
    "slot_key_int": _w(0, "slots", {"m": 1, "v": "slot:a/k:v"}),
    "component_without_multi": _w(0, "component", 0),
    "value_int": _w(1, "value", 1),
    "checksum_missing": _del("checksum"),
    "checksum_other": _set("checksum", "crc32c"),
    "checksums_missing": _del("checksums"),
    "checksums_list": _set("checksums", []),
    "checksum_of_a_tensor_missing": _del("slot:a/k:v", "checksums"),
    "checksum_negative": _set("slot:a/k:v", -1, "checksums"),
    "checksum_2_32": _set("slot:a/k:v", 2 ** 32, "checksums"),
    "checksum_bool": _set("slot:a/k:v", True, "checksums"),
    "checksum_str": _set("slot:a/k:v", "7", "checksums"),
    "checksum_extra": _set("slot:gone:m", 1, "checksums"),
    "metadata_list": _set("metadata", ["a"]),
    "metadata_value_int": _set("a", 1, "metadata"),
    "table_crc_missing": _del("table_crc32"),
}


@pytest.mark.parametrize("name", sorted(SCHEMA_BREAKS))
def test_each_schema_rule_is_refused_with_e_schema(name):
    e = _code(_edit(SCHEMA_BREAKS[name]))
    assert e.code == "E_SCHEMA", (name, e)


OTHER_BREAKS = {
    "path_dotdot": (_w(0, "path", "a/../k"), "E_PATH"),
    "path_empty": (_w(0, "path", ""), "E_PATH"),
    "dtype_unknown": (_w(0, "dtype", "float8_e4m3"), "E_DTYPE"),
    "dtype_code_not_name": (_w(0, "dtype", "F32"), "E_DTYPE"),
    "rank_65": (_w(0, "shape", [1] * 65), "E_LIMIT"),
    "elements_over_2_53": (_w(0, "shape", [2 ** 27, 2 ** 26 + 1]), "E_LIMIT"),
}


@pytest.mark.parametrize("name", sorted(OTHER_BREAKS))
def test_path_dtype_and_limit_rules_have_their_own_codes(name):
    edit, code = OTHER_BREAKS[name]
    e = _code(_edit(edit))
    assert e.code == code
    if code != "E_PATH":
        assert e.path == "a/k"


@pytest.mark.parametrize("doc", [[], "x", None, 1])
def test_a_document_that_is_not_a_map_is_e_schema(doc):
    with pytest.raises(FormatError) as e:
        _header.validate(doc, _tensors(), (1, 2))
    assert e.value.code == "E_SCHEMA"


def test_accepted_forms_at_the_edges():
    """What the rules allow: each must pass (a mutant tightening a rule fails here)."""
    accepted = [
        _set("step", 0),
        _set("learning_rate", {}, "optimizer"),
        _set("learning_rate", {"kind": "constant", "value": 1}, "optimizer"),
        _set("learning_rate", {"kind": "schedule", "class_name": "E", "config": {}},
             "optimizer"),
        _set("learning_rate", {"kind": "callable", "repr": "<f>"}, "optimizer"),
        _del("learning_rate", "optimizer"),
        _del("module", "optimizer"),
        _del("hyperparameters", "optimizer"),
        _del("wrappers", "optimizer"),
        _set("wrappers", [{"class_name": "L"}], "optimizer"),
        _del("metadata"),
        _set("metadata", {}),
        _w(0, "hints", {"structural": "g:1", "structural_in": None, "name": None,
                        "layer_class": "Dense", "weight_name": "kernel"}),
        _w(0, "value", None),
        lambda d: d["weights"][0].pop("value"),
        _set("slot:a/k:v", 0, "checksums"),
        _set("slot:a/k:v", 2 ** 32 - 1, "checksums"),
    ]
    for edit in accepted:
        _validate(_edit(edit))


def test_shape_problem_bounds():
    sp = _header.shape_problem
    assert sp([]) is None and sp(()) is None and sp([0]) is None
    assert sp([1] * 64) is None
    assert sp([1] * 65)[0] == "E_LIMIT"
    assert sp([2 ** 53]) is None and sp([2 ** 26, 2 ** 27]) is None
    assert sp([2 ** 53 + 1])[0] == "E_LIMIT"
    assert sp([0, 2 ** 53 + 1])[0] == "E_LIMIT"   # zero dimensions do not hide the others
    assert sp([0, 2 ** 53, 0]) is None
    assert sp([-1])[0] == "E_SCHEMA" and sp([1, -1])[0] == "E_SCHEMA"
    assert sp([True])[0] == "E_SCHEMA" and sp([1.0])[0] == "E_SCHEMA"
    assert sp("ab")[0] == "E_SCHEMA" and sp({"a": 1})[0] == "E_SCHEMA" and sp(3)[0] == "E_SCHEMA"
    assert sp(None)[0] == "E_SCHEMA"


def test_limits_are_module_variables_read_at_call_time(monkeypatch):
    monkeypatch.setattr(_header, "MAX_RANK", 2)
    assert _header.shape_problem([1, 1]) is None and _header.shape_problem([1, 1, 1])[0] == "E_LIMIT"
    monkeypatch.setattr(_header, "MAX_ELEMENTS", 6)
    assert _header.shape_problem([2, 3]) is None and _header.shape_problem([7])[0] == "E_LIMIT"


# ------------------------------------------------------------------------- table_crc32

def _form(tensors):
    codes = {name: code for name, (code, _, _) in osf._dtypes.DTYPES.items()}
    lines = []
    for key in sorted(k for k in tensors if k != HEADER):
        name, shape = tensors[key][:2]
        lines.append(key.encode() + b"\0" + codes.get(name, name).encode() + b"\0"
                     + ",".join(str(d) for d in shape).encode() + b"\n")
    return b"".join(lines)


def test_table_crc32_is_the_crc_of_the_canonical_form():
    t = _tensors()
    assert _header.table_crc32(t) == zlib.crc32(_form(t))
    # the header tensor is not in it, order of the mapping does not matter, extra tuple
    # members (offsets) are ignored
    assert _header.table_crc32({k: v for k, v in t.items() if k != HEADER}) == \
        _header.table_crc32(t)
    assert _header.table_crc32(dict(reversed(list(t.items())))) == _header.table_crc32(t)
    assert _header.table_crc32({k: v + (1, 2) for k, v in t.items()}) == _header.table_crc32(t)
    assert _header.table_crc32({}) == 0 == zlib.crc32(b"")
    # one line exactly, byte for byte; an unknown dtype name is written as is
    assert _header.table_crc32({"g:x": ("bfloat16", [3, 0, 1]), "g:y": ("weird", [])}) == \
        zlib.crc32(b"g:x\0BF16\x003,0,1\ng:y\0weird\0\n")


@pytest.mark.parametrize("n", [4095, 4096, 4097, 9000])
def test_table_crc32_of_large_tables_is_computed_in_pieces_but_equal(n):
    t = {f"global:g{i:05d}": ("float32" if i % 3 else "int64", (i % 7, 2) if i % 2 else ())
         for i in range(n)}
    assert _header.table_crc32(t) == zlib.crc32(_form(t))


def test_table_crc32_orders_by_utf8_bytes_and_encodes_non_ascii():
    t = {"global:\u00e9": ("float32", ()), "global:z": ("float32", ()),
         "global:\U0001f600": ("int32", (1,)), "global:\uffff": ("int8", ())}
    form = b"".join(k.encode() + b"\0" + c + b"\0" + s + b"\n" for k, c, s in sorted([
        ("global:\u00e9", b"F32", b""), ("global:z", b"F32", b""),
        ("global:\U0001f600", b"I32", b"1"), ("global:\uffff", b"I8", b"")],
        key=lambda x: x[0].encode()))
    assert _header.table_crc32(t) == zlib.crc32(form)


def test_table_crc_field_rules():
    # required from 1.2 on (and in any later minor version)
    for version, text in (((1, 2), "1.2"), ((1, 3), "1.3")):
        doc = _doc()
        doc["version"] = text
        del doc["table_crc32"]
        assert _code(doc, version=version).code == "E_SCHEMA"
    # optional before 1.2
    for version, text in (((1, 0), "1.0"), ((1, 1), "1.1")):
        doc = _doc()
        doc["version"] = text
        del doc["table_crc32"]
        _validate(doc, version=version)
    # a range and a type
    for bad in (-1, 2 ** 32, True, 1.0, None, "1"):
        doc = _doc()
        doc["table_crc32"] = bad
        assert _code(doc, fresh_crc=False).code == "E_SCHEMA", bad
    # a value of the right form that disagrees with the table
    right = _header.table_crc32(_tensors())
    for wrong in ({0, 2 ** 32 - 1, right ^ 1, right + 1} - {right}):
        doc = _doc()
        doc["table_crc32"] = wrong
        e = _code(doc, fresh_crc=False, cls=IntegrityError)
        assert e.code == "E_TABLE_CHECKSUM"
    # in an older version, a present field is still checked
    doc = _doc()
    doc["version"] = "1.1"
    doc["table_crc32"] = right ^ 1
    assert _code(doc, version=(1, 1), fresh_crc=False, cls=IntegrityError).code == \
        "E_TABLE_CHECKSUM"


def test_a_changed_shape_or_dtype_in_the_table_fails_the_table_crc():
    doc = _doc()
    for key, entry in (("slot:a/k:m", ("float32", (3, 2))), ("slot:a/k:m", ("float16", (2, 3))),
                       ("global:iterations", ("int32", ()))):
        t = _tensors()
        t[key] = entry
        assert _code(copy.deepcopy(doc), t, fresh_crc=False,
                     cls=IntegrityError).code == "E_TABLE_CHECKSUM"


def test_the_table_crc_is_checked_before_the_references():
    # a document whose references are broken and whose table crc32 is wrong: 3.6 comes first
    doc = _doc()
    doc["globals"]["iterations"] = "global:gone"
    doc["table_crc32"] ^= 1
    assert _code(doc, fresh_crc=False, cls=IntegrityError).code == "E_TABLE_CHECKSUM"


# ------------------------------------------------------------------------- references

def test_a_reference_to_a_missing_tensor_or_to_the_header_is_dangling():
    for key in ("global:gone", HEADER):
        doc = _doc()
        doc["globals"]["iterations"] = key
        e = _code(doc)
        assert (e.code, e.key) == ("E_DANGLING_KEY", key)
    doc = _doc()
    doc["weights"][1]["value"] = "value:gone"
    e = _code(doc)
    assert (e.code, e.key) == ("E_DANGLING_KEY", "value:gone")
    doc = _doc()
    doc["weights"][0]["slots"]["m"] = "slot:gone"
    assert _code(doc).code == "E_DANGLING_KEY"


@pytest.mark.parametrize("where", ["global", "slot", "value"])
def test_a_tensor_named_twice_is_a_duplicate_key(where):
    doc = _doc()
    if where == "global":
        doc["globals"]["again"] = "global:iterations"
    elif where == "slot":
        doc["weights"][1]["slots"]["v"] = "slot:a/k:m"
    else:
        doc["weights"][1]["value"] = "slot:b/k:m"
    t = _tensors()
    if where == "value":
        t["slot:b/k:m"] = ("float32", (4,))
    e = _code(doc, t)
    assert e.code == "E_DUPLICATE_KEY"
    assert e.key == {"global": "global:iterations", "slot": "slot:a/k:m",
                     "value": "slot:b/k:m"}[where]


def test_an_unreferenced_tensor_is_refused_but_the_header_tensor_is_not():
    t = _tensors()
    t["global:stray"] = ("int64", ())
    doc = _doc(t)
    e = _code(doc, t)
    assert (e.code, e.key) == ("E_UNREFERENCED", "global:stray")
    # without the header tensor in the table the rest is still valid
    t = _tensors()
    del t[HEADER]
    _validate(_doc(t), t)


def test_dangling_comes_before_unreferenced():
    t = _tensors()
    doc = _doc(t)
    doc["globals"]["iterations"] = "global:gone"   # and global:iterations is now unreferenced
    assert _code(doc, t).code == "E_DANGLING_KEY"


def test_checksum_table_rules_come_after_references():
    doc = _doc()
    doc["checksums"] = {}
    doc["globals"]["iterations"] = "global:gone"
    assert _code(doc).code == "E_DANGLING_KEY"
    t = _tensors()
    t["global:stray"] = ("int64", ())
    doc = _doc(t)
    del doc["checksums"]["slot:a/k:m"]
    assert _code(doc, t).code == "E_UNREFERENCED"


def test_the_checksum_error_names_the_tensor():
    doc = _doc()
    doc["checksums"]["slot:b/k:v"] = -5
    e = _code(doc)
    assert (e.code, e.key) == ("E_SCHEMA", "slot:b/k:v")


# ------------------------------------------------------------------------- weights

def test_duplicate_paths_exact_and_after_nfc():
    t = _tensors()
    doc = _doc(t)
    doc["weights"][1]["path"] = "a/k"
    e = _code(doc)
    assert (e.code, e.path) == ("E_DUPLICATE_PATH", "a/k")
    doc = _doc(t)
    doc["weights"][0]["path"] = "caf\u00e9"
    doc["weights"][1]["path"] = "cafe\u0301"
    e = _code(doc)
    assert (e.code, e.path) == ("E_DUPLICATE_PATH", "cafe\u0301")
    # different paths that are not NFC-equal are fine
    doc = _doc(t)
    doc["weights"][0]["path"] = "caf\u00e9"
    doc["weights"][1]["path"] = "cafe"
    _validate(doc)


def test_slot_shapes_follow_the_registry_rule():
    t = _tensors()
    t["slot:a/k:m"] = ("float32", (3, 2))
    e = _code(_doc(t), t)
    assert (e.code, e.path) == ("E_SLOT_SHAPE", "a/k")
    t = _tensors()
    t["slot:b/k:v"] = ("float32", (4, 1))
    assert _code(_doc(t), t).code == "E_SLOT_SHAPE"
    # a slot the registry does not know ("any"): any shape
    t = _tensors()
    t["slot:a/k:extra"] = ("float32", (7,))
    doc = _doc(t)
    doc["weights"][0]["slots"]["extra"] = "slot:a/k:extra"
    _validate(doc, t)
    # a factored slot (adafactor): rows drop the last dimension
    t = _tensors()
    t["slot:a/k:m"] = ("float32", (2,))
    doc = _doc(t)
    doc["optimizer"]["algorithm"] = "adafactor"
    doc["weights"][0]["slots"] = {"r": "slot:a/k:m", "c": "slot:a/k:v"}
    t["slot:a/k:v"] = ("float32", (3,))
    _validate(doc, t)
    t["slot:a/k:v"] = ("float32", (2,))
    assert _code(doc, t).code == "E_SLOT_SHAPE"


def test_a_value_must_have_its_entrys_shape_and_dtype():
    for entry in (("float32", (5,)), ("float32", (4, 1)), ("float32", ()),
                  ("float16", (4,)), ("float64", (4,))):
        t = _tensors()
        t["value:b/k"] = entry
        e = _code(_doc(t), t)
        assert (e.code, e.path) == ("E_VALUE_SHAPE", "b/k"), entry


def _multi(comp0="sgd", comp1="adam"):
    doc = _doc()
    doc["optimizer"] = {"algorithm": "multi", "class_name": "Multi",
                        "components": [{"algorithm": comp0, "class_name": "A"},
                                       {"algorithm": comp1, "class_name": "B",
                                        "learning_rate": {"kind": "constant", "value": 1.0}}]}
    doc["weights"][0]["component"] = 0
    doc["weights"][1]["component"] = 1
    return doc


def test_multi_optimizer_components():
    _validate(_multi())
    for comp in (-1, 2, 5):
        doc = _multi()
        doc["weights"][1]["component"] = comp
        e = _code(doc)
        assert (e.code, e.path) == ("E_SCHEMA", "b/k"), comp
    for bad in (True, 1.0, "1", None):
        doc = _multi()
        doc["weights"][1]["component"] = bad
        assert _code(doc).code == "E_SCHEMA", bad
    doc = _multi()
    del doc["weights"][0]["component"]
    assert _code(doc).code == "E_SCHEMA"
    doc = _multi()
    doc["optimizer"]["components"] = []
    assert _code(doc).code == "E_SCHEMA"
    doc = _multi()
    del doc["optimizer"]["components"]
    assert _code(doc).code == "E_SCHEMA"
    doc = _multi(comp1="multi")
    assert _code(doc).code == "E_SCHEMA"
    doc = _multi(comp1="")
    assert _code(doc).code == "E_SCHEMA"
    doc = _multi()
    doc["optimizer"]["components"][0] = "sgd"
    assert _code(doc).code == "E_SCHEMA"
    doc = _multi()
    doc["optimizer"]["components"][1]["learning_rate"] = {"kind": "constant"}
    assert _code(doc).code == "E_SCHEMA"
    doc = _multi()
    doc["optimizer"]["components"][1]["class_name"] = 3
    assert _code(doc).code == "E_SCHEMA"


def test_a_components_slots_follow_that_components_algorithm():
    # weight b/k (component 1, adam) has m of the wrong shape: refused; the same slot under
    # component 0 (sgd, where "m" is unknown: any shape) is accepted
    t = _tensors()
    t["slot:b/k:m"] = ("float32", (9,))
    assert _code(_multi(), t).code == "E_SLOT_SHAPE"
    doc = _multi()
    doc["weights"][1]["component"] = 0
    _validate(doc, t)
    # and the other way round: sgd's momentum is shaped like its weight
    t = _tensors()
    t["slot:a/k:m"] = ("float32", (9,))
    doc = _multi()
    doc["weights"][0]["slots"] = {"momentum": "slot:a/k:m", "v": "slot:a/k:v"}
    assert _code(doc, t).code == "E_SLOT_SHAPE"
    doc["weights"][0]["component"] = 1
    _validate(doc, t)


# ------------------------------------------------------------------------- decode

def test_decode_returns_the_document():
    doc = _doc()
    assert _header.decode(msgpack.packb(doc)) == doc
    assert _header.decode(msgpack.packb({"a": [1, [2, {"b": None}], 1.5, True, "s"]})) == \
        {"a": [1, [2, {"b": None}], 1.5, True, "s"]}


def _decode_code(raw):
    with pytest.raises(FormatError) as e:
        _header.decode(raw)
    assert type(e.value) is FormatError
    return e.value.code


def test_decode_forms():
    assert _decode_code(msgpack.packb({1: 2})) == "E_HEADER_FORM"
    assert _decode_code(msgpack.packb({"a": {None: 2}})) == "E_HEADER_FORM"
    assert _decode_code(msgpack.packb({b"a": 2}, use_bin_type=True)) == "E_HEADER_FORM"
    assert _decode_code(msgpack.packb({"a": b"x"}, use_bin_type=True)) == "E_HEADER_FORM"
    assert _decode_code(msgpack.packb({"a": [b"x"]}, use_bin_type=True)) == "E_HEADER_FORM"
    assert _decode_code(msgpack.packb({"a": msgpack.ExtType(1, b"x")})) == "E_HEADER_FORM"
    assert _decode_code(b"\x82\xa1a\x01\xa1a\x02") == "E_HEADER_FORM"
    assert _decode_code(b"\x81\xa1a\x01\xa1b\x02\x02") == "E_HEADER_FORM"  # n over the map
    assert _decode_code(msgpack.packb({"a": 1}) + b"\xc0") == "E_HEADER_FORM"
    assert _decode_code(msgpack.packb([1])) == "E_SCHEMA"
    assert _decode_code(msgpack.packb("x")) == "E_SCHEMA"
    assert _decode_code(b"\xc1") == "E_HEADER_DECODE"
    assert _decode_code(b"\x81\xa1a") == "E_HEADER_DECODE"   # incomplete
    assert _decode_code(b"") == "E_HEADER_DECODE"


def test_decode_size_limit(monkeypatch):
    raw = msgpack.packb({"abc": "defgh"})
    monkeypatch.setattr(_header, "MAX_DOC_BYTES", len(raw))
    assert _header.decode(raw) == {"abc": "defgh"}
    monkeypatch.setattr(_header, "MAX_DOC_BYTES", len(raw) - 1)
    assert _decode_code(raw) == "E_LIMIT"


def test_decode_value_and_container_budgets(monkeypatch):
    # {"a": [1, 2]}: the list spends 2 values, the map 2 (a key and a value); 2 containers
    raw = msgpack.packb({"a": [1, 2]})
    monkeypatch.setattr(_header, "MAX_DOC_VALUES", 4)
    assert _header.decode(raw) == {"a": [1, 2]}
    monkeypatch.setattr(_header, "MAX_DOC_VALUES", 3)
    assert _decode_code(raw) == "E_LIMIT"
    monkeypatch.setattr(_header, "MAX_DOC_VALUES", 100)
    monkeypatch.setattr(_header, "MAX_DOC_CONTAINERS", 2)
    assert _header.decode(raw) == {"a": [1, 2]}
    monkeypatch.setattr(_header, "MAX_DOC_CONTAINERS", 1)
    assert _decode_code(raw) == "E_LIMIT"


def test_decode_array_and_map_lengths_over_the_value_limit(monkeypatch):
    monkeypatch.setattr(_header, "MAX_DOC_VALUES", 3)
    assert _decode_code(msgpack.packb({"a": [1, 2, 3, 4]})) == "E_LIMIT"
    assert _decode_code(msgpack.packb({"a": {"1": 1, "2": 2, "3": 3, "4": 4}})) == "E_LIMIT"


def test_decode_depth_limit(monkeypatch):
    monkeypatch.setattr(_header, "MAX_DEPTH", 3)
    assert _header.decode(msgpack.packb({"a": {"b": {}}})) == {"a": {"b": {}}}
    assert _header.decode(msgpack.packb({"a": [[1]]})) == {"a": [[1]]}
    assert _decode_code(msgpack.packb({"a": {"b": {"c": {}}}})) == "E_LIMIT"
    assert _decode_code(msgpack.packb({"a": [[[]]]})) == "E_LIMIT"
    # the first of two branches deep enough: both are looked at
    assert _decode_code(msgpack.packb({"x": 1, "a": [[[]]], "b": 2})) == "E_LIMIT"


def test_decode_msgpack_stack_overflow_is_a_limit():
    raw = b"\x81\xa1a" * 1 + b"\x91" * 5000 + b"\xc0"
    assert _decode_code(raw) == "E_LIMIT"


def test_a_deep_but_valid_nesting_at_the_real_limit():
    nested = 1
    for _ in range(_header.MAX_DEPTH - 1):
        nested = [nested]
    assert _header.decode(msgpack.packb({"a": nested}))["a"] == nested
    assert _decode_code(msgpack.packb({"a": [nested]})) == "E_LIMIT"


def _repeat(case):
    t = _tensors()
    doc = _doc(t)
    if case == "global":       # named by a global, repeated by a slot
        doc["weights"][1]["slots"]["m"] = "global:iterations"
        return doc, t, "global:iterations", "weights[1].slots.m", "global 'iterations'"
    if case == "slot0":        # by the first weight's slot, repeated by a later value
        doc["weights"][1]["value"] = "slot:a/k:m"
        return doc, t, "slot:a/k:m", "weights[1].value", "weights[0].slots.m"
    if case == "slot1":        # by the second weight's slot, repeated by its value
        doc["weights"][1]["value"] = "slot:b/k:v"
        return doc, t, "slot:b/k:v", "weights[1].value", "weights[1].slots.v"
    # by the first weight's value, repeated by the second's
    t["value:b/k"] = ("float32", (2, 3))
    doc = _doc(t)
    doc["weights"][0]["value"] = "value:b/k"
    return doc, t, "value:b/k", "weights[1].value", "weights[0].value"


@pytest.mark.parametrize("case", ["global", "slot0", "slot1", "value0"])
def test_a_repeated_reference_says_where_the_tensor_was_first_named(case):
    """The message of E_DUPLICATE_KEY points at the first naming (a user fixes the file by it)."""
    doc, t, key, where, named = _repeat(case)
    e = _code(doc, t)
    assert (e.code, e.key) == ("E_DUPLICATE_KEY", key)
    assert e.msg.startswith(f"{where} refers to tensor {key!r}, already named by {named}; ")


def test_an_extension_type_is_named_in_the_refusal():
    with pytest.raises(FormatError) as e:
        _header.decode(msgpack.packb({"a": msgpack.ExtType(5, b"xy")}))
    assert e.value.code == "E_HEADER_FORM" and "extension type 5" in e.value.msg


@pytest.mark.parametrize("n", [58, 59, 100])
def test_long_values_are_cut_to_60_characters_in_messages(n):
    doc = _doc()
    doc["step"] = "y" * n
    e = _code(doc)
    text = repr("y" * n)
    shown = text if len(text) <= 60 else text[:60] + "..."
    assert e.code == "E_SCHEMA" and e.msg == f"header.step is str {shown}; expected int."


def test_decode_messages_name_the_form_and_the_limit(monkeypatch):
    with pytest.raises(FormatError) as e:
        _header.decode(msgpack.packb({"a": [b"xy"]}, use_bin_type=True))
    assert e.value.msg == ("the header document holds a bin (bytes) value b'xy'; only nil, bool, "
                           "int, float, str, array and map are allowed (spec 4).")
    monkeypatch.setattr(_header, "MAX_DEPTH", 2)
    with pytest.raises(FormatError) as e:
        _header.decode(msgpack.packb({"a": [[1]]}))
    assert e.value.msg == "the header document nests deeper than 2 levels."


def test_key_messages_name_the_offending_key():
    with pytest.raises(FormatError) as e:
        _header.decode(msgpack.packb({"ok": {7: 1}}))
    assert e.value.msg == ("a header document map has the key 7 of type int; map keys MUST be "
                           "msgpack str (spec 4).")
    # the repeated key is named, not the first key of the map
    raw = b"\x83\xa1b\x01\xa1a\x02\xa1a\x03"
    with pytest.raises(FormatError) as e:
        _header.decode(raw)
    assert e.value.code == "E_HEADER_FORM" and "repeats the key 'a';" in e.value.msg


def test_budget_messages(monkeypatch):
    raw = msgpack.packb({"a": [1, 2]})
    monkeypatch.setattr(_header, "MAX_DOC_VALUES", 3)
    with pytest.raises(FormatError) as e:
        _header.decode(raw)
    assert e.value.msg == ("the header document holds more than 3 values (map keys, map values "
                           "and array items); a reader refuses it before it fills memory.")
    monkeypatch.setattr(_header, "MAX_DOC_VALUES", 100)
    monkeypatch.setattr(_header, "MAX_DOC_CONTAINERS", 1)
    with pytest.raises(FormatError) as e:
        _header.decode(raw)
    assert e.value.msg == ("the header document holds more than 1 maps and arrays; a reader "
                           "refuses it before it fills memory.")


def test_table_crc32_encodes_lone_surrogates_in_every_piece():
    """A JSON key may hold a lone surrogate (an escape such as \\ud800); the form encodes it
    with surrogatepass, in the first 4096 lines as in the rest."""
    t = {f"global:g{i:05d}": ("int8", ()) for i in range(4100)}
    t["global:a\ud800"] = ("int8", ())
    t["global:z\udfff"] = ("int8", ())
    form = _form_bytes(t)
    assert _header.table_crc32(t) == zlib.crc32(form)


def _form_bytes(tensors):
    codes = {name: code for name, (code, _, _) in osf._dtypes.DTYPES.items()}
    out = []
    for key in sorted(k for k in tensors if k != HEADER):
        name, shape = tensors[key][:2]
        out.append(f"{key}\0{codes.get(name, name)}\0{','.join(map(str, shape))}\n")
    return "".join(out).encode("utf-8", "surrogatepass")


def test_shape_problem_messages():
    sp = _header.shape_problem
    assert sp("ab") == ("E_SCHEMA", "a shape is an array of integers, got str")
    assert sp([1.5, 2]) == ("E_SCHEMA", "shape [1.5, 2] holds something other than integers >= 0")
    assert sp((2 ** 54,)) == ("E_LIMIT", f"shape [{2 ** 54}] has more than 2^53 elements "
                              "(counting non-zero dimensions)")
    assert sp([1] * 65) == ("E_LIMIT", "rank 65 is over the limit of 64")


@pytest.mark.parametrize("edit,msg", [
    (_set("learning_rate", [], "optimizer"), "optimizer.learning_rate is list []; expected dict."),
    (_set("learning_rate", {"kind": "x" * 70}, "optimizer"),
     f"optimizer.learning_rate.kind is {repr('x' * 70)[:60]}...; expected one of ['callable', "
     "'constant', 'schedule'] (spec 4.1), or an empty map."),
    (_set("learning_rate", {"kind": "constant"}, "optimizer"),
     "optimizer.learning_rate lacks the required field 'value'."),
    (_set("algorithm", 3, "optimizer"), "optimizer.algorithm is int 3; expected str."),
    (_set("algorithm", "", "optimizer"), "optimizer.algorithm is empty."),
    (_set("module", 3, "optimizer"), "optimizer.module is int 3; expected str."),
    (_set("table_crc32", "1"), "header.table_crc32 is str '1'; expected int."),
    (_set("table_crc32", -1), "header.table_crc32 is -1; a crc32 is 0 .. 2^32-1."),
    (_del("table_crc32"), "header lacks the field 'table_crc32', required in files of version "
                          "1.2 and later (spec 3.6)."),
])
def test_schema_messages_name_the_field(edit, msg):
    e = _code(_edit(edit), fresh_crc=False)
    assert e.msg == msg


def test_the_table_checksum_message_gives_both_crcs():
    doc = _doc()
    right = doc["table_crc32"]
    doc["table_crc32"] = 0x1234
    e = _code(doc, fresh_crc=False, cls=IntegrityError)
    assert e.msg == (f"the container's tensor table (keys, dtypes, shapes) has crc32 {right:08x} "
                     "but the header document recorded 00001234: a tensor's dtype or shape was "
                     "changed in the container header after the file was written (or a tensor "
                     "renamed). Its bytes would be read as something they are not; restore the "
                     "file from a copy.")


def test_decode_error_messages():
    def msg(raw):
        with pytest.raises(FormatError) as e:
            _header.decode(raw)
        return e.value.msg
    assert msg(msgpack.packb({"a": 1}) + b"\x01") == (
        "the header document is followed by extra bytes inside its tensor; it MUST be exactly "
        "one msgpack map (spec 4).")
    assert msg(msgpack.packb([1])) == "header document must be a map, got list."
    # msgpack's own FormatError has no text: the message says so
    assert msg(b"\xc1") == "header document is not valid msgpack (FormatError: undecodable bytes)."
    assert msg(b"\x81\xa1a") == ("header document is not valid msgpack (ValueError: Unpack "
                                  "failed: incomplete input).")


@pytest.mark.parametrize("name", sorted(SCHEMA_BREAKS))
def test_each_schema_message_names_the_field_as_written(name):
    """Messages name the field by its place in the document (``header.step``,
    ``optimizer.wrappers[0]``, ``weights[0].hints``), never a placeholder."""
    e = _code(_edit(SCHEMA_BREAKS[name]))
    e.msg = e.msg.replace("got None.", "got nothing.")   # a missing checksum, legitimately
    assert e.msg and "XX" not in e.msg and "None." not in e.msg and "None:" not in e.msg
    for upper in ("HEADER", "OPTIMIZER", "GLOBAL", "SLOT", "WEIGHTS", " OR ", "NIL"):
        assert upper not in e.msg, (name, e.msg)
    assert not e.msg.startswith("None")


@pytest.mark.parametrize("edit,start", [
    (_set("producer", []), "header.producer is list"),
    (_set("extra", 1, "producer"), "header.producer.extra is int 1; header.producer maps "
                                   "strings to strings."),
    (_del("library", "producer"), "header.producer lacks the required field 'library'."),
    (_set("metadata", {"a": 1}), "header.metadata.a is int 1; header.metadata maps strings to "
                                 "strings."),
    (_set("class_name", 1, "optimizer"), "optimizer.class_name is int 1; expected str."),
    (_set("hyperparameters", [], "optimizer"), "optimizer.hyperparameters is list []"),
    (_set("wrappers", {}, "optimizer"), "optimizer.wrappers is dict {}"),
    (_set("wrappers", ["L"], "optimizer"), "optimizer.wrappers[0] is str 'L'; expected dict."),
    (_set("wrappers", [{"config": {}}], "optimizer"),
     "optimizer.wrappers[0] lacks the required field 'class_name'."),
    (_set("wrappers", [{"class_name": "L", "config": 1}], "optimizer"),
     "optimizer.wrappers[0].config is int 1; expected dict."),
    (_set("learning_rate", {"kind": "schedule", "class_name": "E"}, "optimizer"),
     "optimizer.learning_rate lacks the required field 'config'."),
    (_set("step", -3), "step is -3; it MUST be >= 0."),
    (_set("checksum", "md5"), "checksum algorithm 'md5' is not supported (expected 'crc32')."),
    (_set("format", "x"), "header format field is 'x'; it MUST be 'optstate', as the container "
                          "metadata says."),
    (_set("version", "1.1"), "header version field '1.1' disagrees with the container metadata "
                             "(1.2)."),
    (_w(0, "hints", {"structural": 1}), "weights[0].hints.structural is int 1; expected str or "
                                        "nil."),
    (_w(0, "hints", {"layer_class": None}), "weights[0].hints.layer_class is NoneType None; "
                                            "expected str."),
    (_w(0, "trainable", 1), "weights[0].trainable is int 1; expected bool."),
    (_w(0, "slots", {"m": 1, "v": "slot:a/k:v"}), "weights[0].slots.m: a tensor key is a string, "
                                                  "got int 1."),
    (_set("iterations", 5, "globals"), "global 'iterations': a tensor key is a string, got int 5."),
    (_set("slot:gone:m", 1, "checksums"), "the checksum table names tensors the file does not "
                                          "hold: ['slot:gone:m']."),
    (_set("slot:a/k:v", "7", "checksums"), "tensor 'slot:a/k:v' has no crc32 (an integer 0 .. "
                                           "2^32-1) in the checksum table; got '7'."),
])
def test_schema_messages_exactly(edit, start):
    e = _code(_edit(edit))
    assert e.code == "E_SCHEMA" and e.msg.startswith(start), e.msg


def test_components_exactly_when_multi_whatever_the_weights_say():
    msg = ("optimizer.components must be a non-empty array exactly when the algorithm is "
           "'multi'.")
    # multi without components, weights without component fields
    doc = _multi()
    del doc["optimizer"]["components"]
    for w in doc["weights"]:
        del w["component"]
    e = _code(doc)
    assert (e.code, e.msg) == ("E_SCHEMA", msg)
    # multi with an empty list, and no weights that could fail first
    doc = _multi()
    doc["optimizer"]["components"] = []
    for w in doc["weights"]:
        del w["component"]
    assert _code(doc).msg == msg
    # components without multi, weights without component fields
    doc = _doc()
    doc["optimizer"]["components"] = [{"algorithm": "sgd", "class_name": "S"}]
    assert _code(doc).msg == msg


def test_errors_inside_a_weight_carry_its_path():
    for edit, code in ((_w(0, "slots", {"m": 1, "v": "slot:a/k:v"}), "E_SCHEMA"),
                       (_w(0, "component", 0), "E_SCHEMA"),
                       (_w(0, "shape", [-1, 3]), "E_SCHEMA"),
                       (_w(0, "dtype", "F32"), "E_DTYPE")):
        e = _code(_edit(edit))
        assert (e.code, e.path) == (code, "a/k")
    doc = _multi()
    doc["weights"][1]["component"] = 7
    e = _code(doc)
    assert (e.path, e.msg) == ("b/k", "weights[1].component 7 is not one of the 2 components.")


def test_duplicate_path_messages():
    doc = _doc()
    doc["weights"][1]["path"] = "a/k"
    assert _code(doc).msg == ("the canonical path 'a/k' appears twice in the weight table; "
                              "paths MUST be unique (spec 5.1).")
    doc = _doc()
    doc["weights"][0]["path"] = "caf\u00e9"
    doc["weights"][1]["path"] = "cafe\u0301"
    assert _code(doc).msg == ("the canonical path 'cafe\u0301' and 'caf\u00e9' are the same "
                              "path after Unicode NFC normalization in the weight table; paths "
                              "MUST be unique (spec 5.1).")
