"""IAM/STS flows end to end: the CLI as a subprocess against a local moto
server made strict by the identity shim, with a real ssh-agent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import (
    REGION,
    FakeAws,
    assert_clean_error,
    aws_cli_arn,
    exported,
    hand_over,
    iamsorry,
    parse_handover,
    run_cli,
)


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
    assert ":assumed-role/iam-sorry-sue-lambda/" in aws_cli_arn("sue-lambda")
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


def test_a_role_of_the_namespace_s_name_that_someone_else_made_is_not_taken_over(manager: FakeAws) -> None:
    """An untagged, unbounded role named iam-sorry-sue-*, trusting another
    account, is not the namespace's: --role refuses it rather than write a
    profile for it, and a rerun on the namespace's own role still works."""
    trust = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": "999999999999"}, "Action": "sts:AssumeRole"}],
    }
    manager.client("iam").create_role(RoleName="iam-sorry-sue-foreign", AssumeRolePolicyDocument=json.dumps(trust))
    assert_clean_error(run_cli("--role", "sue-foreign"), "untagged, so namespace sue does not own it")
    assert "sue-foreign" not in iamsorry.read_aws_config()
    assert run_cli("--role", "sue-own").returncode == 0
    again = run_cli("--role", "sue-own")
    assert again.returncode == 0 and "Role 'iam-sorry-sue-own' exists" in again.stderr, again.stderr


def _admin(*args: str):
    return run_cli("--profile", "aws-admin", *args)


def _tags(iam, name: str) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in iam.list_user_tags(UserName=name)["Tags"]}


def test_create_iam_sorry_owns_the_namespace_names_from_the_start(aws: FakeAws) -> None:
    iam = aws.client("iam")
    iam.create_user(UserName="sue-old")  # existed before the namespace
    made = _admin("--create-iam-sorry", "sue-mgr")
    assert made.returncode == 0, made.stderr
    assert _tags(iam, "sue-mgr") == {"owner": "sue", "iam-sorry-manager": "sue", "delegated-by": "moto"}
    assert _tags(iam, "sue")["owner"] == "sue"
    assert iam.get_user(UserName="sue-mgr")["User"]["Path"] == "/"  # outside every namespace path
    assert "pre-existing user sue-old" in made.stderr and "--adopt sue-old --owner sue" in made.stderr
    assert _tags(iam, "sue-old") == {}  # listed, never taken
    (first,) = iam.list_access_keys(UserName="sue-mgr")["AccessKeyMetadata"]
    again = _admin("--create-iam-sorry", "sue-mgr")  # re-running updates the policy, keeps what is ours
    assert again.returncode == 0, again.stderr
    versions = iam.list_policy_versions(PolicyArn="arn:aws:iam::123456789012:policy/iam-sorry-sue-manager")
    assert len(versions["Versions"]) == 2
    # ... and its key: a second one would be a live secret in the terminal that nobody deletes
    assert iam.list_access_keys(UserName="sue-mgr")["AccessKeyMetadata"] == [first]
    assert "no new key was made" in again.stdout and "aws_secret_access_key" not in again.stdout
    iam.delete_access_key(UserName="sue-mgr", AccessKeyId=first["AccessKeyId"])
    keyless = _admin("--create-iam-sorry", "sue-mgr")  # a manager without a key gets one again
    assert keyless.returncode == 0, keyless.stderr
    assert parse_handover(keyless.stdout)[0] != first["AccessKeyId"]
    assert len(iam.list_access_keys(UserName="sue-mgr")["AccessKeyMetadata"]) == 1


@pytest.mark.parametrize(
    ("plant", "needle"),
    [
        ({"UserName": "sue", "Tags": [{"Key": "owner", "Value": "bob"}]}, "already belongs to namespace bob"),
        ({"UserName": "sue"}, "exists and belongs to no namespace"),
        (
            {
                "UserName": "sue-mgr",
                "Tags": [{"Key": "owner", "Value": "sue"}, {"Key": "delegated-by", "Value": "bob-mgr"}],
            },
            "created by bob-mgr, not as a manager",
        ),
        ({"UserName": "sue-mgr", "Tags": [{"Key": "owner", "Value": "bob"}]}, "already belongs to namespace bob"),
    ],
)
def test_create_iam_sorry_stops_when_the_names_belong_to_someone_else(aws: FakeAws, plant: dict, needle: str) -> None:
    """What another manager (bob-mgr) could have pre-created: the
    administrator is told, and nothing is written."""
    iam = aws.client("iam")
    iam.create_user(**plant)
    aws.shim.reset_calls()
    assert_clean_error(_admin("--create-iam-sorry", "sue-mgr"), needle)
    writes = {c for c in aws.shim.calls if not c.startswith(("Get", "List"))}
    assert writes == set()
    assert iam.list_policies(Scope="Local")["Policies"] == []


