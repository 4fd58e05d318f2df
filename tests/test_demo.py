"""``python3 tests/demo.py`` plays the whole Quick Start and leaves nothing
behind: no ssh-agent, no throwaway HOME."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

DEMO = Path(__file__).resolve().parent / "demo.py"


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting for init to reap it
    (the agent daemonizes, so neither the demo nor this test is its parent)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_demo_plays_the_quick_start_and_cleans_up() -> None:
    # conftest gave us a private HOME and no AWS_* or SSH_AUTH_SOCK; --no-install: this Python has the test extra.
    proc = subprocess.run(
        [sys.executable, str(DEMO), "--no-install"],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "\n$ iam-sorry --profile aws-admin --create-iam-sorry sue-mgr\n" in proc.stdout
    assert "\033[" not in proc.stdout  # not a terminal: no bold
    assert "arn:aws:iam::123456789012:user/iam-sorry/sue" in proc.stdout
    assert "assumed-role/iam-sorry-sue-lambda" in proc.stdout
    assert "outside your namespace" in proc.stdout
    agent = re.search(r"ssh-agent pid (\d+)", proc.stdout)
    home = re.search(r"Throwaway HOMEs under (\S+)", proc.stdout)
    assert agent and home, proc.stdout
    pid, root = int(agent.group(1)), Path(home.group(1))
    assert not root.exists()
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid), f"the demo's ssh-agent {pid} is still running"


def test_the_service_demo_plays_the_department_flow_and_cleans_up() -> None:
    proc = subprocess.run(
        [sys.executable, str(DEMO), "--service", "--no-install"],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    for expected in (
        "\n$ cd ",  # the administrator's steps run in the service's folder
        "iam-sorry-service.sue created",
        "Default principal: sue@IAMSORRY.TEST",
        "arn:aws:iam::123456789012:user/iam-sorry/sue",
        "assumed-role/iam-sorry-sue-lambda",
        "ann@IAMSORRY.TEST is not a member of namespace sue",
        "audit trail intact",
    ):
        assert expected in proc.stdout, expected
    server = re.search(r"gunicorn pid (\d+)", proc.stdout)
    kdc = re.search(r"KDC pid (\d+)", proc.stdout)
    home = re.search(r"Throwaway HOMEs under (\S+)", proc.stdout)
    assert server and kdc and home, proc.stdout
    assert not Path(home.group(1)).exists()
    for pid in (int(server.group(1)), int(kdc.group(1))):
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(pid), f"the demo left {pid} running"
