"""Test harness: the script loaded as module ``iamsorry``, a private HOME, no
ambient AWS settings.

The script has no ``.py`` suffix; an editable install copies it once and
then goes stale, so tests always load the file in the work tree."""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.util
import os
import pty
import re
import select
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
# IAM_SORRY_SCRIPT points the tests at another copy of the script: the
# mutation runs (tests/mutation.py) test a mutated .py copy this way.
SCRIPT = Path(os.environ.get("IAM_SORRY_SCRIPT") or ROOT / "iam-sorry")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _load_iamsorry():
    loader = importlib.machinery.SourceFileLoader("iamsorry", str(SCRIPT))
    spec = importlib.util.spec_from_loader("iamsorry", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["iamsorry"] = module
    loader.exec_module(module)
    return module


iamsorry = _load_iamsorry()


@pytest.fixture(autouse=True)
def private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own HOME and none of the developer's AWS,
    Kerberos or ssh-agent settings."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in list(os.environ):
        if name.startswith(("AWS_", "IAM_SORRY_", "KRB5")) or name in ("SSH_AUTH_SOCK", "SSH_AGENT_PID"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    iamsorry.forget_secrets()
    iamsorry.UI.once.clear()
    iamsorry.UI.stream, iamsorry.UI.quiet = None, False
    return home


# An AWS access key id, unmasked.  Only lines made to hand credentials over
# (shell exports, INI lines, credential_process JSON) or to export the audit
# trail as stored (audit list --json, matched against CloudTrail) may carry
# one, and only on stdout; every message elsewhere must mask it (AKIA…WXYZ).
KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")
_HANDOVER_LINE = re.compile(
    r"\s*(?:export AWS_ACCESS_KEY_ID=|setenv AWS_ACCESS_KEY_ID |set -gx AWS_ACCESS_KEY_ID |aws_access_key_id = "
    r"|\{\"Version\": 1, \"AccessKeyId\": |\"key_id\": \")"
)


def assert_key_ids_masked(stdout: str, stderr: str = "") -> None:
    for line in stderr.splitlines():
        assert not KEY_ID.search(line), f"unmasked key id on stderr: {line!r}"
    for line in stdout.splitlines():
        assert not KEY_ID.search(line) or _HANDOVER_LINE.match(line), f"unmasked key id on stdout: {line!r}"


# CI sets CI=true: there a missing shell or tool must fail the test, since a
# skip would hide a path nobody tested.  Read once: private_home drops IAM_SORRY_*.
REQUIRE_TOOLS = bool(os.environ.get("CI") or os.environ.get("IAM_SORRY_REQUIRE_SHELLS"))


def require_program(name: str) -> None:
    """Skip a test whose program is missing, except where it must run."""
    if shutil.which(name) is None:
        if REQUIRE_TOOLS:
            pytest.fail(f"{name} is not installed, and CI must run this test (.ci/run installs it)")
        pytest.skip(f"{name} is not installed")


def require_module(name: str) -> Any:
    """The module a test needs, imported; skipped where it is missing,
    except where it must run (as require_program).  Also at module level."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if REQUIRE_TOOLS:
            pytest.fail(f"cannot import {name} ({exc}), and CI must run this test (.ci/run installs the test extra)")
        pytest.skip(f"{name} is not installed", allow_module_level=True)


def require_root(why: str) -> None:
    """Skip a test that only root can run, except where it must run: CI runs as root."""
    if os.geteuid() != 0:
        if REQUIRE_TOOLS:
            pytest.fail(f"this test needs root ({why}), and CI must run it")
        pytest.skip(f"needs root: {why}")


#: Marks a test (or a parameter) that makes folders of another uid: run as root.
needs_root = pytest.mark.needs_root


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_root: makes folders of another uid, so only root can run it")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("needs_root"):
        require_root("folders of another uid")


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    input: str | None = None,
    timeout: float = 120,
    cwd: str | None = None,
):
    """The script as a user runs it: a subprocess, fresh interpreter.  Every
    line it prints is checked for unmasked key ids."""
    import subprocess

    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=full_env,
        input=input,
        timeout=timeout,
        cwd=cwd,
        start_new_session=True,
    )
    assert_key_ids_masked(proc.stdout, proc.stderr)
    return proc


def run_bare(*args: str, env: dict[str, str]):
    """The script without site-packages (no cryptography, no python-gssapi),
    as on a bare cluster node."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-S", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def assert_clean_error(proc, *needles: str) -> None:
    """One ``iam-sorry: error:`` line (plus an optional hint), non-zero exit,
    no traceback."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("iam-sorry: error:")]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


@pytest.fixture
def ssh_dir(private_home: Path) -> Path:
    d = private_home / ".ssh"
    d.mkdir(mode=0o700, exist_ok=True)
    return d


@pytest.fixture
def agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A real ssh-agent for this test only, on a private socket."""
    from sshkit import Agent

    a = Agent(tmp_path)
    monkeypatch.setenv("SSH_AUTH_SOCK", a.sock)
    yield a
    a.stop()


@pytest.fixture
def ed25519(ssh_dir: Path, agent):
    """~/.ssh/id_ed25519, passphrase-protected, loaded in the agent."""
    from sshkit import make_key

    key = make_key(ssh_dir)
    agent.add(key)
    return key


ADMIN_KEY = ("AKIAADMINADMINADMIN1", "admin/secret/admin/secret/admin/secret00")
REGION = "us-west-2"


def aws_client(
    url: str, service: str, key_id: str = ADMIN_KEY[0], secret: str = ADMIN_KEY[1], token: str | None = None
) -> Any:
    """A boto3 client of the fake AWS at ``url``: the administrator's, unless other keys are given."""
    import boto3

    return boto3.client(
        service,
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        aws_session_token=token,
    )


def admin_profile(home: Path, comment: str = "") -> Path:
    """``home``'s ~/.aws with the fake account's administrator as
    [aws-admin] (the credentials file 0600) and its region; the folder."""
    aws_dir = home / ".aws"
    aws_dir.mkdir(parents=True, exist_ok=True)
    creds = aws_dir / "credentials"
    creds.write_text(
        f"{comment}[aws-admin]\naws_access_key_id = {ADMIN_KEY[0]}\naws_secret_access_key = {ADMIN_KEY[1]}\n"
    )
    creds.chmod(0o600)
    (aws_dir / "config").write_text(f"[profile aws-admin]\nregion = {REGION}\n")
    return aws_dir


class FakeAws:
    """The local moto server (with the identity shim) that a test talks to."""

    def __init__(self, url: str, shim, home: Path) -> None:
        self.url = url
        self.shim = shim
        self.home = home

    def client(self, service: str, key_id: str = ADMIN_KEY[0], secret: str = ADMIN_KEY[1], token: str | None = None):
        return aws_client(self.url, service, key_id, secret, token)

    def whoami(self, profile: dict[str, str]) -> str:
        """The ARN AWS says a credentials profile belongs to."""
        sts = self.client(
            "sts", profile["aws_access_key_id"], profile["aws_secret_access_key"], profile.get("aws_session_token")
        )
        return str(sts.get_caller_identity()["Arn"])

    def profiles(self) -> dict:
        return iamsorry.read_aws_credentials()

    def key_status(self, user: str) -> dict[str, str]:
        keys = self.client("iam").list_access_keys(UserName=user)["AccessKeyMetadata"]
        return {k["AccessKeyId"]: k["Status"] for k in keys}


@pytest.fixture(scope="session")
def krb_realm():
    """A throwaway MIT Kerberos realm (tests/krbkit.py) for the whole run:
    users sue, ann, bob; HTTP/localhost in its keytab."""
    import krbkit

    yield from krbkit.session_realm()


@pytest.fixture(scope="session")
def moto_url():
    from moto_shim import start_server

    url, stop = start_server()
    yield url
    stop()


@pytest.fixture(scope="session")
def pg_server():
    """One PostgreSQL cluster for the session (tests/pgkit.py), removed at the end."""
    import pgkit

    server = pgkit.start()
    yield server
    server.destroy()


@pytest.fixture
def pg(pg_server):
    """The session's cluster, started again if an earlier test left it down."""
    if not pg_server.running:
        pg_server.start()
    return pg_server


@pytest.fixture
def shim(moto_url: str) -> Iterator[Any]:
    """The moto server's shim with its calls counted from zero; whatever a
    test set on it (faults, delays, lifetimes) is undone afterwards, for the
    shim serves every later test of the process."""
    import moto_shim

    found = moto_shim.install()
    found.reset_calls()
    yield found
    found.propagation_delay, found.session_seconds = 0.0, None
    found.clear_faults()
    found.reset_calls()


@pytest.fixture
def aws(moto_url: str, private_home: Path, monkeypatch: pytest.MonkeyPatch) -> FakeAws:
    """A clean fake AWS account, the CLI pointed at it, and an admin profile."""
    import urllib.request

    import moto_shim

    urllib.request.urlopen(urllib.request.Request(moto_url + "/moto-api/reset", method="POST")).read()
    shim = moto_shim.install()
    shim.reset()
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.setenv("IAM_SORRY_PROPAGATION_TIMEOUT", "20")
    admin_profile(private_home, comment="# admin's profile\n")
    return FakeAws(moto_url, shim, private_home)


def bash(script: str, env: dict[str, str] | None = None):
    """A bash script in the test's environment (plus ``env``)."""
    import subprocess

    full = {**os.environ, **(env or {})}
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=full, timeout=120)


def session_env(c: dict) -> dict[str, str]:
    """The environment of STS ``Credentials``."""
    return {
        "AWS_ACCESS_KEY_ID": c["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": c["SecretAccessKey"],
        "AWS_SESSION_TOKEN": c["SessionToken"],
    }


def creds_file(home: Path) -> Path:
    """~/.aws/credentials of a test's HOME, its folder made."""
    p = home / ".aws" / "credentials"
    p.parent.mkdir(exist_ok=True)
    return p


def parse_handover(stdout: str) -> tuple[str, str]:
    key_id = stdout.split("aws_access_key_id = ", 1)[1].split()[0]
    secret = stdout.split("aws_secret_access_key = ", 1)[1].split()[0]
    return key_id, secret


def hand_over(name: str = "sue-mgr", env: dict[str, str] | None = None) -> tuple[str, str]:
    """The administrator creates manager NAME; the key id and secret it
    hands to the user."""
    made = run_cli("--profile", "aws-admin", "--create-iam-sorry", name, env=env)
    assert made.returncode == 0, made.stderr
    return parse_handover(made.stdout)


def exported(key: tuple[str, str], region: str = REGION) -> dict[str, str]:
    """The environment of a user who exported the key they were sent."""
    return {"AWS_ACCESS_KEY_ID": key[0], "AWS_SECRET_ACCESS_KEY": key[1], "AWS_REGION": region}


def expire_profile(profile: str = "sue", when: str = "2020-01-01T00:00:00Z") -> None:
    """Make [profile] look stale to the next --eval."""
    with iamsorry.Store().edit() as s:
        s.creds.set(profile, {"expiration": when})


@pytest.fixture
def manager(aws: FakeAws, ed25519: Path) -> FakeAws:
    """The seed Quick Start up to a bootstrapped sue-mgr with [sue]."""
    boot = run_cli(env=exported(hand_over()))
    assert boot.returncode == 0, boot.stderr
    return aws


def run_in_pty(
    args: list[str], env: dict[str, str], answers: list[str], timeout: float = 30, prompt: bytes = b"passphrase"
) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as its controlling tty and type answers
    at each passphrase prompt; return (exit status, everything shown)."""
    pid, fd = pty.fork()
    if pid == 0:  # child
        os.execve(sys.executable, [sys.executable, str(SCRIPT), *args], env)
    shown, deadline = b"", time.monotonic() + timeout
    pending = list(answers)
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
            if pending and prompt in chunk and chunk.rstrip().endswith((b":", b"]")):
                os.write(fd, (pending.pop(0) + "\n").encode())
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        raise AssertionError(f"the CLI under a pty did not finish within {timeout:g}s; it showed: {shown!r}")
    _, status = os.waitpid(pid, 0)
    text = shown.decode(errors="replace")
    assert_key_ids_masked(text)  # a pty merges stdout and stderr: hold both to stdout's rule
    return os.waitstatus_to_exitcode(status), text


def run_all(argvs: list[list[str]], timeout: float, env: dict[str, str] | None = None, merge: bool = False) -> list:
    """Start every command at once, each in a session of its own, and wait
    for all of them within ``timeout`` seconds (for the lot); their
    ``CompletedProcess``es, in order (``merge``: stderr into stdout).
    Output goes to temporary files, so that no full pipe holds a process
    back; whatever still runs when this fails is killed with its group."""
    import signal
    import subprocess
    import tempfile

    deadline = time.monotonic() + timeout
    started: list[tuple[subprocess.Popen[bytes], Any, Any]] = []
    with contextlib.ExitStack() as files:
        try:
            for argv in argvs:
                out = files.enter_context(tempfile.TemporaryFile())
                err = out if merge else files.enter_context(tempfile.TemporaryFile())
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, start_new_session=True
                )
                started.append((proc, out, err))
            for proc, _, _ in started:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        finally:
            for proc, _, _ in started:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        return [
            subprocess.CompletedProcess(proc.args, proc.returncode, _read_back(out), "" if merge else _read_back(err))
            for proc, out, err in started
        ]


def _read_back(f: Any) -> str:
    f.seek(0)
    return str(f.read().decode(errors="replace"))


_HOLD_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print('held', flush=True)
sys.stdin.readline()
"""


class LockHolder:
    """Another process holding the exclusive flock on a lock file (the
    store's ``credentials.lock``) until released or killed."""

    def __init__(self, proc: Any, path: Path) -> None:
        self.proc, self.path = proc, path

    def await_waiter(self, waiter: Any, timeout: float = 60) -> None:
        """Return once process ``waiter`` has the lock file open: the store
        opens it only to take the lock, which this holder has, so from then
        on ``waiter`` is waiting for it."""
        deadline = time.monotonic() + timeout
        while not any(_points_to(fd, self.path) for fd in Path(f"/proc/{waiter.pid}/fd").glob("*")):
            assert waiter.poll() is None, f"it ended (status {waiter.returncode}) without waiting for the lock"
            assert time.monotonic() < deadline, f"it never opened {self.path} within {timeout:g}s"
            time.sleep(0.02)

    def release(self, timeout: float = 60) -> None:
        """Let it run its ``then`` code and exit, which frees the lock."""
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        assert self.proc.wait(timeout=timeout) == 0, "the lock holder failed"


def _points_to(link: Path, target: Path) -> bool:
    try:
        return os.readlink(link) == os.path.realpath(target)
    except OSError:
        return False


@contextlib.contextmanager
def lock_held(path: Path, then: str = "", timeout: float = 30) -> Iterator[LockHolder]:
    """A process that holds ``path``'s flock inside the block; on release it
    first runs ``then`` (Python, with ``m`` the script loaded as a module),
    still holding the lock.  Killed by its pid however the block ends."""
    import subprocess

    load = "import importlib.machinery\nm = importlib.machinery.SourceFileLoader('iamsorry', sys.argv[2])\n"
    code = _HOLD_LOCK + (load + "m = m.load_module()\n" + then if then else "")
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(path), str(SCRIPT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        assert ready and proc.stdout.readline() == "held\n", f"the lock holder never took {path}"
        yield LockHolder(proc, path)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _stat(path: Path) -> tuple[str, list[str]] | None:
    """(command name, the fields after it) of a /proc ``stat`` file; None once it is gone."""
    try:
        head, _, rest = path.read_text().rpartition(")")
    except OSError:
        return None
    return head.partition("(")[2], rest.split()


def process_state(pid: int) -> str | None:
    """The state letter of process ``pid`` (R, S, T, Z, ...); None once it is gone."""
    found = _stat(Path(f"/proc/{pid}/stat"))
    return found[1][0] if found else None


def thread_states(pid: int) -> set[str]:
    """The state letters of every thread of ``pid``: a stop reaches each on its own."""
    found = (_stat(task) for task in Path(f"/proc/{pid}/task").glob("*/stat"))
    return {f[1][0] for f in found if f}


def children(parent: int, command: str | None = None) -> set[int]:
    """Pids of ``parent``'s children (running ``command``, if given), as /proc shows them now."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        got = _stat(stat)
        if got and int(got[1][1]) == parent and command in (None, got[0]):
            found.add(int(stat.parent.name))
    return found


def aws_cli_arn(profile: str, env: dict[str, str] | None = None) -> str:
    """Whom the real AWS CLI takes ``--profile PROFILE`` for (sts get-caller-identity)."""
    import json
    import subprocess

    proc = subprocess.run(
        ["aws", "sts", "get-caller-identity", "--profile", profile, "--output", "json"],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return str(json.loads(proc.stdout)["Arn"])
