"""build.py: one reproducible .pyz that runs on a bare interpreter.

Two host builds run once per session, in parallel and in different build
directories, so the reproducibility check also proves that the bytes do not
depend on where the build happened.  Every run of a bundle gets its own
SHIV_ROOT and HOME; nothing here reads the developer's home directory.
"""

from __future__ import annotations

import ast
import fcntl
import hashlib
import importlib.util
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REGION, ROOT, FakeAws, iamsorry, needs_root, parse_handover, run_all

BUILD_PY = ROOT / "build.py"
# Builds may use the real HOME for pip's cache and configuration (index
# mirrors); the bundles under test never see it.
BUILD_ENV = dict(os.environ)


def _load_build():
    spec = importlib.util.spec_from_file_location("iam_sorry_build", BUILD_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


build = _load_build()


def run_build(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(BUILD_PY), *args], capture_output=True, text=True, env=BUILD_ENV, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two complete host builds of the work tree, made concurrently."""
    base = tmp_path_factory.mktemp("builds")
    cmds = [
        [sys.executable, str(BUILD_PY), "--dist", str(base / name / "dist"), "--build-dir", str(base / name / "build")]
        for name in ("a", "b")
    ]
    for name, proc in zip(("a", "b"), run_all(cmds, timeout=900, env=BUILD_ENV, merge=True)):
        (base / f"{name}.log").write_text(proc.stdout)
        assert proc.returncode == 0, proc.stdout[-6000:]
    return {
        "a": base / "a" / "dist" / "iam-sorry.pyz",
        "b": base / "b" / "dist" / "iam-sorry.pyz",
        "log": base / "a.log",
        "build_dir": base / "a" / "build",
    }


@pytest.fixture(scope="session")
def pyz(builds: dict[str, Path]) -> Path:
    return builds["a"]


@pytest.fixture(scope="session")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An interpreter with nothing installed, like a cluster node without pip."""
    venv_dir = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv_dir)], check=True)
    python = venv_dir / "bin" / "python"
    probe = subprocess.run([str(python), "-c", "import boto3"], capture_output=True)
    assert probe.returncode != 0, "the bare venv must not see boto3"
    return python


def node_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHIV_", "IAM_SORRY_", "PYTHON"))}
    return {**env, "HOME": str(home), "SHIV_ROOT": str(tmp_path / "shiv"), **extra}


def run_pyz(python: Path, pyz: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), str(pyz), *args], capture_output=True, text=True, env=env, timeout=300)


def bundled_marker(pyz: Path) -> dict:
    with zipfile.ZipFile(pyz) as archive:
        return json.loads(archive.read(f"site-packages/{build.MARKER_NAME}"))


# --------------------------------------------------------------------------
# The bundle.


def test_two_builds_are_byte_identical(builds: dict[str, Path]) -> None:
    digest = sha256(builds["a"])
    assert sha256(builds["b"]) == digest
    log = builds["log"].read_text()
    assert f"sha256 {digest}" in log and "bytes" in log  # the build reports size and hash
    assert Path(f"{builds['a']}.sha256").read_text() == f"{digest}  iam-sorry.pyz\n"


def test_bundle_settings(pyz: Path) -> None:
    assert pyz.read_bytes().split(b"\n", 1)[0] == b"#!/usr/bin/env python3"
    assert os.access(pyz, os.X_OK)
    with zipfile.ZipFile(pyz) as archive:
        env = json.loads(archive.read("environment.json"))
        names = set(archive.namelist())
        stamps = {info.date_time for info in archive.infolist()}
    assert env["compile_pyc"] and env["reproducible"] and env["entry_point"] == "iamsorry:main"
    assert env["root"] is None, "a built-in root would override SHIV_ROOT"
    assert len(stamps) == 1, "every entry carries SOURCE_DATE_EPOCH"
    for name in ("iamsorry.py", "boto3/", "botocore/data/s3/", "cryptography/", "bcrypt/", "cffi/", "urllib3/"):
        assert any(n.startswith(f"site-packages/{name}") for n in names), name
    assert not any(n.startswith("site-packages/bin/") and not n.endswith(build.PREAMBLE_NAME) for n in names)
    marker = bundled_marker(pyz)
    assert marker["platform"] == "host" and marker["python"] == f"{sys.version_info[0]}.{sys.version_info[1]}"


