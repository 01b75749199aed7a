"""spec/conformance/run.py (issue 14 "conformance runner"): the reference reader agrees on
every vector through the protocol of spec/conformance/README.md, and wrong readers are
reported vector by vector."""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONF = Path(__file__).resolve().parents[2] / "spec" / "conformance"
RUN = CONF / "run.py"
VECTORS = sorted(CONF.glob("*/*.optstate")) + sorted(CONF.glob("archives/*/*.optstate"))
assert len(VECTORS) >= 84 + 14  # single files and sharded archives (folders)

spec = importlib.util.spec_from_file_location("conformance_run", RUN)
run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run)


def _run(*cmd, vectors=None):
    args = [sys.executable, str(RUN)] + (["--vectors", str(vectors)] if vectors else [])
    return subprocess.run(args + list(cmd), capture_output=True, text=True, timeout=600)


def test_the_reference_reader_agrees_on_every_vector():
    out = _run(sys.executable, str(CONF / "reference_reader.py"))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert len(lines) == len(VECTORS) + 1 and len(VECTORS) >= 40
    assert all(line.startswith("agree ") for line in lines[:-1])
    assert lines[-1] == f"{len(VECTORS)} of {len(VECTORS)} vectors agree"


def test_a_reader_that_refuses_everything_disagrees_on_every_vector():
    wrong = [sys.executable, "-c", 'print(\'{"code": "E_NOPE"}\')']
    out = _run(*wrong)
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert all(line.startswith("DISAGREE ") for line in lines[:-1])
    assert "DISAGREE valid/minimal_sgd: refused with E_NOPE, expected accepted" in lines
    assert "DISAGREE invalid/truncated: refused with E_NOPE, expected E_TRUNCATED" in lines
    assert ("DISAGREE archives/invalid/missing_shard: refused with E_NOPE, expected "
            "E_ARCHIVE_MISSING") in lines
    assert lines[-1] == f"0 of {len(VECTORS)} vectors agree; {len(VECTORS)} disagree"


@pytest.fixture
def two_vectors(tmp_path):
    for kind, name in (("valid", "minimal_sgd"), ("invalid", "truncated")):
        (tmp_path / kind).mkdir()
        for suffix in (".optstate", ".expected.json"):
            shutil.copy(CONF / kind / f"{name}{suffix}", tmp_path / kind / f"{name}{suffix}")
    return tmp_path


def test_a_reader_off_by_one_in_a_summary_is_named_with_the_member(two_vectors, tmp_path):
    script = tmp_path / "off_by_one.py"
    script.write_text(
        "import json, subprocess, sys\n"
        f"out = json.loads(subprocess.run([sys.executable, {str(CONF / 'reference_reader.py')!r},"
        " sys.argv[1]], capture_output=True, text=True).stdout)\n"
        "if 'step' in out: out['step'] += 1\n"
        "print(json.dumps(out))\n")
    out = _run(sys.executable, str(script), vectors=two_vectors)
    assert out.returncode == 1
    assert "DISAGREE valid/minimal_sgd: summary differs: $.step: got 2, expected 1" in out.stdout
    assert "agree    invalid/truncated: refused with E_TRUNCATED" in out.stdout
    assert out.stdout.splitlines()[-1] == "1 of 2 vectors agree; 1 disagree"


def test_output_that_is_not_json_disagrees(two_vectors):
    out = _run(sys.executable, "-c", "print('{\"step\": NaN}')", vectors=two_vectors)
    assert out.returncode == 1 and out.stdout.count("output is not one JSON value") == 2


def test_usage_errors_exit_2(tmp_path):
    assert _run().returncode == 2
    assert _run("true", vectors=tmp_path).returncode == 2


def test_json_values_compare_as_section_13_1_says():
    assert run.same(1, 1.0) and run.same({"a": [1, 2]}, {"a": [1.0, 2]})
    assert not run.same(True, 1) and not run.same(0, False) and not run.same(None, 0)
    assert not run.same(2 ** 64 - 1, float(2 ** 64 - 1))
    assert not run.same([1, 2], [2, 1]) and not run.same({"a": 1}, {"a": 1, "b": 2})
    assert not run.same("1", 1)
    assert json.loads('{"b": 1, "a": 2}') and run.same({"b": 1, "a": 2}, {"a": 2, "b": 1})
