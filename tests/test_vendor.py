"""The bare script on an interpreter with nothing installed.

Cluster nodes often have ``python3`` without pip.  There, everything that
needs only the standard library (cached ``--eval``, listing, printing
policies) must work as is; anything that reaches AWS must either find a
vendored folder (``build.py --vendor``) or stop with one clear message.

Every run uses a *copy* of the script in the test's own directory, an empty
private ``SHIV_ROOT`` and the private HOME from conftest, so that no
``vendor/`` next to the work tree and no extracted bundle can be picked up
by accident: the vendor finder looks in all of those places.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ADMIN_KEY, ROOT, SCRIPT, FakeAws, assert_clean_error, iamsorry, needs_root, parse_handover

MARKER = "iam-sorry-vendor.json"
HERE_PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"
# The vendor build uses the real HOME for pip's cache and configuration
# (index mirrors); captured at import, before conftest swaps HOME per test.
BUILD_ENV = dict(os.environ)
AWS_PACKAGES = ("boto3", "botocore", "cryptography", "bcrypt", "s3transfer", "urllib3")


@pytest.fixture(scope="session")
def empty_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``venv --without-pip`` interpreter: the host's stdlib, no site-packages."""
    venv_dir = tmp_path_factory.mktemp("empty") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv_dir)], check=True)
    python = venv_dir / "bin" / "python"
    # Without this the tests below would prove nothing.
    for name in ("boto3", "botocore", "cryptography"):
        probe = subprocess.run([str(python), "-c", f"import {name}"], capture_output=True)
        assert probe.returncode != 0, f"the empty venv must not see {name}"
    return python


@pytest.fixture(scope="session")
def vendor_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``build.py --vendor`` for this interpreter, once per session (~10 s
    with a warm pip cache), in its own build directory so this module does
    not depend on the .pyz builds of test_build.py."""
    base = tmp_path_factory.mktemp("vendored")
    dest = base / "vendor"
    cmd = [sys.executable, str(ROOT / "build.py"), "--vendor", str(dest), "--build-dir", str(base / "build")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=BUILD_ENV, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert json.loads((dest / MARKER).read_text())["python"] == HERE_PYTHON
    return dest


def script_copy(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / "iam-sorry"
    shutil.copy2(SCRIPT, copy)
    return copy


def node_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The test's environment (private HOME, no ambient AWS_*), minus
    anything that could hand the empty interpreter packages: PYTHONPATH,
    a shared SHIV_ROOT, IAM_SORRY_VENDOR."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHIV_", "IAM_SORRY_", "PYTHON"))}
    (tmp_path / "shiv").mkdir(exist_ok=True)
    return {**env, "SHIV_ROOT": str(tmp_path / "shiv"), "IAM_SORRY_PROPAGATION_TIMEOUT": "20", **extra}


def run(python: Path, script: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), str(script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def versions(proc: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert proc.returncode == 0, proc.stderr
    return dict(line.split(None, 1) for line in proc.stdout.splitlines() if line.strip())


def write_credentials(home: Path, text: str) -> None:
    aws_dir = home / ".aws"
    aws_dir.mkdir(exist_ok=True)
    creds = aws_dir / "credentials"
    creds.write_text(text)
    creds.chmod(0o600)


def plain_manager(home: Path) -> None:
    """A plain-text ``[iam-sorry]`` manager: selecting it needs no
    cryptography, so the first third-party import is the AWS SDK's."""
    write_credentials(
        home, f"[iam-sorry]\naws_access_key_id = {ADMIN_KEY[0]}\naws_secret_access_key = {ADMIN_KEY[1]}\n"
    )


def assert_missing_dependency(proc: subprocess.CompletedProcess[str], python: Path) -> None:
    assert_clean_error(proc, "pip install", "iam-sorry.pyz", str(python))
    error = next(ln for ln in proc.stderr.splitlines() if ln.startswith("iam-sorry: error:"))
    # Which module is imported first is an implementation detail; it must
    # be named, and it must be one of the AWS SDK's.
    assert "this needs boto3" in error or "this needs botocore" in error, proc.stderr


