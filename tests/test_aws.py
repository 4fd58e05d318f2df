"""IAM/STS flows end to end: the CLI as a subprocess against a local moto
server made strict by the identity shim, with a real ssh-agent."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import ADMIN_KEY, REGION, FakeAws, assert_clean_error, iamsorry, parse_handover, run_cli


def _bash(script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **(env or {})}
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=full, timeout=120)


def _session_env(c: dict) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": c["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": c["SecretAccessKey"],
        "AWS_SESSION_TOKEN": c["SessionToken"],
    }


def _expire(home: Path, profile: str, when: str = "2020-01-01T00:00:00Z") -> None:
    with iamsorry.Store().edit() as s:
        s.creds.set(profile, {"expiration": when})


def test_seed_quick_start(aws: FakeAws, ed25519: Path) -> None:
    # Administrator
    made = run_cli("--profile", "aws-admin", "--create-iam-sorry", "sue-mgr")
    assert made.returncode == 0, made.stderr
    key_id, secret = parse_handover(made.stdout)
    iam = aws.client("iam")
    policy = iam.get_user_policy(UserName="sue-mgr", PolicyName="iam-sorry-sue")["PolicyDocument"]
    assert policy == iamsorry.manager_policy("sue", "123456789012")
    assert key_id not in made.stderr and secret not in made.stderr
    # User, once: export and run a bare iam-sorry
    boot = run_cli(env={"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": REGION})
    assert boot.returncode == 0, boot.stderr
    assert secret not in boot.stderr + boot.stdout and key_id not in boot.stderr
    profiles = aws.profiles()
    fp = iamsorry.resolve_ssh_key().fingerprint
    assert profiles["sue-mgr"]["aws_access_key_id"].startswith(f"__encrypted__:v2:{fp[7:]}:")
    statuses = aws.key_status("sue-mgr")
    assert statuses.pop(key_id) == "Inactive"  # the key the administrator saw
    assert list(statuses.values()) == ["Active"]
    assert aws.whoami(profiles["sue"]) == "arn:aws:iam::123456789012:user/sue"
    assert aws.key_status("sue") == {}  # the key used to mint was deleted
    assert iamsorry.read_aws_config()["sue"]["region"] == REGION
    # Daily
    daily = run_cli("sue")
    assert daily.returncode == 0, daily.stderr
    assert "Successfully updated profile 'sue'" in daily.stderr
    fresh = aws.profiles()["sue"]
    assert fresh["aws_access_key_id"] != profiles["sue"]["aws_access_key_id"]
    assert aws.whoami(fresh) == "arn:aws:iam::123456789012:user/sue"
    # Shell scripts, with the real AWS CLI
    out = _bash(
        'eval "$(iam-sorry --eval sue)" && aws sts get-caller-identity --output json',
        env={"PATH": f"{Path(iamsorry.__file__).parent}:{os.environ['PATH']}", "AWS_REGION": REGION},
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["Arn"] == "arn:aws:iam::123456789012:user/sue"
    # Administrator: assign permissions to sue (moto has no AWS-managed policies, so inline)
    doc = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:List*","Resource":"*"}]}'
    out = _bash(
        f"aws --profile aws-admin iam put-user-policy --user-name sue --policy-name read --policy-document '{doc}'"
    )
    assert out.returncode == 0, out.stderr
    assert iam.list_user_policies(UserName="sue")["PolicyNames"] == ["read"]


def test_every_minted_profile_belongs_to_its_user(manager: FakeAws) -> None:
    for name, hours in (("sue-analytics", "12"), ("sue-bedrock", "1"), ("sue", "36")):
        proc = run_cli(name, "--duration", hours)
        assert proc.returncode == 0, proc.stderr
        profile = manager.profiles()[name]
        assert manager.whoami(profile) == f"arn:aws:iam::123456789012:user/{name}"
        assert profile["credentials_owner"] == name
        left = iamsorry.parse_time(profile["expiration"]) - iamsorry.now()
        assert int(hours) * 3600 - 120 < left <= int(hours) * 3600
        assert manager.key_status(name) == {}
    # "sue-analytics" became a user, not a role
    assert manager.client("iam").list_roles()["Roles"] == []


def test_mint_waits_for_key_propagation(manager: FakeAws) -> None:
    manager.shim.settle()
    manager.shim.propagation_delay = 2.0
    proc = run_cli("sue-slow")
    assert proc.returncode == 0, proc.stderr
    assert manager.whoami(manager.profiles()["sue-slow"]).endswith("user/sue-slow")
    assert manager.shim.calls["GetSessionToken"] >= 2  # rejected while propagating, then accepted


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("bob", "outside your namespace"),
        ("suex", "outside your namespace"),
        ("sue-mgr", "the manager itself"),
        ("SUE-MGR", "the manager itself"),
        ("sue-MGR", "the manager itself"),  # IAM names are unique regardless of case
        ("sue;rm -rf ~", "invalid IAM user name"),
    ],
)
def test_namespace_refusals_create_nothing(manager: FakeAws, name: str, needle: str) -> None:
    before = {u["UserName"] for u in manager.client("iam").list_users()["Users"]}
    manager.shim.reset_calls()
    proc = run_cli(name)
    assert_clean_error(proc, needle)
    assert dict(manager.shim.calls) == {}  # refused locally, before any AWS call
    assert {u["UserName"] for u in manager.client("iam").list_users()["Users"]} == before


def test_delegation_once_and_the_manager_loses_write(manager: FakeAws) -> None:
    iam = manager.client("iam")
    assert_clean_error(run_cli("jimmy-bedrock", "--chown", "jimmy"), "not an IAM user")
    iam.create_user(UserName="jimmy")
    assert_clean_error(run_cli("sue-x", "--chown", "jimmy"), "does not match the namespace")
    proc = run_cli("jimmy-bedrock", "--chown", "jimmy")
    assert proc.returncode == 0, proc.stderr
    tags = {t["Key"]: t["Value"] for t in iam.list_user_tags(UserName="jimmy-bedrock")["Tags"]}
    assert tags == {"owner": "jimmy", "delegated-by": "sue-mgr"}
    assert_clean_error(run_cli("jimmy-bedrock", "--chown", "jimmy"), "already delegated")
    assert_clean_error(run_cli("jimmy-bedrock"), "outside your namespace")
    assert manager.key_status("jimmy-bedrock") == {}
    # A namespace user handed to someone else: view, never mint.
    iam.create_user(UserName="sue-student", Tags=[{"Key": "owner", "Value": "jimmy"}])
    assert_clean_error(run_cli("sue-student"), "delegated to 'jimmy'")
    assert manager.key_status("sue-student") == {}


def test_delegated_user_is_minted_by_its_new_owner(manager: FakeAws, tmp_path: Path) -> None:
    """jimmy's own manager takes over jimmy-bedrock."""
    manager.client("iam").create_user(UserName="jimmy")
    assert run_cli("jimmy-bedrock", "--chown", "jimmy").returncode == 0
    made = run_cli("--profile", "aws-admin", "--create-iam-sorry", "jimmy-mgr")
    key_id, secret = parse_handover(made.stdout)
    jimmy_home = {"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "jc"), "AWS_CONFIG_FILE": str(tmp_path / "jcfg")}
    boot = run_cli(
        env={**jimmy_home, "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": REGION}
    )
    assert boot.returncode == 0, boot.stderr
    proc = run_cli("jimmy-bedrock", env=jimmy_home)
    assert proc.returncode == 0, proc.stderr
    creds = iamsorry.read_aws_credentials(str(tmp_path / "jc"))["jimmy-bedrock"]
    assert manager.whoami(creds).endswith("user/jimmy-bedrock")


def test_role_profile_works_with_the_aws_cli_and_eval(manager: FakeAws) -> None:
    proc = run_cli("--role", "sue-lambda")
    assert proc.returncode == 0, proc.stderr
    role = manager.client("iam").get_role(RoleName="iam-sorry-sue-lambda")["Role"]
    assert role["MaxSessionDuration"] == 43200
    trust = role["AssumeRolePolicyDocument"]
    trust = json.loads(trust) if isinstance(trust, str) else trust
    assert trust["Statement"][0]["Principal"] == {"AWS": "arn:aws:iam::123456789012:user/sue"}
    cfg = iamsorry.read_aws_config()["sue-lambda"]
    assert cfg == {"role_arn": role["Arn"], "source_profile": "sue", "region": REGION, "duration_seconds": "43200"}
    out = _bash("aws --profile sue-lambda sts get-caller-identity --output json")
    assert out.returncode == 0, out.stderr
    assert ":assumed-role/iam-sorry-sue-lambda/" in json.loads(out.stdout)["Arn"]
    ev = run_cli("--eval", "sue-lambda", "--shell", "sh")
    assert ev.returncode == 0, ev.stderr
    env = dict(
        line.removeprefix("export ").split("=", 1) for line in ev.stdout.splitlines() if line.startswith("export")
    )
    sts = manager.client(
        "sts",
        env["AWS_ACCESS_KEY_ID"].strip("'"),
        env["AWS_SECRET_ACCESS_KEY"].strip("'"),
        env["AWS_SESSION_TOKEN"].strip("'"),
    )
    assert ":assumed-role/iam-sorry-sue-lambda/" in sts.get_caller_identity()["Arn"]
    policy = run_cli("--print-lambda-policy", "sue-lambda")
    assert json.loads(policy.stdout) == iamsorry.lambda_policy("sue", "123456789012")
    assert_clean_error(run_cli("--print-lambda-policy", "sue"), "not an iam-sorry role profile")
    assert_clean_error(run_cli("--role", "bob-lambda"), "outside your namespace")


def test_eval_refreshes_expired_and_nearly_expired_credentials(manager: FakeAws) -> None:
    old = manager.profiles()["sue"]["aws_access_key_id"]
    manager.shim.reset_calls()
    cached = run_cli("--eval", "sue")
    assert cached.returncode == 0 and old in cached.stdout
    assert sum(manager.shim.calls.values()) == 0  # valid credentials: no AWS call at all
    _expire(manager.home, "sue")
    proc = run_cli("--eval", "sue")
    assert proc.returncode == 0, proc.stderr
    calls = dict(manager.shim.calls)
    assert calls == {"GetUser": 1, "CreateAccessKey": 1, "GetSessionToken": 1, "DeleteAccessKey": 1}
    fresh = manager.profiles()["sue"]
    assert fresh["aws_access_key_id"] != old and fresh["aws_access_key_id"] in proc.stdout
    assert manager.whoami(fresh).endswith("user/sue")
    soon = iamsorry.format_time(iamsorry.now() + 600)
    _expire(manager.home, "sue", soon)
    assert fresh["aws_access_key_id"] not in run_cli("--eval", "sue").stdout  # inside the 15-minute window


def test_min_ttl_zero_keeps_credentials_until_expiry(manager: FakeAws) -> None:
    soon = iamsorry.format_time(iamsorry.now() + 600)
    _expire(manager.home, "sue", soon)
    key = manager.profiles()["sue"]["aws_access_key_id"]
    assert key in run_cli("--eval", "sue", "--min-ttl", "5").stdout
    assert key not in run_cli("--eval", "sue").stdout


def test_revoked_manager_key_gives_a_clear_error(manager: FakeAws) -> None:
    iam = manager.client("iam")
    for key_id, status in manager.key_status("sue-mgr").items():
        if status == "Active":
            iam.update_access_key(UserName="sue-mgr", AccessKeyId=key_id, Status="Inactive")
    proc = run_cli("sue")
    assert_clean_error(proc, "InvalidClientTokenId", "administrator", "iam-sorry --reset")
    _expire(manager.home, "sue")
    assert_clean_error(run_cli("--eval", "sue"), "InvalidClientTokenId", "administrator")


def test_two_key_limit_stops_bootstrap_before_anything_changes(aws: FakeAws, ed25519: Path) -> None:
    made = run_cli("--profile", "aws-admin", "--create-iam-sorry", "sue-mgr")
    key_id, secret = parse_handover(made.stdout)
    aws.client("iam").create_access_key(UserName="sue-mgr")
    before = aws.key_status("sue-mgr")
    proc = run_cli(env={"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": REGION})
    assert_clean_error(proc, "already has 2 access keys", "never deletes a key it did not create")
    assert aws.key_status("sue-mgr") == before
    assert "sue-mgr" not in aws.profiles()


def test_bootstrap_with_temporary_keys_deactivates_nothing(aws: FakeAws, ed25519: Path) -> None:
    made = run_cli("--profile", "aws-admin", "--create-iam-sorry", "sue-mgr")
    key_id, secret = parse_handover(made.stdout)
    session = aws.client("sts", key_id, secret).get_session_token(DurationSeconds=3600)["Credentials"]
    proc = run_cli(env={**_session_env(session), "AWS_REGION": REGION})
    assert proc.returncode == 0, proc.stderr
    assert sorted(aws.key_status("sue-mgr").values()) == ["Active", "Active"]
    assert aws.whoami(aws.profiles()["sue"]).endswith("user/sue")


def test_bootstrap_refuses_roles_and_bad_environment_keys(aws: FakeAws, ed25519: Path) -> None:
    iam = aws.client("iam")
    iam.create_role(RoleName="r", AssumeRolePolicyDocument=json.dumps(iamsorry.role_trust_policy("*")))
    role = aws.client("sts").assume_role(RoleArn="arn:aws:iam::123456789012:role/r", RoleSessionName="bootstrap-test")
    proc = run_cli(env=_session_env(role["Credentials"]))
    assert_clean_error(proc, "not to an IAM user")
    made = run_cli("--profile", "aws-admin", "--create-iam-sorry", "sue-mgr")
    key_id, secret = parse_handover(made.stdout)
    session = aws.client("sts", key_id, secret).get_session_token(DurationSeconds=900)["Credentials"]
    aws.shim.expire_sessions()
    proc = run_cli(env=_session_env(session))
    assert_clean_error(proc, "ExpiredToken")
    assert list(aws.key_status("sue-mgr").values()) == ["Active"]


# -- bootstrap fault injection: whatever fails, a working key remains ---------


def _admin_made(aws: FakeAws) -> tuple[str, str]:
    made = run_cli("--profile", "aws-admin", "--create-iam-sorry", "sue-mgr")
    assert made.returncode == 0, made.stderr
    return parse_handover(made.stdout)


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
        ("UpdateAccessKey", "AccessDenied", 403),
        ("CreateUser", "AccessDenied", 403),
        ("GetSessionToken", "AccessDenied", 403),
    ],
)
def test_bootstrap_fault_at_each_aws_step_leaves_a_working_key(
    aws: FakeAws, ed25519: Path, action: str, code: str, status: int
) -> None:
    exported = _admin_made(aws)
    aws.shim.fail(action, code=code, times=1, status=status)  # none of these codes is retried
    proc = run_cli(env={"AWS_ACCESS_KEY_ID": exported[0], "AWS_SECRET_ACCESS_KEY": exported[1], "AWS_REGION": REGION})
    assert "Traceback" not in proc.stderr
    _assert_a_working_key(aws, exported)
    if action == "UpdateAccessKey":  # the new key is stored and works; we only warn
        assert proc.returncode == 0 and "ask your administrator to deactivate" in proc.stderr
        assert sorted(aws.key_status("sue-mgr").values()) == ["Active", "Active"]
    else:
        assert_clean_error(proc, code)


