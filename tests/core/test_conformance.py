"""The committed conformance vectors are current, and the reader treats each as specified."""

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import msgpack
import pytest

import optstate_format as osf
from optstate_format._check import summary
from optstate_format.cli import main

SPEC = Path(__file__).resolve().parents[2] / "spec"
VALID = sorted((SPEC / "conformance" / "valid").glob("*.optstate"))
INVALID = sorted((SPEC / "conformance" / "invalid").glob("*.optstate"))
SCHEMA = json.loads((SPEC / "schema" / "header-1.schema.json").read_text())


def _doc(path):
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    table = json.loads(raw[8:8 + n])
    s, e = table["optstate:header"]["data_offsets"]
    return msgpack.unpackb(raw[8 + n + s:8 + n + e], raw=False, strict_map_key=False)


def test_there_are_enough_vectors():
    assert len(VALID) >= 10 and len(INVALID) >= 70  # issue 14: one per MUST, well over 35


def test_committed_vectors_are_what_the_generator_produces():
    out = subprocess.run([sys.executable, str(SPEC / "generate.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_vector_reads_to_its_expected_summary(path):
    expected = json.loads(path.with_suffix(".expected.json").read_text())
    assert json.loads(json.dumps(summary(path), allow_nan=False)) == expected
    assert osf.check(path).valid


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_inspect_json_prints_the_expected_summary(path, capsys):
    """Spec 13.1: `optstate inspect --json` is the summary, plain JSON (no NaN literals)."""
    assert main(["inspect", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert json.loads(out, parse_constant=lambda c: pytest.fail(f"non-JSON {c}")) == \
        json.loads(path.with_suffix(".expected.json").read_text())


def test_the_summary_forms_of_section_13_1():
    got = json.loads((SPEC / "conformance" / "valid" / "summary_values.expected.json")
                     .read_text())
    g = got["globals"]
    assert (g["nan"]["value"], g["inf"]["value"], g["minus_inf"]["value"]) == (
        "NaN", "Infinity", "-Infinity")
    assert g["flag"]["value"] is True and g["big"]["value"] == 2 ** 64 - 1
    assert g["half"] == {"dtype": "bfloat16", "shape": [], "value": 1.5}
    assert g["tenth"]["value"] == 0.10000000149011612
    assert g["one_element"]["value"] is None
    assert got["optimizer"]["hyperparameters"]["clipvalue"] == "NaN"
    absent = json.loads((SPEC / "conformance" / "valid" / "optional_fields_absent.expected.json")
                        .read_text())
    assert absent["optimizer"] == {"algorithm": "sgd", "class_name": "SGD",
                                   "hyperparameters": {}, "learning_rate": {}, "wrappers": []}
    assert absent["metadata"] == {} and absent["weights"][0]["hints"] == {}
    assert absent["weights"][0]["has_value"] is False


def test_bfloat16_without_a_bfloat16_type_summarizes_the_same(monkeypatch):
    """Dtypes come from the container: raw 16-bit words are still bfloat16, 1.5 still 1.5."""
    from optstate_format import _dtypes
    path = SPEC / "conformance" / "valid" / "summary_values.optstate"
    monkeypatch.setattr(_dtypes, "_bfloat16_type", lambda: None)
    assert osf.read(path).globals["half"].dtype == "uint16"
    assert json.loads(json.dumps(summary(path))) == json.loads(
        path.with_suffix(".expected.json").read_text())


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_vector_header_satisfies_the_json_schema(path):
    jsonschema.validate(_doc(path), SCHEMA)


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_vector_is_refused_with_its_code(path):
    expected = json.loads(path.with_suffix(".expected.json").read_text())
    with pytest.raises(osf.OptStateError) as e:
        osf.read(path)
    assert e.value.code == expected["code"]
    assert type(e.value).__name__ == expected["error"]
    rep = osf.check(path)
    assert not rep.valid and rep.code == expected["code"]


@pytest.mark.parametrize("name", [
    "missing_required_field", "path_with_colon_suffix", "learning_rate_unknown_kind",
    "component_without_multi", "document_not_a_map", "global_name_with_space",
    "header_format_differs", "hint_name_not_a_string", "learning_rate_constant_without_value",
    "path_1025_characters", "path_c1_control", "path_dot_dot_segment", "slot_name_with_space",
    "step_bool", "weight_dtype_outside_section_6"])
def test_schema_refuses_what_the_reader_refuses_in_the_header(name):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(_doc(SPEC / "conformance" / "invalid" / f"{name}.optstate"), SCHEMA)
