"""Tests of the moto shim, using nothing but boto3 (not the project)."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import moto_shim
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from moto import mock_aws

REGION = "us-east-1"
NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"})
Creds = dict[str, str]


@pytest.fixture
def aws_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake admin credentials and no dependence on HOME or ~/.aws."""
    for name in list(os.environ):
        if name.startswith("AWS_") or name == "MOTO_ACCOUNT_ID":
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def shim(aws_env: None) -> Iterator[moto_shim.Shim]:
    # The shim is process-wide: reset so no knob leaks between tests.
    installed = moto_shim.install()
    installed.reset()
    with mock_aws():
        yield installed
    installed.reset()


@pytest.fixture
def server(aws_env: None) -> Iterator[str]:
    url, stop = moto_shim.start_server()
    moto_shim.install().reset()
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST")).close()
    yield url
    stop()
    moto_shim.install().reset()


def client(service: str, creds: Creds | None = None, **kwargs: Any) -> Any:
    if creds is not None:
        kwargs.update(
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds.get("SessionToken"),
        )
    return boto3.client(service, region_name=REGION, **kwargs)


def new_user(name: str, **kwargs: Any) -> Creds:
    iam = client("iam", **kwargs)
    iam.create_user(UserName=name)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"AccessKeyId": key["AccessKeyId"], "SecretAccessKey": key["SecretAccessKey"]}


