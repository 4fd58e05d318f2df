"""The department service when AWS misbehaves and clients push their
limits, end to end: the real ``iam-sorry serve`` (gunicorn over TLS) against
the Kerberos realm and the moto server, whose shim throttles, fails and
slows chosen AWS actions.  One server for the module, with small limits so
that each bound is reached in a second or two."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import servicekit
from conftest import iamsorry
from servicekit import keys_of

ATTEMPTS = 2  # aws_attempts below: each AWS call is tried this often, then the request fails
LIMITS = f"""
[limits]
max_body = 4096
rate = 1
burst = 20
mints = 1
read_timeout = 3
aws_attempts = {ATTEMPTS}
aws_timeout = 1
aws_deadline = 4
"""


@pytest.fixture(scope="module")
def svc(krb_realm: Any, moto_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[servicekit.Service]:
    servicekit.reset_aws(moto_url)
    with servicekit.running_service(krb_realm, moto_url, tmp_path_factory.mktemp("hostile"), LIMITS) as service:
        yield service


@pytest.fixture(autouse=True)
def tickets(krb_realm: Any) -> None:
    for user in ("sue", "ann"):
        krb_realm.kinit(user)


def call(svc: servicekit.Service, user: str, action: str, body: Any) -> tuple[int, dict[str, str], Any]:
    return svc.curl(user, f"/v1/{action}", body)


def new_user(svc: servicekit.Service, name: str) -> None:
    status, _, doc = call(svc, "sue", "create-user", {"user": name})
    assert status == 201, doc


def test_throttling_that_recovers_is_retried_and_the_mint_succeeds(svc: servicekit.Service, shim: Any) -> None:
    new_user(svc, "sue-thr")
    shim.reset_calls()
    shim.fail("AssumeRole", "Throttling", times=1, status=400)
    shim.fail("CreateAccessKey", "Throttling", times=ATTEMPTS - 1, status=400)
    shim.fail("GetSessionToken", "Throttling", times=ATTEMPTS - 1, status=400)
    status, _, doc = call(svc, "sue", "credentials", {"user": "sue-thr", "hours": 1})
    assert status == 200, doc
    assert (shim.calls["CreateAccessKey"], shim.calls["GetSessionToken"]) == (ATTEMPTS, ATTEMPTS)
    assert keys_of(svc, "sue-thr") == []  # the temporary key went afterwards, as always


def test_throttling_beyond_the_bound_is_502_and_leaves_no_key(svc: servicekit.Service, shim: Any) -> None:
    new_user(svc, "sue-thr2")
    shim.reset_calls()
    shim.fail("GetSessionToken", "Throttling", times=ATTEMPTS, status=400)
    status, _, doc = call(svc, "sue", "credentials", {"user": "sue-thr2", "hours": 1})
    assert status == 502 and "Throttling" in doc["error"], doc
    assert shim.calls["GetSessionToken"] == ATTEMPTS  # the bound: so many tries, no more
    assert shim.calls["DeleteAccessKey"] == 1 and keys_of(svc, "sue-thr2") == []
    shim.reset_calls()
    shim.fail("CreateAccessKey", "Throttling", times=ATTEMPTS, status=400)
    status, _, doc = call(svc, "sue", "credentials", {"user": "sue-thr2", "hours": 1})
    assert status == 502 and "Throttling" in doc["error"], doc
    assert shim.calls["CreateAccessKey"] == ATTEMPTS and shim.calls["GetSessionToken"] == 0
    assert keys_of(svc, "sue-thr2") == []


def test_slow_aws_is_504_and_the_key_made_before_is_deleted(svc: servicekit.Service, shim: Any) -> None:
    new_user(svc, "sue-slow")
    shim.reset_calls()
    shim.slow("GetSessionToken", 2.5, times=ATTEMPTS)  # aws_timeout = 1
    status, _, doc = call(svc, "sue", "credentials", {"user": "sue-slow", "hours": 1})
    assert status == 504 and ("did not answer in time" in doc["error"] or "this request may take" in doc["error"]), doc
    assert shim.calls["GetSessionToken"] == ATTEMPTS
    assert keys_of(svc, "sue-slow") == []


def test_a_request_out_of_time_for_aws_is_504_and_leaves_no_key(svc: servicekit.Service, shim: Any) -> None:
    """New keys that never propagate: the mint would wait for
    IAM_SORRY_PROPAGATION_TIMEOUT (20 s here); aws_deadline (4 s) ends it."""
    new_user(svc, "sue-late")
    shim.reset_calls()
    shim.settle()  # only keys made from now on take that long
    shim.propagation_delay = 120.0
    status, _, doc = call(svc, "sue", "credentials", {"user": "sue-late", "hours": 1})
    assert status == 504 and "within the 4s this request may take" in doc["error"], doc
    assert shim.calls["GetSessionToken"] >= 2  # it kept trying until its time was up
    assert keys_of(svc, "sue-late") == []  # cleanup got time of its own


def test_a_lost_answer_to_create_access_key_leaves_no_key(svc: servicekit.Service, shim: Any) -> None:
    """AWS makes the key but its answer comes after the client gave up;
    botocore's retry makes a second.  Both go."""
    new_user(svc, "sue-lost")
    shim.reset_calls()
    shim.slow("CreateAccessKey", 2.0, after=True)
    status, _, doc = call(svc, "sue", "credentials", {"user": "sue-lost", "hours": 1})
    assert status == 200, doc
    assert shim.calls["CreateAccessKey"] == 2
    assert keys_of(svc, "sue-lost") == []
    assert shim.calls["DeleteAccessKey"] == 2


