"""Start a benchmark script's own worker processes and collect what each prints last (one
JSON line). Shared by bench_archive_jax.py and bench_archive_tf.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def spawn(script, args_of, n, timeout):
    """Run ``script`` ``n`` times at once with ``args_of(i)``; the last JSON line each printed.
    Workers still running at the end are killed with SIGKILL (TensorFlow handles SIGTERM)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("TF_CONFIG", None)  # a worker sets its own
    procs = [subprocess.Popen([sys.executable, str(script)] + args_of(i), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env) for i in range(n)]
    try:
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    results = []
    for i, (p, out) in enumerate(zip(procs, outs)):
        lines = [x for x in out.splitlines() if x.startswith("{")]
        if p.returncode != 0 or not lines:
            raise RuntimeError(f"worker {i} of {n} ended with code {p.returncode} and no "
                               f"result:\n{out[-3000:]}")
        results.append(json.loads(lines[-1]))
    return results
