"""The core works with tensorflow, keras and tf_keras absent."""

import subprocess
import sys
import textwrap


def test_core_imports_and_runs_with_frameworks_blocked(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("tensorflow", "keras", "tf_keras", "jax", "torch"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        import numpy as np
        import optstate_format as osf
        from optstate_format import cli
        st = osf.OptimizerState(osf.OptimizerInfo("sgd", "SGD"), step=2, weights=[
            osf.WeightEntry("d/kernel", (2,), "float32",
                            slots={{"momentum": np.ones(2, np.float32)}})])
        p = osf.write(st, r"{tmp_path}/x.optstate")
        assert osf.check(p).valid
        assert cli.main(["inspect", str(p)]) == 0
        try:
            osf.export_state(object(), "y")
        except osf.UnsupportedError as e:
            print("unsupported ok")
        loaded = [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras")]
        assert not loaded, loaded
        print("core ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "core ok" in out.stdout and "unsupported ok" in out.stdout