def session_for(creds: Creds, token_args: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    return client("sts", creds, **kwargs).get_session_token(**(token_args or {}))["Credentials"]


def error_of(call: Any, *args: Any, **kwargs: Any) -> tuple[str, str, int]:
    with pytest.raises(ClientError) as info:
        call(*args, **kwargs)
    response = info.value.response
    return response["Error"]["Code"], response["Error"]["Message"], response["ResponseMetadata"]["HTTPStatusCode"]


INVALID = ("InvalidClientTokenId", "The security token included in the request is invalid.", 403)


def test_sessions_belong_to_the_signing_user(shim: moto_shim.Shim) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    alice_session, bob_session = session_for(alice), session_for(bob)

    keys = {alice_session["AccessKeyId"], bob_session["AccessKeyId"]}
    assert len(keys) == 2 and all(k.startswith("ASIA") and len(k) == 20 for k in keys)
    assert alice_session["SecretAccessKey"] != bob_session["SecretAccessKey"]
    assert all(len(s["SecretAccessKey"]) == 40 for s in (alice_session, bob_session))
    assert alice_session["SessionToken"] != bob_session["SessionToken"]

    alice_user = client("iam").get_user(UserName="alice")["User"]
    identity = client("sts", alice_session).get_caller_identity()
    assert identity["Arn"] == "arn:aws:iam::123456789012:user/alice"
    assert (identity["UserId"], identity["Account"]) == (alice_user["UserId"], "123456789012")
    assert client("sts", bob_session).get_caller_identity()["Arn"].endswith(":user/bob")
    assert shim.identity_of(alice_session["AccessKeyId"]) == alice_user["Arn"]
    assert shim.identity_of(alice["AccessKeyId"]) == alice_user["Arn"]
    assert shim.identity_of("ASIAUNKNOWNUNKNOWN00") is None


def test_session_credentials_work_for_other_services(shim: moto_shim.Shim) -> None:
    session = session_for(new_user("carol"))
    names = [u["UserName"] for u in client("iam", session).list_users()["Users"]]
    assert names == ["carol"]


def test_session_without_its_token_is_rejected(shim: moto_shim.Shim) -> None:
    session = session_for(new_user("dave"))
    session["SessionToken"] = session["SessionToken"][:-4] + "AAAA"
    assert error_of(client("sts", session).get_caller_identity) == INVALID


@pytest.mark.parametrize(("duration", "expected"), [(None, 43200), (900, 900), (129600, 129600)])
def test_expiration_follows_duration(shim: moto_shim.Shim, duration: int | None, expected: int) -> None:
    args = {} if duration is None else {"DurationSeconds": duration}
    expiration = session_for(new_user("erin"), token_args=args)["Expiration"]
    remaining = (expiration - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
    assert expected - 30 < remaining <= expected


@pytest.mark.parametrize("duration", [899, 129601])
def test_duration_out_of_range_is_a_validation_error(shim: moto_shim.Shim, duration: int) -> None:
    # botocore would refuse 899 itself; the server must refuse it too.
    sts = client("sts", new_user("frank"), config=Config(parameter_validation=False))
    code, message, status = error_of(sts.get_session_token, DurationSeconds=duration)
    assert (code, status) == ("ValidationError", 400)
    assert f"Value '{duration}' at 'durationSeconds'" in message


def test_new_key_is_rejected_until_it_propagates(shim: moto_shim.Shim) -> None:
    shim.propagation_delay = 0.5
    sts = client("sts", new_user("gina"))
    assert error_of(sts.get_caller_identity) == INVALID
    time.sleep(0.6)
    assert sts.get_caller_identity()["Arn"].endswith(":user/gina")


def test_deactivated_key_is_rejected_everywhere(shim: moto_shim.Shim) -> None:
    creds = new_user("hank")
    client("iam").update_access_key(UserName="hank", AccessKeyId=creds["AccessKeyId"], Status="Inactive")
    assert error_of(client("sts", creds).get_caller_identity) == INVALID
    assert error_of(client("iam", creds).list_users) == INVALID
    assert error_of(client("sts", creds).get_session_token) == INVALID

    client("iam").update_access_key(UserName="hank", AccessKeyId=creds["AccessKeyId"], Status="Active")
    assert client("sts", creds).get_caller_identity()["Arn"].endswith(":user/hank")


def test_deleted_key_is_rejected_everywhere(shim: moto_shim.Shim) -> None:
    creds = new_user("ivy")
    client("iam").delete_access_key(UserName="ivy", AccessKeyId=creds["AccessKeyId"])
    assert error_of(client("sts", creds).get_caller_identity) == INVALID
    assert error_of(client("iam", creds).list_users) == INVALID
    assert shim.identity_of(creds["AccessKeyId"]) is None


def test_expired_sessions_are_rejected(shim: moto_shim.Shim) -> None:
    creds = new_user("jack")
    old = session_for(creds)
    assert client("sts", old).get_caller_identity()["Arn"].endswith(":user/jack")
    shim.expire_sessions()
    expired = ("ExpiredToken", "The security token included in the request is expired", 403)
    assert error_of(client("sts", old).get_caller_identity) == expired
    assert error_of(client("iam", old).list_users) == expired
    assert client("sts", session_for(creds)).get_caller_identity()["Arn"].endswith(":user/jack")


def test_session_credentials_cannot_mint_sessions(shim: moto_shim.Shim) -> None:
    session = session_for(new_user("kate"))
    code, _, status = error_of(client("sts", session).get_session_token)
    assert (code, status) == ("AccessDenied", 403)


def test_calls_are_counted_per_action(shim: moto_shim.Shim) -> None:
    creds = new_user("liam")
    shim.reset_calls()
    sts = client("sts", creds)
    for _ in range(3):
        sts.get_caller_identity()
    sts.get_session_token()
    client("iam").update_access_key(UserName="liam", AccessKeyId=creds["AccessKeyId"], Status="Inactive")
    error_of(sts.get_session_token)  # rejected requests reached the server too
    assert shim.calls == {"GetCallerIdentity": 3, "GetSessionToken": 2, "UpdateAccessKey": 1}
    shim.reset_calls()
    assert not shim.calls


def test_injected_faults_hit_the_next_calls_only(shim: moto_shim.Shim) -> None:
    sts = client("sts", new_user("mia"), config=NO_RETRY)
    shim.reset_calls()
    shim.fail("GetSessionToken", code="Throttling", times=2, status=400)
    assert sts.get_caller_identity()["Arn"].endswith(":user/mia")
    for _ in range(2):
        code, message, status = error_of(sts.get_session_token)
        assert (code, status) == ("Throttling", 400) and "Injected" in message
    assert sts.get_session_token()["Credentials"]["AccessKeyId"].startswith("ASIA")
    assert shim.calls["GetSessionToken"] == 3


def test_botocore_retries_consume_injected_faults(shim: moto_shim.Shim) -> None:
    sts = client("sts", new_user("noah"), config=Config(retries={"total_max_attempts": 3, "mode": "standard"}))
    shim.reset_calls()
    shim.fail("GetSessionToken")  # ServiceFailure, HTTP 500: retryable
    assert sts.get_session_token()["Credentials"]["AccessKeyId"].startswith("ASIA")
    assert shim.calls["GetSessionToken"] == 2


@pytest.mark.parametrize("admin_key", ["testing", "AKIAADMINADMINADMIN1"])
def test_unknown_admin_keys_keep_working(shim: moto_shim.Shim, admin_key: str) -> None:
    admin = {"AccessKeyId": admin_key, "SecretAccessKey": "testing"}
    creds = new_user("olga", creds=admin)
    assert client("sts", creds).get_caller_identity()["Arn"].endswith(":user/olga")
    session = session_for(admin)
    assert session["AccessKeyId"].startswith("ASIA")
    admin_arn = client("sts", admin).get_caller_identity()["Arn"]
    assert client("sts", session).get_caller_identity()["Arn"] == admin_arn


def test_assume_role_still_works(shim: moto_shim.Shim) -> None:
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "*"}]}
    role = client("iam").create_role(RoleName="ops", AssumeRolePolicyDocument=json.dumps(trust))["Role"]
    assumed = client("sts", new_user("pete")).assume_role(RoleArn=role["Arn"], RoleSessionName="s1")
    identity = client("sts", assumed["Credentials"]).get_caller_identity()
    assert identity["Arn"] == "arn:aws:sts::123456789012:assumed-role/ops/s1"


