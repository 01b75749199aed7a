"""The PyTorch model zoo through pytest (tests/torch/zoo.py): the CI subset always, every case
with OPTSTATE_ZOO=1 (or `make zoo-torch`, which runs the script and prints the table)."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")


def _load_zoo():
    """tests/torch/zoo.py under its own module name: ``import zoo`` would find the Keras zoo
    (tests/keras3/zoo.py) when pytest collected that first."""
    spec = importlib.util.spec_from_file_location("torch_zoo", Path(__file__).with_name("zoo.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


zoo = _load_zoo()

try:
    zoo._torchvision_without_its_ops()
except ImportError:
    pass
pytest.importorskip("torchvision")
pytest.importorskip("timm")
pytest.importorskip("transformers")

pytestmark = pytest.mark.framework

FULL = os.environ.get("OPTSTATE_ZOO") == "1"
SELECTED = zoo.CASES if FULL else [zoo.BY_NAME[n] for n in zoo.CI]


@pytest.mark.parametrize("case", SELECTED, ids=lambda c: c.name)
def test_zoo_model_state_imports_by_role_and_continues_bit_for_bit(case, tmp_path):
    row = zoo.Row(case.name, case.family)
    zoo.run_case(case, tmp_path, row)
    assert row.entries_checked > 0 and row.tensors > 0


def test_ci_subset_covers_every_optimizer_kind_and_way_of_rebuilding():
    ci = [zoo.BY_NAME[n] for n in zoo.CI]
    assert {c.optimizer for c in ci} == {"adam", "adamw", "adamw_fused", "adam_named", "sgd",
                                         "groups"}
    assert any(c.dtype == torch.bfloat16 for c in ci) and any(c.loss for c in ci)
    assert {c.rebuild for c in ci} == {"seed", "dataparallel", "compile", "sequential", "frozen"}
    assert {c.family for c in ci} == {"torchvision", "timm", "transformers"}