# --------------------------------------------------------------------------
# Nothing installed, nothing vendored.

FUTURE = "2099-01-01T00:00:00Z"
SEALED = "__encrypted__:v2:abc:AAAA"  # never opened: only its form is read
STORE = f"""\
[sue]
aws_access_key_id = ASIASUESESSION000001
aws_secret_access_key = sue/session/secret
aws_session_token = sue-session-token
expiration = {FUTURE}
credentials_owner = sue
[static]
aws_access_key_id = AKIASTATIC0000000001
aws_secret_access_key = static/secret
[sue-mgr]
aws_access_key_id = {SEALED}
aws_secret_access_key = {SEALED}
"""


def _eval_session(out: str) -> None:
    assert out == (
        "export AWS_ACCESS_KEY_ID='ASIASUESESSION000001'\n"
        "export AWS_SECRET_ACCESS_KEY='sue/session/secret'\n"
        "export AWS_SESSION_TOKEN='sue-session-token'\n"
        f"export AWS_CREDENTIAL_EXPIRATION='{FUTURE}'\n"
    )


def _eval_static(out: str) -> None:
    # Unsetting matters: a stale session token would poison the static key.
    assert out == (
        "export AWS_ACCESS_KEY_ID='AKIASTATIC0000000001'\n"
        "export AWS_SECRET_ACCESS_KEY='static/secret'\n"
        "unset AWS_SESSION_TOKEN\nunset AWS_CREDENTIAL_EXPIRATION\n"
    )


def _profiles(out: str) -> None:
    kinds = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:]}
    assert kinds == {"sue": "session", "static": "static", "sue-mgr": "manager"}, out


def _profiles_json(out: str) -> None:
    rows = {row["profile"]: row for row in json.loads(out)}
    assert rows["sue"]["expiration"] == FUTURE and rows["sue"]["seconds_left"] > 0
    assert rows["sue-mgr"]["sealed_for"] == "SHA256:abc"


def _policy(out: str) -> None:
    assert json.loads(out) == iamsorry.manager_policy("sue", "123456789012")


def _show_encrypted(out: str) -> None:
    assert f"aws_access_key_id = {SEALED}\n" in out and "# sealed for SSH key SHA256:abc\n" in out, out


def _version(out: str) -> None:
    assert out == f"iam-sorry {iamsorry.__version__}\n"


