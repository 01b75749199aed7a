"""The normative spec and the code say the same things."""

import re
from pathlib import Path

import optstate_format as osf
from optstate_format import _dtypes, _registry

ROOT = Path(__file__).resolve().parents[2]
SPEC = (ROOT / "spec" / "SPEC.md").read_text()


def _section(title):
    start = SPEC.index(title)
    nxt = re.search(r"\n## \d+\.", SPEC[start + 1:])
    return SPEC[start:start + 1 + nxt.start()] if nxt else SPEC[start:]


def test_released_versions_table_matches_code():
    rows = re.findall(r"^\| (\d+\.\d+) \| (\S+) \| (\S+) \| (.+?) \|$", _section("## 10."),
                      re.M)
    assert [tuple(r) for r in rows] == [tuple(r) for r in osf.VERSION_TABLE]
    assert osf.FORMAT_VERSION == osf.VERSION_TABLE[-1][0]
    assert SPEC.startswith(f"# The optstate file format, version {osf.FORMAT_VERSION}")


def test_every_error_code_in_code_is_documented_and_vice_versa():
    used = set()
    for path in list((ROOT / "optstate_format").glob("*.py")) + list(
            (ROOT / "converters").glob("*.py")):
        used |= set(re.findall(r'"(E_[A-Z_]+)"', path.read_text()))
    documented = set(re.findall(r"`(E_[A-Z_]+)`", _section("## 11.")))
    assert used == documented, (used - documented, documented - used)


def test_dtype_table_matches_code():
    rows = re.findall(r"^\| (\w+) \| ([A-Z0-9]+) \| (\d) \|", _section("## 6."), re.M)
    assert {n: (c, int(s)) for n, c, s in rows} == {
        n: (c, size) for n, (c, _, size) in _dtypes.DTYPES.items()}


def test_registry_document_lists_every_algorithm_and_slot():
    doc = (ROOT / "spec" / "optimizers.md").read_text()
    for alg in _registry.ALGORITHMS.values():
        assert f"### `{alg.id}`" in doc
        for slot in alg.slots:
            assert f"| `{slot.name}` | `{slot.rule}` |" in doc


def test_worked_example_hashes_are_what_the_code_computes():
    from optstate_format._identity import ROOT as HROOT, chain
    out0 = chain(HROOT, "out0")
    d2 = chain(out0, "Dense")
    d1 = chain(chain(d2, "arg0"), "Dense")
    for value in (out0, d2, d1, chain(d2, "kernel"), chain(d1, "kernel")):
        assert value in SPEC


def test_every_converter_naming_table_names_only_registry_algorithms_and_slots():
    from optstate_format.converters import _keras_tables, _torch_tables
    for table in (_keras_tables.KERAS3, _keras_tables.TF_KERAS, _keras_tables.TF_KERAS_LEGACY,
                  _torch_tables.TORCH):
        assert table.problems() == []
        assert table.classes  # a table that names nothing would pass vacuously


def test_converters_claim_the_version_ranges_pyproject_installs():
    """Each converter's SUPPORTED range (named in its UnsupportedError) is its extra's."""
    project = (ROOT / "pyproject.toml").read_text()
    for module, package in (("keras3", "keras"), ("tf_keras", "tf-keras")):
        claimed = re.search(r'^SUPPORTED = "([^"]+)"', (ROOT / "converters" / f"{module}.py")
                            .read_text(), re.M).group(1)
        assert f'"{package}{claimed}"' in project, (module, claimed)
    makefile = (ROOT / "Makefile").read_text()
    oldest = dict(re.findall(r"'([a-z-]+)==([0-9.]+)\.\*'", makefile))
    assert oldest["keras"] == "3.12" and oldest["tf-keras"] == "2.20"
    assert '"keras>=3.12,' in project and '"tf-keras>=2.20,' in project
