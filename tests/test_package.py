"""The package itself: a light import, a fast --help (the curated public API is pinned in
``test_module_apis.py``)."""

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


def test_unknown_attribute_is_an_attribute_error():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        mambah.Nope  # noqa: B018


def test_version_flag():
    r = subprocess.run([sys.executable, "-m", "mambah", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == f"mambah {mambah.__version__}"


def test_native_log_filter_patterns():
    from mambah.cli._native_log import _NATIVE, _PREFIX

    native = [
        b"I0000 00:00:1795382767.322237   25396 port.cc:153] oneDNN custom operations are on.",
        b"E0000 00:00:1795382775.781255   25396 cuda_platform.cc:52] failed call to cuInit: INTERNAL",
        b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        b"To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.",
    ]
    kept = [b"WARNING mambah.nn.tracking: model 'x': 3 of 10 inputs", b"mambah simulate: error: no such file",
            b"Traceback (most recent call last):", b"\rsimulate p:  50%|#####     | 10.0k/20.0k"]
    assert all(_NATIVE.match(x) for x in native)
    assert not any(_NATIVE.match(x) for x in kept)
    assert not any(_PREFIX.match(x) for x in kept), "user-facing partial lines must not be held back"


def test_cli_stderr_has_no_tensorflow_startup_noise(tmp_path):
    import re

    r = subprocess.run([sys.executable, "-m", "mambah", "simulate", "B+ -> (J/psi(1S) -> mu+ mu-) K+", "--level", "truth",
                        "--events", "200", "--db", str(tmp_path / "s.sqlite")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "absl::InitializeLog" not in r.stderr and not re.search(r"^[IWEF]\d{4} ", r.stderr, re.M)
    assert "created a mambah store" in r.stderr  # the library's own log lines still pass
    assert "1 written" in r.stdout
