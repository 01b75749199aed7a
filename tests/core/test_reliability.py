"""Crashes, races and hostile content: nothing lost, nothing loaded wrong, nothing executed."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import optstate_format as osf

HERE = Path(__file__).resolve().parent
WRITER = HERE / "crash_writer.py"
sys.path.insert(0, str(HERE))
from crash_writer import state  # noqa: E402


def _assert_complete(path, allowed_steps):
    rep = osf.check(path)
    assert rep.valid, rep
    st = osf.read(path)
    assert st.step in allowed_steps
    np.testing.assert_array_equal(st.weights[0].slots["v"][:5], float(st.step))
    return st.step


@pytest.mark.slow
def test_sigkill_during_export_never_leaves_a_partial_file_under_the_final_name(tmp_path):
    target = tmp_path / "run.optstate"
    osf.write(state(1), target)  # the previous archive
    rnd = random.Random(1234)
    kills = 0
    seen = set()
    for _ in range(25):
        proc = subprocess.Popen([sys.executable, str(WRITER), str(target), "2"],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rnd.uniform(0.0, 0.12))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        seen.add(_assert_complete(target, {1, 2}))
        leftovers = [p for p in os.listdir(tmp_path) if p != "run.optstate"]
        for p in leftovers:  # killed writers can leave their temp file, never the final name
            assert p.startswith(".run.optstate.") and p.endswith(".optstate.tmp")
            os.unlink(tmp_path / p)
    print(f"\n[crash] {kills} SIGKILLs during export; archive intact after each, steps seen "
          f"{sorted(seen)}")
    assert kills == 25


def test_two_processes_exporting_to_one_path_leave_one_complete_archive(tmp_path):
    target = tmp_path / "shared.optstate"
    procs = [subprocess.Popen([sys.executable, str(WRITER), str(target), str(step), "5"],
                              stdout=subprocess.PIPE, text=True) for step in (3, 4)]
    for p in procs:
        assert p.wait(timeout=300) == 0
    _assert_complete(target, {3, 4})
    assert os.listdir(tmp_path) == ["shared.optstate"]


def test_nothing_named_in_a_file_is_imported_or_called(tmp_path):
    st = state(5)
    st.weights = st.weights[:1]
    st.optimizer.class_name = "os.system"
    st.optimizer.module = "optstate_evil_probe_module"
    st.optimizer.hyperparameters = {"cmd": "__import__('os').system('touch PWNED')"}
    st.optimizer.learning_rate = {"kind": "schedule", "class_name": "subprocess.Popen",
                                  "config": {"args": ["touch", "PWNED"]}}
    path = osf.write(st, tmp_path / "evil.optstate")
    before = set(sys.modules)
    back = osf.read(path)
    assert osf.check(path).valid
    assert back.optimizer.module == "optstate_evil_probe_module"
    assert set(sys.modules) == before
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()


# Where an import by name is allowed, and why it never takes the name from a file.
IMPORTS_BY_NAME = {
    "converters/_private.py": "modules named in each converter's own literal table "
                              "(PrivateAPI.load refuses any other name: its doctest)",
    "optstate_format/cli.py": "--custom-object MODULE:NAME, code the user names on the "
                              "command line (like Keras's custom_objects), never from the file",
}


def test_core_has_no_code_paths_that_execute_file_content():
    files = sorted((HERE.parents[1] / "optstate_format").glob("*.py")) + sorted(
        (HERE.parents[1] / "converters").glob("*.py"))
    for path in files:
        src = path.read_text()
        rel = f"{path.parent.name}/{path.name}"
        for needle in ("pickle", "eval(", "exec(", "__import__", "allow_pickle=True"):
            assert needle not in src, (rel, needle)
        if rel not in IMPORTS_BY_NAME:
            assert "importlib" not in src, rel
    assert "importlib" in (HERE.parents[1] / "optstate_format" / "cli.py").read_text()  # kept honest


def test_a_file_written_by_format_1_0_still_reads(tmp_path):
    data = HERE.parent / "support" / "data" / "v1.0"
    files = sorted(data.glob("*.optstate"))
    assert files
    for f in files:
        st = osf.read(f)
        assert st.version == "1.0" and osf.check(f).valid