@pytest.mark.parametrize(
    ("args", "check"),
    [
        (["--eval", "sue", "--shell", "sh"], _eval_session),
        (["--eval", "static", "--shell", "sh"], _eval_static),
        (["--profiles"], _profiles),
        (["--profiles", "--json"], _profiles_json),
        (["--print-policy", "sue", "--account-id", "123456789012"], _policy),
        (["--show-encrypted", "sue-mgr"], _show_encrypted),
        (["--version"], _version),
    ],
    ids=["eval-session", "eval-static", "profiles", "profiles-json", "print-policy", "show-encrypted", "version"],
)
def test_stdlib_paths_work_with_nothing_installed(
    empty_python: Path, tmp_path: Path, private_home: Path, args: list[str], check: Callable[[str], None]
) -> None:
    write_credentials(private_home, STORE)
    proc = run(empty_python, script_copy(tmp_path / "bin"), *args, env=node_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "error" not in proc.stderr, proc.stderr
    check(proc.stdout)


@pytest.mark.parametrize("args", [["--print-policy", "sue"], ["sue"]], ids=["print-policy", "mint"])
def test_aws_path_without_packages_is_one_clear_error(
    empty_python: Path, tmp_path: Path, private_home: Path, args: list[str]
) -> None:
    plain_manager(private_home)
    proc = run(empty_python, script_copy(tmp_path / "bin"), *args, env=node_env(tmp_path))
    assert_missing_dependency(proc, empty_python)


def test_versions_say_missing_with_nothing_installed(empty_python: Path, tmp_path: Path) -> None:
    reported = versions(run(empty_python, script_copy(tmp_path / "bin"), "--versions", env=node_env(tmp_path)))
    assert all(reported[name] == "missing" for name in AWS_PACKAGES), reported


# --------------------------------------------------------------------------
# A vendored folder from build.py --vendor.


def assert_vendored_versions(reported: dict[str, str], vendor: Path) -> None:
    packages = json.loads((vendor / MARKER).read_text())["packages"]
    for name in AWS_PACKAGES:
        assert reported[name] == packages[name], reported


def test_iam_sorry_vendor_serves_versions_and_a_real_aws_call(
    empty_python: Path, vendor_dir: Path, aws: FakeAws, tmp_path: Path
) -> None:
    script = script_copy(tmp_path / "bin")
    env = node_env(tmp_path, IAM_SORRY_VENDOR=str(vendor_dir))
    assert_vendored_versions(versions(run(empty_python, script, "--versions", env=env)), vendor_dir)

    # boto3/botocore imported from the folder, talking to the moto server.
    made = run(empty_python, script, "--profile", "aws-admin", "--create-iam-sorry", "sue-mgr", env=env)
    assert made.returncode == 0, made.stderr
    key_id, secret = parse_handover(made.stdout)
    assert aws.key_status("sue-mgr") == {key_id: "Active"}
    assert aws.whoami({"aws_access_key_id": key_id, "aws_secret_access_key": secret}).endswith(":user/sue-mgr")


def test_vendor_next_to_a_copy_of_the_script(
    empty_python: Path, vendor_dir: Path, aws: FakeAws, tmp_path: Path, private_home: Path
) -> None:
    script = script_copy(tmp_path / "opt")
    (script.parent / "vendor").symlink_to(vendor_dir, target_is_directory=True)
    env = node_env(tmp_path)  # no IAM_SORRY_VENDOR
    assert_vendored_versions(versions(run(empty_python, script, "--versions", env=env)), vendor_dir)

    # The account comes from STS, so the AWS SDK really was imported.
    plain_manager(private_home)
    proc = run(empty_python, script, "--print-policy", "sue", env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == iamsorry.manager_policy("sue", "123456789012")


def _other_python() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1] + 1}"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("python", _other_python()),
        ("machine", "riscv64" if platform.machine() != "riscv64" else "x86_64"),
        pytest.param("glibc", "99.0", marks=pytest.mark.skipif(iamsorry._glibc() is None, reason="needs glibc")),
    ],
    ids=["python", "machine", "glibc"],
)
def test_vendor_for_another_target_is_ignored(
    empty_python: Path, vendor_dir: Path, tmp_path: Path, private_home: Path, field: str, value: str
) -> None:
    # A copy of the vendor folder made of symlinks, so only its marker
    # differs; first proven usable with the marker as built.
    farm = tmp_path / "vendor"
    farm.mkdir()
    for entry in vendor_dir.iterdir():
        if entry.name != MARKER:
            (farm / entry.name).symlink_to(entry)
    marker = json.loads((vendor_dir / MARKER).read_text())
    (farm / MARKER).write_text(json.dumps(marker))
    script = script_copy(tmp_path / "bin")
    env = node_env(tmp_path, IAM_SORRY_VENDOR=str(farm))
    assert_vendored_versions(versions(run(empty_python, script, "--versions", env=env)), vendor_dir)

    (farm / MARKER).write_text(json.dumps({**marker, field: value}))
    reported = versions(run(empty_python, script, "--versions", env=env))
    assert all(reported[name] == "missing" for name in AWS_PACKAGES), reported
    plain_manager(private_home)
    assert_missing_dependency(run(empty_python, script, "--print-policy", "sue", env=env), empty_python)


