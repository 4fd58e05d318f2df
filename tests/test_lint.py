"""The code stays as the README promises: ruff- and mypy-clean, one file in
banners, public API in __all__, no boto3 at import time."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, SCRIPT, iamsorry


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed")
def test_ruff_is_clean() -> None:
    proc = subprocess.run(["ruff", "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_is_clean() -> None:
    pytest.importorskip("mypy")
    proc = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_sections_are_in_dependency_order() -> None:
    banners = [
        line[2:].split(" ##")[0]
        for line in SCRIPT.read_text().splitlines()
        if line.startswith("# ") and line.endswith("####")
    ]
    stems = [
        "Constants and errors",
        "Terminal prompts",
        "SSH keys",
        "Crypto",
        "Profile store",
        "Namespaces and policies",
        "AWS",
        "Minting",
        "Bootstrap",
        "Administration",
        "Profile maintenance",
        "Output formats",
        "Python API",
        "Vendored packages",
        "CLI and main",
    ]
    assert [next(s for s in stems if b.startswith(s)) for b in banners] == stems


def test_public_api_exists_and_is_listed() -> None:
    for name in iamsorry.__all__:
        assert hasattr(iamsorry, name), name
    for name in (
        "create_session_with_profile",
        "read_aws_credentials",
        "get_aws_credentials_path",
        "credentials_need_refresh",
        "get_temp_credentials_for_user",
        "update_profile_credentials",
    ):
        assert name in iamsorry.__all__


def test_script_is_executable_with_the_right_shebang() -> None:
    assert SCRIPT.read_text().startswith("#!/usr/bin/env python3\n")
    assert SCRIPT.stat().st_mode & 0o111


def test_importing_the_module_loads_nothing_heavy() -> None:
    """Compared with what the interpreter had already loaded: site hooks may
    import re themselves."""
    code = (
        "import importlib.machinery, sys; before = set(sys.modules)\n"
        "importlib.machinery.SourceFileLoader('iamsorry', sys.argv[1]).load_module()\n"
        "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in "
        "('boto3', 'botocore', 'cryptography', 'bcrypt', 're', 'argparse', 'datetime', 'json', 'enum')))"
    )
    out = subprocess.run([sys.executable, "-I", "-c", code, str(SCRIPT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
