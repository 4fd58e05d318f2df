"""Test harness: the script loaded as module ``iamsorry``, a private HOME, no
ambient AWS settings.

The script has no ``.py`` suffix; an editable install copies it once and
then goes stale, so tests always load the file in the work tree."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "iam-sorry"
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
    """Every test gets its own HOME and none of the developer's AWS or
    ssh-agent settings."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in list(os.environ):
        if name.startswith(("AWS_", "IAM_SORRY_")) or name in ("SSH_AUTH_SOCK", "SSH_AGENT_PID"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    iamsorry._SECRETS.clear()
    iamsorry.UI.once.clear()
    return home


def run_cli(*args: str, env: dict[str, str] | None = None, input: str | None = None,
            timeout: float = 120, cwd: str | None = None):
    """The script as a user runs it: a subprocess, fresh interpreter."""
    import subprocess

    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env=full_env, input=input, timeout=timeout, cwd=cwd, start_new_session=True)


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
