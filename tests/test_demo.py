"""``python3 tests/demo.py`` plays the whole Quick Start and leaves nothing
behind: no ssh-agent, no throwaway HOME."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from conftest import process_state

DEMO = Path(__file__).resolve().parent / "demo.py"


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    """The demo as a user runs it; conftest gave us a private HOME and no
    AWS_* or SSH_AUTH_SOCK; --no-install: this Python has the test extra."""
    demo = subprocess.Popen(
        [sys.executable, str(DEMO), *args, "--no-install"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        out, err = demo.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        demo.terminate()  # the demo stops its agent, KDC and service on SIGTERM; SIGKILL would leave them
        try:
            out, err = demo.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            demo.kill()
            out, err = demo.communicate()
        raise AssertionError(f"the demo ran over 300 s:\n{out}{err}") from None
    assert demo.returncode == 0, out + err
    return subprocess.CompletedProcess(demo.args, demo.returncode, out, err)


def assert_gone(pid: int) -> None:
    """Process ``pid`` ends within 5 s: gone, or a zombie waiting for init
    to reap it (the daemons detach, so neither the demo nor this test is
    their parent)."""
    deadline = time.monotonic() + 5
    while process_state(pid) not in (None, "Z") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert process_state(pid) in (None, "Z"), f"the demo left {pid} running"


def test_demo_plays_the_quick_start_and_cleans_up() -> None:
    proc = run_demo()
    assert "\n$ iam-sorry --profile aws-admin --create-iam-sorry sue-mgr\n" in proc.stdout
    assert "\033[" not in proc.stdout  # not a terminal: no bold
    assert "arn:aws:iam::123456789012:user/iam-sorry/sue" in proc.stdout
    assert "assumed-role/iam-sorry-sue-lambda" in proc.stdout
    assert "outside your namespace" in proc.stdout
    agent = re.search(r"ssh-agent pid (\d+)", proc.stdout)
    home = re.search(r"Throwaway HOMEs under (\S+)", proc.stdout)
    assert agent and home, proc.stdout
    assert not Path(home.group(1)).exists()
    assert_gone(int(agent.group(1)))


def test_the_service_demo_plays_the_department_flow_and_cleans_up() -> None:
    proc = run_demo("--service")
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
        assert_gone(pid)
