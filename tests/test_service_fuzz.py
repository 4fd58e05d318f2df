"""A fuzz of the running service: over 2,000 hostile or broken requests,
sent concurrently over TLS to the real ``iam-sorry serve`` (one server for
the module), while slow clients trickle their headers and a prober asks
/healthz all along.

The cases come from a seeded generator (random.Random(SEED)) plus explicit
ones, so a failure replays exactly: garbage, truncated, bit-flipped,
oversized and replayed Negotiate tokens; tokens for another service
principal; bodies over the size limit; invalid JSON and wrong types; names
with /, .., look-alikes, 65+ characters and NUL bytes; unknown actions and
methods; malformed HTTP; slowloris.

What must hold: every answer is a 4xx with a JSON error, except where HTTP
cannot answer (a client that never completes its request, or speaks plain
HTTP to the TLS port: the connection closes); no traceback in the log;
nothing at all happens in AWS; the audit trail verifies; /healthz answers
during and after.  The figures (answers by status, /healthz latency) are
printed with -s."""

from __future__ import annotations

import base64
import json
import random
import socket
import ssl
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import gunicorn
import pytest
import servicekit
from conftest import iamsorry

SEED = 13
CLIENTS = 16
READ_TIMEOUT = 2  # [limits] read_timeout: slowloris connections are cut after this
LIMITS = f"""
[limits]
read_timeout = {READ_TIMEOUT}
keepalive = 2
anonymous_rate = 0
"""  # anonymous_rate: every case is answered for itself (test_service_hostile tests the limit)
HEALTHZ_BOUND = 2.0  # seconds; see test_the_fuzz
SLOW_CLIENTS = ["slow head"] * 8 + ["slow body"] * 4 + ["idle"] * 4
if gunicorn.version_info >= (27,):  # older ones never close a connection that sends nothing (see the README)
    SLOW_CLIENTS += ["idle, no TLS"] * 4


@dataclass
class Case:
    kind: str
    data: bytes | Callable[[], bytes]  # the request, or what makes it (tokens are made just in time)
    want: set[int | None]  # statuses that are right; None: the connection closes unanswered


@pytest.fixture(scope="module")
def svc(krb_realm: Any, moto_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[servicekit.Service]:
    servicekit.reset_aws(moto_url)
    with servicekit.running_service(krb_realm, moto_url, tmp_path_factory.mktemp("fuzz"), LIMITS) as service:
        yield service


# -- the generator -------------------------------------------------------------

LOOK_ALIKES = ["ѕue", "sսe", "ｓｕｅ", "sue\u200b", "su\u0435-x", "\u202esue", "sue\u0301", "ꜱue"]
ACTIONS = [
    "credentials",
    "create-user",
    "delete-user",
    "service-key",
    "attach-policy",
    "detach-policy",
    "create-role",
    "list",
]


def hostile_name(rng: random.Random) -> Any:
    """A name IAM does not admit (each is checked below; "sue-.." alone is a
    valid IAM name, so dots come with a slash)."""
    pick = rng.randrange(8)
    if pick == 0:
        return rng.choice(["sue/", "sue/../x", "../sue", "sue-a/b", "/", "/..", "sue-../x", "sue\\x"])
    if pick == 1:
        return rng.choice(LOOK_ALIKES) + rng.choice(["", "-etl", "-x"])
    if pick == 2:
        return "sue-" + "a" * rng.randrange(61, 300)
    if pick == 3:
        return "sue" + "\x00" * rng.randrange(1, 3) + rng.choice(["", "-x", "/.."])
    if pick == 4:
        return rng.choice(["", " ", "sue ", " sue", "sue\n", "sue\t-x", "sue;rm -rf ~", "sue*", "sue?", "su%65"])
    if pick == 5:
        return "".join(chr(rng.randrange(0x80, 0x2FFF)) for _ in range(rng.randrange(1, 20)))
    if pick == 6:
        return "sue-" + "é" * rng.randrange(1, 5)
    return rng.choice(["sue-\U0001f600", "sue-\ud800x", "sue-a" * 13, "%2e%2e%2fsue"])


def wrong_body(rng: random.Random) -> bytes:
    """Not JSON, or JSON of the wrong shape or types."""
    raw = [
        b"{not json",
        b'{"user": "sue"',
        b"[" * 70000 + b"]" * 10,  # nested deeper than Python recurses (and over 64 KiB)
        b"[" * 5000,
        b'{"user": "sue", "hours": NaN}',
        b'{"user": "sue", "hours": 1e999}',
        b'{"user": "sue", "hours": ' + b"9" * 5000 + b"}",  # more digits than Python converts
        b"\xff\xfe\x00{}",
        b'"sue"',
        b"null",
        b"42",
        b"[]",
        bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))),
    ]
    typed = [
        {"user": 42},
        {"user": ["sue"]},
        {"user": {"name": "sue"}},
        {"user": None},
        {"user": True},
        {"user": "sue", "hours": "36"},
        {"user": "sue", "hours": 36.5},
        {"user": "sue", "hours": True},
        {"user": "sue", "hours": 0},
        {"user": "sue", "hours": -1},
        {"user": "sue", "hours": 37},
        {"user": "sue", "hours": 2**70},
        {"namespace": 1},
        {"role": ["x"]},
        {},
    ]
    if rng.random() < 0.4:
        return rng.choice(raw)
    return json.dumps(rng.choice(typed)).encode()


