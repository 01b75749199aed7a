"""A short coverage-guided fuzzing campaign (atheris) against the reader."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris")

HERE = Path(__file__).resolve().parent
RUNS = 4000


def test_atheris_campaign_finds_no_exception_but_ours(tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(HERE.parents[1] / "spec" / "conformance" / "valid", corpus)
    for p in corpus.glob("*.json"):
        p.unlink()
    out = subprocess.run(
        [sys.executable, str(HERE / "fuzz_atheris.py"), f"-runs={RUNS}", "-max_len=4096",
         f"-artifact_prefix={tmp_path}/", "-rss_limit_mb=2048", "-timeout=10", str(corpus)],
        capture_output=True, text=True, timeout=600)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    done = re.search(r"Done (\d+) runs", log)
    assert done and int(done.group(1)) >= RUNS
    print(f"\n[atheris] {done.group(1)} coverage-guided inputs; only OptStateError escaped")
