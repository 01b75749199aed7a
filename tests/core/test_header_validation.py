"""One header validation (issue 11 item 2): the writer checks the document it is about to
write with the reader's own rules, and the JSON Schema agrees with those rules."""

import copy
import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

import optstate_format as osf
from optstate_format import _header

from crafting import doc_of, good_bytes, split, with_doc
from helpers import adam_state

SPEC = Path(__file__).resolve().parents[2] / "spec"
SCHEMA = json.loads((SPEC / "schema" / "header-1.schema.json").read_text())
VALID = sorted((SPEC / "conformance" / "valid").glob("*.optstate"))
NAMES = {code: name for name, (code, _, _) in osf._dtypes.DTYPES.items()}


def _tensors(raw):
    table, _ = split(raw)
    return {k: (NAMES.get(v["dtype"], v["dtype"]), tuple(v["shape"]))
            for k, v in table.items() if k != "__metadata__"}


def _version(raw):
    major, minor = split(raw)[0]["__metadata__"]["optstate.version"].split(".")
    return int(major), int(minor)


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_vectors_pass_the_validation_and_the_schema(path):
    raw = path.read_bytes()
    doc = doc_of(raw)
    _header.validate(doc, _tensors(raw), _version(raw))
    jsonschema.validate(doc, SCHEMA)


def _set(*keys, value):
    def edit(doc):
        obj = doc
        for k in keys[:-1]:
            obj = obj[k]
        obj[keys[-1]] = value
    return edit


def _drop(*keys):
    def edit(doc):
        obj = doc
        for k in keys[:-1]:
            obj = obj[k]
        del obj[keys[-1]]
    return edit


# Broken documents that JSON Schema can describe: each must fail both.
BROKEN = {
    "no_step": _drop("step"),
    "step_negative": _set("step", value=-1),
    "step_bool": _set("step", value=True),
    "format_other": _set("format", value="notoptstate"),
    "version_2": _set("version", value="2.0"),
    "producer_empty": _set("producer", value={}),
    "producer_library_int": _set("producer", "library", value=5),
    "producer_extra_nil": _set("producer", "framework", value=None),
    "no_class_name": _drop("optimizer", "class_name"),
    "algorithm_empty": _set("optimizer", "algorithm", value=""),
    "lr_kind_evil": _set("optimizer", "learning_rate", value={"kind": "evil"}),
    "lr_constant_no_value": _set("optimizer", "learning_rate", value={"kind": "constant"}),
    "lr_value_string": _set("optimizer", "learning_rate", value={"kind": "constant",
                                                                 "value": "0.1"}),
    "lr_schedule_no_config": _set("optimizer", "learning_rate", value={
        "kind": "schedule", "class_name": "ExponentialDecay"}),
    "lr_callable_no_repr": _set("optimizer", "learning_rate", value={"kind": "callable"}),
    "wrappers_ints": _set("optimizer", "wrappers", value=[1, "x"]),
    "wrapper_no_class": _set("optimizer", "wrappers", value=[{"config": {}}]),
    "wrapper_config_list": _set("optimizer", "wrappers", value=[{"class_name": "L",
                                                                 "config": []}]),
    "components_without_multi": _set("optimizer", "components", value=[
        {"algorithm": "sgd", "class_name": "SGD"}]),
    "multi_without_components": _set("optimizer", "algorithm", value="multi"),
    "hyperparameters_list": _set("optimizer", "hyperparameters", value=[1]),
    "global_bad_name": lambda d: d["globals"].__setitem__("bad name", d["globals"].pop(
        "iterations")),
    "global_key_int": _set("globals", "iterations", value=7),
    "weights_not_list": _set("weights", value={}),
    "weight_no_path": _drop("weights", 0, "path"),
    "path_dotdot": _set("weights", 0, "path", value="a/../b"),
    "path_colon": _set("weights", 0, "path", value="dense/kernel:0"),
    "path_c1": _set("weights", 0, "path", value="dense\x85/kernel"),
    "path_empty_segment": _set("weights", 0, "path", value="a//b"),
    "shape_negative": _set("weights", 0, "shape", value=[-1, 3]),
    "shape_rank_65": _set("weights", 0, "shape", value=[1] * 65),
    "dtype_fp8": _set("weights", 0, "dtype", value="float8_e4m3"),
    "trainable_string": _set("weights", 0, "trainable", value="yes"),
    "hints_structural_int": _set("weights", 0, "hints", "structural", value=5),
    "hints_layer_class_int": _set("weights", 0, "hints", "layer_class", value=3),
    "slot_bad_name": lambda d: d["weights"][0]["slots"].__setitem__(
        "m m", d["weights"][0]["slots"].pop("m")),
    "slot_key_int": _set("weights", 0, "slots", "m", value=1),
    "value_int": _set("weights", 0, "value", value=5),
    "component_without_multi": _set("weights", 0, "component", value=0),
    "checksum_md5": _set("checksum", value="md5"),
    "checksum_negative": _set("checksums", "global:iterations", value=-1),
    "checksum_too_big": _set("checksums", "global:iterations", value=2 ** 32),
    "metadata_int": _set("metadata", value={"a": 1}),
}
# Rules JSON Schema cannot state (validate() alone checks them): tensor references exist,
# are named once and cover the container; slot shapes follow the registry; values have their
# entry's shape and dtype; paths are unique after NFC; component indices are in range; the
# checksum table has exactly the referenced tensors; 64 path segments; step 1.0 (a JSON
# Schema "integer" accepts 1.0).


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return good_bytes(tmp_path_factory.mktemp("v"))


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_document_fails_both_the_validation_and_the_schema(base, name):
    doc = copy.deepcopy(doc_of(base))
    BROKEN[name](doc)
    with pytest.raises(osf.FormatError) as e:
        _header.validate(doc, _tensors(base), _version(base))
    assert e.value.code in ("E_SCHEMA", "E_PATH", "E_LIMIT", "E_DTYPE")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, SCHEMA)


