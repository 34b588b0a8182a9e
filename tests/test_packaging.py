"""The package metadata: what ``pip install`` reads from ``pyproject.toml``."""

import pathlib

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

PYPROJECT = pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_license_is_an_spdx_string_that_setuptools_reads_without_warnings() -> None:
    """A ``{text = ...}`` table makes setuptools >= 77 print a deprecation warning per build."""
    config = tomllib.loads(PYPROJECT.read_text())
    assert config["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in config["build-system"]["requires"]  # reads SPDX strings