def test_bootstrap_propagation_timeout_leaves_the_exported_key(aws: FakeAws, ed25519: Path) -> None:
    exported = _admin_made(aws)
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
    exported = _admin_made(aws)
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
            iamsorry.bootstrap(iamsorry.Store(), None, 36)
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
    """The read-back check is the last line of defence; simulate a file that
    does not read back as written."""
    _bootstrap_with_fault(
        aws,
        monkeypatch,
        iamsorry,
        "open_sealed",
        lambda value, field, secret: "garbage",
        iamsorry.CryptoError,
        "does not match",
    )


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


def test_bootstrap_base_user_failure_keeps_the_manager(aws: FakeAws, ed25519: Path) -> None:
    exported = _admin_made(aws)
    aws.shim.fail("CreateUser", code="AccessDenied", times=1, status=403)
    proc = run_cli(env={"AWS_ACCESS_KEY_ID": exported[0], "AWS_SECRET_ACCESS_KEY": exported[1], "AWS_REGION": REGION})
    assert_clean_error(proc, "AccessDenied")
    _assert_a_working_key(aws, exported)
    assert aws.key_status("sue-mgr")[exported[0]] == "Inactive"
    assert run_cli("sue").returncode == 0  # rerunning the daily command finishes the job


def test_bare_run_with_a_manager_explains_itself(manager: FakeAws) -> None:
    proc = run_cli()
    assert proc.returncode == 0 and "manager [sue-mgr] is set up" in proc.stderr


