"""The department service, end to end: the real ``iam-sorry serve`` (gunicorn,
TLS with a trustme certificate) against the throwaway Kerberos realm and the
moto server, with ``curl --negotiate -u :`` as the outside client.  One server
for the module; each test works on its own IAM names."""

from __future__ import annotations

import contextlib
import json
import secrets
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import servicekit
from botocore.exceptions import ClientError
from conftest import ADMIN_KEY, iamsorry, require_module
from servicekit import admin, ensure_user

PRINCIPAL = "sue@IAMSORRY.TEST"
READ_ONLY = "arn:aws:iam::123456789012:policy/team-readonly"
EXTRA = "arn:aws:iam::123456789012:policy/sue-extra"  # allowed by the pattern sue-*
ADMIN_ALL = "arn:aws:iam::123456789012:policy/admin-all"  # on no allow-list
PROXY_SECRET = "p" * 40  # what the trusted front end sends beside X-Remote-User
SECRETS: list[str] = []  # every secret this module was handed: none may reach the log or the audit


@pytest.fixture(scope="module")
def svc(krb_realm: Any, moto_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[servicekit.Service]:
    servicekit.reset_aws(moto_url)
    folder = tmp_path_factory.mktemp("service")
    secret = folder / "proxy.secret"
    secret.write_text(PROXY_SECRET + "\n")
    secret.chmod(0o600)
    extra = f'trusted_proxies = ["127.0.0.2"]\nproxy_secret_file = "{secret}"'
    with servicekit.running_service(krb_realm, moto_url, folder, extra) as service:
        yield service


@pytest.fixture(autouse=True)
def tickets(krb_realm: Any) -> None:
    """Fresh tickets: other tests shift clocks and destroy caches."""
    for user in ("sue", "ann", "bob"):
        krb_realm.kinit(user)


def call(svc: servicekit.Service, user: str | None, action: str, body: Any) -> tuple[int, Any]:
    """servicekit.call, keeping every secret handed out in SECRETS."""
    status, doc = servicekit.call(svc, user, action, body)
    for key in ("SecretAccessKey", "SessionToken"):
        if isinstance(doc, dict) and doc.get(key):
            SECRETS.append(doc[key])
    return status, doc


def aws_writes(shim: Any) -> list[str]:
    """IAM writes since the shim's last reset, the test's own (as admin) aside."""
    reads = ("Get", "List")
    return [
        c.action
        for c in shim.log
        if c.service == "iam" and not c.action.startswith(reads) and c.access_key != ADMIN_KEY[0]
    ]


def test_healthz_answers_without_authentication(svc: servicekit.Service) -> None:
    assert svc.get("/healthz") == {"ok": True}
    status, _, doc = svc.curl(None, "/healthz", negotiate=False)
    assert (status, doc) == (200, {"ok": True})


def test_no_ticket_gets_401_with_a_bare_negotiate_challenge(svc: servicekit.Service) -> None:
    for user in (None, "sue"):  # sue without --negotiate sends no token either
        status, headers, doc = svc.curl(user, "/v1/whoami", negotiate=user is None)
        assert status == 401
        assert headers["www-authenticate"] == "Negotiate"
        assert "kinit" in doc["error"]
    status, headers, doc = svc.curl(
        None, "/v1/whoami", None, "-H", "Authorization: Negotiate Z2FyYmFnZQ==", negotiate=False
    )
    assert status == 401 and "Negotiate" in headers["www-authenticate"] and doc["error"]


def test_whoami_names_the_principal_groups_and_namespaces(svc: servicekit.Service) -> None:
    status, headers, doc = svc.curl("sue", "/v1/whoami")
    assert status == 200
    assert headers["www-authenticate"].startswith("Negotiate ")  # the mutual-authentication token
    assert doc["principal"] == PRINCIPAL and doc["user"] == "sue" and doc["via"] == "negotiate"
    assert "lab" in doc["groups"]
    assert doc["namespaces"]["sue"] == list(iamsorry.SERVICE_ACTIONS)
    assert doc["namespaces"]["lab"] == ["credentials", "list"]
    status, _, doc = svc.curl("ann", "/v1/whoami")
    assert (status, doc["namespaces"]) == (200, {"lab": ["credentials", "list"]})


def test_a_member_gets_credentials_that_aws_says_are_the_users_own(svc: servicekit.Service) -> None:
    ensure_user(svc, "sue")
    before = time.time()
    status, doc = call(svc, "sue", "credentials", {"user": "sue", "hours": 2})
    assert status == 200, doc
    assert sorted(doc) == ["AccessKeyId", "Expiration", "SecretAccessKey", "SessionToken", "Version"]
    assert doc["Version"] == 1
    assert svc.arn_of(doc) == "arn:aws:iam::123456789012:user/iam-sorry/sue"
    expiry = iamsorry.parse_time(doc["Expiration"])
    assert before + 2 * 3600 - 60 < expiry <= time.time() + 2 * 3600


def test_hours_are_capped_by_the_namespace(svc: servicekit.Service) -> None:
    iam = admin(svc)
    iam.create_user(UserName="lab", Path="/iam-sorry/", Tags=[{"Key": "owner", "Value": "lab"}])
    before = time.time()
    status, doc = call(svc, "ann", "credentials", {"user": "lab", "hours": 36})
    assert status == 200, doc
    assert svc.arn_of(doc).endswith(":user/iam-sorry/lab")
    expiry = iamsorry.parse_time(doc["Expiration"])
    assert before + 12 * 3600 - 120 < expiry <= time.time() + 12 * 3600  # max_hours = 12: capped, not cut shorter


def test_a_non_member_gets_403_and_nothing_happens_in_aws(svc: servicekit.Service, shim: Any) -> None:
    status, doc = call(svc, "ann", "credentials", {"user": "sue"})
    assert status == 403
    assert (doc["namespace"], doc["action"]) == ("sue", "credentials")
    assert "ann@IAMSORRY.TEST is not a member of namespace sue" in doc["error"]
    status, doc = call(svc, "ann", "create-user", {"user": "lab-x"})  # a member, but not for this action
    assert (status, doc["namespace"], doc["action"]) == (403, "lab", "create-user")
    assert "not allowed in namespace lab" in doc["error"]
    status, doc = call(svc, "bob", "credentials", {"user": "bob"})  # no namespace bob at all
    assert (status, doc["namespace"]) == (403, "bob")
    assert svc.curl("bob", "/v1/whoami")[2]["namespaces"] == {}
    assert shim.log == []


def test_every_iam_call_made_for_sue_carries_her_principal(svc: servicekit.Service, shim: Any) -> None:
    ensure_user(svc, "sue")
    shim.reset_calls()
    steps = [
        ("create-user", {"user": "sue-etl"}),
        ("credentials", {"user": "sue-etl", "hours": 1}),
        ("attach-policy", {"user": "sue-etl", "policy_arn": READ_ONLY}),
        ("detach-policy", {"user": "sue-etl", "policy_arn": READ_ONLY}),
        ("create-role", {"role": "sue-etl-runner"}),
        ("service-key", {"user": "sue-etl"}),
        ("list", {"namespace": "sue"}),
        ("delete-user", {"user": "sue-etl"}),
    ]
    for action, body in steps:
        status, doc = call(svc, "sue", action, body)
        assert status in (200, 201), (action, doc)
    iam_calls = shim.calls_of("iam")
    assert {c.action for c in iam_calls} >= {
        "CreateUser",
        "CreateAccessKey",
        "AttachUserPolicy",
        "CreateRole",
        "DeleteUser",
        "ListUsers",
    }
    assert {(c.source_identity, c.session_name) for c in iam_calls} == {(PRINCIPAL, PRINCIPAL)}
    sessions = [shim.role_session(key) for key in {c.access_key for c in iam_calls}]
    assert {s.role_arn for s in sessions} == {"arn:aws:iam::123456789012:role/iam-sorry-service/iam-sorry-service.sue"}
    assert {s.tags["iam-sorry-groups"] for s in sessions} == {"lab"}
    assume = [c for c in shim.calls_of("sts") if c.action == "AssumeRole"]
    # One role session serves all of sue's requests (an earlier test may have begun it).
    assert len(sessions) == 1 and len(assume) <= 1


def test_delete_user_leaves_nothing_behind(svc: servicekit.Service, tmp_path: Path) -> None:
    iam = admin(svc)
    ensure_user(svc, "sue-gone")
    status, key = call(svc, "sue", "service-key", {"user": "sue-gone"})
    assert status == 200
    iam.create_login_profile(UserName="sue-gone", Password="Not-a-real-pw-1!")
    inline = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*"}]}
    iam.put_user_policy(UserName="sue-gone", PolicyName="inline", PolicyDocument=json.dumps(inline))
    assert call(svc, "sue", "attach-policy", {"user": "sue-gone", "policy_arn": READ_ONLY})[0] == 200
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    iam.upload_ssh_public_key(UserName="sue-gone", SSHPublicKeyBody=(tmp_path / "k.pub").read_text())
    iam.upload_signing_certificate(
        UserName="sue-gone",
        CertificateBody=(svc.folder / "tls.crt").read_text().split("-----END CERTIFICATE-----")[0]
        + "-----END CERTIFICATE-----\n",
    )
    serial = iam.create_virtual_mfa_device(VirtualMFADeviceName="sue-gone-mfa")["VirtualMFADevice"]["SerialNumber"]
    iam.enable_mfa_device(
        UserName="sue-gone", SerialNumber=serial, AuthenticationCode1="123456", AuthenticationCode2="654321"
    )

    status, doc = call(svc, "sue", "delete-user", {"user": "sue-gone"})
    assert status == 200, doc
    removed = " | ".join(doc["removed"])
    for what in (
        "access key",
        "login profile",
        "inline policy inline",
        f"attached policy {READ_ONLY}",
        "SSH public key",
        "certificate",
        f"MFA device {serial}",
    ):
        assert what in removed, removed
    for look in (iam.get_user, iam.list_access_keys, iam.list_user_tags, iam.list_attached_user_policies):
        with pytest.raises(ClientError) as gone:
            look(UserName="sue-gone")
        assert gone.value.response["Error"]["Code"] == "NoSuchEntity"
    with pytest.raises(ClientError) as dead:  # the key it had is dead
        svc.arn_of(key)
    assert dead.value.response["Error"]["Code"] == "InvalidClientTokenId"
    assert "sue-gone" not in {u["UserName"] for u in iam.list_entities_for_policy(PolicyArn=READ_ONLY)["PolicyUsers"]}


def test_delete_user_refuses_users_the_namespace_does_not_own(svc: servicekit.Service, shim: Any) -> None:
    iam = admin(svc)
    iam.create_user(UserName="sue-foreign", Path="/iam-sorry/", Tags=[{"Key": "owner", "Value": "bob"}])
    iam.create_user(UserName="sue-untagged")
    for name in ("sue-foreign", "sue-untagged"):
        status, doc = call(svc, "sue", "delete-user", {"user": name})
        assert status == 403 and "namespace sue does not own it" in doc["error"], doc
        assert iam.get_user(UserName=name)["User"]["UserName"] == name
    status, doc = call(svc, "sue", "delete-user", {"user": "sue-never-made"})
    assert status == 404, doc
    assert aws_writes(shim) == []


def test_attach_policy_takes_only_what_the_allow_list_names(svc: servicekit.Service, shim: Any) -> None:
    ensure_user(svc, "sue-pol")
    for arn in (READ_ONLY, EXTRA):
        status, doc = call(svc, "sue", "attach-policy", {"user": "sue-pol", "policy_arn": arn})
        assert status == 200, doc
    attached = admin(svc).list_attached_user_policies(UserName="sue-pol")["AttachedPolicies"]
    assert {p["PolicyArn"] for p in attached} == {READ_ONLY, EXTRA}
    shim.reset_calls()
    status, doc = call(svc, "sue", "attach-policy", {"user": "sue-pol", "policy_arn": ADMIN_ALL})
    assert (status, doc["namespace"], doc["action"]) == (403, "sue", "attach-policy")
    assert "not on the allow-list" in doc["error"]
    assert shim.log == []
    status, doc = call(svc, "sue", "detach-policy", {"user": "sue-pol", "policy_arn": EXTRA})
    assert status == 200
    attached = admin(svc).list_attached_user_policies(UserName="sue-pol")["AttachedPolicies"]
    assert [p["PolicyArn"] for p in attached] == [READ_ONLY]


def test_create_role_is_trusted_by_the_base_user_only_and_bounded(svc: servicekit.Service) -> None:
    ensure_user(svc, "sue")
    status, doc = call(svc, "sue", "create-role", {"role": "sue-lambda"})
    assert status == 201, doc
    role = admin(svc).get_role(RoleName="iam-sorry-sue-lambda")["Role"]
    assert doc["arn"] == role["Arn"]
    trust = role["AssumeRolePolicyDocument"]
    trust = json.loads(trust) if isinstance(trust, str) else trust
    assert [s["Principal"] for s in trust["Statement"]] == [{"AWS": "arn:aws:iam::123456789012:user/iam-sorry/sue"}]
    boundary = "arn:aws:iam::123456789012:policy/iam-sorry-sue-boundary"
    assert role["PermissionsBoundary"]["PermissionsBoundaryArn"] == boundary == doc["boundary"]
    status, doc = call(svc, "sue", "create-role", {"role": "sue-lambda"})
    assert (status, doc["created"]) == (200, False)
    status, doc = call(svc, "sue", "create-role", {"role": "bob-lambda"})
    assert (status, doc["namespace"]) == (403, "bob")


def test_service_key_is_shown_once_and_the_old_key_goes_after_the_new_works(svc: servicekit.Service) -> None:
    ensure_user(svc, "sue-bedrock")
    status, first = call(svc, "sue", "service-key", {"user": "sue-bedrock"})
    assert status == 200 and first["Replaced"] == []
    assert "SessionToken" not in first and "Expiration" not in first  # a long-term key
    assert svc.arn_of(first).endswith(":user/iam-sorry/sue-bedrock")
    status, second = call(svc, "sue", "service-key", {"user": "sue-bedrock"})
    assert status == 200 and second["Replaced"] == [iamsorry.mask_key_id(first["AccessKeyId"])]
    assert svc.arn_of(second).endswith(":user/iam-sorry/sue-bedrock")
    with pytest.raises(ClientError) as dead:
        svc.arn_of(first)
    assert dead.value.response["Error"]["Code"] == "InvalidClientTokenId"
    keys = admin(svc).list_access_keys(UserName="sue-bedrock")["AccessKeyMetadata"]
    assert [k["AccessKeyId"] for k in keys] == [second["AccessKeyId"]]


@pytest.mark.parametrize("action", ["service-key", "delete-user"])
def test_key_changes_wait_for_the_users_lock_and_clear_a_dead_mints_key(svc: servicekit.Service, action: str) -> None:
    """Rotating or deleting takes the same lock across instances as a mint
    does, and first deletes the key a mint that died left behind."""
    name = f"sue-locked-{action}"
    ensure_user(svc, name)
    store = iamsorry.SqliteAuditStore(str(svc.folder / "audit" / "audit.db"))
    leftover = admin(svc).create_access_key(UserName=name)["AccessKey"]["AccessKeyId"]
    row = {"id": secrets.token_hex(8), "user_name": name, "namespace": "sue", "principal": PRINCIPAL}
    row.update(groups='["lab"]', instance="dead:1", started=time.time(), keys_before="[]", access_key_id=leftover)
    answer: list[tuple[int, Any]] = []
    worker = threading.Thread(target=lambda: answer.append(call(svc, "sue", action, {"user": name})))
    try:
        with store.user_lock(name, None) as held:  # a mint on another instance, or one that is dying
            assert held
            store.inflight_begin(row)
            worker.start()
            worker.join(3)
            assert worker.is_alive() and not answer, answer  # it waits
            assert servicekit.keys_of(svc, name) == [leftover]
    finally:
        worker.join(120)
        store.close()
    status, doc = answer[0]
    assert status == 200, doc
    record = [e for e in servicekit.trail_of(svc) if e["action"] == "reconcile" and e["target"] == name]
    assert [r["params"]["keys"] for r in record] == [[leftover]]
    assert iamsorry.SqliteAuditStore(str(svc.folder / "audit" / "audit.db")).inflight(name) == []
    if action == "service-key":
        assert doc["Replaced"] == [] and servicekit.keys_of(svc, name) == [doc["AccessKeyId"]]


def test_minted_credentials_never_reach_the_services_disk(svc: servicekit.Service) -> None:
    """With SQLite the store is on the service's own disk: credentials stay
    in memory, not even sealed, and a table an older version kept is gone."""
    ensure_user(svc, "sue-memory")
    status, doc = call(svc, "sue", "credentials", {"user": "sue-memory", "hours": 1})
    assert status == 200, doc
    db = sqlite3.connect(svc.folder / "audit" / "audit.db")
    try:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        db.close()
    assert "cred_cache" not in tables and {"audit", "mint_inflight"} <= tables


def test_delete_user_puts_right_a_user_whose_dead_mint_cannot_be_finished(svc: servicekit.Service) -> None:
    """A dead mint's record that cannot be settled (here: its namespace has
    no role the service may assume) blocks mints and rotations of the user;
    deleting the user still works, and removes the key with it."""
    name = "sue-stuck"
    ensure_user(svc, name)
    leftover = admin(svc).create_access_key(UserName=name)["AccessKey"]["AccessKeyId"]
    row = {"id": secrets.token_hex(8), "user_name": name, "namespace": "nosuch", "principal": PRINCIPAL}
    row.update(groups='["lab"]', instance="dead:1", started=time.time(), keys_before="[]", access_key_id=leftover)
    store = iamsorry.SqliteAuditStore(str(svc.folder / "audit" / "audit.db"))
    try:
        store.inflight_begin(row)
        status, doc = call(svc, "sue", "service-key", {"user": name})
        assert status == 502 and "assume role" in doc["error"], doc
        status, doc = call(svc, "sue", "delete-user", {"user": name})
        assert status == 200 and doc["removed"] == [f"access key {iamsorry.mask_key_id(leftover)}"], doc
        assert f"deleting {name} without first finishing its unfinished mint" in svc.log_text()
    finally:
        store.inflight_end(row["id"])
        store.close()


def test_memory_holds_one_copy_per_user_whatever_the_case() -> None:
    """IAM user names are unique regardless of case: sue-Bob is sue-bob."""
    cache = iamsorry.CredentialCache()
    creds = iamsorry.Creds("ASIAEXAMPLEEXAMPLE00", "secret", "token", iamsorry.now() + 3600)
    cache.put("sue-Bob", creds)
    assert cache.fresh("sue-bob") is creds and cache.lock("SUE-BOB") is cache.lock("sue-bob")
    cache.forget("SUE-bob")
    assert cache.fresh("sue-Bob") is None
    assert len({id(cache.lock(f"sue-{n}")) for n in range(5000)}) <= iamsorry._LOCK_STRIPES  # made-up names


def test_many_concurrent_requests_for_a_stale_user_cause_one_mint(
    svc: servicekit.Service, shim: Any, krb_realm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ensure_user(svc, "sue-batch")
    shim.reset_calls()
    for name, value in svc.client_env("sue").items():
        monkeypatch.setenv(name, value)
    with ThreadPoolExecutor(24) as pool:
        got = list(pool.map(lambda _: iamsorry.broker_credentials(svc.url, "sue-batch", 4), range(24)))
    assert len({c.access_key_id for c in got}) == 1
    assert shim.calls["CreateAccessKey"] == shim.calls["GetSessionToken"] == 1
    assert shim.calls["ListAccessKeys"] == 1  # the keys before the mint, listed once for both uses
    SECRETS.append(got[0].secret_access_key)


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/v1/credentials", "{not json", 400, "not JSON"),
        ("/v1/credentials", "[1, 2]", 400, "JSON object"),
        ("/v1/credentials", {}, 400, '"user"'),
        ("/v1/credentials", {"user": "sue/../x"}, 400, "invalid IAM user name"),
        ("/v1/credentials", {"user": "s" * 65}, 400, "invalid IAM user name"),
        ("/v1/credentials", {"user": "sue", "hours": "36"}, 400, '"hours"'),
        ("/v1/credentials", {"user": "sue", "hours": 37}, 400, '"hours"'),
        ("/v1/credentials", {"user": "sue", "hours": True}, 400, '"hours"'),
        ("/v1/attach-policy", {"user": "sue"}, 400, "policy_arn"),
        ("/v1/list", {"namespace": "a-b"}, 400, "namespace"),
        ("/v1/nothing", {}, 404, "no such endpoint"),
        ("/v2/credentials", {}, 404, "no such endpoint"),
        ("/v1/credentials", None, 405, "takes POST"),
        ("/v1/credentials", "x" * 70000, 413, "over"),
    ],
)
def test_bad_input_gets_a_4xx_json_error_and_the_service_carries_on(
    svc: servicekit.Service, shim: Any, path: str, body: Any, status: int, needle: str
) -> None:
    got, _, doc = svc.curl("sue", path, body)
    assert got == status and needle in doc["error"], doc
    assert svc.curl("sue", "/v1/whoami")[0] == 200
    assert aws_writes(shim) == []
    assert "Traceback" not in svc.log_text()


def test_a_request_cannot_forge_a_line_of_the_log(svc: servicekit.Service) -> None:
    status, _, doc = svc.curl("sue", "/v1/x%0A%5BINFO%5D%20forged%20line", {})
    assert status == 404 and "no such endpoint" in doc["error"]
    assert not [ln for ln in svc.log_text().splitlines() if ln.startswith("[INFO] forged")]
    assert "/v1/x?[INFO] forged line" in svc.log_text()


def test_whoami_takes_get_only(svc: servicekit.Service) -> None:
    status, _, doc = svc.curl("sue", "/v1/whoami", {})
    assert status == 405 and "takes GET" in doc["error"]


def test_a_front_end_is_trusted_only_from_configured_addresses_with_its_secret(svc: servicekit.Service) -> None:
    """An address alone is not enough: any local user can bind 127.0.0.2 (or
    run on the front end's host).  The front end proves itself with a secret."""
    vouch = ("-H", f"X-Remote-User: {PRINCIPAL}", "-H", f"X-Iam-Sorry-Proxy-Secret: {PROXY_SECRET}")
    status, _, doc = svc.curl(None, "/v1/whoami", None, "--interface", "127.0.0.2", *vouch, negotiate=False)
    assert (status, doc["principal"], doc["via"]) == (200, PRINCIPAL, "proxy")
    status, _, doc = svc.curl(None, "/v1/whoami", None, "--interface", "127.0.0.1", *vouch, negotiate=False)
    assert status == 401
    for wrong in ((), ("-H", "X-Iam-Sorry-Proxy-Secret: " + "q" * 40)):
        spoof = ("-H", f"X-Remote-User: {PRINCIPAL}", *wrong)
        status, _, doc = svc.curl(None, "/v1/whoami", None, "--interface", "127.0.0.2", *spoof, negotiate=False)
        assert status == 401 and "X-Iam-Sorry-Proxy-Secret" in doc["error"], doc
    other = ("-H", "X-Remote-User: sue@OTHER.REALM", "-H", f"X-Iam-Sorry-Proxy-Secret: {PROXY_SECRET}")
    status, _, doc = svc.curl(None, "/v1/whoami", None, "--interface", "127.0.0.2", *other, negotiate=False)
    assert status == 401 and "OTHER.REALM is not accepted" in doc["error"]


def test_the_audit_trail_verifies_and_holds_no_secret(svc: servicekit.Service) -> None:
    ensure_user(svc, "sue-audited")
    status, doc = call(svc, "sue", "credentials", {"user": "sue-audited", "hours": 1})
    assert status == 200
    call(svc, "ann", "credentials", {"user": "sue-audited"})
    verify = servicekit.audit(svc.config, "verify")
    assert verify.returncode == 0, verify.stderr
    assert verify.stdout.startswith("audit trail intact: ")
    listed = servicekit.audit(svc.config, "list", "--json")
    entries = json.loads(listed.stdout)
    minted = [e for e in entries if e["key_id"] == doc["AccessKeyId"]]
    assert len(minted) == 1 and minted[0]["principal"] == PRINCIPAL and minted[0]["target"] == "sue-audited"
    assert minted[0]["result"] == "minted" and minted[0]["status"] == 200
    assert any(r.startswith("CreateAccessKey:") for r in minted[0]["request_ids"])
    denied = [e for e in entries if e["principal"] == "ann@IAMSORRY.TEST" and e["status"] == 403]
    assert denied and denied[-1]["target"] == "sue-audited" and denied[-1]["source"] == "127.0.0.1"
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    assert SECRETS
    servicekit.assert_nothing_stored(svc, SECRETS)
    assert doc["AccessKeyId"] not in svc.log_text()  # masked in the log; whole in the audit, to join CloudTrail


def test_a_failing_audit_store_gives_503_and_no_aws_write(svc: servicekit.Service, shim: Any) -> None:
    ensure_user(svc, "sue-locked")
    shim.reset_calls()
    hold = sqlite3.connect(svc.folder / "audit" / "audit.db", isolation_level=None)
    hold.execute("BEGIN EXCLUSIVE")  # the service's writes now time out
    try:
        for action, body in (("create-user", {"user": "sue-locked-2"}), ("credentials", {"user": "sue-locked"})):
            status, doc = call(svc, "sue", action, body)
            assert status == 503 and "audit" in doc["error"], doc
        assert shim.log == []
    finally:
        hold.execute("ROLLBACK")
        hold.close()
    status, doc = call(svc, "sue", "create-user", {"user": "sue-locked-2"})
    assert status == 201, doc
    assert "Traceback" not in svc.log_text()


def test_sigterm_lets_a_request_in_flight_finish(svc: servicekit.Service, shim: Any, tmp_path: Path) -> None:
    """A second server for this (it ends); a mint made slow by keys that
    take two seconds to propagate is in flight when SIGTERM arrives."""
    ensure_user(svc, "sue-slow")
    other = servicekit.sibling(svc, tmp_path / "second")
    try:
        other.start()
        shim.propagation_delay = 2.0
        slow = {"user": "sue-slow"}
        worker, result = servicekit.mint_in_flight(shim, lambda: call(other, "sue", "credentials", slow))
        code = other.stop()  # SIGTERM, then wait
        worker.join(60)
    finally:
        shim.propagation_delay = 0.0
        other.stop()
    assert code == 0
    status, doc = result[0]
    assert status == 200 and svc.arn_of(doc).endswith(":user/iam-sorry/sue-slow")
    log = other.log_text()
    assert "Handling signal: term" in log and "Traceback" not in log
    assert log.index("POST /v1/credentials 200") < log.index("Shutting down")


def test_the_server_log_has_one_line_per_request_and_no_traceback(svc: servicekit.Service) -> None:
    """Requests from an address of their own (any of 127/8 reaches the
    server), so that only their lines carry it."""
    address = "127.{}.{}.{}".format(*(1 + secrets.randbelow(254) for _ in range(3)))
    for _ in range(5):
        assert svc.curl("sue", "/v1/whoami", None, "--interface", address)[0] == 200
    lines = [ln for ln in svc.log_text().splitlines() if f" {address} " in ln]
    assert len([ln for ln in lines if f" {address} {PRINCIPAL} GET /v1/whoami 200 whoami " in ln]) == 5, lines
    assert all(" GET /v1/whoami " in ln for ln in lines), lines  # curl's unauthenticated first try: 401, logged too
    assert "Traceback" not in svc.log_text()


def test_the_acceptor_refuses_what_it_must(krb_realm: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """In process: garbage, a replayed token, another realm, a service principal."""
    import base64

    gssapi = require_module("gssapi")
    for name, value in krb_realm.env("sue").items():
        monkeypatch.setenv(name, value)
    acceptor = iamsorry.Acceptor(str(krb_realm.keytab), [krb_realm.realm])

    def token() -> str:
        with iamsorry._PyInitiator("localhost") as gss:
            return "Negotiate " + base64.b64encode(gss.step(None) or b"").decode()

    good = token()
    assert acceptor.accept(good)[:2] == (PRINCIPAL, "sue")
    for header, reason in [
        (None, "authentication required"),
        ("Basic c3VlOnB3", "authentication required"),
        ("Negotiate !!!", "malformed Negotiate token"),
        ("Negotiate " + base64.b64encode(b"garbage").decode(), "Kerberos authentication failed"),
        (good, "replayed"),
    ]:
        with pytest.raises(iamsorry.Unauthorized, match=reason):
            acceptor.accept(header)
    # A keytab that also holds another service's key: its tickets are not for us.
    shared = krb_realm.add_service("imap/localhost", tmp_path / "shared.keytab")
    imap = gssapi.SecurityContext(
        name=gssapi.Name("imap@localhost", gssapi.NameType.hostbased_service), usage="initiate"
    )
    relayed = "Negotiate " + base64.b64encode(imap.step()).decode()
    with pytest.raises(iamsorry.Unauthorized, match="not for this web service"):
        iamsorry.Acceptor(str(shared), [krb_realm.realm]).accept(relayed)
    strict = iamsorry.Acceptor(str(krb_realm.keytab), ["OTHER.REALM"])
    with pytest.raises(iamsorry.Unauthorized, match="realm IAMSORRY.TEST is not accepted here"):
        strict.accept(token())
    with pytest.raises(iamsorry.Unauthorized, match="not a person"):
        iamsorry.local_user("HTTP/localhost@IAMSORRY.TEST", [krb_realm.realm])
    assert iamsorry.split_principal("a\\@b@R") == ("a\\@b", "R")
    # The home realm's people by their short names; another realm's never pass for them.
    assert iamsorry.local_user("sue@HOME.EDU", ["HOME.EDU", "OTHER.EDU"]) == "sue"
    assert iamsorry.local_user("sue@OTHER.EDU", ["HOME.EDU", "OTHER.EDU"]) == "sue@OTHER.EDU"


def test_a_deleted_users_credentials_are_never_served_again(svc: servicekit.Service) -> None:
    ensure_user(svc, "sue-gone")
    status, first = call(svc, "sue", "credentials", {"user": "sue-gone", "hours": 1})
    assert status == 200, first
    status, doc = call(svc, "sue", "delete-user", {"user": "sue-gone"})
    assert status == 200, doc
    ensure_user(svc, "sue-gone")  # a new user of the same name
    status, again = call(svc, "sue", "credentials", {"user": "sue-gone", "hours": 1})
    assert status == 200, again
    assert again["AccessKeyId"] != first["AccessKeyId"]  # minted anew, not the dead user's from memory
    assert svc.arn_of(again).endswith(":user/iam-sorry/sue-gone")


def test_the_audit_store_is_the_services_alone(svc: servicekit.Service) -> None:
    """Whatever umask the service was started with, its database, WAL and
    key are readable by it alone: they name every principal and key id."""
    call(svc, "sue", "credentials", {"user": "sue", "hours": 1})
    found = [p for p in (svc.folder / "audit").iterdir() if p.is_file()]
    assert {p.name for p in found} >= {"audit.db", "audit.key"}
    for path in found:
        assert path.stat().st_mode & 0o077 == 0, (path.name, oct(path.stat().st_mode))


def test_service_key_refuses_a_third_key_with_409(svc: servicekit.Service, shim: Any) -> None:
    ensure_user(svc, "sue-twokeys")
    for _ in range(2):
        admin(svc).create_access_key(UserName="sue-twokeys")
    shim.reset_calls()
    status, doc = call(svc, "sue", "service-key", {"user": "sue-twokeys"})
    assert status == 409 and "already has 2 access keys" in doc["error"], doc
    assert shim.calls["CreateAccessKey"] == 0


@contextlib.contextmanager
def fresh_instance(svc: servicekit.Service, folder: Path) -> Iterator[servicekit.Service]:
    """A second server on the same AWS side, with nothing in its memory yet."""
    other = servicekit.sibling(svc, folder)
    try:
        other.start()
        yield other
    finally:
        other.stop()


def test_a_persons_requests_share_one_role_session(svc: servicekit.Service, shim: Any, tmp_path: Path) -> None:
    with fresh_instance(svc, tmp_path / "fresh") as other:
        shim.reset_calls()
        for _ in range(2):
            status, doc = call(other, "sue", "list", {"namespace": "sue"})
            assert status == 200, doc
        assert shim.calls["AssumeRole"] == 1


def test_role_names_are_checked_before_aws_and_foreign_roles_are_left_alone(
    svc: servicekit.Service, shim: Any, tmp_path: Path
) -> None:
    with fresh_instance(svc, tmp_path / "fresh") as other:
        shim.reset_calls()
        for action, body, needle in (
            ("create-role", {"role": "sue"}, "needs a suffix"),
            ("create-role", {"role": "sue-" + "x" * 51}, "invalid role name"),
            ("attach-policy", {"role": "sue", "policy_arn": READ_ONLY}, "needs a suffix"),
        ):
            status, doc = call(other, "sue", action, body)
            assert status == 400 and needle in doc["error"], doc
        assert shim.log == []  # refused before the role was assumed or anything reserved
    iam = admin(svc)
    iam.create_role(
        RoleName="iam-sorry-sue-foreign", AssumeRolePolicyDocument=json.dumps(iamsorry.role_trust_policy("*"))
    )
    shim.reset_calls()
    for action in ("attach-policy", "detach-policy"):
        status, doc = call(svc, "sue", action, {"role": "sue-foreign", "policy_arn": READ_ONLY})
        assert status == 403 and "untagged, so namespace sue does not own it" in doc["error"], doc
    ensure_user(svc, "sue")  # create-role needs the base user
    shim.reset_calls()
    status, doc = call(svc, "sue", "create-role", {"role": "sue-foreign"})  # not taken over as "exists" either
    assert status == 403 and "untagged, so namespace sue does not own it" in doc["error"], doc
    assert aws_writes(shim) == ["CreateRole"]  # refused by AWS as existing; nothing else
    ensure_user(svc, "sue")
    assert call(svc, "sue", "create-role", {"role": "sue-owned"})[0] == 201
    status, doc = call(svc, "sue", "attach-policy", {"role": "sue-owned", "policy_arn": READ_ONLY})
    assert status == 200, doc
    attached = iam.list_attached_role_policies(RoleName="iam-sorry-sue-owned")["AttachedPolicies"]
    assert [p["PolicyArn"] for p in attached] == [READ_ONLY]


def test_the_audit_records_what_was_granted_not_what_was_asked(svc: servicekit.Service) -> None:
    ensure_user(svc, "sue-granted")
    status, first = call(svc, "sue", "credentials", {"user": "sue-granted", "hours": 2})
    assert status == 200, first
    status, again = call(svc, "sue", "credentials", {"user": "sue-granted", "hours": 1})
    assert status == 200 and again["AccessKeyId"] == first["AccessKeyId"]  # served from memory
    minted, cached = [
        e for e in servicekit.trail_of(svc) if e["target"] == "sue-granted" and e["action"] == "credentials"
    ][-2:]
    assert (minted["result"], cached["result"]) == ("minted", "cached from memory")
    assert minted["params"]["expires"] == cached["params"]["expires"] == first["Expiration"]
    assert cached["params"]["hours"] == 1 and 1.9 < cached["params"]["granted"] <= 2


def test_list_names_the_namespaces_users_and_roles_whatever_their_case(svc: servicekit.Service) -> None:
    iam = admin(svc)
    iam.create_user(UserName="SUE-Listed", Path="/iam-sorry/", Tags=[{"Key": "owner", "Value": "sue"}])
    iam.create_user(UserName="sue-elsewhere")  # not where the namespace makes its users
    trust = json.dumps(iamsorry.role_trust_policy("*"))
    iam.create_role(RoleName="iam-sorry-SUE-listed", AssumeRolePolicyDocument=trust)
    status, doc = call(svc, "sue", "list", {"namespace": "sue"})
    assert status == 200, doc
    users = {u["user"] for u in doc["users"]}
    assert "SUE-Listed" in users and "sue-elsewhere" not in users
    assert "iam-sorry-SUE-listed" in {r["role"] for r in doc["roles"]}