def test_revoked_role_sessions_are_refused_and_new_ones_work(shim: moto_shim.Shim) -> None:
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "*"}]}
    role = client("iam").create_role(RoleName="ops", AssumeRolePolicyDocument=json.dumps(trust))["Role"]
    pete = new_user("pete")
    old = client("sts", pete).assume_role(RoleArn=role["Arn"], RoleSessionName="s1")["Credentials"]
    shim.revoke_role_sessions()
    assert error_of(client("sts", old).get_caller_identity)[0] == "AccessDenied"
    new = client("sts", pete).assume_role(RoleArn=role["Arn"], RoleSessionName="s2")["Credentials"]
    assert client("sts", new).get_caller_identity()["Arn"].endswith(":assumed-role/ops/s2")
    assert client("sts", pete).get_caller_identity()["Arn"].endswith(":user/pete")  # users' keys are untouched


def test_install_is_idempotent_and_uninstall_restores_moto(shim: moto_shim.Shim) -> None:
    from moto.sts.responses import TokenResponse

    patched = TokenResponse.get_session_token
    assert moto_shim.install() is shim and TokenResponse.get_session_token is patched
    creds = new_user("quin")
    moto_shim.uninstall()
    try:
        assert TokenResponse.get_session_token is not patched
        assert session_for(creds)["AccessKeyId"] == "AKIAIOSFODNN7EXAMPLE"
    finally:
        moto_shim.install()
    assert session_for(creds)["AccessKeyId"].startswith("ASIA")


def test_server_enforces_the_same_rules(server: str) -> None:
    shim = moto_shim.install()
    creds = new_user("rita", endpoint_url=server)
    session = session_for(creds, endpoint_url=server)
    identity = client("sts", session, endpoint_url=server).get_caller_identity()
    assert identity["Arn"] == "arn:aws:iam::123456789012:user/rita"
    client("iam", endpoint_url=server).delete_access_key(UserName="rita", AccessKeyId=creds["AccessKeyId"])
    assert error_of(client("sts", creds, endpoint_url=server).get_caller_identity) == INVALID
    assert shim.calls["GetSessionToken"] == 1


def test_server_handles_many_concurrent_clients(server: str) -> None:
    shim = moto_shim.install()
    creds = new_user("sam", endpoint_url=server)
    clients = [client("sts", creds, endpoint_url=server, config=NO_RETRY) for _ in range(40)]
    with ThreadPoolExecutor(max_workers=40) as pool:
        sessions = list(pool.map(lambda sts: sts.get_session_token()["Credentials"], clients))
    assert len({s["AccessKeyId"] for s in sessions}) == 40
    assert shim.calls["GetSessionToken"] == 40
    assert {shim.identity_of(s["AccessKeyId"]) for s in sessions} == {"arn:aws:iam::123456789012:user/sam"}


SUBPROCESS_SCRIPT = """
import json, boto3
creds = boto3.client("sts").get_session_token()["Credentials"]
sts = boto3.client("sts", aws_access_key_id=creds["AccessKeyId"],
                   aws_secret_access_key=creds["SecretAccessKey"], aws_session_token=creds["SessionToken"])
print(json.dumps({"key": creds["AccessKeyId"], "arn": sts.get_caller_identity()["Arn"]}))
"""