def test_bare_interpreter_runs_version_and_versions(pyz: Path, bare_python: Path, tmp_path: Path) -> None:
    env = node_env(tmp_path)
    version = build.script_version(ROOT / "iam-sorry")
    proc = run_pyz(bare_python, pyz, "--version", env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"iam-sorry {version}"

    proc = run_pyz(bare_python, pyz, "--versions", env=env)
    assert proc.returncode == 0, proc.stderr
    reported = dict(line.split(None, 1) for line in proc.stdout.splitlines() if line.strip())
    packages = bundled_marker(pyz)["packages"]
    for name in ("boto3", "botocore", "cryptography", "bcrypt"):
        assert reported[name].strip() == packages[name], proc.stdout
    assert reported["python"].startswith(f"{sys.version_info[0]}.{sys.version_info[1]}.")

    # Extracted under SHIV_ROOT only; HOME stays empty.
    assert list((tmp_path / "shiv").glob("iam-sorry.pyz_*/site-packages/iamsorry.py"))
    assert not any((tmp_path / "home").iterdir())


def test_shebang_run_uses_python3_from_path(pyz: Path, bare_python: Path, tmp_path: Path) -> None:
    env = node_env(tmp_path, PATH=f"{bare_python.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run([str(pyz), "--version"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("iam-sorry ")


def test_twenty_concurrent_first_runs(pyz: Path, bare_python: Path, tmp_path: Path) -> None:
    env = node_env(tmp_path)
    done = run_all([[str(bare_python), str(pyz), "--version"]] * 20, timeout=300, env=env)
    results = [(proc.stdout, proc.stderr, proc.returncode) for proc in done]
    assert all(code == 0 for _, _, code in results), [err for _, err, _ in results if err][:3]
    assert len({out for out, _, _ in results}) == 1
    extracted = [p.name for p in (tmp_path / "shiv").iterdir() if not p.name.startswith(".")]
    assert len(extracted) == 1 and not extracted[0].endswith(".tmp"), extracted


def test_interpreter_mode_imports_the_library(pyz: Path, bare_python: Path, tmp_path: Path) -> None:
    script = tmp_path / "myscript.py"
    script.write_text(
        "import sys\n"
        "import bcrypt, boto3, cryptography, iamsorry\n"
        "from iamsorry import create_session_with_profile\n"
        "from cryptography.hazmat.primitives.asymmetric import ed25519\n"
        "ed25519.Ed25519PrivateKey.generate()\n"
        "boto3.session.Session(region_name='us-east-1').client('sts')\n"
        "print('ok', iamsorry.__version__, boto3.__version__, cryptography.__version__, sys.argv[1:])\n"
    )
    env = node_env(tmp_path, SHIV_INTERPRETER="1", AWS_EC2_METADATA_DISABLED="true")
    proc = run_pyz(bare_python, pyz, str(script), "one", "two", env=env)
    assert proc.returncode == 0, proc.stderr
    packages = bundled_marker(pyz)["packages"]
    assert proc.stdout.split()[:4] == [
        "ok",
        build.script_version(ROOT / "iam-sorry"),
        packages["boto3"],
        packages["cryptography"],
    ]
    assert "['one', 'two']" in proc.stdout


def _fake_extraction(root: Path, name: str, ours: bool, age_days: float) -> Path:
    path = root / name
    (path / "site-packages").mkdir(parents=True)
    if ours:
        (path / "site-packages" / build.MARKER_NAME).write_text("{}")
    then = time.time() - age_days * 86400
    os.utime(path, (then, then))
    return path


def test_old_extractions_are_removed(pyz: Path, bare_python: Path, tmp_path: Path) -> None:
    root = tmp_path / "shiv"
    old_id, recent_id, foreign_id = "a" * 64, "b" * 64, "c" * 64
    old = _fake_extraction(root, f"iam-sorry.pyz_{old_id}", ours=True, age_days=3)
    (root / f".{old.name}_lock").touch()
    stale_tmp = _fake_extraction(root, f"iam-sorry_{old_id}.tmp", ours=True, age_days=3)
    recent = _fake_extraction(root, f"iam-sorry-py3.9-manylinux2014_x86_64.pyz_{recent_id}", ours=True, age_days=0.1)
    foreign = _fake_extraction(root, f"other-tool.pyz_{foreign_id}", ours=False, age_days=30)
    trash = root / f".iam-sorry.pyz_{'d' * 64}.iam-sorry-trash-99"
    trash.mkdir()
    # A job started days ago from an older build, still running: its extraction is in use.
    busy = _fake_extraction(root, f"iam-sorry.pyz_{'e' * 64}", ours=True, age_days=3)
    job = os.open(busy / build.IN_USE_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(job, fcntl.LOCK_SH)
    then = time.time() - 3 * 86400
    os.utime(busy, (then, then))  # making the file touched the folder: old again, as the job started long ago

    proc = run_pyz(bare_python, pyz, "--version", env=node_env(tmp_path, IAM_SORRY_SHIV_CLEANUP="0"))
    assert proc.returncode == 0, proc.stderr
    assert old.exists(), "IAM_SORRY_SHIV_CLEANUP=0 keeps everything"

    try:
        proc = run_pyz(bare_python, pyz, "--version", env=node_env(tmp_path))
    finally:
        os.close(job)
    assert proc.returncode == 0, proc.stderr
    assert busy.exists(), "an extraction a running job holds is never removed, however old"
    assert not old.exists() and not (root / f".{old.name}_lock").exists()
    assert not stale_tmp.exists() and not trash.exists()
    assert recent.exists(), "another build used within the grace period stays"
    assert foreign.exists(), "other shiv apps are never touched"
    current = [p for p in root.glob("iam-sorry.pyz_*") if p.name not in (old.name, busy.name)]
    assert len(current) == 1 and (current[0] / build.STAMP_NAME).exists()
    assert (current[0] / build.IN_USE_NAME).exists()  # what the run held while it ran


# --------------------------------------------------------------------------
# The bundle imports only from an extraction that is ours alone.  As root in
# CI, "ours" means root's; the planted folders belong to nobody (65534).

NOBODY = 65534


def extraction_name(pyz: Path) -> str:
    with zipfile.ZipFile(pyz) as archive:
        return f"{pyz.name}_{json.loads(archive.read('environment.json'))['build_id']}"


def plant_pth(extraction: Path, marker: Path) -> None:
    """An extraction whose site-packages runs code as soon as it is added to sys.path."""
    site = extraction / "site-packages"
    site.mkdir(parents=True)
    (site / "planted.pth").write_text(f"import os; open({str(marker)!r}, 'w').close()\n")


def give_away(path: Path) -> None:
    for folder, _, files in os.walk(path):
        os.chown(folder, NOBODY, NOBODY)
        for name in files:
            os.chown(os.path.join(folder, name), NOBODY, NOBODY)


def _foreign_extraction(tmp: Path, name: str, marker: Path) -> tuple[Path, Path]:
    root = tmp / "shiv"
    root.mkdir(mode=0o700)
    plant_pth(root / name, marker)
    give_away(root / name)
    return root, root / name


def _foreign_half_extraction(tmp: Path, name: str, marker: Path) -> tuple[Path, Path]:
    """shiv extracts into <name>.tmp and renames it into place, keeping what is there."""
    root = tmp / "shiv"
    root.mkdir(mode=0o700)
    plant_pth(root / f"{name}.tmp", marker)
    give_away(root / f"{name}.tmp")
    return root, root / f"{name}.tmp"


def _shared_root(mode: int) -> Callable[[Path, str, Path], tuple[Path, Path]]:
    def make(tmp: Path, name: str, marker: Path) -> tuple[Path, Path]:
        root = tmp / "shiv"
        root.mkdir()
        plant_pth(root / name, marker)
        root.chmod(mode)
        return root, root

    return make


def _foreign_root(tmp: Path, name: str, marker: Path) -> tuple[Path, Path]:
    root = tmp / "shiv"
    root.mkdir(mode=0o755)
    plant_pth(root / name, marker)
    os.chown(root, NOBODY, NOBODY)
    return root, root


def _link_into_foreign_folder(tmp: Path, name: str, marker: Path) -> tuple[Path, Path]:
    other = tmp / "other"
    other.mkdir(mode=0o755)
    (other / "shiv").mkdir(mode=0o700)
    plant_pth(other / "shiv" / name, marker)
    os.chown(other, NOBODY, NOBODY)
    link = tmp / "shiv"
    link.symlink_to(other / "shiv")
    return link, link


@pytest.mark.parametrize(
    "plant",
    [
        pytest.param(_foreign_extraction, marks=needs_root, id="extraction-of-another-uid"),
        pytest.param(_foreign_half_extraction, marks=needs_root, id="half-extraction-of-another-uid"),
        pytest.param(_shared_root(0o775), id="group-writable-root"),
        pytest.param(_shared_root(0o777), id="world-writable-root"),
        pytest.param(_shared_root(0o1777), id="sticky-root"),
        pytest.param(_foreign_root, marks=needs_root, id="root-of-another-uid"),
        pytest.param(_link_into_foreign_folder, marks=needs_root, id="root-linked-into-another-uids-folder"),
    ],
)
def test_a_planted_extraction_never_runs(
    pyz: Path, bare_python: Path, tmp_path: Path, plant: Callable[[Path, str, Path], tuple[Path, Path]]
) -> None:
    marker = tmp_path / "planted-code-ran"
    root, named = plant(tmp_path, extraction_name(pyz), marker)
    # Both start-up paths: the fast one, and shiv's bootstrap (interpreter mode).
    for extra in ({}, {"SHIV_INTERPRETER": "1"}):
        proc = run_pyz(bare_python, pyz, "--version", env=node_env(tmp_path, SHIV_ROOT=str(root), **extra))
        assert not marker.exists(), proc.stderr
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.splitlines()
        assert len(lines) == 2, proc.stderr
        assert lines[0].startswith(f"iam-sorry: error: {named} ") and lines[1].startswith("iam-sorry: hint: ")


@needs_root
def test_a_planted_lock_file_never_truncates_a_file(pyz: Path, bare_python: Path, tmp_path: Path) -> None:
    """shiv opens its lock with O_TRUNC and follows links."""
    precious = tmp_path / "precious"
    precious.write_text("keep me")
    root = tmp_path / "shiv"
    root.mkdir(mode=0o700)
    lock = root / f".{extraction_name(pyz)}_lock"
    lock.symlink_to(precious)
    os.lchown(lock, NOBODY, NOBODY)
    proc = run_pyz(bare_python, pyz, "--version", env=node_env(tmp_path))
    assert precious.read_text() == "keep me"
    assert proc.returncode == 1 and proc.stderr.startswith(f"iam-sorry: error: {lock} "), proc.stderr


def test_the_planted_pth_would_run_from_an_extraction_that_is_ours(
    pyz: Path, bare_python: Path, tmp_path: Path
) -> None:
    """The control for the test above: the same plant, ours, does run."""
    marker = tmp_path / "planted-code-ran"
    root = tmp_path / "shiv"
    root.mkdir(mode=0o700)
    plant_pth(root / extraction_name(pyz), marker)
    run_pyz(bare_python, pyz, "--version", env=node_env(tmp_path))
    assert marker.exists()


def test_first_extraction_is_private_whatever_the_umask(pyz: Path, bare_python: Path, tmp_path: Path) -> None:
    """SHIV_ROOT is created 0700 and shiv extracts with no group/other write
    bits, so the next run passes the check; the entry point still sees the
    caller's umask."""
    script = tmp_path / "umask.py"
    script.write_text("import os\nprint(oct(os.umask(0)))\n")
    root = tmp_path / "new" / "shiv"
    env = node_env(tmp_path, SHIV_ROOT=str(root))
    cmd = [str(bare_python), "-X", "importtime", str(pyz)]
    first = subprocess.run(
        [*cmd, str(script)],
        env={**env, "SHIV_INTERPRETER": "1"},
        umask=0o002,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert first.returncode == 0, first.stderr
    assert first.stdout == "0o2\n" and "| _bootstrap\n" in first.stderr
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    written = [Path(d, n) for d, dirs, files in os.walk(root) for n in [*dirs, *files]]
    assert len(written) > 1000 and not [p for p in written if p.lstat().st_mode & 0o022]

    again = subprocess.run([*cmd, "--version"], env=env, umask=0o002, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "_bootstrap" not in again.stderr, "an extraction that is ours takes the fast path"


@pytest.mark.parametrize("runtime_dir", ["private", "shared", "unset"])
def test_default_root_is_private(pyz: Path, bare_python: Path, tmp_path: Path, runtime_dir: str) -> None:
    """$XDG_RUNTIME_DIR/shiv when that folder is ours alone, else ~/.shiv."""
    env = node_env(tmp_path)
    del env["SHIV_ROOT"]
    env.pop("XDG_RUNTIME_DIR", None)
    runtime = tmp_path / "run"
    if runtime_dir != "unset":
        runtime.mkdir(mode=0o700)
        runtime.chmod(0o700 if runtime_dir == "private" else 0o777)
        env["XDG_RUNTIME_DIR"] = str(runtime)
    proc = run_pyz(bare_python, pyz, "--version", env=env)
    assert proc.returncode == 0, proc.stderr
    expected = runtime / "shiv" if runtime_dir == "private" else tmp_path / "home" / ".shiv"
    assert (expected / extraction_name(pyz) / "site-packages").is_dir()
    assert stat.S_IMODE(expected.stat().st_mode) == 0o700
    assert list((tmp_path / "home").iterdir()) == ([] if runtime_dir == "private" else [expected])


def test_stub_applies_the_scripts_rule_verbatim(pyz: Path) -> None:
    """One "ours alone" rule: __main__.py holds the script's functions, unchanged."""
    with zipfile.ZipFile(pyz) as archive:
        stub = archive.read("__main__.py").decode()
    script = (ROOT / "iam-sorry").read_text()
    for name in build.SHARED_WITH_SCRIPT:
        [source] = build.function_sources(script, [name])
        assert source in stub
        dumps = [ast.dump(n) for tree in (stub, script) for n in ast.parse(tree).body if getattr(n, "name", "") == name]
        assert len(dumps) == 2 and dumps[0] == dumps[1], name


def test_slim_bundle_has_only_the_needed_models(builds: dict[str, Path], bare_python: Path, tmp_path: Path) -> None:
    out = tmp_path / "slim.pyz"
    run_build("--slim", "--out", str(out), "--build-dir", str(builds["build_dir"]))
    with zipfile.ZipFile(out) as archive:
        models = {n.split("/")[3] for n in archive.namelist() if n.startswith("site-packages/botocore/data/")}
    assert {"iam", "sts"} <= models and "s3" not in models
    assert bundled_marker(out)["slim"] is True
    script = tmp_path / "clients.py"
    script.write_text(
        "import boto3, botocore.exceptions\n"
        "s = boto3.session.Session(region_name='us-east-1')\n"
        "s.client('iam'); s.client('sts')\n"
        "try:\n    s.client('s3')\nexcept botocore.exceptions.UnknownServiceError:\n    print('no s3')\n"
    )
    proc = run_pyz(bare_python, out, str(script), env=node_env(tmp_path, SHIV_INTERPRETER="1"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "no s3"


# --------------------------------------------------------------------------
# Acceptance: the seed Quick Start on a node that has only python3.


def _aws_node_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """node_env plus what the aws fixture set up (endpoint, agent socket):
    node_env drops IAM_SORRY_*, so the short propagation timeout comes back
    explicitly, or a failing key check would wait for the default."""
    return node_env(tmp_path, IAM_SORRY_PROPAGATION_TIMEOUT="20", **extra)


def _quick_start(pyz: Path, python: Path, aws: FakeAws, env: dict[str, str]) -> tuple[str, str]:
    """Administrator creates sue-mgr, the user bootstraps: both with the
    bundle on ``python``.  Returns the hand-over key."""
    made = run_pyz(python, pyz, "--profile", "aws-admin", "--create-iam-sorry", "sue-mgr", env=env)
    assert made.returncode == 0, made.stderr
    key_id, secret = parse_handover(made.stdout)
    assert aws.key_status("sue-mgr") == {key_id: "Active"}
    # The user exports the hand-over key and runs the bundle bare: ssh-agent
    # signature, AES-GCM sealing, IAM key rotation and the first mint.
    boot_env = {**env, "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": REGION}
    boot = run_pyz(python, pyz, env=boot_env)
    assert boot.returncode == 0, boot.stderr
    assert secret not in boot.stdout + boot.stderr
    return key_id, secret


def test_bundle_bootstraps_the_quick_start_on_a_bare_interpreter(
    pyz: Path, bare_python: Path, aws: FakeAws, ed25519: Path, tmp_path: Path
) -> None:
    env = _aws_node_env(tmp_path)
    # The first run extracts into the private SHIV_ROOT; the next ones reuse it.
    proc = run_pyz(bare_python, pyz, "--version", env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"iam-sorry {iamsorry.__version__}"

    key_id, _ = _quick_start(pyz, bare_python, aws, env)
    profiles = aws.profiles()
    assert iamsorry.is_sealed(profiles["sue-mgr"]["aws_access_key_id"])
    assert key_id not in aws.key_status("sue-mgr")  # the key the administrator saw is gone
    assert aws.whoami(profiles["sue"]) == "arn:aws:iam::123456789012:user/iam-sorry/sue"


def test_bundle_eval_in_bash_yields_sues_identity(
    pyz: Path, bare_python: Path, aws: FakeAws, ed25519: Path, tmp_path: Path
) -> None:
    env = _aws_node_env(tmp_path)
    _quick_start(pyz, bare_python, aws, env)
    # As on a node: the file copied into a directory and run through its
    # shebang, so `python3` must resolve to the bare venv, first on PATH.
    node = tmp_path / "node"
    node.mkdir()
    shutil.copy2(pyz, node / "iam-sorry.pyz")
    # The identity check runs the test's own interpreter by absolute path,
    # because `python3` on this PATH is the bare one without boto3.  It sees
    # no AWS keys but what the eval exported: there is no [default] profile.
    whoami = "import boto3; print(boto3.client('sts').get_caller_identity()['Arn'])"
    script = "\n".join(
        [
            "set -e",
            f'[ "$(command -v python3)" = {shlex.quote(str(bare_python.parent / "python3"))} ]',
            'eval "$(./iam-sorry.pyz --eval sue)"',
            '[ -n "$AWS_SESSION_TOKEN" ]',
            f"{shlex.quote(sys.executable)} -c {shlex.quote(whoami)}",
        ]
    )
    path = f"{bare_python.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    out = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, cwd=node, timeout=300, env={**env, "PATH": path}
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "arn:aws:iam::123456789012:user/iam-sorry/sue"


# --------------------------------------------------------------------------
# Other targets and the vendored directory.


def test_cross_version_vendor_dir(builds: dict[str, Path], tmp_path: Path) -> None:
    dest = tmp_path / "vendor"
    run_build(
        "--vendor",
        str(dest),
        "--python-version",
        "3.9",
        "--platform",
        "manylinux2014_x86_64",
        "--build-dir",
        str(builds["build_dir"]),
    )
    marker = json.loads((dest / build.MARKER_NAME).read_text())
    assert set(marker) == {"python", "platform", "machine", "glibc", "packages", "slim"}
    assert (marker["python"], marker["platform"], marker["machine"]) == ("3.9", "manylinux2014_x86_64", "x86_64")
    assert marker["glibc"] == "2.17" and marker["slim"] is False
    target = build.make_target("3.9", "manylinux2014_x86_64")
    pins = build.select_for_target(
        build.parse_lock_section(build.read_lock_sections(build.DEFAULT_LOCK)["runtime"]),
        build.target_environment(target),
    )
    assert marker["packages"] == {name: entry.requirement.partition("==")[2] for name, entry in pins.items()}
    # The pitfall: a 3.11+ build host would drop typing-extensions (cryptography
    # needs it below 3.11) and pick a urllib3 that botocore forbids below 3.10.
    assert "typing-extensions" in marker["packages"]
    assert build.check_installed(dest, build.target_environment(target)) == []
    assert list(dest.glob("_cffi_backend.cpython-39-*.so")) and not (dest / "bin").exists()


def test_vendor_refuses_to_replace_a_foreign_directory(builds: dict[str, Path], tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data.txt").write_text("keep me")
    proc = subprocess.run(
        [sys.executable, str(BUILD_PY), "--vendor", str(precious), "--build-dir", str(builds["build_dir"])],
        capture_output=True,
        text=True,
        env=BUILD_ENV,
    )
    assert proc.returncode == 1 and "refusing" in proc.stderr
    assert (precious / "data.txt").read_text() == "keep me"


# --------------------------------------------------------------------------
# Unit tests: markers, lock selection, target check (no network).


def _dist(site: Path, name: str, version: str, *requires: str, requires_python: str = "") -> None:
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Python: {requires_python}"] if requires_python else []
    lines += [f"Requires-Dist: {r}" for r in requires]
    (info / "METADATA").write_text("\n".join(lines) + "\n")


def test_marker_check_evaluates_for_the_target(tmp_path: Path) -> None:
    """What pip --python-version 3.9 on a 3.11 host installs: the host's choice."""
    _dist(
        tmp_path,
        "app",
        "1.0",
        'legacy>=2; python_version < "3.10"',
        'modern; python_version >= "3.10"',
        'winonly; sys_platform == "win32"',
        requires_python=">=3.8",
    )
    _dist(tmp_path, "modern", "1.0")
    env39 = build.target_environment(build.make_target("3.9", "manylinux2014_x86_64"))
    env311 = build.target_environment(build.make_target("3.11", "manylinux2014_aarch64"))

    assert build.check_installed(tmp_path, env311, roots=("app",)) == []
    problems = build.check_installed(tmp_path, env39, roots=("app",))
    assert any("legacy" in p and "not installed" in p for p in problems), problems
    assert any("modern is installed but nothing requires it" in p for p in problems), problems

    _dist(tmp_path, "legacy", "1.5")
    problems = build.check_installed(tmp_path, env39, roots=("app",))
    assert any("legacy 1.5 is installed" in p for p in problems), problems


def test_requires_python_is_checked_for_the_target(tmp_path: Path) -> None:
    _dist(tmp_path, "new-only", "2.0", requires_python=">=3.10")
    env39 = build.target_environment(build.make_target("3.9", "manylinux2014_x86_64"))
    assert build.check_installed(tmp_path, env39, roots=("new-only",)) == ["new-only 2.0 requires Python >=3.10"]


def test_lock_selection_uses_target_markers() -> None:
    section = (
        "urllib3==1.26.20 ; python_full_version < '3.10' \\\n    --hash=sha256:aa\n    # via botocore\n"
        "urllib3==2.8.0 ; python_full_version >= '3.10' \\\n    --hash=sha256:bb \\\n    --hash=sha256:cc\n"
        "typing-extensions==4.16.0 ; python_full_version < '3.11' --hash=sha256:dd\n"
        + "".join(f"{name}==1.0 --hash=sha256:ee\n" for name in build.RUNTIME_REQUIREMENTS)
    )
    entries = build.parse_lock_section(section)
    old = build.select_for_target(entries, build.target_environment(build.make_target("3.9", None)))
    new = build.select_for_target(entries, build.target_environment(build.make_target("3.12", None)))
    assert old["urllib3"] == build.LockEntry("urllib3==1.26.20", ("sha256:aa",))
    assert new["urllib3"] == build.LockEntry("urllib3==2.8.0", ("sha256:bb", "sha256:cc"))
    assert "typing-extensions" in old and "typing-extensions" not in new


@pytest.mark.parametrize("python", build.CHECK_PYTHONS)
def test_lock_pins_every_supported_python(python: str) -> None:
    sections = build.read_lock_sections(build.DEFAULT_LOCK)
    assert {"runtime", "build", "lock-tools"} <= set(sections)
    env = build.target_environment(build.make_target(python, "manylinux2014_x86_64"))
    pins = build.select_for_target(build.parse_lock_section(sections["runtime"]), env)
    assert all(e.hashes and all(h.startswith("sha256:") for h in e.hashes) for e in pins.values())
    assert all("==" in e.requirement for e in pins.values())


def test_target_names() -> None:
    assert build.make_target("3.11", "manylinux2014_x86_64").label == "py3.11-manylinux2014_x86_64"
    assert build.make_target("3.9", None).platform.startswith("manylinux2014_")
    assert build.make_target("3.9", "manylinux2014_aarch64").full_version == "3.9.99"
    assert build.make_target(None, None).label == "host"
    with pytest.raises(build.BuildError):
        build.make_target("3.11", "win_amd64")


def test_target_check_refuses_the_wrong_interpreter(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    built_for = {"python": "2.7", "machine": "x86_64", "platform": "manylinux2014_x86_64", "glibc": None}
    monkeypatch.setattr(build, "BUILT_FOR", built_for)
    with pytest.raises(SystemExit):
        build.bundle_check_target("/nowhere")
    assert "--python-version" in capsys.readouterr().err
    monkeypatch.setenv("IAM_SORRY_SKIP_TARGET_CHECK", "1")
    build.bundle_check_target("/nowhere")


@pytest.mark.skipif(
    not (hasattr(os, "confstr") and (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc ")),
    reason="needs glibc",
)
def test_target_check_refuses_an_old_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    here = {"python": f"{sys.version_info[0]}.{sys.version_info[1]}", "machine": os.uname().machine, "platform": "host"}
    monkeypatch.setattr(build, "BUILT_FOR", {**here, "glibc": "2.17"})
    assert build.bundle_mismatch() is None
    monkeypatch.setattr(build, "BUILT_FOR", {**here, "glibc": "99.0"})
    assert "glibc 99.0" in (build.bundle_mismatch() or "")
