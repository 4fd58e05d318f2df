"""Namespaces of managers whose names have several dashes: the prefix is the
name before the FIRST dash (sue-team-mgr manages sue, sue-*)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FakeAws, assert_clean_error, exported, iamsorry, parse_handover, run_cli


@pytest.mark.parametrize(
    ("manager", "prefix"),
    [("sue-mgr", "sue"), ("sue-team-mgr", "sue"), ("a-b-c", "a"), ("a-b", "a"), ("x-y-z-w", "x")],
)
def test_prefix_is_the_name_before_the_first_dash(manager: str, prefix: str) -> None:
    assert iamsorry.namespace_prefix(manager) == prefix


@pytest.mark.parametrize("name", ["sue", "sue-team", "sue-x", "sue-team-x", "sue-team-mgr-2"])
def test_a_multi_dash_manager_manages_its_whole_namespace(name: str) -> None:
    iamsorry.check_namespace(name, "sue-team-mgr")


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("team-x", "outside your namespace"),
        ("suex", "outside your namespace"),
        ("su", "outside your namespace"),
        ("sue-team-mgr", "the manager itself"),
        ("Sue-Team-Mgr", "the manager itself"),
    ],
)
def test_a_multi_dash_manager_is_refused_outside_it(name: str, needle: str) -> None:
    with pytest.raises(iamsorry.NamespaceError, match=needle) as err:
        iamsorry.check_namespace(name, "sue-team-mgr")
    if "outside" in needle:
        assert "(prefix 'sue')" in str(err.value)


def test_ownership_compares_whole_prefixes() -> None:
    def user(owner: str) -> dict[str, object]:
        return {"Path": iamsorry.USER_PATH, "TagMap": {"owner": owner}}

    assert iamsorry.foreign_reason(user("sue"), "sue") is None
    for other in ("dirk", "zed", "sue-team"):  # before and after sue, and sue's own prefix extended
        assert iamsorry.foreign_reason(user(other), "sue") == (
            iamsorry._IS_DELEGATED,
            f"is delegated to '{other}' (by ?)",
        )
    for path in ("/", "/iam-sorry/deep/", "/zzz/"):  # only USER_PATH itself is iam-sorry's
        here = {"Path": path, "TagMap": {"owner": "sue"}}
        assert iamsorry.foreign_reason(here, "sue") == (iamsorry._IS_STRANGER, "was not made by iam-sorry")


def test_manager_a_b_c_end_to_end(aws: FakeAws, ed25519: Path) -> None:
    """The administrator creates a-b-c; its namespace is a, a-*."""
    made = run_cli("--profile", "aws-admin", "--create-iam-sorry", "a-b-c")
    assert made.returncode == 0, made.stderr
    assert "namespace a, a-*" in made.stdout
    attached = aws.client("iam").list_attached_user_policies(UserName="a-b-c")["AttachedPolicies"]
    assert [p["PolicyName"] for p in attached] == [iamsorry.manager_policy_name("a")]
    boot = run_cli(env=exported(parse_handover(made.stdout)))
    assert boot.returncode == 0, boot.stderr
    for name in ("a", "a-b", "a-x-y"):  # the base user is the prefix
        proc = run_cli(name)
        assert proc.returncode == 0, proc.stderr
        assert aws.whoami(aws.profiles()[name]).endswith(f":user{iamsorry.USER_PATH}{name}")
    for name in ("b-x", "ab"):
        assert_clean_error(run_cli(name), "outside your namespace", "prefix 'a'")
    assert_clean_error(run_cli("a-b-c"), "the manager itself")


def test_inline_policy_limits_are_awss() -> None:
    """IAM's quotas for inline policies (characters, whitespace excluded): the
    size checks elsewhere compare against these, so they must be AWS's numbers."""
    assert (iamsorry.INLINE_USER_POLICY_MAX_CHARS, iamsorry.INLINE_ROLE_POLICY_MAX_CHARS) == (2048, 10240)


@pytest.mark.parametrize("account", ["!", "12345678901", "1234567890123", "abcdefghijkl", ""])
def test_policies_refuse_an_account_that_is_not_12_digits(account: str) -> None:
    with pytest.raises(iamsorry.UsageError, match="invalid account"):
        iamsorry.manager_policy("sue", account)


@pytest.mark.parametrize("prefix", ["a-b", "sue*", "", "s?e"])
def test_namespace_arns_refuse_a_prefix_that_is_not_one(prefix: str) -> None:
    with pytest.raises(iamsorry.UsageError, match="invalid namespace prefix"):
        iamsorry.namespace_user_arns(prefix, "123456789012")
    assert iamsorry.namespace_user_arns("a", "123456789012")[0].endswith(f":user{iamsorry.USER_PATH}a")