def test_server_serves_a_subprocess_via_aws_endpoint_url(server: str, tmp_path: Path) -> None:
    shim = moto_shim.install()
    creds = new_user("tess", endpoint_url=server)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "AWS_ENDPOINT_URL": server,
        "AWS_ACCESS_KEY_ID": creds["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": creds["SecretAccessKey"],
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    run = subprocess.run([sys.executable, "-c", SUBPROCESS_SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["arn"] == "arn:aws:iam::123456789012:user/tess"
    assert shim.identity_of(result["key"]) == result["arn"]
    assert shim.calls["GetSessionToken"] == 1


def _role(name: str, trust: dict[str, Any], path: str = "/") -> str:
    return str(
        client("iam").create_role(RoleName=name, Path=path, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    )


def _trust(principal: str, actions: list[str], condition: dict[str, Any] | None = None) -> dict[str, Any]:
    stmt: dict[str, Any] = {"Effect": "Allow", "Principal": {"AWS": principal}, "Action": actions}
    if condition:
        stmt["Condition"] = condition
    return {"Version": "2012-10-17", "Statement": [stmt]}


def test_assume_role_records_source_identity_session_name_and_tags(shim: moto_shim.Shim) -> None:
    caller = new_user("svc")
    caller_arn = client("sts", caller).get_caller_identity()["Arn"]
    actions = ["sts:AssumeRole", "sts:SetSourceIdentity", "sts:TagSession"]
    arn = _role("ns", _trust(caller_arn, actions, {"StringLike": {"sts:SourceIdentity": "*@REALM"}}), "/svc/")
    assumed = client("sts", caller).assume_role(
        RoleArn=arn, RoleSessionName="sue@REALM", SourceIdentity="sue@REALM", Tags=[{"Key": "g", "Value": "a b"}]
    )["Credentials"]
    session = shim.role_session(assumed["AccessKeyId"])
    assert session == moto_shim.RoleSession(arn, "sue@REALM", "sue@REALM", {"g": "a b"}, caller_arn)
    shim.reset_calls()
    client("iam", assumed).list_users()
    assert shim.log == [moto_shim.Call("iam", "ListUsers", assumed["AccessKeyId"], "sue@REALM", "sue@REALM")]
    assert shim.calls_of("sts") == []


@pytest.mark.parametrize(
    ("trust_actions", "condition", "request_args", "why"),
    [
        (["sts:AssumeRole"], None, {"SourceIdentity": "sue@REALM"}, "SetSourceIdentity not trusted"),
        (["sts:AssumeRole", "sts:SetSourceIdentity"], None, {"Tags": [{"Key": "g", "Value": "x"}]}, "no TagSession"),
        (["sts:AssumeRole", "sts:SetSourceIdentity"], {"StringLike": {"sts:SourceIdentity": "*@REALM"}}, {}, "no id"),
        (
            ["sts:AssumeRole", "sts:SetSourceIdentity"],
            {"StringLike": {"sts:SourceIdentity": "*@REALM"}},
            {"SourceIdentity": "sue@ELSEWHERE"},
            "id of another realm",
        ),
    ],
)
def test_assume_role_enforces_the_trust_policy(
    shim: moto_shim.Shim, trust_actions: list[str], condition: Any, request_args: dict[str, Any], why: str
) -> None:
    caller = new_user("svc")
    arn = _role("ns", _trust(client("sts", caller).get_caller_identity()["Arn"], trust_actions, condition))
    code, _, status = error_of(client("sts", caller).assume_role, RoleArn=arn, RoleSessionName="s1", **request_args)
    assert (code, status) == ("AccessDenied", 403), why


def test_assume_role_needs_the_role_and_a_trusted_caller(shim: moto_shim.Shim) -> None:
    stranger = new_user("stranger")
    arn = _role("ns", _trust("arn:aws:iam::123456789012:user/someone-else", ["sts:AssumeRole"]))
    assert error_of(client("sts", stranger).assume_role, RoleArn=arn, RoleSessionName="s1")[0] == "AccessDenied"
    missing = "arn:aws:iam::123456789012:role/never-made"
    assert error_of(client("sts", stranger).assume_role, RoleArn=missing, RoleSessionName="s1")[0] == "AccessDenied"
    account_wide = _role("open", _trust("arn:aws:iam::123456789012:root", ["sts:AssumeRole"]))
    assert client("sts", stranger).assume_role(RoleArn=account_wide, RoleSessionName="s1")["Credentials"]


def test_service_specific_credentials_are_listed_as_none(shim: moto_shim.Shim) -> None:
    new_user("uma")
    assert client("iam").list_service_specific_credentials(UserName="uma")["ServiceSpecificCredentials"] == []
    assert error_of(client("iam").list_service_specific_credentials, UserName="nobody")[0] == "NoSuchEntity"
