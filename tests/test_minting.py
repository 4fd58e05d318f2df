"""IAM/STS flows end to end: the CLI as a subprocess against a local moto
server made strict by the identity shim, with a real ssh-agent."""

from __future__ import annotations

import pytest
from conftest import ADMIN_KEY, REGION, FakeAws, assert_clean_error, expire_profile, iamsorry, run_cli


def test_every_minted_profile_belongs_to_its_user(manager: FakeAws) -> None:
    for name, hours in (("sue-analytics", "12"), ("sue-bedrock", "1"), ("sue", "36")):
        proc = run_cli(name, "--duration", hours)
        assert proc.returncode == 0, proc.stderr
        profile = manager.profiles()[name]
        assert manager.whoami(profile) == f"arn:aws:iam::123456789012:user/iam-sorry/{name}"
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
    assert manager.whoami(manager.profiles()["sue-slow"]).endswith("user/iam-sorry/sue-slow")
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


def test_eval_refreshes_expired_and_nearly_expired_credentials(manager: FakeAws) -> None:
    old = manager.profiles()["sue"]["aws_access_key_id"]
    manager.shim.reset_calls()
    cached = run_cli("--eval", "sue")
    assert cached.returncode == 0 and old in cached.stdout
    assert sum(manager.shim.calls.values()) == 0  # valid credentials: no AWS call at all
    expire_profile("sue")
    proc = run_cli("--eval", "sue")
    assert proc.returncode == 0, proc.stderr
    calls = dict(manager.shim.calls)
    assert calls == {"GetUser": 1, "CreateAccessKey": 1, "GetSessionToken": 1, "DeleteAccessKey": 1}
    fresh = manager.profiles()["sue"]
    assert fresh["aws_access_key_id"] != old and fresh["aws_access_key_id"] in proc.stdout
    assert manager.whoami(fresh).endswith("user/iam-sorry/sue")
    soon = iamsorry.format_time(iamsorry.now() + 600)
    expire_profile("sue", soon)
    assert fresh["aws_access_key_id"] not in run_cli("--eval", "sue").stdout  # inside the 15-minute window


def test_min_ttl_zero_keeps_credentials_until_expiry(manager: FakeAws) -> None:
    soon = iamsorry.format_time(iamsorry.now() + 600)
    expire_profile("sue", soon)
    key = manager.profiles()["sue"]["aws_access_key_id"]
    assert key in run_cli("--eval", "sue", "--min-ttl", "5").stdout
    assert key not in run_cli("--eval", "sue").stdout


def test_namespace_users_are_owned_from_creation_and_older_users_are_never_swallowed(manager: FakeAws) -> None:
    iam = manager.client("iam")
    assert run_cli("sue-new").returncode == 0
    made = iam.get_user(UserName="sue-new")["User"]
    assert made["Path"] == "/iam-sorry/"
    assert made["PermissionsBoundary"]["PermissionsBoundaryArn"].endswith(":policy/iam-sorry-sue-boundary")
    assert {t["Key"]: t["Value"] for t in made["Tags"]} == {"owner": "sue", "delegated-by": "sue-mgr"}
    # A user that existed before the namespace, with an admin policy: never tagged, never minted.
    iam.create_user(UserName="sue-prod-deployer")
    admin = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}'
    iam.put_user_policy(UserName="sue-prod-deployer", PolicyName="everything", PolicyDocument=admin)
    manager.shim.reset_calls()
    proc = run_cli("sue-prod-deployer")
    assert_clean_error(proc, "was not made by iam-sorry", "--adopt sue-prod-deployer --owner sue")
    assert set(manager.shim.calls) == {"GetUser"}  # looked, wrote nothing
    assert iam.list_user_tags(UserName="sue-prod-deployer")["Tags"] == []
    assert manager.key_status("sue-prod-deployer") == {}
    # Only an administrator hands it over; then it is the namespace's.
    adopt = run_cli("--profile", "aws-admin", "--adopt", "sue-prod-deployer", "--owner", "sue")
    assert adopt.returncode == 0, adopt.stderr
    assert "inline everything" in adopt.stderr  # the administrator sees what the manager can now mint
    minted = run_cli("sue-prod-deployer")
    assert minted.returncode == 0, minted.stderr
    assert manager.whoami(manager.profiles()["sue-prod-deployer"]).endswith("user/iam-sorry/sue-prod-deployer")
    # Another manager trying to claim sue's users finds them owned.
    dirk = iamsorry.Manager("dirk-mgr", iamsorry.Creds(*ADMIN_KEY), "dirk-mgr", REGION)
    with pytest.raises(iamsorry.NamespaceError, match="already delegated to 'sue'"):
        iamsorry.chown_user(dirk, "sue-new", "sue")


def test_minting_never_overwrites_a_long_term_profile(manager: FakeAws) -> None:
    path = manager.home / ".aws" / "credentials"
    path.write_text(
        path.read_text() + "\n[sue-ops]\naws_access_key_id = AKIAOPSOPSOPSOPSOPS1\naws_secret_access_key = keep-me\n"
    )
    before = path.read_text()
    users = {u["UserName"] for u in manager.client("iam").list_users()["Users"]}
    assert_clean_error(run_cli("sue-ops"), "holds a long-term key")
    assert path.read_text() == before
    assert {u["UserName"] for u in manager.client("iam").list_users()["Users"]} == users


def test_revoked_manager_key_gives_a_clear_error(manager: FakeAws) -> None:
    iam = manager.client("iam")
    for key_id, status in manager.key_status("sue-mgr").items():
        if status == "Active":
            iam.update_access_key(UserName="sue-mgr", AccessKeyId=key_id, Status="Inactive")
    proc = run_cli("sue")
    assert_clean_error(proc, "InvalidClientTokenId", "administrator", "iam-sorry --reset")
    expire_profile("sue")
    assert_clean_error(run_cli("--eval", "sue"), "InvalidClientTokenId", "administrator")


def test_minting_never_overwrites_a_sealed_profile(manager: FakeAws) -> None:
    """A second sealed key (here a copy of sue-mgr's, as a renamed manager
    would be) under a namespace user's name is refused before any AWS call."""
    path = manager.home / ".aws" / "credentials"
    sealed = iamsorry.read_aws_credentials()["sue-mgr"]
    path.write_text(
        path.read_text() + f"\n[sue-ops]\naws_access_key_id = {sealed['aws_access_key_id']}\n"
        f"aws_secret_access_key = {sealed['aws_secret_access_key']}\n"
    )
    before = path.read_text()
    manager.shim.reset_calls()
    proc = run_cli("sue-ops", "--profile", "sue-mgr")  # two sealed profiles: name the manager
    assert_clean_error(proc, "[sue-ops]", "holds a sealed key")
    assert path.read_text() == before
    assert dict(manager.shim.calls) == {}
    assert "sue-ops" not in {u["UserName"] for u in manager.client("iam").list_users()["Users"]}