def test_check_namespace_reports_what_does_not_belong(manager: FakeAws) -> None:
    iam = manager.client("iam")
    assert run_cli("--role", "sue-lambda").returncode == 0
    clean = run_cli("--check-namespace")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "namespace sue" in clean.stdout
    # What an attacker or a hurried administrator leaves behind:
    iam.create_user(UserName="sue-stray")  # pre-existing, untagged
    iam.create_user(UserName="sue-foreign", Path="/iam-sorry/", Tags=[{"Key": "owner", "Value": "bob"}])
    iam.create_user(UserName="sue-loose", Path="/iam-sorry/", Tags=[{"Key": "owner", "Value": "sue"}])  # no boundary
    for _ in range(2):
        iam.create_access_key(UserName="sue-loose")
    anyone = json.dumps(iamsorry.role_trust_policy("arn:aws:iam::999999999999:root"))
    iam.create_role(RoleName="iam-sorry-sue-open", AssumeRolePolicyDocument=anyone)
    before = dict(manager.shim.calls)
    report = run_cli("--check-namespace")
    assert report.returncode != 0
    gets = manager.shim.calls.get("GetUser", 0) - before.get("GetUser", 0)
    listed = [u["UserName"] for u in iam.list_users()["Users"] if u["UserName"].startswith("sue")]
    assert gets == len(listed), (gets, listed)  # one look at each user, the base user included
    assert "Traceback" not in report.stderr
    lines = report.stdout.splitlines()
    expected = [
        "user sue-stray was not made by iam-sorry",
        "user sue-foreign is delegated to 'bob'",
        "user sue-loose is not bounded by iam-sorry-sue-boundary",
        "user sue-loose has 2 access keys",
        "role iam-sorry-sue-open trusts more than, or other than, the base user",
        "role iam-sorry-sue-open is not bounded by iam-sorry-sue-boundary",
        "role iam-sorry-sue-open is untagged",
    ]
    for needle in expected:
        assert any(line.startswith(needle) for line in lines), (needle, lines)
    assert len(lines) == len(expected)
    assert "7 finding(s)" in report.stderr
    # An administrator checks any namespace with their own profile.
    admin = run_cli("--profile", "aws-admin", "--check-namespace", "sue")
    assert admin.returncode != 0 and admin.stdout == report.stdout


def test_the_tools_own_identities_are_never_listed_for_adoption_or_adopted(aws: FakeAws) -> None:
    """Namespace ``iam`` matches the service's user iam-sorry-service by name;
    handing that (or a manager) to a namespace would let its manager mint
    for it and break the service."""
    iam = aws.client("iam")
    iam.create_user(UserName="iam-sorry-service", Path="/iam-sorry-service/")
    assert _admin("--create-iam-sorry", "iam-sorry-mgr").returncode == 0
    made = _admin("--create-iam-sorry", "iam-mgr")
    assert made.returncode == 0, made.stderr
    assert "iam-sorry-service" not in made.stderr and "iam-sorry-mgr" not in made.stderr
    for name, needle in (("iam-sorry-service", "department service's own user"), ("iam-sorry-mgr", "is a manager")):
        before = iam.get_user(UserName=name)["User"]
        assert_clean_error(_admin("--adopt", name, "--owner", "iam"), needle, "never adopted")
        after = iam.get_user(UserName=name)["User"]
        assert (after["Path"], after.get("PermissionsBoundary")) == (before["Path"], before.get("PermissionsBoundary"))
        assert "owner" not in _tags(iam, name) or name == "iam-sorry-mgr"


def test_create_iam_sorry_repairs_a_base_user_bounded_by_another_namespace(aws: FakeAws) -> None:
    iam = aws.client("iam")
    for manager in ("sue-mgr", "bob-mgr"):
        assert _admin("--create-iam-sorry", manager).returncode == 0
    bob_boundary = "arn:aws:iam::123456789012:policy/iam-sorry-bob-boundary"
    iam.put_user_permissions_boundary(UserName="sue", PermissionsBoundary=bob_boundary)
    again = _admin("--create-iam-sorry", "sue-mgr")
    assert again.returncode == 0, again.stderr
    bound = iam.get_user(UserName="sue")["User"]["PermissionsBoundary"]["PermissionsBoundaryArn"]
    assert bound == "arn:aws:iam::123456789012:policy/iam-sorry-sue-boundary"


def test_a_manager_identified_by_aws_asks_for_its_account_once(manager: FakeAws) -> None:
    """Without ``credentials_owner`` the manager learns who it is from
    GetCallerIdentity; the same answer names the account the role needs."""
    path = manager.home / ".aws" / "credentials"
    path.write_text("".join(line for line in path.read_text().splitlines(True) if "credentials_owner" not in line))
    manager.shim.reset_calls()
    made = run_cli("--role", "sue-etl")
    assert made.returncode == 0, made.stderr
    assert manager.shim.calls["GetCallerIdentity"] == 1
    assert "credentials_owner = sue-mgr" in path.read_text()