def test_shiv_extractions_others_could_write_are_never_imported(tmp_path: Path, monkeypatch) -> None:
    """A neighbour on a shared /tmp can pre-create SHIV_ROOT or an extraction
    in it; code found there by searching must be ours alone."""
    from conftest import iamsorry

    root = tmp_path / "shiv"
    good = root / "iam-sorry.pyz_good" / "site-packages"
    planted = root / "iam-sorry.pyz_planted" / "site-packages"
    wide = root / "iam-sorry.pyz_wide" / "site-packages"
    for folder in (good, planted, wide):
        folder.mkdir(parents=True)
        (folder / "iam-sorry-vendor.json").write_text("{}")
    os.chmod(root, 0o700)
    os.chown(planted.parent, 65534, 65534) if os.getuid() == 0 else os.chmod(planted.parent, 0o777)
    os.chmod(wide, 0o777)
    monkeypatch.setenv("SHIV_ROOT", str(root))
    monkeypatch.delenv("IAM_SORRY_VENDOR", raising=False)
    assert iamsorry._vendor_candidates() == [str(good)]


NOBODY = 65534


@needs_root
def test_an_extraction_another_uid_planted_never_runs(empty_python: Path, tmp_path: Path, private_home: Path) -> None:
    """The vendor search finds a fitting extraction whose boto3 would run as
    us; while another uid owns it, it is never imported."""
    ran = tmp_path / "planted-code-ran"
    env = node_env(tmp_path)
    extraction = Path(env["SHIV_ROOT"], "iam-sorry.pyz_planted")
    site = extraction / "site-packages"
    (site / "boto3").mkdir(parents=True)
    (site / MARKER).write_text(json.dumps({"python": HERE_PYTHON, "machine": platform.machine(), "glibc": None}))
    (site / "boto3" / "__init__.py").write_text(f"open({str(ran)!r}, 'w').close()\n")
    script = script_copy(tmp_path / "bin")
    plain_manager(private_home)  # so that --print-policy imports boto3 to ask STS for the account
    for path in (extraction, site, site / "boto3"):
        os.chown(path, NOBODY, NOBODY)
    assert_missing_dependency(run(empty_python, script, "--print-policy", "sue", env=env), empty_python)
    assert not ran.exists()

    for path in (extraction, site, site / "boto3"):
        os.chown(path, 0, 0)
    run(empty_python, script, "--print-policy", "sue", env=env)
    assert ran.exists(), "the same folder, ours, is imported: the check above is what stopped it"


@needs_root
def test_private_tree_is_the_whole_path_ours_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rule the script and the .pyz share, for a user who is not root
    (uid 1000 here); tmp_path and everything above it belong to root."""
    me = 1000
    monkeypatch.setattr(os, "getuid", lambda: me)

    def folder(path: Path, owner: int, mode: int) -> str:
        path.mkdir()
        os.chown(path, owner, owner)
        path.chmod(mode)
        return str(path)

    base = Path(os.path.realpath(tmp_path))
    mine = folder(base / "mine", me, 0o755)
    folder(base / "sticky", 0, 0o1777)
    folder(base / "open", 0, 0o777)
    folder(base / "other", NOBODY, 0o755)
    folder(base / "other" / "root", 0, 0o755)
    (base / "link-to-mine").symlink_to(mine)
    (base / "link-to-other").symlink_to(folder(base / "other" / "mine", me, 0o700))
    ours = {
        "mine": mine,
        "sticky/mine": folder(base / "sticky" / "mine", me, 0o700),  # /tmp-like parent
        "sticky/root": folder(base / "sticky" / "root", 0, 0o755),  # root is trusted
        "link-to-mine": mine,  # the real path, the one that was checked
    }
    not_ours = {
        "sticky": None,  # others can add entries to it
        "mine/group": folder(base / "mine" / "group", me, 0o775),
        "open/mine": folder(base / "open" / "mine", me, 0o700),  # others can swap it
        "other/mine": None,
        "other/root/mine": folder(base / "other" / "root" / "mine", me, 0o700),  # checked past root's folder
        "link-to-other": None,
        "missing": None,
    }
    for name, real in {**ours, **{n: None for n in not_ours}}.items():
        assert iamsorry._private_tree(str(base / name)) == real, name
