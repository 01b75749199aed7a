"""The runnable examples in the core's docstrings run and say what they show."""

import doctest
import importlib

import pytest

MODULES = ["optstate_format", "optstate_format._check", "optstate_format._dtypes",
           "optstate_format._identity", "optstate_format._io", "optstate_format._paths",
           "optstate_format._registry", "optstate_format._state", "optstate_format._journal",
           "optstate_format._versions", "optstate_format._header",
           "optstate_format._api", "optstate_format._archive", "optstate_format.adapter",
           "optstate_format.converters._keras_graph", "optstate_format.converters._private"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that name relative files stay in a scratch folder
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