def test_a_fault_after_create_access_key_deletes_the_key_even_when_delete_is_throttled(
    svc: servicekit.Service, shim: Any
) -> None:
    new_user(svc, "sue-fault")
    shim.reset_calls()
    shim.fail("GetSessionToken", "ServiceFailure", times=ATTEMPTS, status=500)
    shim.fail("DeleteAccessKey", "Throttling", times=ATTEMPTS, status=400)
    status, _, doc = call(svc, "sue", "credentials", {"user": "sue-fault", "hours": 1})
    assert status == 502 and "ServiceFailure" in doc["error"], doc
    assert shim.calls["DeleteAccessKey"] == ATTEMPTS + 1  # one call's tries failed; the next round did it
    assert keys_of(svc, "sue-fault") == []
    assert "Traceback" not in svc.log_text()


def test_a_failed_key_rotation_leaves_the_old_key_alone_and_no_new_one(svc: servicekit.Service, shim: Any) -> None:
    new_user(svc, "sue-rot")
    status, _, first = call(svc, "sue", "service-key", {"user": "sue-rot"})
    assert status == 200, first
    shim.reset_calls()
    shim.fail("GetCallerIdentity", "ServiceFailure", times=ATTEMPTS, status=500)  # trying the new key
    status, _, doc = call(svc, "sue", "service-key", {"user": "sue-rot"})
    assert status == 502, doc
    assert keys_of(svc, "sue-rot") == [first["AccessKeyId"]]
    shim.reset_calls()
    shim.fail("DeleteAccessKey", "Throttling", times=ATTEMPTS, status=400)  # deleting the old key
    status, _, doc = call(svc, "sue", "service-key", {"user": "sue-rot"})
    assert status == 502 and "delete the old key" in doc["error"], doc
    assert shim.calls["CreateAccessKey"] == 1 and shim.calls["DeleteAccessKey"] == ATTEMPTS + 1
    assert keys_of(svc, "sue-rot") == [first["AccessKeyId"]]


def test_a_principal_over_its_rate_gets_429_with_retry_after(svc: servicekit.Service, shim: Any) -> None:
    """burst = 20, rate = 1/s: 40 requests at once from ann are more than
    her bucket holds; sue's bucket is her own."""
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: svc.curl("ann", "/v1/whoami"), range(40)))
    took = time.monotonic() - started
    refused = [(headers, doc) for status, headers, doc in answers if status == 429]
    assert {status for status, _, _ in answers} == {200, 429}
    # What passed: the burst, and what the bucket refilled (1/s) while the 40 were under way.
    assert len(refused) >= 40 - 20 - math.floor(took), (len(refused), took)
    headers, doc = refused[0]
    assert int(headers["retry-after"]) >= 1 and doc["retry_after"] == int(headers["retry-after"])
    assert "too many requests from ann@IAMSORRY.TEST" in doc["error"]
    assert svc.curl("sue", "/v1/whoami")[0] == 200
    assert sum(shim.calls.values()) == 0


