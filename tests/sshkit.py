"""Real OpenSSH for tests: keys made by ssh-keygen, and an ssh-agent per test,
started on a private socket and killed by its pid."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

PASSPHRASE = "correct horse battery staple"


def _askpass(folder: Path, secret: str) -> dict[str, str]:
    """ssh-add reads passphrases through SSH_ASKPASS when forced to."""
    script = folder / f"askpass-{abs(hash(secret))}.sh"
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' '{secret}'\n")
    script.chmod(0o700)
    return {"SSH_ASKPASS": str(script), "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"}


def make_key(
    folder: Path,
    name: str = "id_ed25519",
    kind: str = "ed25519",
    bits: int | None = None,
    passphrase: str = PASSPHRASE,
    comment: str | None = None,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    cmd = ["ssh-keygen", "-q", "-t", kind, "-N", passphrase, "-f", str(path), "-C", comment or str(path)]
    if bits:
        cmd += ["-b", str(bits)]
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL)
    return path


def change_passphrase(path: Path, old: str, new: str) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-p", "-P", old, "-N", new, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )


class Agent:
    def __init__(self, folder: Path, env: dict[str, str] | None = None) -> None:
        """``env``: more of the agent's own environment (SSH_ASKPASS for confirmations)."""
        self.folder = folder
        self.sock = str(folder / "agent.sock")
        out = subprocess.run(
            ["ssh-agent", "-s", "-a", self.sock],
            check=True,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        ).stdout
        self.pid = int(out.split("SSH_AGENT_PID=")[1].split(";")[0])

    @property
    def env(self) -> dict[str, str]:
        return {"SSH_AUTH_SOCK": self.sock}

    def _ssh_add(self, *args: str, secret: str = PASSPHRASE) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **self.env, **_askpass(self.folder, secret)}
        return subprocess.run(
            ["ssh-add", *args],
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            timeout=30,
        )

    def add(self, key: Path, *constraints: str, passphrase: str = PASSPHRASE) -> None:
        proc = self._ssh_add(*constraints, str(key), secret=passphrase)
        assert proc.returncode == 0, proc.stderr

    def remove_all(self) -> None:
        self._ssh_add("-D")

    def lock(self, password: str = "lockpw") -> None:
        proc = self._ssh_add("-x", secret=password)
        assert proc.returncode == 0, proc.stderr

    def stop(self) -> None:
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def wait_gone(self, timeout: float = 10) -> bool:
        """True once the agent has exited (a daemon: init reaps it, so a
        zombie counts as gone) and its socket is removed; False on timeout."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                state = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                state = "gone"
            if state in ("gone", "Z") and not os.path.exists(self.sock):
                return True
            time.sleep(0.02)
        return False
