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
from conftest import SCRIPT, FakeAws, assert_key_ids_masked, expire_profile, iamsorry, lock_held, run_all, run_cli

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
    done = run_all([[sys.executable, str(SCRIPT), "--eval", "sue"]] * 40, timeout=300)
    results = [(p.returncode, p.stdout, p.stderr) for p in done]
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
        try:
            holder.wait(timeout=60)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()
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
    # A window of a quarter second while the temporary key exists (AWS is
    # slow to answer GetSessionToken), so that on any machine's speed some
    # kills land inside it, not only before or after.
    manager.shim.slow("GetSessionToken", 0.25, times=1000)
    try:
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
    finally:
        manager.shim.clear_faults()  # the delays this test did not use
    # The kills must really have hit running refreshers, some of them between
    # creating the temporary key and deleting it: the window this test is for.
    assert landed >= 50 and interrupted_mints >= 5, (landed, interrupted_mints)
    values = iamsorry.read_aws_credentials(auto_decrypt=True)["sue-mgr"]
    manager.client("sts", values["aws_access_key_id"], values["aws_secret_access_key"]).get_caller_identity()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_mint_deletes_its_temporary_key(manager: FakeAws, sig: int) -> None:
    expire_profile()
    manager.shim.settle()
    manager.shim.propagation_delay = 60  # park the process inside the mint, key created
    manager.shim.reset_calls()
    proc = _spawn("--eval", "sue")
    try:
        _await_first_session_token(manager, proc)
        assert len(manager.key_status("sue")) == 1
        os.killpg(proc.pid, sig)
        code = proc.wait(timeout=60)
    finally:  # parked in the mint for a minute unless the signal ended it
        manager.shim.propagation_delay = 0
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    stderr = proc.stderr.read()  # type: ignore[union-attr]
    assert_key_ids_masked(proc.stdout.read(), stderr)  # type: ignore[union-attr]
    assert code == 130 and "interrupted" in stderr and "Traceback" not in stderr
    assert manager.key_status("sue") == {}
    assert manager.shim.calls["DeleteAccessKey"] == 1
    assert set(iamsorry.read_aws_credentials()) >= {"sue", "sue-mgr"}


_FRESH_SUE = (  # what the refresher holding the lock writes before it lets go
    "s = m.Store().load()\n"
    "s.creds.set('sue', {'aws_access_key_id': 'ASIAFRESHFRESHFRESH1', 'expiration': '2099-01-01T00:00:00Z'})\n"
    "m.atomic_write(s.creds_path, s.creds.text(), True)\n"
)


def test_a_job_without_an_agent_reuses_a_refresh_in_progress(manager: FakeAws, tmp_path: Path) -> None:
    """Compute nodes often have no agent: a job that finds [sue] stale while
    another process refreshes it waits on the lock and takes the result,
    instead of failing for want of the manager key.  The refresher lets go
    only once the job is seen waiting."""
    expire_profile()
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    with lock_held(manager.home / ".aws" / "credentials.lock", then=_FRESH_SUE) as holder:
        job = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--eval", "sue"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        try:
            holder.await_waiter(job)
            holder.release()
            out, err = job.communicate(timeout=60)
        finally:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    assert job.returncode == 0, err
    assert "ASIAFRESHFRESHFRESH1" in out