def test_aws_profile_naming_a_session_profile_is_not_taken_for_the_manager(manager: FakeAws) -> None:
    proc = run_cli("sue-data", env={"AWS_PROFILE": "sue"})
    assert proc.returncode == 0, proc.stderr
    assert manager.whoami(manager.profiles()["sue-data"]).endswith("user/sue-data")


def test_several_managers_must_be_chosen(manager: FakeAws) -> None:
    text = (manager.home / ".aws" / "credentials").read_text()
    sealed = iamsorry.read_aws_credentials()["sue-mgr"]
    text += (
        f"\n[other-mgr]\naws_access_key_id = {sealed['aws_access_key_id']}\n"
        f"aws_secret_access_key = {sealed['aws_secret_access_key']}\n"
    )
    (manager.home / ".aws" / "credentials").write_text(text)
    assert_clean_error(run_cli("sue-x"), "several manager profiles", "sue-mgr", "other-mgr")
    assert run_cli("sue-x", "--profile", "sue-mgr").returncode == 0
    assert run_cli("sue-y", env={"AWS_PROFILE": "sue-mgr"}).returncode == 0


def test_python_api_mints_for_the_named_user(manager: FakeAws) -> None:
    creds = iamsorry.get_temp_credentials_for_user(None, "sue", 3600)
    sts = manager.client("sts", creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"])
    assert sts.get_caller_identity()["Arn"].endswith("user/sue")
    iamsorry.update_profile_credentials("sue-copy", creds, "sue")
    copy = iamsorry.read_aws_credentials()["sue-copy"]
    assert copy["credentials_owner"] == "sue" and manager.whoami(copy).endswith("user/sue")
    assert iamsorry.credentials_need_refresh(copy, threshold_minutes=5)[0] is False
    assert iamsorry.credentials_need_refresh(copy, threshold_minutes=90)[0] is True
    with pytest.raises(iamsorry.NamespaceError):
        iamsorry.get_temp_credentials_for_user(None, "bob", 3600)
    session = iamsorry.create_session_with_profile("sue")
    assert session.client("sts").get_caller_identity()["Arn"].endswith("user/sue")
    mgr_session = iamsorry.create_session_with_profile("sue-mgr")
    assert mgr_session.client("sts").get_caller_identity()["Arn"].endswith("user/sue-mgr")


def test_namespace_users_are_tagged_ours_so_no_other_manager_can_claim_them(manager: FakeAws) -> None:
    iam = manager.client("iam")
    tags = {t["Key"]: t["Value"] for t in iam.list_user_tags(UserName="sue")["Tags"]}
    assert tags == {"owner": "sue", "delegated-by": "sue-mgr"}
    iam.create_user(UserName="sue-legacy")  # made by the administrator, untagged
    assert run_cli("sue-legacy").returncode == 0
    tags = {t["Key"]: t["Value"] for t in iam.list_user_tags(UserName="sue-legacy")["Tags"]}
    assert tags == {"owner": "sue", "delegated-by": "sue-mgr"}
    assert manager.whoami(manager.profiles()["sue-legacy"]).endswith("user/sue-legacy")
    # Another manager trying to claim sue's users finds them owned.
    dirk = iamsorry.Manager("dirk-mgr", iamsorry.Creds(*ADMIN_KEY), "dirk-mgr", REGION)
    with pytest.raises(iamsorry.NamespaceError, match="already delegated to 'sue'"):
        iamsorry.chown_user(dirk, "sue-legacy", "sue")


def test_minting_never_overwrites_a_long_term_or_sealed_profile(manager: FakeAws) -> None:
    path = manager.home / ".aws" / "credentials"
    path.write_text(
        path.read_text() + "\n[sue-ops]\naws_access_key_id = AKIAOPSOPSOPSOPSOPS1\naws_secret_access_key = keep-me\n"
    )
    before = path.read_text()
    users = {u["UserName"] for u in manager.client("iam").list_users()["Users"]}
    assert_clean_error(run_cli("sue-ops"), "holds a long-term key")
    assert path.read_text() == before
    assert {u["UserName"] for u in manager.client("iam").list_users()["Users"]} == users


def test_aws_error_messages_mask_key_ids() -> None:
    from botocore.exceptions import ClientError

    err = ClientError(
        {"Error": {"Code": "NoSuchEntity", "Message": "The Access Key with id AKIAIOSFODNN7EXAMPLE cannot be found"}},
        "DeleteAccessKey",
    )
    with pytest.raises(iamsorry.AwsError) as caught, iamsorry.aws_call("delete a key"):
        raise err
    assert "AKIAIOSFODNN7EXAMPLE" not in str(caught.value) and "AKIA…MPLE" in str(caught.value)
