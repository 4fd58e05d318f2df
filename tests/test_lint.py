"""The code stays as the README promises: ruff- and mypy-clean, one file in
banners, public API in __all__, no boto3 at import time."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
from conftest import ROOT, SCRIPT, iamsorry, require_module, require_program


def test_ruff_is_clean() -> None:
    require_program("ruff")
    proc = subprocess.run(["ruff", "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format_is_clean() -> None:
    """One layout for the script, build.py and the tests: ruff format's."""
    require_program("ruff")
    proc = subprocess.run(
        ["ruff", "format", "--check", "iam-sorry", "build.py", "tests"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_is_clean() -> None:
    require_module("mypy")
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
        "Broker client",
        "Minting",
        "Bootstrap",
        "Administration",
        "Profile maintenance",
        "Output formats",
        "Python API",
        "Service configuration",
        "Audit",
        "HTTP API",
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


def _banner_lines(lines: list[str]) -> list[int]:
    return [i + 1 for i, line in enumerate(lines) if line.startswith("# ") and line.endswith("####")]


def _bound_names(node: ast.AST) -> set[str]:
    """Names a function binds locally (parameters, assignments, imports, loop
    and with targets, nested definitions): references to these are not
    references to module-level definitions."""
    bound: set[str] = set()
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        a = node.args
        for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:
            if arg is not None:
                bound.add(arg.arg)
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and isinstance(sub.ctx, (ast.Store, ast.Del)):
            bound.add(sub.id)
        elif isinstance(sub, (ast.Import, ast.ImportFrom)):
            bound.update((alias.asname or alias.name).split(".")[0] for alias in sub.names)
        elif isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and sub is not node:
            bound.add(sub.name)
        elif isinstance(sub, ast.ExceptHandler):
            bound.add(sub.name or "")
    return bound


def _top_level_names(node: ast.stmt) -> set[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    names: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
            names.add(sub.id)
        elif isinstance(sub, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in sub.names)
        elif isinstance(sub, (ast.FunctionDef, ast.ClassDef)):
            names.add(sub.name)
    return names


def forward_references(source: str) -> list[str]:
    """Every place where a top-level definition refers to a module-level name
    first defined in a later banner section: bottle.py's rule that each
    section uses only what comes before it."""
    lines = source.splitlines()
    banners = _banner_lines(lines)
    tree = ast.parse(source)

    def section_of(lineno: int) -> int:
        return sum(1 for b in banners if b <= lineno)

    first: dict[str, int] = {}
    for node in tree.body:
        for name in _top_level_names(node):
            first.setdefault(name, section_of(node.lineno))
    found: list[str] = []

    def visit(sub: ast.AST, here: int, shadowed: frozenset[str]) -> None:
        if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            shadowed = shadowed | _bound_names(sub)
        is_load = isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Load)
        if is_load and sub.id not in shadowed and first.get(sub.id, 0) > here:  # type: ignore[attr-defined]
            found.append(f"line {sub.lineno}: {sub.id} (section {first[sub.id]}) used in section {here}")  # type: ignore[attr-defined]
        for child in ast.iter_child_nodes(sub):
            visit(child, here, shadowed)

    for node in tree.body:
        visit(node, section_of(node.lineno), frozenset())
    return found


def test_no_definition_refers_to_a_later_section() -> None:
    assert forward_references(SCRIPT.read_text()) == []


def test_forward_reference_check_catches_a_misplaced_call() -> None:
    """The check itself can fail: a helper called one section too early."""
    ok = "# A ####\ndef early():\n    return 1\n# B ####\ndef late(x=early):\n    early = 2\n    return early\n"
    assert forward_references(ok) == []
    misplaced = "# A ####\ndef early():\n    return late()\n# B ####\ndef late():\n    return 1\n"
    assert forward_references(misplaced) == ["line 3: late (section 2) used in section 1"]
    in_a_default = "# A ####\ndef early(f=lambda: late):\n    pass\n# B ####\nlate = 1\n"
    assert forward_references(in_a_default) == ["line 2: late (section 2) used in section 1"]


def test_names_aws_sees_are_written_once() -> None:
    """Tag keys, the name prefix, the default region, the policy version and
    the sealed layout's markers: one constant each, used everywhere."""
    tree = ast.parse(SCRIPT.read_text())
    # keys of our own dicts (--profiles rows have an "owner" column) are not names AWS sees
    keys = {id(k) for n in ast.walk(tree) if isinstance(n, ast.Dict) for k in n.keys}
    keys |= {id(n.slice) for n in ast.walk(tree) if isinstance(n, ast.Subscript)}
    literals = [
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in keys
    ]
    for name in ("owner", "delegated-by", "iam-sorry-", "us-east-1", "2012-10-17", "SHA256:", "__encrypted__:", "v2"):
        assert literals.count(name) == 1, name


def test_error_family_is_closed() -> None:
    """Low-level parsers raise IamSorryError subclasses, never a bare
    ValueError (which main() could only call 'unexpected')."""
    with pytest.raises(iamsorry.SshKeyError):
        iamsorry._ssh_string(b"\x00\x00\x00\x09abc", 0)
    with pytest.raises(iamsorry.SshKeyError):
        iamsorry.SshKey(b"\x00\x00")
    source = SCRIPT.read_text()
    assert "raise ValueError" not in source.replace('raise ValueError("bad magic")', "").replace(
        'raise ValueError("bad date")', ""
    )
