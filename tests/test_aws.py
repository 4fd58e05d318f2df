"""IAM/STS flows end to end: the CLI as a subprocess against a local moto
server made strict by the identity shim, with a real ssh-agent."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from conftest import REGION, FakeAws, bash, iamsorry, parse_handover, run_cli


def test_seed_quick_start(aws: FakeAws, ed25519: Path) -> None:
    # Administrator
    made = run_cli("--profile", "aws-admin", "--create-iam-sorry", "sue-mgr")
    assert made.returncode == 0, made.stderr
    key_id, secret = parse_handover(made.stdout)
    iam = aws.client("iam")
    attached = iam.list_attached_user_policies(UserName="sue-mgr")["AttachedPolicies"]
    assert [p["PolicyName"] for p in attached] == ["iam-sorry-sue-manager"]
    version = iam.get_policy_version(PolicyArn=attached[0]["PolicyArn"], VersionId="v1")["PolicyVersion"]
    assert version["Document"] == iamsorry.manager_policy("sue", "123456789012")
    assert iam.list_user_policies(UserName="sue-mgr")["PolicyNames"] == []
    base = iam.get_user(UserName="sue")["User"]  # made by the administrator, so no other manager can claim it
    assert base["Arn"] == "arn:aws:iam::123456789012:user/iam-sorry/sue"
    assert base["PermissionsBoundary"]["PermissionsBoundaryArn"].endswith(":policy/iam-sorry-sue-boundary")
    assert {t["Key"]: t["Value"] for t in base["Tags"]}["owner"] == "sue"
    assert key_id not in made.stderr and secret not in made.stderr
    # User, once: export and run a bare iam-sorry
    boot = run_cli(env={"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": REGION})
    assert boot.returncode == 0, boot.stderr
    assert secret not in boot.stderr + boot.stdout and key_id not in boot.stderr
    profiles = aws.profiles()
    fp = iamsorry.resolve_ssh_key().fingerprint
    assert profiles["sue-mgr"]["aws_access_key_id"].startswith(f"__encrypted__:v2:{fp[7:]}:")
    statuses = aws.key_status("sue-mgr")
    assert key_id not in statuses  # the key the administrator saw is gone
    assert list(statuses.values()) == ["Active"]
    assert aws.whoami(profiles["sue"]) == "arn:aws:iam::123456789012:user/iam-sorry/sue"
    assert aws.key_status("sue") == {}  # the key used to mint was deleted
    assert iamsorry.read_aws_config()["sue"]["region"] == REGION
    # Daily
    daily = run_cli("sue")
    assert daily.returncode == 0, daily.stderr
    assert "Successfully updated profile 'sue'" in daily.stderr
    fresh = aws.profiles()["sue"]
    assert fresh["aws_access_key_id"] != profiles["sue"]["aws_access_key_id"]
    assert aws.whoami(fresh) == "arn:aws:iam::123456789012:user/iam-sorry/sue"
    # Shell scripts, with the real AWS CLI
    out = bash(
        'eval "$(iam-sorry --eval sue)" && aws sts get-caller-identity --output json',
        env={"PATH": f"{Path(iamsorry.__file__).parent}:{os.environ['PATH']}", "AWS_REGION": REGION},
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["Arn"] == "arn:aws:iam::123456789012:user/iam-sorry/sue"
    # Administrator: assign permissions to sue (moto has no AWS-managed policies, so inline)
    doc = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:List*","Resource":"*"}]}'
    out = bash(
        f"aws --profile aws-admin iam put-user-policy --user-name sue --policy-name read --policy-document '{doc}'"
    )
    assert out.returncode == 0, out.stderr
    assert iam.list_user_policies(UserName="sue")["PolicyNames"] == ["read"]


# -- bootstrap fault injection: whatever fails, a working key remains ---------


def test_aws_error_messages_mask_key_ids() -> None:
    from botocore.exceptions import ClientError

    err = ClientError(
        {"Error": {"Code": "NoSuchEntity", "Message": "The Access Key with id AKIAIOSFODNN7EXAMPLE cannot be found"}},
        "DeleteAccessKey",
    )
    with pytest.raises(iamsorry.AwsError) as caught, iamsorry.aws_call("delete a key"):
        raise err
    assert "AKIAIOSFODNN7EXAMPLE" not in str(caught.value) and "AKIA…MPLE" in str(caught.value)


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-24T03:14:15Z",
        "2026-11-24T03:14:15.250Z",
        "2026-11-24 03:14:15",
        "2026-11-24T03:14:15+00:00",
        "2000-02-29T23:59:59Z",
        "1970-01-01T00:00:00Z",
        "2100-03-01T00:00:00z",
        "2026-11-24T05:14:15+02:00",
        "2038-01-19T03:14:08.999999Z",
    ],
)
def test_parse_time_agrees_with_datetime(text: str) -> None:
    from datetime import datetime, timezone

    when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    assert iamsorry.parse_time(text) == pytest.approx(when.timestamp(), abs=1e-6)


@pytest.mark.parametrize("text", ["", "soon", "2026-13-01T00:00:00Z", "2026-11-24T03:14:99Z x"])
def test_parse_time_rejects_nonsense(text: str) -> None:
    assert iamsorry.parse_time(text) is None


def test_sigterm_unwinds_only_inside_the_block_and_only_for_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    before = signal.getsignal(signal.SIGTERM)
    with iamsorry._SigtermUnwinds():  # a library caller: its signals are its own
        assert signal.getsignal(signal.SIGTERM) is before
    monkeypatch.setattr(iamsorry.UI, "stream", sys.stderr)
    with iamsorry._SigtermUnwinds():
        assert signal.getsignal(signal.SIGTERM) is iamsorry._on_sigterm
    assert signal.getsignal(signal.SIGTERM) is before


def test_sts_replies_become_creds_in_one_place() -> None:
    reply = {"AccessKeyId": "ASIA1", "SecretAccessKey": "s", "SessionToken": "t", "Expiration": "2030-01-01T00:00:00Z"}
    c = iamsorry.Creds.from_sts(reply)
    assert (c.access_key_id, c.secret_access_key, c.session_token) == ("ASIA1", "s", "t")
    assert iamsorry.format_time(c.expiration) == "2030-01-01T00:00:00Z"
    with pytest.raises(iamsorry.StoreError, match=r"\[p\] has no aws_access_key_id"):
        iamsorry.Creds.from_profile("p", {"aws_secret_access_key": "s"})
