"""IAM/STS flows end to end: the CLI as a subprocess against a local moto
server made strict by the identity shim, with a real ssh-agent."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    REGION,
    FakeAws,
    assert_clean_error,
    exported,
    hand_over,
    iamsorry,
    run_cli,
    run_in_pty,
    session_env,
)


def test_two_key_limit_stops_bootstrap_before_anything_changes(aws: FakeAws, ed25519: Path) -> None:
    key = hand_over()
    aws.client("iam").create_access_key(UserName="sue-mgr")
    before = aws.key_status("sue-mgr")
    proc = run_cli(env=exported(key))
    assert_clean_error(proc, "already has 2 access keys", "never deletes a key it did not create")
    assert aws.key_status("sue-mgr") == before
    assert "sue-mgr" not in aws.profiles()


def test_bootstrap_with_temporary_keys_deactivates_nothing(aws: FakeAws, ed25519: Path) -> None:
    key_id, secret = hand_over()
    session = aws.client("sts", key_id, secret).get_session_token(DurationSeconds=3600)["Credentials"]
    proc = run_cli(env={**session_env(session), "AWS_REGION": REGION})
    assert proc.returncode == 0, proc.stderr
    assert sorted(aws.key_status("sue-mgr").values()) == ["Active", "Active"]
    assert aws.whoami(aws.profiles()["sue"]).endswith("user/iam-sorry/sue")


def test_bootstrap_refuses_roles_and_bad_environment_keys(aws: FakeAws, ed25519: Path) -> None:
    iam = aws.client("iam")
    iam.create_role(RoleName="r", AssumeRolePolicyDocument=json.dumps(iamsorry.role_trust_policy("*")))
    role = aws.client("sts").assume_role(RoleArn="arn:aws:iam::123456789012:role/r", RoleSessionName="bootstrap-test")
    proc = run_cli(env=session_env(role["Credentials"]))
    assert_clean_error(proc, "not to an IAM user")
    key_id, secret = hand_over()
    session = aws.client("sts", key_id, secret).get_session_token(DurationSeconds=900)["Credentials"]
    aws.shim.expire_sessions()
    proc = run_cli(env=session_env(session))
    assert_clean_error(proc, "ExpiredToken")
    assert list(aws.key_status("sue-mgr").values()) == ["Active"]


def _works(aws: FakeAws, key_id: str, secret: str) -> bool:
    try:
        aws.client("sts", key_id, secret).get_caller_identity()
        return True
    except Exception:  # noqa: BLE001
        return False


def _assert_a_working_key(aws: FakeAws, exported: tuple[str, str]) -> None:
    stored = aws.profiles().get("sue-mgr")
    if stored is not None:
        values = iamsorry.read_aws_credentials(auto_decrypt=True)["sue-mgr"]
        assert _works(aws, values["aws_access_key_id"], values["aws_secret_access_key"])
    else:
        assert _works(aws, *exported)
        assert aws.key_status("sue-mgr") == {exported[0]: "Active"}  # the new key was cleaned up


@pytest.mark.parametrize(
    ("action", "code", "status"),
    [
        ("GetCallerIdentity", "AccessDenied", 403),
        ("ListAccessKeys", "AccessDenied", 403),
        ("CreateAccessKey", "LimitExceeded", 409),
        ("DeleteAccessKey", "AccessDenied", 403),
        ("GetSessionToken", "AccessDenied", 403),
    ],
)
def test_bootstrap_fault_at_each_aws_step_leaves_a_working_key(
    aws: FakeAws, ed25519: Path, action: str, code: str, status: int
) -> None:
    exported = hand_over()
    aws.shim.fail(action, code=code, times=1, status=status)  # none of these codes is retried
    proc = run_cli(env={"AWS_ACCESS_KEY_ID": exported[0], "AWS_SECRET_ACCESS_KEY": exported[1], "AWS_REGION": REGION})
    assert "Traceback" not in proc.stderr
    _assert_a_working_key(aws, exported)
    if action == "DeleteAccessKey":  # the new key is stored and works; we only warn
        assert proc.returncode == 0 and "ask your administrator to delete" in proc.stderr
        assert sorted(aws.key_status("sue-mgr").values()) == ["Active", "Active"]
    else:
        assert_clean_error(proc, code)


def test_bootstrap_propagation_timeout_leaves_the_exported_key(aws: FakeAws, ed25519: Path) -> None:
    exported = hand_over()
    aws.shim.settle()
    aws.shim.propagation_delay = 60
    proc = run_cli(
        env={
            "AWS_ACCESS_KEY_ID": exported[0],
            "AWS_SECRET_ACCESS_KEY": exported[1],
            "AWS_REGION": REGION,
            "IAM_SORRY_PROPAGATION_TIMEOUT": "2",
        }
    )
    assert_clean_error(proc, "still not accepted")
    aws.shim.propagation_delay = 0
    _assert_a_working_key(aws, exported)


def _bootstrap_with_fault(
    aws: FakeAws,
    monkeypatch: pytest.MonkeyPatch,
    target: object,
    attr: str,
    fake: object,
    error: type[BaseException],
    match: str,
) -> tuple[str, str]:
    """Bootstrap in-process with one local fault; the files must read back
    exactly as before and a working key must remain."""
    exported = hand_over()
    for name, value in (
        ("AWS_ACCESS_KEY_ID", exported[0]),
        ("AWS_SECRET_ACCESS_KEY", exported[1]),
        ("AWS_REGION", REGION),
    ):
        monkeypatch.setenv(name, value)
    path = aws.home / ".aws" / "credentials"
    before = path.read_text()
    with monkeypatch.context() as local:  # only the fault is undone, not HOME or the endpoint
        local.setattr(target, attr, fake)
        with pytest.raises(error, match=match):
            iamsorry.bootstrap(iamsorry.Store(), iamsorry.Creds(*exported), None, 36)
    assert path.read_text() == before
    assert "sue-mgr" not in aws.profiles()
    _assert_a_working_key(aws, exported)
    return exported


def test_bootstrap_store_failure_leaves_the_exported_key(
    aws: FakeAws, ed25519: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    _bootstrap_with_fault(aws, monkeypatch, os, "replace", disk_full, iamsorry.StoreError, "No space left")


def test_bootstrap_verify_failure_restores_the_file(
    aws: FakeAws, ed25519: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read-back check is the last line of defence: a disk that, once,
    hands back another value than was written, one sealed as well as the
    real one.  The file itself holds what was written, so every byte of it
    is put back."""
    fp = iamsorry.resolve_ssh_key().fingerprint
    other = iamsorry.seal("AKIAGARBAGEGARBAGE01", "aws_access_key_id", fp, iamsorry.key_secret(fp))
    written: list[str] = []
    real_replace = os.replace

    def replace(src: str, dst: str) -> None:
        real_replace(src, dst)
        if str(dst).endswith("credentials") and "__encrypted__" in Path(dst).read_text():
            written.append(str(dst))  # the next read of it goes wrong

    def read(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if written and str(file) == written[-1] and mode == "rb":
            text = Path(written.pop()).read_text()
            return io.BytesIO(re.sub(r"(?m)^(aws_access_key_id = )__encrypted__:\S+", rf"\g<1>{other}", text).encode())
        return open(file, mode, *args, **kwargs)

    monkeypatch.setattr(iamsorry, "open", read, raising=False)  # the builtin, as the script's module sees it
    _bootstrap_with_fault(aws, monkeypatch, os, "replace", replace, iamsorry.CryptoError, "does not match")


def test_bootstrap_config_write_failure_leaves_no_dead_key(
    aws: FakeAws, ed25519: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The config file is written first; if that fails, the sealed key must
    not stay on file while its AWS key is deleted."""
    real_replace = os.replace

    def config_fails(src: str, dst: str) -> None:
        if str(dst).endswith("config"):
            raise OSError(122, "Disk quota exceeded")
        real_replace(src, dst)

    _bootstrap_with_fault(aws, monkeypatch, os, "replace", config_fails, iamsorry.StoreError, "quota")


def test_bootstrap_without_a_base_user_keeps_the_manager(aws: FakeAws, ed25519: Path) -> None:
    exported_key = hand_over()
    aws.client("iam").delete_user(UserName="sue")  # a namespace from before: the daily command makes it
    proc = run_cli(env=exported(exported_key))
    assert proc.returncode == 0, proc.stderr
    assert "no base user yet" in proc.stderr and "sue" not in aws.profiles()
    assert exported_key[0] not in aws.key_status("sue-mgr")  # the new key is stored and the old one gone
    aws.shim.fail("CreateUser", code="AccessDenied", times=1, status=403)
    assert_clean_error(run_cli("sue"), "AccessDenied")
    assert run_cli("sue").returncode == 0  # rerunning the daily command finishes the job
    assert aws.whoami(aws.profiles()["sue"]).endswith("user/iam-sorry/sue")


def test_bare_run_with_a_manager_explains_itself(manager: FakeAws) -> None:
    proc = run_cli()
    assert proc.returncode == 0 and "manager [sue-mgr] is set up" in proc.stderr


def test_a_bare_run_never_rotates_someone_elses_key(aws: FakeAws, ed25519: Path) -> None:
    """A CI deploy user's keys in the environment: no manager tag, so one
    clear error, zero AWS writes and no file created."""
    iam = aws.client("iam")
    iam.create_user(UserName="ci-deployer")
    key = iam.create_access_key(UserName="ci-deployer")["AccessKey"]
    creds = aws.home / ".aws" / "credentials"
    before = creds.read_text()
    aws.shim.reset_calls()
    proc = run_cli(env=exported((key["AccessKeyId"], key["SecretAccessKey"])))
    assert_clean_error(proc, "ci-deployer is not marked as an iam-sorry manager", "--create-iam-sorry")
    assert set(aws.shim.calls) <= {"GetCallerIdentity", "GetUser"}  # reads only
    assert aws.key_status("ci-deployer") == {key["AccessKeyId"]: "Active"}
    assert creds.read_text() == before and not (aws.home / ".aws" / "credentials.lock").exists()
    assert "ci" not in {u["UserName"] for u in iam.list_users()["Users"]}


@pytest.mark.parametrize(("answer", "rotated"), [("n", False), ("y", True)])
def test_an_unmarked_user_needs_a_yes_on_the_terminal(aws: FakeAws, ed25519: Path, answer: str, rotated: bool) -> None:
    iam = aws.client("iam")
    iam.create_user(UserName="ann-old")  # a manager from before managers were marked
    key = iam.create_access_key(UserName="ann-old")["AccessKey"]
    env = {**os.environ, **exported((key["AccessKeyId"], key["SecretAccessKey"]))}
    status, shown = run_in_pty([], env, [answer], prompt=b"[y/N]")
    assert "ann-old is not marked as an iam-sorry manager" in shown
    assert (status == 0) is rotated, shown
    assert (key["AccessKeyId"] in aws.key_status("ann-old")) is not rotated
    assert ("ann-old" in aws.profiles()) is rotated


def test_bootstrap_deletes_the_key_the_administrator_saw(aws: FakeAws, ed25519: Path) -> None:
    key = hand_over()
    proc = run_cli(env=exported(key))
    assert proc.returncode == 0, proc.stderr
    assert f"Exported key {iamsorry.mask_key_id(key[0])} deleted" in proc.stderr
    (only,) = aws.key_status("sue-mgr")
    assert only != key[0]
    with pytest.raises(Exception, match="InvalidClientTokenId"):
        aws.client("sts", *key).get_caller_identity()


def test_a_lost_answer_while_bootstrapping_leaves_no_extra_key(
    aws: FakeAws, ed25519: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AWS makes the new manager key but its answer comes after the client
    gave up; botocore's retry then hits the two-key limit.  Bootstrap goes
    through the one key-replacement flow, which deletes the key nobody
    holds, so the next try is not stuck at two keys."""
    key = hand_over()
    for name, value in exported(key).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(iamsorry._AWS_PATIENCE, "timeout", 1.0)
    aws.shim.slow("CreateAccessKey", 2.0, after=True)
    with pytest.raises(iamsorry.AwsError, match="LimitExceeded"):
        iamsorry.bootstrap(iamsorry.Store(), iamsorry.Creds(*key), None, 36)
    assert aws.key_status("sue-mgr") == {key[0]: "Active"}
    assert "sue-mgr" not in aws.profiles()
    assert iamsorry.bootstrap(iamsorry.Store(), iamsorry.Creds(*key), None, 36) == "sue-mgr"
    stored = iamsorry.read_aws_credentials(auto_decrypt=True)["sue-mgr"]["aws_access_key_id"]
    assert aws.key_status("sue-mgr") == {stored: "Active"}