def authenticated(
    realm: Any, user: str, method: str, path: str, body: bytes = b"", **headers: str
) -> Callable[[], bytes]:
    def make() -> bytes:
        token = base64.b64encode(servicekit.negotiate_token(realm, user)).decode()
        return servicekit.request_bytes(method, path, {"Authorization": f"Negotiate {token}", **headers}, body, False)

    return make


def token_cases(rng: random.Random, realm: Any, real: Callable[[], bytes]) -> list[Case]:
    """Negotiate headers that are not a valid token of a person for this service."""
    cases = []

    def post(header: str) -> bytes:  # a body refused even if a token were accepted
        headers = {"Authorization": header}
        return servicekit.request_bytes("POST", "/v1/credentials", headers, b'{"user": "sue/.."}', False)

    for _ in range(150):
        junk = base64.b64encode(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 3000)))).decode()
        cases.append(Case("token: random bytes", post(f"Negotiate {junk}"), {401}))
    for _ in range(100):
        junk = "".join(rng.choice("abc+/=!~ \t%$") for _ in range(rng.randrange(1, 200))).strip() or "!"
        cases.append(Case("token: not base64", post(f"Negotiate {junk}"), {401}))
    for _ in range(150):
        cut = rng.random()  # drawn now, so that the threads that make the tokens draw nothing
        cases.append(Case("token: truncated", lambda cut=cut: post(f"Negotiate {truncated(real(), cut)}"), {401}))
    for _ in range(100):
        where = (rng.random(), rng.randrange(8))
        # A flip where Kerberos protects nothing (SPNEGO's list of mechanisms,
        # DER details a parser tolerates) leaves a valid token: then sue is
        # authenticated and her body refused.
        make = lambda w=where: post(f"Negotiate {flipped(real(), *w)}")  # noqa: E731
        cases.append(Case("token: bit-flipped", make, {401, 400}))
    for size in range(70_000, 70_000 + 30 * 997, 997):  # over header_size (64 KiB): gunicorn's own limit
        cases.append(Case("token: oversized", post("Negotiate " + "QUFB" * (size // 4)), {431}))
    for _ in range(20):  # just under the limit: the acceptor refuses it
        cases.append(Case("token: large", post("Negotiate " + base64.b64encode(rng.randbytes(40_000)).decode()), {401}))
    for _ in range(50):
        cases.append(Case("token: another service", lambda: other_service(realm), {401}))
    for header in ["Negotiate", "Negotiate ", "Basic c3VlOnNlY3JldA==", "NTLM TlRMTVNTUAAB", "negotiate", "Bearer x"]:
        for _ in range(8):
            cases.append(Case("token: wrong scheme", post(header), {401}))
    return cases


def truncated(request: bytes, cut: float) -> str:
    token = base64.b64decode(_token_of(request))
    return base64.b64encode(token[: max(1, int(cut * (len(token) - 1)))]).decode()


def flipped(request: bytes, where: float, bit: int) -> str:
    token = bytearray(base64.b64decode(_token_of(request)))
    token[int(where * len(token))] ^= 1 << bit
    return base64.b64encode(bytes(token)).decode()


def _token_of(request: bytes) -> bytes:
    return request.split(b"Authorization: Negotiate ", 1)[1].split(b"\r\n", 1)[0]


def other_service(realm: Any) -> bytes:
    token = base64.b64encode(servicekit.negotiate_token(realm, "sue", host="otherhost")).decode()
    return servicekit.request_bytes("POST", "/v1/credentials", {"Authorization": f"Negotiate {token}"}, b"{}", False)


def request_cases(rng: random.Random, realm: Any) -> list[Case]:
    """Authenticated people asking for what they may not, in ways the API refuses."""
    cases = []
    for _ in range(200):
        body = wrong_body(rng)
        want = {413} if len(body) > 65536 else {400}
        cases.append(
            Case("body: not JSON or wrong types", authenticated(realm, "sue", "POST", "/v1/credentials", body), want)
        )
    for policy in [7, None, ["arn:aws:iam::aws:policy/AdministratorAccess"], "not-an-arn", "", "arn:\x00"]:
        for action in ("attach-policy", "detach-policy"):
            body = json.dumps({"user": "sue-x", "policy_arn": policy}).encode()
            want: set[int | None] = {403} if policy == "arn:\x00" else {400}  # an ARN on no allow-list
            cases.append(Case("body: wrong types", authenticated(realm, "sue", "POST", f"/v1/{action}", body), want))
    for _ in range(420):
        name, action = hostile_name(rng), rng.choice(ACTIONS)
        with pytest.raises(iamsorry.IamSorryError):
            iamsorry.check_iam_name(name if isinstance(name, str) else "")
        field = {"create-role": "role", "list": "namespace"}.get(action, "user")
        body = json.dumps({field: name, "hours": 1, "policy_arn": "arn:aws:iam::123456789012:policy/team-readonly"})
        cases.append(
            Case("body: hostile name", authenticated(realm, "sue", "POST", f"/v1/{action}", body.encode()), {400})
        )
    for _ in range(100):  # valid requests of people without the namespace (ann is in lab only, bob in none)
        who, action = rng.choice(["ann", "bob"]), rng.choice(ACTIONS)
        target = rng.choice(["sue", "sue-etl", "bob", "bob-x"])
        field = {"create-role": "role", "list": "namespace"}.get(action, "user")
        if action == "create-role" and "-" not in target:
            target += "-r"
        body = json.dumps({field: target, "policy_arn": "arn:aws:iam::123456789012:policy/team-readonly"}).encode()
        want = {400} if action == "list" and "-" in target else {403}
        cases.append(Case("body: not a member", authenticated(realm, who, "POST", f"/v1/{action}", body), want))
    for _ in range(100):
        path = rng.choice(
            [
                "/v1/",
                "/v1/steal",
                "/v1/credentials/..",
                "/v1/../v1/credentials",
                "/v2/credentials",
                "/v1/whoami/x",
                "/admin",
                "/v1/%2e%2e/credentials",
                "/v1/credentials%00",
                "/" + "x" * 300,
            ]
        )
        cases.append(
            Case("unknown action", authenticated(realm, rng.choice(["sue", "ann"]), "POST", path, b"{}"), {404})
        )
    for _ in range(60):
        method, path = rng.choice(
            [
                ("GET", "/v1/credentials"),
                ("PUT", "/v1/credentials"),
                ("DELETE", "/v1/create-user"),
                ("PATCH", "/v1/list"),
                ("POST", "/v1/whoami"),
                ("OPTIONS", "/v1/credentials"),
            ]
        )
        cases.append(Case("wrong method", authenticated(realm, "sue", method, path, b"{}"), {405}))
    for _ in range(40):
        cases.append(
            Case("body: over the limit", authenticated(realm, "sue", "POST", "/v1/credentials", b"{" * 70000), {413})
        )
    for _ in range(10):  # no authentication at all: the size is checked first
        cases.append(
            Case("body: over the limit", servicekit.request_bytes("POST", "/v1/credentials", {}, b" " * 70_000), {413})
        )
    for _ in range(40):
        chunked = b"2\r\n{}\r\n0\r\n\r\n"
        make = authenticated(realm, "sue", "POST", "/v1/credentials", chunked, **{"Transfer-Encoding": "chunked"})
        cases.append(Case("body: chunked", make, {411}))
    return cases


def http_cases(rng: random.Random) -> list[Case]:
    """What gunicorn itself refuses: it answers in JSON too."""
    cases = []
    for _ in range(50):
        junk = bytes(rng.randrange(1, 256) for _ in range(rng.randrange(1, 200))).replace(b"\r\n", b"")
        cases.append(Case("http: garbage", junk + b"\r\n\r\n", {400}))
    for _ in range(30):
        cases.append(
            Case("http: long request line", f"GET /{'a' * rng.randrange(4100, 9000)} HTTP/1.1\r\n\r\n".encode(), {414})
        )
    for _ in range(30):
        many = {f"X-H{i}": "x" for i in range(rng.randrange(101, 300))}
        cases.append(Case("http: too many headers", servicekit.request_bytes("GET", "/v1/whoami", many), {431}))
    for bad in [
        b"GET /v1/whoami HTTP/9.9\r\n\r\n",
        b"GET /v1/whoami\r\n\r\n",
        b"GET  HTTP/1.1\r\n\r\n",
        b"GET /v1/whoami HTTP/1.1\r\nBad Header: x\r\n\r\n",
        b"GET /v1/whoami HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
        b"GET /v1/whoami HTTP/1.1\r\nX-\x00: a\r\n\r\n",
        b"G\x00T / HTTP/1.1\r\n\r\n",
    ]:
        for _ in range(5):
            cases.append(Case("http: malformed", bad, {400}))
    for length in ["-1", "abc", "1e3", "99999999999999999999", "10, 10"]:
        for _ in range(4):
            request = (
                f"POST /v1/credentials HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {length}\r\n\r\n{{}}"
            )
            cases.append(Case("http: bad Content-Length", request.encode(), {400, 413}))
    for coding in ["gzip", "chunked, gzip", "identity"]:
        for _ in range(5):
            request = f"POST /v1/credentials HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {coding}\r\n\r\n{{}}"
            cases.append(Case("http: transfer coding", request.encode(), {400, 411}))
    return cases


# -- running it ----------------------------------------------------------------


_CLIENT = threading.local()


def send(svc: servicekit.Service, case: Case) -> servicekit.Answer:
    """Requests the API refuses go over each client thread's kept-alive
    connection; malformed HTTP over a new connection each."""
    if case.kind.startswith("http: plain"):
        return plain_http(svc)
    data = case.data() if callable(case.data) else case.data
    if case.kind.startswith("http:") or b"\r\nConnection: close\r\n" in data:
        return servicekit.exchange(svc, data, timeout=60)
    if getattr(_CLIENT, "conn", None) is None:
        _CLIENT.conn = servicekit.KeptAlive(svc)
    answer: servicekit.Answer = _CLIENT.conn.send(data)
    return answer


def slowloris(svc: servicekit.Service, how: str) -> tuple[str, int | None, bool]:
    """A client that never completes its request: (how, status it got, whether
    the server closed the connection before the client gave up at 30 s)."""
    head = b"POST /v1/credentials HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
    if how == "slow body":  # with a ticket: only then is a body read at all
        token = base64.b64encode(servicekit.negotiate_token(svc.realm, "sue")).decode()
        head += f"Authorization: Negotiate {token}\r\n".encode()
    raw = socket.create_connection(("127.0.0.1", svc.port), timeout=30)
    deadline = time.monotonic() + 30
    if how == "idle, no TLS":  # gunicorn's main loop holds it, up to keepalive
        with raw:
            try:
                return how, servicekit.parse_answer(raw.recv(4096)).status, True
            except TimeoutError:
                return how, None, False
    try:
        tls = svc.tls().wrap_socket(raw, server_hostname="localhost")
    except (OSError, ssl.SSLError):
        raw.close()
        return how, None, True
    with tls:
        tls.settimeout(0.3)
        if how == "slow body":
            tls.sendall(head + b"\r\n{")
        elif how == "slow head":
            tls.sendall(b"GET /v1/whoami HTTP/1.1\r\n")
        while time.monotonic() < deadline:
            try:
                if how != "idle":
                    tls.sendall(b"X-a: b\r\n" if how == "slow head" else b" ")
                got = tls.recv(4096)
                return how, servicekit.parse_answer(got).status, True
            except TimeoutError:
                continue
            except (OSError, ssl.SSLError):
                return how, None, True
    return how, None, False


def holder(svc: servicekit.Service) -> servicekit.Answer:
    """A client that asks the server to close, reads the answer, then keeps
    its end open: gunicorn 27 lingers on its main loop for such a socket."""
    raw = socket.create_connection(("127.0.0.1", svc.port), timeout=30)
    with svc.tls().wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(servicekit.request_bytes("GET", "/v1/whoami"))
        got = b""
        while b"}" not in got:
            got += tls.recv(4096) or b"}"
        time.sleep(3)
    return servicekit.parse_answer(got)


def plain_http(svc: servicekit.Service) -> servicekit.Answer:
    """HTTP without TLS to the TLS port: gunicorn cannot answer in HTTP."""
    with socket.create_connection(("127.0.0.1", svc.port), timeout=30) as raw:
        raw.sendall(b"GET /v1/whoami HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        try:
            while chunk := raw.recv(4096):
                got += chunk
        except OSError:
            pass
    return servicekit.Answer(None if not got.startswith(b"HTTP/") else int(got.split()[1]), {}, got)


class Prober:
    """GET /healthz every 50 ms in a thread of its own; each answer's status and seconds."""

    def __init__(self, svc: servicekit.Service) -> None:
        self.svc, self.seen, self.stop = svc, list[tuple[int | None, float]](), threading.Event()
        self.thread = threading.Thread(target=self.run)
        self.thread.start()

    def run(self) -> None:
        request = servicekit.request_bytes("GET", "/healthz")
        while not self.stop.wait(0.05):
            started = time.monotonic()
            try:
                status = servicekit.exchange(self.svc, request, timeout=30).status
            except OSError:
                status = None
            self.seen.append((status, time.monotonic() - started))

    def finish(self) -> list[tuple[int | None, float]]:
        self.stop.set()
        self.thread.join(60)
        return self.seen


def test_the_fuzz(svc: servicekit.Service, krb_realm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import moto_shim

    for name, value in krb_realm.env("sue").items():
        monkeypatch.setenv(name, value)
    for user in ("sue", "ann", "bob"):
        krb_realm.kinit(user)
    if "HTTP/otherhost@" not in krb_realm.kadmin_local("listprincs"):  # not made by an earlier run of this module
        krb_realm.add_service("HTTP/otherhost", keytab=svc.folder / "other.keytab")
    shim = moto_shim.install()
    shim.reset_calls()
    rng = random.Random(SEED)
    real = authenticated(krb_realm, "sue", "POST", "/v1/credentials", b"[]")
    cases = token_cases(rng, krb_realm, real) + request_cases(rng, krb_realm) + http_cases(rng)
    cases += [Case("http: plain HTTP to the TLS port", b"", {None})] * 10
    rng.shuffle(cases)
    replays = [real() for _ in range(100)]  # each sent twice: the second time is a replay

    prober = Prober(svc)
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(CLIENTS) as pool, ThreadPoolExecutor(40) as slow:
            lorises = [slow.submit(slowloris, svc, how) for how in SLOW_CLIENTS]
            holders = [slow.submit(holder, svc) for _ in range(20)]
            answers = list(pool.map(lambda c: send(svc, c), cases))
            first = list(pool.map(lambda r: send(svc, Case("replay", r, {400})), replays))
            again = list(pool.map(lambda r: send(svc, Case("replay", r, {401})), replays))
            loris = [f.result() for f in lorises]
            held = [f.result() for f in holders]
        took = time.monotonic() - started
    finally:
        probes = prober.finish()
    after = servicekit.exchange(svc, servicekit.request_bytes("GET", "/healthz"))

    cases += [Case("token: replayed (first use)", b"", {400})] * len(first)
    cases += [Case("token: replayed", b"", {401})] * len(again)
    answers += first + again
    wrong = [(c.kind, a.status, a.body[:200]) for c, a in zip(cases, answers) if a.status not in c.want]
    assert not wrong, wrong[:10]
    for case, answer in zip(cases, answers):
        if answer.status is not None:
            assert 400 <= answer.status < 500 and isinstance(answer.json()["error"], str), (case.kind, answer)
    assert all("replay" in a.json()["error"] for a in again)
    assert len(cases) >= 2000

    assert sorted(loris) == sorted((how, None, True) for how in SLOW_CLIENTS), loris
    assert [a.status for a in held] == [401] * len(held)
    assert probes and all(status == 200 for status, _ in probes), [p for p in probes if p[0] != 200][:5]
    # The issue asks for /healthz "within a second".  The bound is twice that,
    # for a CI machine whose two cores the fuzz itself saturates (measured
    # here: p99 about 0.1 s, max 0.3 s), and still below what the failures
    # this guards against cost: a main loop stalled by gunicorn's 2 s linger
    # per held connection (4 s measured without the fix), or threads held by
    # slow clients (READ_TIMEOUT each, or for ever without the watch).
    assert max(seconds for _, seconds in probes) < HEALTHZ_BOUND
    assert after.status == 200

    assert dict(shim.calls) == {}  # nothing at all in AWS
    log = svc.log_text()
    assert "Traceback" not in log
    assert log.count(f"no whole request within {READ_TIMEOUT}s") >= 12
    verify = servicekit.audit(svc.config, "verify")
    assert verify.returncode == 0, verify.stderr

    latencies = sorted(seconds for _, seconds in probes)
    by_status = Counter(a.status for a in answers)
    print(
        f"\nfuzz: {len(answers)} requests in {took:.1f}s ({CLIENTS} clients), answers by status: "
        f"{dict(sorted(by_status.items(), key=str))}; slow clients {Counter(h for h, _, _ in loris)} all closed"
    )
    print(
        f"fuzz: /healthz during the fuzz: {len(latencies)} probes, p50 {1000 * statistics.median(latencies):.0f} ms, "
        f"p99 {1000 * latencies[int(0.99 * (len(latencies) - 1))]:.0f} ms, max {1000 * latencies[-1]:.0f} ms"
    )
    print(f"fuzz: by kind: {dict(Counter(c.kind for c in cases))}")
