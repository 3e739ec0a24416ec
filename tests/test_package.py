"""The package itself: a light import, a fast --help, a curated public API."""

import subprocess
import sys

import mambah


def test_import_is_light():
    code = "import sys, mambah, mambah.cli; mambah.cli.build_parser(); print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_help_runs_without_tensorflow():
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "mambah", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    assert "usage: mambah" in r.stdout
    assert "tensorflow" not in r.stderr  # -X importtime lists every module imported


def test_public_api_is_listed_and_resolves():
    for name in mambah.__all__:
        assert getattr(mambah, name) is not None
    assert set(mambah.__all__) <= set(dir(mambah))


def test_unknown_attribute_is_an_attribute_error():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        mambah.Nope  # noqa: B018


def test_version_flag():
    r = subprocess.run([sys.executable, "-m", "mambah", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == f"mambah {mambah.__version__}"
