"""IAM/STS flows end to end: the CLI as a subprocess against a local moto
server made strict by the identity shim, with a real ssh-agent."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import REGION, FakeAws, assert_clean_error, bash, exported, hand_over, iamsorry, run_cli


def test_delegation_once_and_the_manager_loses_write(manager: FakeAws) -> None:
    iam = manager.client("iam")
    assert_clean_error(run_cli("jimmy-bedrock", "--chown", "jimmy"), "not an IAM user of an iam-sorry namespace")
    iam.create_user(UserName="jimmy")  # a user, but no namespace an administrator made
    assert_clean_error(run_cli("jimmy-bedrock", "--chown", "jimmy"), "not an IAM user of an iam-sorry namespace")
    iam.delete_user(UserName="jimmy")
    hand_over("jimmy-mgr")
    assert_clean_error(run_cli("sue-x", "--chown", "jimmy"), "does not match the namespace")
    proc = run_cli("jimmy-bedrock", "--chown", "jimmy")
    assert proc.returncode == 0, proc.stderr
    made = iam.get_user(UserName="jimmy-bedrock")["User"]
    assert {t["Key"]: t["Value"] for t in made["Tags"]} == {"owner": "jimmy", "delegated-by": "sue-mgr"}
    assert made["Path"] == "/iam-sorry/"
    assert made["PermissionsBoundary"]["PermissionsBoundaryArn"].endswith(":policy/iam-sorry-jimmy-boundary")
    assert_clean_error(run_cli("jimmy-bedrock", "--chown", "jimmy"), "already delegated")
    assert_clean_error(run_cli("jimmy-bedrock"), "outside your namespace")
    assert manager.key_status("jimmy-bedrock") == {}
    # An existing user is never re-tagged by delegation: an administrator adopts it.
    iam.create_user(UserName="jimmy-old")
    assert_clean_error(run_cli("jimmy-old", "--chown", "jimmy"), "only creates new users", "--adopt jimmy-old")
    assert iam.list_user_tags(UserName="jimmy-old")["Tags"] == []


def test_delegated_user_is_minted_by_its_new_owner(manager: FakeAws, tmp_path: Path) -> None:
    """jimmy's own manager takes over jimmy-bedrock."""
    key = hand_over("jimmy-mgr")
    assert run_cli("jimmy-bedrock", "--chown", "jimmy").returncode == 0
    jimmy_home = {"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "jc"), "AWS_CONFIG_FILE": str(tmp_path / "jcfg")}
    boot = run_cli(env={**jimmy_home, **exported(key)})
    assert boot.returncode == 0, boot.stderr
    proc = run_cli("jimmy-bedrock", env=jimmy_home)
    assert proc.returncode == 0, proc.stderr
    creds = iamsorry.read_aws_credentials(str(tmp_path / "jc"))["jimmy-bedrock"]
    assert manager.whoami(creds).endswith("user/iam-sorry/jimmy-bedrock")
    # and sue's manager, which created it, can only look at it
    assert_clean_error(run_cli("jimmy-bedrock"), "outside your namespace")


def test_role_profile_works_with_the_aws_cli_and_eval(manager: FakeAws) -> None:
    proc = run_cli("--role", "sue-lambda")
    assert proc.returncode == 0, proc.stderr
    role = manager.client("iam").get_role(RoleName="iam-sorry-sue-lambda")["Role"]
    assert role["MaxSessionDuration"] == 43200
    trust = role["AssumeRolePolicyDocument"]
    trust = json.loads(trust) if isinstance(trust, str) else trust
    assert trust["Statement"][0]["Principal"] == {"AWS": "arn:aws:iam::123456789012:user/iam-sorry/sue"}
    assert role["PermissionsBoundary"]["PermissionsBoundaryArn"].endswith(":policy/iam-sorry-sue-boundary")
    assert {t["Key"]: t["Value"] for t in role["Tags"]} == {"owner": "sue", "delegated-by": "sue-mgr"}
    cfg = iamsorry.read_aws_config()["sue-lambda"]
    assert cfg == {"role_arn": role["Arn"], "source_profile": "sue", "region": REGION, "duration_seconds": "43200"}
    out = bash("aws --profile sue-lambda sts get-caller-identity --output json")
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