def test_a_principal_flooding_over_its_rate_adds_one_record_per_window_not_one_each(
    svc: servicekit.Service, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Anyone with a ticket may ask: ann, in no namespace that matters,
    sends 60 requests at once over rate = 1, burst = 5.  Each refusal is
    counted, not written and synced on its own: the trail gains one record
    per window for them, and what was served has its own records."""
    import json

    limits = "[limits]\nrate = 1\nburst = 5\nanonymous_window = 1\n"
    flooded = servicekit.sibling(svc, tmp_path_factory.mktemp("pflood") / "svc", limits)
    try:
        flooded.start()
        with ThreadPoolExecutor(8) as pool:
            statuses = [a[0] for a in pool.map(lambda _: flooded.curl("ann", "/v1/whoami"), range(60))]
        refused = statuses.count(429)
        assert refused >= 30 and statuses.count(200) == 60 - refused, statuses
        deadline = time.monotonic() + 60
        while True:  # the window (1 s) ends; the next recorded request writes the count
            time.sleep(1.0)  # within sue's own rate (1/s)
            assert flooded.curl("sue", "/v1/whoami")[0] == 200
            entries = json.loads(servicekit.audit(flooded.config, "list", "--json").stdout)
            summaries = [e for e in entries if e["action"] == "refused"]
            if sum(e["params"]["refused"] for e in summaries) == refused or time.monotonic() > deadline:
                break
    finally:
        flooded.stop()
    assert sum(e["params"]["refused"] for e in summaries) == refused
    assert {(e["principal"], e["user"], e["status"]) for e in summaries} == {("ann@IAMSORRY.TEST", "ann", 429)}
    anns = [e for e in entries if e["principal"] == "ann@IAMSORRY.TEST" and e["action"] == "whoami"]
    assert len(anns) == 60 - refused  # the served ones, one record each; none for a refused one
    assert servicekit.audit_verify(flooded.config).returncode == 0
    assert flooded.log_text().count("is over its rate") == len(summaries)


def test_more_mints_at_once_than_allowed_get_503_with_retry_after(svc: servicekit.Service, shim: Any) -> None:
    """mints = 1: while one mint waits for its new key to propagate,
    a mint for another user is refused at once, before anything in AWS."""
    for name in ("sue-m1", "sue-m2"):
        new_user(svc, name)
    shim.reset_calls()
    shim.settle()
    # The first mint tries its new key at 0, 0.5, 1.3 and 2.6 s: 2 s keeps it
    # in flight for 2.6 s, long enough for a second curl to authenticate on a
    # busy machine, and within aws_deadline (4 s).
    shim.propagation_delay = 2.0
    worker, first = servicekit.mint_in_flight(shim, lambda: call(svc, "sue", "credentials", {"user": "sue-m1"}))
    status, headers, doc = call(svc, "sue", "credentials", {"user": "sue-m2"})
    worker.join(60)
    assert first[0][0] == 200, first
    assert status == 503 and "1 mints or key changes are in flight" in doc["error"], doc
    assert int(headers["retry-after"]) >= 1
    assert shim.calls["CreateAccessKey"] == 1  # the refused one did nothing in AWS
    shim.propagation_delay = 0.0
    assert call(svc, "sue", "credentials", {"user": "sue-m2"})[0] == 200


@pytest.mark.parametrize(
    ("extra", "status", "needle"),
    [
        (["-H", "Content-Type: application/json", "--data-binary", "x" * 5000], 413, "over 4096 bytes"),
        (["-H", "Transfer-Encoding: chunked", "--data-binary", "{}"], 411, "Content-Length"),
        (["-H", "X-Big: " + "a" * 70000], 431, "malformed request"),
    ],
)
def test_limits_of_the_request_itself_get_a_4xx_json_answer(
    svc: servicekit.Service, shim: Any, extra: list[str], status: int, needle: str
) -> None:
    got, _, doc = svc.curl("sue", "/v1/credentials", None, *extra)
    assert got == status and needle in doc["error"], doc
    assert sum(shim.calls.values()) == 0


def test_the_audit_trail_verifies_and_the_log_has_no_traceback(svc: servicekit.Service) -> None:
    verify = servicekit.audit(svc.config, "verify")
    assert verify.returncode == 0, verify.stderr
    log = svc.log_text()
    assert "Traceback" not in log
    # A refusal over a principal's rate has no line of its own: one line, and one record, per window.
    assert " 504 credentials sue-slow " in log and "ann@IAMSORRY.TEST is over its rate" in log


def test_limits_are_read_and_checked(tmp_path: Any) -> None:
    def load(limits: str) -> Any:
        path = tmp_path / "s.toml"
        path.write_text(
            '[service]\ntls_cert = "c"\ntls_key = "k"\nkeytab = "t"\nrealms = ["R"]\naudit = "sqlite:///a.db"\n'
            + limits
        )
        return iamsorry.load_service_config(str(path))

    defaults = load("").limits
    assert (defaults.max_body, defaults.rate, defaults.burst, defaults.mints) == (65536, 100.0, 2000, 8)
    assert load("[limits]\nrate = 0\nmints = 2\naws_timeout = 3").limits.aws_timeout == 3.0
    for bad, needle in [
        ("[limits]\nmints = 64", "at most [service] threads"),
        ("[limits]\nmax_body = 10", "must be 1024.."),
        ("[limits]\naws_attempts = 0", "must be 1..10"),
        ("[limits]\nrate = 'fast'", "must be a float"),
        ("[limits]\nburst_size = 3", "unknown key"),
    ]:
        with pytest.raises(iamsorry.UsageError, match=needle.replace("[", r"\[").replace(".", r"\.")):
            load(bad)


def test_an_unauthenticated_sign_in_cannot_write_escapes_or_bulk_into_the_audit(
    svc: servicekit.Service, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The principal a sign-in names is recorded before anything is checked:
    a stranger's 60 KB of terminal escapes must not reach the trail as they
    are, nor ``audit list`` on the administrator's terminal."""
    import json

    from sshkit import make_key
    from test_sshsig import keygen_sign, public

    folder = tmp_path_factory.mktemp("escapes")
    listed, stranger = make_key(folder, "listed", passphrase=""), make_key(folder, "stranger", passphrase="")
    alone = servicekit.sibling(svc, folder / "svc", 'allowed_signers = "allowed_signers"')
    (alone.folder / "allowed_signers").write_text(f"sue@{svc.realm.realm} {public(listed)}\n")
    try:
        alone.start()
        status, _, doc = alone.curl(None, "/v1/login/nonce", {}, negotiate=False)
        assert status == 200, doc
        hostile = "\x1b]0;pwn\x07\x1b[2J" + "A" * 60000
        sent = {"challenge": doc["challenge"], "signature": keygen_sign(stranger, doc["challenge"].encode())}
        status, _, doc = alone.curl(None, "/v1/login/ssh", {**sent, "principal": hostile}, negotiate=False)
        assert status == 401, doc
    finally:
        alone.stop()
    listed_text = servicekit.audit(alone.config, "list")
    assert listed_text.returncode == 0, listed_text.stderr
    assert "login/ssh" in listed_text.stdout
    assert "\x1b" not in listed_text.stdout and "\x07" not in listed_text.stdout
    assert max(len(line) for line in listed_text.stdout.splitlines()) <= 1000
    entries = json.loads(servicekit.audit(alone.config, "list", "--json").stdout)
    newest = max(entries, key=lambda e: e["seq"])
    assert newest["action"] == "login/ssh" and newest["status"] == 401
    assert len(newest["target"]) <= 256 and newest["target"].isprintable(), newest["target"][:100]
    assert servicekit.audit_verify(alone.config).returncode == 0


STRANGERS = [  # requests that no one is authenticated by: each is charged to its address
    servicekit.request_bytes("GET", "/v1/whoami"),
    servicekit.request_bytes("GET", "/v1/whoami", {"Authorization": "Negotiate Z2FyYmFnZQ=="}),
    servicekit.request_bytes("POST", "/v1/credentials", {}, b'{"user": "sue"}'),
    servicekit.request_bytes("POST", "/v1/login/nonce", {}, b"{}"),  # sign-in is off here: 404, charged first
    servicekit.request_bytes("GET", "/v1/nowhere", {"Authorization": "Bearer x"}),
]


def test_a_flood_without_credentials_is_refused_and_summed_up_while_people_are_served(
    svc: servicekit.Service, krb_realm: Any, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """anonymous_burst = 10, anonymous_rate = 1/s: of 300 requests without
    valid credentials from one address most get 429, and the trail gains one
    record per address and window for them, not one each; sue, from the
    same address with her ticket, is served throughout."""
    import base64
    import json

    for name, value in krb_realm.env("sue").items():
        monkeypatch.setenv(name, value)
    limits = "[limits]\nanonymous_rate = 1\nanonymous_burst = 10\nanonymous_window = 1\n"
    flooded = servicekit.sibling(svc, tmp_path_factory.mktemp("flood") / "svc", limits)

    def sue() -> servicekit.Answer:
        token = base64.b64encode(servicekit.negotiate_token(krb_realm, "sue")).decode()
        return servicekit.exchange(
            flooded, servicekit.request_bytes("GET", "/v1/whoami", {"Authorization": f"Negotiate {token}"})
        )

    def send(i: int) -> tuple[bool, servicekit.Answer]:
        return (True, sue()) if i % 30 == 0 else (False, servicekit.exchange(flooded, STRANGERS[i % len(STRANGERS)]))

    try:
        flooded.start()
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(send, range(300)))
        elapsed = time.monotonic() - started
        people = [a for mine, a in answers if mine]
        strangers = [a for mine, a in answers if not mine]
        assert [a.status for a in people] == [200] * 10
        refused = [a for a in strangers if a.status == 429]
        admitted = [a for a in strangers if a.status != 429]
        assert {a.status for a in admitted} <= {401, 404}
        assert len(admitted) <= 10 + elapsed * 1 + 1  # the burst, and what the bucket refilled meanwhile
        assert all(int(a.headers["retry-after"]) >= 1 for a in refused)
        assert "too many requests without credentials from 127.0.0.1" in refused[0].json()["error"]
        deadline, polls = time.monotonic() + 60, 0
        while True:  # the window (1 s) ends; the next recorded request writes the count
            assert sue().status == 200
            polls += 1
            entries = json.loads(servicekit.audit(flooded.config, "list", "--json").stdout)
            summaries = [e for e in entries if e["action"] == "refused"]
            if sum(e["params"]["refused"] for e in summaries) == len(refused) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        flooded.stop()
    assert sum(e["params"]["refused"] for e in summaries) == len(refused)
    assert all(e["source"] == "127.0.0.1" and e["status"] == 429 and e["principal"] is None for e in summaries)
    assert len(entries) == len(admitted) + len(people) + polls + len(summaries) < 300 // 4
    assert servicekit.audit_verify(flooded.config).returncode == 0
    log = flooded.log_text()
    assert log.count("is over the limit for requests without credentials") == len(summaries)
    assert log.count(" 429 ") == 0 and "Traceback" not in log  # refused requests have no log line each


def test_behind_a_trusted_front_end_the_anonymous_limit_is_per_client_address(
    svc: servicekit.Service, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """From a front end in trusted_proxies that sends its secret, the client
    address it appended to X-Forwarded-For is charged; from anyone else the
    header means nothing."""
    folder = tmp_path_factory.mktemp("front")
    secret = folder / "proxy.secret"
    secret.write_text("f" * 40 + "\n")
    secret.chmod(0o600)
    limits = "[limits]\nanonymous_rate = 0.001\nanonymous_burst = 2\n"
    extra = f'trusted_proxies = ["127.0.0.2"]\nproxy_secret_file = "{secret}"\n{limits}'
    front = servicekit.sibling(svc, folder / "svc", extra)

    def ask(peer: str, forwarded: str, with_secret: bool = True) -> tuple[int, Any]:
        headers = ["-H", f"X-Forwarded-For: {forwarded}"]
        headers += ["-H", "X-Iam-Sorry-Proxy-Secret: " + "f" * 40] if with_secret else []
        status, _, doc = front.curl(None, "/v1/whoami", None, "--interface", peer, *headers, negotiate=False)
        return status, doc

    try:
        front.start()
        assert [ask("127.0.0.2", "198.51.100.7, 10.1.1.1")[0] for _ in range(2)] == [401, 401]
        status, doc = ask("127.0.0.2", "10.1.1.1")
        assert status == 429 and "from 10.1.1.1 " in doc["error"], doc
        assert ask("127.0.0.2", "10.1.1.2")[0] == 401  # another client behind the front end
        assert ask("127.0.0.2", "10.1.1.1", with_secret=False)[0] == 401  # no secret: the front end's own address
        mine = [ask("127.0.0.1", f"10.1.1.{n}")[0] for n in (3, 4)]  # not a trusted front end: its own address
        assert mine == [401, 401]
        status, doc = ask("127.0.0.1", "10.1.1.5")
        assert status == 429 and "from 127.0.0.1 " in doc["error"], doc
    finally:
        front.stop()


def test_the_anonymous_limit_is_read_and_checked(tmp_path: Any) -> None:
    path = tmp_path / "s.toml"
    base = '[service]\ntls_cert = "c"\ntls_key = "k"\nkeytab = "t"\nrealms = ["R"]\naudit = "sqlite:///a.db"\n'
    path.write_text(base)
    limits = iamsorry.load_service_config(str(path)).limits
    assert (limits.anonymous_rate, limits.anonymous_burst, limits.anonymous_window) == (10.0, 200, 60.0)
    path.write_text(base + "[limits]\nanonymous_rate = 0\nanonymous_burst = 5\n")
    assert iamsorry.load_service_config(str(path)).limits.anonymous_rate == 0.0  # 0: no limit
    for bad, needle in [("anonymous_window = 0", "must be 1..86400"), ("anonymous_burst = 0", "must be 1..")]:
        path.write_text(base + "[limits]\n" + bad + "\n")
        with pytest.raises(iamsorry.UsageError, match=re.escape(needle)):
            iamsorry.load_service_config(str(path))


def test_a_deletion_cut_short_leaves_no_dead_credentials_behind(svc: servicekit.Service, shim: Any) -> None:
    """AWS deletes the user, but its answer never comes (504).  The copy of
    the user's credentials is gone already: the same name, made anew, gets
    credentials of its own, not the dead user's."""
    new_user(svc, "sue-cut")
    status, _, first = call(svc, "sue", "credentials", {"user": "sue-cut", "hours": 1})
    assert status == 200, first
    shim.slow("DeleteUser", 2.5, times=ATTEMPTS, after=True)  # aws_timeout = 1
    status, _, doc = call(svc, "sue", "delete-user", {"user": "sue-cut"})
    assert status == 504, doc
    new_user(svc, "sue-cut")  # it was deleted after all
    status, _, again = call(svc, "sue", "credentials", {"user": "sue-cut", "hours": 1})
    assert status == 200 and again["AccessKeyId"] != first["AccessKeyId"], again
    assert svc.arn_of(again).endswith(":user/iam-sorry/sue-cut")


def test_a_role_session_aws_refuses_is_not_used_again(svc: servicekit.Service, shim: Any) -> None:
    """The service keeps a person's role session; once AWS refuses it (an
    administrator revoked the role's sessions), the next request assumes
    the role anew."""
    assert call(svc, "sue", "list", {"namespace": "sue"})[0] == 200
    shim.revoke_role_sessions()
    shim.reset_calls()
    status, _, doc = call(svc, "sue", "list", {"namespace": "sue"})
    assert status == 502 and "AccessDenied" in doc["error"], doc
    assert shim.calls["AssumeRole"] == 0  # the kept session was used, and refused
    status, _, doc = call(svc, "sue", "list", {"namespace": "sue"})
    assert status == 200, doc
    assert shim.calls["AssumeRole"] == 1
