"""Batch-job scale: single-flight refresh, and crash safety under SIGKILL,
SIGINT and SIGTERM."""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SCRIPT, FakeAws, assert_key_ids_masked, expire_profile, iamsorry, run_cli

COMMENTS = "# hand-written: keep me\n; and me\n"


def _decorate(home: Path) -> tuple[set[str], str]:
    """Add comments and bystander profiles a careless writer would lose."""
    path = home / ".aws" / "credentials"
    text = (
        COMMENTS
        + path.read_text()
        + "".join(
            f"\n# bystander {i}\n[other{i}]\naws_access_key_id = AKIAOTHER{i:011d}\naws_secret_access_key = x\n"
            for i in range(5)
        )
    )
    path.write_text(text)
    return set(iamsorry.read_aws_credentials()), iamsorry.read_aws_credentials()["sue-mgr"]["aws_secret_access_key"]


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _await_first_session_token(aws: FakeAws, proc: subprocess.Popen[str]) -> None:
    """Block until ``proc`` has asked STS for a session, i.e. it is inside
    the mint; fail (not fall through) if it never gets there."""
    deadline = time.monotonic() + 30
    while aws.shim.calls["GetSessionToken"] == 0 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert aws.shim.calls["GetSessionToken"] > 0, f"no GetSessionToken within 30 s (exit status {proc.poll()})"


def test_forty_parallel_evals_mint_once(manager: FakeAws) -> None:
    names, sealed = _decorate(manager.home)
    expire_profile()
    manager.shim.reset_calls()
    procs = [_spawn("--eval", "sue") for _ in range(40)]
    results = [(p.wait(timeout=240), p.stdout.read(), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    for _, out, err in results:
        assert_key_ids_masked(out, err)
    assert all(code == 0 for code, _, _ in results), [err for code, _, err in results if code][:3]
    assert len({out for _, out, _ in results}) == 1  # identical credentials for every job
    assert manager.shim.calls["GetSessionToken"] == 1
    assert manager.shim.calls["CreateAccessKey"] == 1
    path = manager.home / ".aws" / "credentials"
    assert path.read_text().startswith(COMMENTS)
    assert set(iamsorry.read_aws_credentials()) == names
    assert iamsorry.read_aws_credentials()["sue-mgr"]["aws_secret_access_key"] == sealed
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert manager.whoami(iamsorry.read_aws_credentials()["sue"]).endswith("user/iam-sorry/sue")


def test_waiting_is_bounded_and_names_the_lock(manager: FakeAws) -> None:
    expire_profile()
    manager.shim.settle()
    manager.shim.propagation_delay = 30  # the first refresher holds the lock while it waits
    manager.shim.reset_calls()
    holder = _spawn("--eval", "sue")
    try:
        _await_first_session_token(manager, holder)
        proc = run_cli("--eval", "sue", env={"IAM_SORRY_LOCK_TIMEOUT": "1"})
        assert proc.returncode != 0 and "credentials.lock" in proc.stderr and "Traceback" not in proc.stderr
    finally:
        holder.send_signal(signal.SIGINT)
        holder.wait(timeout=60)
    manager.shim.propagation_delay = 0


def _cleanup_leftover_keys(aws: FakeAws) -> int:
    """SIGKILL leaves the temporary key behind (nothing can run); an
    administrator would delete it.  Keep sue below AWS's 2-key limit, and
    say how many there were: each is a mint that a kill interrupted."""
    iam = aws.client("iam")
    leftovers = list(aws.key_status("sue"))
    for key_id in leftovers:
        iam.delete_access_key(UserName="sue", AccessKeyId=key_id)
    return len(leftovers)


def test_refreshers_sigkilled_at_random_moments_never_break_the_store(manager: FakeAws) -> None:
    names, sealed = _decorate(manager.home)
    config_before = (manager.home / ".aws" / "config").read_text()
    rng = random.Random(20261124)
    landed = interrupted_mints = 0
    for _ in range(50):
        expire_profile()
        procs = [_spawn("--eval", "sue") for _ in range(4)]
        for proc in procs:
            time.sleep(rng.uniform(0, 0.4))
            proc.kill()
        for proc in procs:
            landed += proc.wait(timeout=60) == -signal.SIGKILL  # not already finished
        profiles = iamsorry.read_aws_credentials()  # parses, or raises
        assert set(profiles) == names
        assert profiles["sue-mgr"]["aws_secret_access_key"] == sealed
        assert (manager.home / ".aws" / "credentials").read_text().startswith(COMMENTS)
        assert iamsorry.load_ini(str(manager.home / ".aws" / "config")).text() == config_before
        interrupted_mints += _cleanup_leftover_keys(manager)
    # The kills must really have hit running refreshers, some of them between
    # creating the temporary key and deleting it: the window this test is for.
    assert landed >= 50 and interrupted_mints >= 1, (landed, interrupted_mints)
    values = iamsorry.read_aws_credentials(auto_decrypt=True)["sue-mgr"]
    manager.client("sts", values["aws_access_key_id"], values["aws_secret_access_key"]).get_caller_identity()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_mint_deletes_its_temporary_key(manager: FakeAws, sig: int) -> None:
    expire_profile()
    manager.shim.settle()
    manager.shim.propagation_delay = 60  # park the process inside the mint, key created
    manager.shim.reset_calls()
    proc = _spawn("--eval", "sue")
    _await_first_session_token(manager, proc)
    assert len(manager.key_status("sue")) == 1
    os.killpg(proc.pid, sig)
    code = proc.wait(timeout=60)
    stderr = proc.stderr.read()  # type: ignore[union-attr]
    manager.shim.propagation_delay = 0
    assert_key_ids_masked(proc.stdout.read(), stderr)  # type: ignore[union-attr]
    assert code == 130 and "interrupted" in stderr and "Traceback" not in stderr
    assert manager.key_status("sue") == {}
    assert manager.shim.calls["DeleteAccessKey"] == 1
    assert set(iamsorry.read_aws_credentials()) >= {"sue", "sue-mgr"}


def test_a_job_without_an_agent_reuses_a_refresh_in_progress(manager: FakeAws, tmp_path: Path) -> None:
    """Compute nodes often have no agent: a job that finds [sue] stale while
    another process refreshes it waits on the lock and takes the result,
    instead of failing for want of the manager key."""
    expire_profile()
    lock = manager.home / ".aws" / "credentials.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import fcntl, os, sys, time, importlib.machinery\n"
                "m = importlib.machinery.SourceFileLoader('iamsorry', sys.argv[1]).load_module()\n"
                "fd = os.open(sys.argv[2], os.O_RDWR | os.O_CREAT, 0o600)\n"
                "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(2)\n"
                "s = m.Store().load()\n"
                "s.creds.set('sue', {'aws_access_key_id': 'ASIAFRESHFRESHFRESH1',\n"
                "                    'expiration': '2099-01-01T00:00:00Z'})\n"
                "m.atomic_write(s.creds_path, s.creds.text(), True)\n"
            ),
            str(SCRIPT),
            str(lock),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--eval", "sue"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        start_new_session=True,
    )
    holder.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "ASIAFRESHFRESHFRESH1" in proc.stdout