@pytest.mark.parametrize("name", ["lr_kind_evil", "producer_library_int", "wrappers_ints",
                                  "path_c1", "hints_layer_class_int"])
def test_the_reader_refuses_each_broken_document_with_the_validations_code(base, name,
                                                                          tmp_path):
    doc = copy.deepcopy(doc_of(base))
    BROKEN[name](doc)
    with pytest.raises(osf.FormatError) as expected:
        _header.validate(doc, _tensors(base), _version(base))
    p = tmp_path / "b.optstate"
    p.write_bytes(with_doc(base, doc))
    assert osf.check(p).code == expected.value.code


@pytest.mark.parametrize("breaks,code", [
    (lambda st: setattr(st.optimizer, "learning_rate", {"kind": "evil"}), "E_SCHEMA"),
    (lambda st: setattr(st.optimizer, "wrappers", [1, "x"]), "E_SCHEMA"),
    (lambda st: st.producer.__setitem__("framework_version", 3), "E_SCHEMA"),
    (lambda st: st.weights[0].hints.__setitem__("name", 5), "E_SCHEMA"),
    (lambda st: setattr(st.weights[0], "path", "caf\u00e9"), None),
    (lambda st: setattr(st, "step", -1), "E_SCHEMA"),
    (lambda st: st.weights[0].slots.__setitem__("bad name", np.zeros((2, 3), np.float32)),
     "E_SCHEMA"),
], ids=["lr_kind", "wrappers", "producer_value", "hint_type", "nfc_ok", "step", "slot_name"])
def test_the_writer_refuses_what_the_reader_would_refuse(tmp_path, breaks, code):
    st = adam_state(n_weights=2)
    breaks(st)
    dest = tmp_path / "w.optstate"
    if code is None:
        assert osf.check(osf.write(st, dest)).valid
        return
    with pytest.raises(osf.FormatError) as e:
        osf.write(st, dest)
    assert e.value.code == code and not dest.exists()
    assert [f.name for f in tmp_path.iterdir()] == []


def test_the_writer_refuses_nfc_duplicates_with_the_readers_code(tmp_path):
    st = adam_state(n_weights=2)
    st.weights[0].path, st.weights[1].path = "caf\u00e9", "cafe\u0301"
    st.weights[1].shape = st.weights[0].shape
    st.weights[1].slots = {k: np.zeros(st.weights[0].shape, np.float32) for k in ("m", "v")}
    with pytest.raises(osf.FormatError) as e:
        osf.write(st, tmp_path / "w.optstate")
    assert e.value.code == "E_DUPLICATE_PATH"


def test_the_examples_in_the_header_and_cli_docstrings_run():
    import doctest

    from optstate_format import cli
    for module in (_header, cli):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.attempted >= 1 and result.failed == 0, module.__name__
