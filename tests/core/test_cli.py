"""The optstate command line: exit codes and what it prints."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

import optstate_format as osf
from optstate_format.cli import main

from helpers import adam_state

VECTORS = Path(__file__).resolve().parents[2] / "spec" / "conformance"


def test_check_exit_codes(capsys):
    assert main(["check", str(VECTORS / "valid" / "adam_amsgrad.optstate")]) == 0
    assert main(["check", str(VECTORS / "invalid" / "checksum_mismatch.optstate")]) == 1
    assert "E_CHECKSUM" in capsys.readouterr().out


def test_usage_error_exits_2():
    out = subprocess.run([sys.executable, "-m", "optstate_format.cli", "check"],
                         capture_output=True, text=True)
    assert out.returncode == 2


def test_inspect_prints_optimizer_step_and_weight_table(capsys):
    assert main(["inspect", str(VECTORS / "valid" / "adam_amsgrad.optstate")]) == 0
    out = capsys.readouterr().out
    assert "Adam (algorithm adam)" in out and "step          7" in out
    assert "branch_1/dense/kernel" in out and "m,v,v_hat" in out


def test_inspect_json_is_the_summary(capsys):
    main(["inspect", "--json", str(VECTORS / "valid" / "minimal_sgd.optstate")])
    doc = json.loads(capsys.readouterr().out)
    assert doc["optimizer"]["algorithm"] == "sgd" and doc["step"] == 1


def test_inspect_of_a_damaged_file_is_a_clean_error(capsys):
    assert main(["inspect", str(VECTORS / "invalid" / "truncated.optstate")]) == 1
    err = capsys.readouterr().err
    assert "E_TRUNCATED" in err and "Traceback" not in err


def test_diff_reports_changed_slot_and_missing_weight(tmp_path, capsys):
    a = adam_state()
    b = adam_state()
    b.weights[0].slots["m"] = b.weights[0].slots["m"] + np.float32(0.5)
    b.weights.pop()
    pa, pb = osf.write(a, tmp_path / "a.optstate"), osf.write(b, tmp_path / "b.optstate")
    assert main(["diff", str(pa), str(pb)]) == 1
    out = capsys.readouterr().out
    assert "layer_0/kernel slot m: max |A-B| = 0.5" in out
    assert "layer_2/kernel: only in A" in out
    assert main(["diff", str(pa), str(pa)]) == 0
