"""The broker client: ``iam-sorry --broker URL ...``, IAM_SORRY_BROKER and
``broker =`` in a profile, --eval, credential_process, --role, --whoami and
create_session_with_profile, through python-gssapi and through the ctypes
binding of the bare script; every failure one clear line.  One real server
for the module (tests/servicekit.py)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import servicekit
from conftest import (
    REGION,
    SCRIPT,
    assert_clean_error,
    aws_cli_arn,
    creds_file,
    expire_profile,
    iamsorry,
    require_module,
    run_bare,
    run_cli,
)

SUE_ARN = "arn:aws:iam::123456789012:user/iam-sorry/sue"
SESSION_KEYS = ["AccessKeyId", "Expiration", "SecretAccessKey", "SessionToken", "Version"]


@pytest.fixture(scope="module")
def svc(krb_realm: Any, moto_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[servicekit.Service]:
    servicekit.reset_aws(moto_url)
    with servicekit.running_service(krb_realm, moto_url, tmp_path_factory.mktemp("broker")) as service:
        krb_realm.kinit("sue")
        status, _, doc = service.curl("sue", "/v1/create-user", {"user": "sue"})
        assert status == 201, doc
        yield service


@pytest.fixture(autouse=True)
def tickets(krb_realm: Any) -> None:
    for user in ("sue", "ann"):
        krb_realm.kinit(user)


def env_of(svc: servicekit.Service, user: str | None = "sue", **extra: str) -> dict[str, str]:
    """A client shell: the user's ticket, the service's CA, the fake AWS for checks."""
    return svc.client_env(user, AWS_ENDPOINT_URL=svc.moto_url, AWS_REGION=REGION, **extra)


def test_whoami_through_the_broker(svc: servicekit.Service) -> None:
    proc = run_cli("--broker", svc.url, "--whoami", env=env_of(svc))
    assert proc.returncode == 0, proc.stderr
    assert f"sue@IAMSORRY.TEST (local user sue) at {svc.url}" in proc.stdout
    assert "namespace sue: credentials, create-user" in proc.stdout
    doc = json.loads(run_cli("--broker", svc.url, "--whoami", "--json", env=env_of(svc)).stdout)
    assert doc["principal"] == "sue@IAMSORRY.TEST" and "lab" in doc["namespaces"]


def test_the_bare_script_reaches_the_broker_through_ctypes(svc: servicekit.Service, private_home: Path) -> None:
    assert subprocess.run([sys.executable, "-S", "-c", "import gssapi"], capture_output=True).returncode != 0
    versions = run_bare("--versions", env=env_of(svc))
    assert "kerberos-client ctypes (libgssapi_krb5.so.2)" in versions.stdout, versions.stdout + versions.stderr
    proc = run_bare("--broker", svc.url, "--credential-process", "sue", env=env_of(svc))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert sorted(doc) == SESSION_KEYS and svc.arn_of(doc) == SUE_ARN
    assert not (private_home / ".aws").exists()  # credential_process mode writes nothing
    who = run_bare("--whoami", env=env_of(svc, IAM_SORRY_BROKER=svc.url))
    assert who.returncode == 0 and "sue@IAMSORRY.TEST" in who.stdout, who.stderr


def test_with_python_gssapi_versions_say_so(svc: servicekit.Service) -> None:
    require_module("gssapi")
    line = next(ln for ln in run_cli("--versions").stdout.splitlines() if ln.startswith("kerberos-client"))
    assert line.startswith("kerberos-client python-gssapi ")


def test_the_aws_cli_uses_credential_process_through_the_broker(svc: servicekit.Service, private_home: Path) -> None:
    """The cluster-node set-up of the README: one config section, no credentials file."""
    config = private_home / ".aws" / "config"
    config.parent.mkdir()
    command = f"{sys.executable} {SCRIPT} --credential-process sue"
    config.write_text(f"[profile sue]\ncredential_process = {command}\nbroker = {svc.url}\nregion = {REGION}\n")
    assert aws_cli_arn("sue", env_of(svc)) == SUE_ARN
    assert sorted(p.name for p in config.parent.iterdir()) == ["config"]


def test_eval_fetches_once_then_runs_from_the_file(svc: servicekit.Service, private_home: Path) -> None:
    proc = run_cli("--eval", "sue", env=env_of(svc, IAM_SORRY_BROKER=svc.url))
    assert proc.returncode == 0, proc.stderr
    assert "export AWS_SESSION_TOKEN=" in proc.stdout
    profile = iamsorry.read_aws_credentials()["sue"]
    assert profile["credentials_owner"] == "sue"
    keys = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")
    doc = dict(zip(("AccessKeyId", "SecretAccessKey", "SessionToken"), (profile[k] for k in keys)))
    assert svc.arn_of(doc) == SUE_ARN
    dead = f"https://localhost:{servicekit.free_port()}"
    again = run_cli("--eval", "sue", env=env_of(svc, IAM_SORRY_BROKER=dead))  # cached: the broker is not asked
    assert again.returncode == 0 and again.stdout == proc.stdout, again.stderr
    expire_profile("sue")
    assert_clean_error(run_cli("--eval", "sue", env=env_of(svc, IAM_SORRY_BROKER=dead)), "cannot reach the broker")


def test_minting_by_name_remembers_the_broker_for_later_refreshes(svc: servicekit.Service) -> None:
    proc = run_cli("--broker", svc.url, "sue", "--duration", "2", env=env_of(svc))
    assert proc.returncode == 0, proc.stderr
    assert iamsorry.read_aws_config()["sue"]["broker"] == svc.url
    expire_profile("sue")
    proc = run_cli("--eval", "sue", env=env_of(svc))  # no flag, no variable: the profile's broker
    assert proc.returncode == 0, proc.stderr
    assert "Refreshed [sue]" in proc.stderr
    profile = iamsorry.read_aws_credentials()["sue"]
    assert not iamsorry.credentials_need_refresh(profile, 15)[0]


def test_the_python_api_goes_through_the_broker(
    svc: servicekit.Service, private_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env_of(svc).items():
        monkeypatch.setenv(name, value)
    (private_home / ".aws").mkdir()
    (private_home / ".aws" / "config").write_text(f"[profile sue]\nbroker = {svc.url}\nregion = {REGION}\n")
    session = iamsorry.create_session_with_profile("sue")
    assert session.client("sts").get_caller_identity()["Arn"] == SUE_ARN


def test_a_role_through_the_broker_works_with_the_aws_cli(svc: servicekit.Service) -> None:
    proc = run_cli("--broker", svc.url, "--role", "sue-lambda", env=env_of(svc))
    assert proc.returncode == 0, proc.stderr
    assert "Role iam-sorry-sue-lambda created" in proc.stderr
    config = iamsorry.read_aws_config()
    assert config["sue-lambda"]["source_profile"] == "sue" and config["sue"]["broker"] == svc.url
    assert ":assumed-role/iam-sorry-sue-lambda/" in aws_cli_arn("sue-lambda", env_of(svc))


def test_credential_process_of_a_brokered_role_writes_nothing(svc: servicekit.Service, private_home: Path) -> None:
    """The role's source comes from the broker and the role is assumed in
    memory: no credentials file appears, and no profile name is ever sent to
    the broker as a user name."""
    assert run_cli("--broker", svc.url, "--role", "sue-proc", env=env_of(svc)).returncode == 0
    creds = private_home / ".aws" / "credentials"
    if creds.exists():
        creds.unlink()
    for extra in ({}, {"IAM_SORRY_BROKER": svc.url}):
        proc = run_cli("--credential-process", "sue-proc", env=env_of(svc, **extra))
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        assert ":assumed-role/iam-sorry-sue-proc/" in svc.arn_of(doc)
        assert not creds.exists()


@pytest.mark.parametrize("client", ["python-gssapi", "ctypes"])
def test_kerberos_failures_are_one_clear_line(svc: servicekit.Service, krb_realm: Any, client: str) -> None:
    if client == "python-gssapi":
        require_module("gssapi")
    run = (lambda *a, env: run_bare(*a, env=env)) if client == "ctypes" else run_cli
    whoami = ("--broker", svc.url, "--whoami")
    proc = run(*whoami, env=env_of(svc, None))
    assert_clean_error(proc, "no Kerberos ticket", "hint: run kinit")
    assert proc.returncode == 8
    krb_realm.kinit("bob")
    krb_realm.shift_clock("bob", 2 * 86400)  # past the ticket's end
    assert_clean_error(run(*whoami, env=env_of(svc, "bob")), "Kerberos ticket has expired", "run kinit")
    krb_realm.kinit("bob")
    krb_realm.shift_clock("bob", 3600)  # within the ticket, far beyond the allowed skew
    assert_clean_error(run(*whoami, env=env_of(svc, "bob")), "clock skew too great", "chrony")
    ip_url = svc.url.replace("localhost", "127.0.0.1")
    assert_clean_error(run("--broker", ip_url, "--whoami", env=env_of(svc)), "does not know HTTP/127.0.0.1")


def test_an_unknown_realm_is_one_clear_line(svc: servicekit.Service, krb_realm: Any, tmp_path: Path) -> None:
    conf = tmp_path / "krb5.conf"
    conf.write_text(krb_realm.krb5_conf.read_text() + "\n[domain_realm]\n  broker.nowhere.test = NOWHERE.TEST\n")
    url = svc.url.replace("localhost", "broker.nowhere.test")
    proc = run_cli("--broker", url, "--whoami", env=env_of(svc, KRB5_CONFIG=str(conf)))
    assert_clean_error(proc, "unknown Kerberos realm for broker.nowhere.test", "domain_realm")


def test_broker_failures_are_one_clear_line(svc: servicekit.Service) -> None:
    untrusted = {k: v for k, v in env_of(svc).items() if k != "IAM_SORRY_CA_BUNDLE"}
    proc = run_cli("--broker", svc.url, "--whoami", env=untrusted)
    assert_clean_error(proc, "cannot trust the TLS certificate of the broker", "IAM_SORRY_CA_BUNDLE")
    proc = run_cli("--broker", svc.url, "--whoami", env={**untrusted, "SSL_CERT_FILE": str(svc.ca)})
    assert proc.returncode == 0, proc.stderr  # the standard variable works as well
    dead = f"https://localhost:{servicekit.free_port()}"
    assert_clean_error(run_cli("--broker", dead, "--whoami", env=env_of(svc)), "cannot reach the broker", "healthz")
    proc = run_cli("--broker", svc.url, "--credential-process", "sue", env=env_of(svc, "ann"))
    assert_clean_error(proc, "the broker refused: ann@IAMSORRY.TEST is not a member of namespace sue")
    assert proc.returncode == 7
    proc = run_cli("--broker", svc.url, "--credential-process", "nobody-here", env=env_of(svc))
    assert_clean_error(proc, "namespace nobody")
    assert_clean_error(run_cli("--broker", "http://plain.example", "--whoami"), "must be https://")
    assert_clean_error(run_cli("--whoami"), "give --broker URL or set IAM_SORRY_BROKER")
    missing = env_of(svc, IAM_SORRY_CA_BUNDLE="/nonexistent/ca.pem")
    assert_clean_error(run_cli("--broker", svc.url, "--whoami", env=missing), "IAM_SORRY_CA_BUNDLE=/nonexistent")


@pytest.mark.parametrize("kind", ["python-gssapi", "ctypes"])
def test_the_initiators_insist_on_mutual_authentication(
    krb_realm: Any, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """Both bindings complete a handshake with the service's acceptor, and
    refuse an answer that does not prove the service's identity."""
    if kind == "python-gssapi":
        require_module("gssapi")
    for name, value in krb_realm.env("sue").items():
        monkeypatch.setenv(name, value)
    make = iamsorry._PyInitiator if kind == "python-gssapi" else iamsorry._CtypesInitiator
    acceptor = iamsorry.Acceptor(str(krb_realm.keytab), [krb_realm.realm])
    with make("localhost") as gss:
        token = gss.step(None)
        assert token and not gss.complete
        principal, user, challenge = acceptor.accept("Negotiate " + base64.b64encode(token).decode())
        assert (principal, user) == ("sue@IAMSORRY.TEST", "sue")
        gss.finish(challenge)
        assert gss.complete
    for reply in (None, "Negotiate", "Basic abc"):
        with make("localhost") as gss:
            gss.step(None)
            with pytest.raises(iamsorry.KerberosError, match="did not prove its identity"):
                gss.finish(reply)
    with make("localhost") as gss:
        gss.step(None)
        with pytest.raises(iamsorry.KerberosError):
            gss.finish("Negotiate " + base64.b64encode(b"\x60\x05garbage").decode())


def test_the_client_follows_no_redirect(svc: servicekit.Service, tmp_path: Path) -> None:
    """A broker that answers 302 (to plain http, on another port) gets no
    second request: the Negotiate header never travels on."""
    import http.server
    import ssl
    import threading

    followed: list[str] = []

    class Elsewhere(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            followed.append(self.headers.get("Authorization", ""))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    elsewhere = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Elsewhere)
    target = f"http://127.0.0.1:{elsewhere.server_address[1]}/v1/whoami"

    class Redirects(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", target)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    _, cert, key = servicekit.make_tls(tmp_path)
    broker = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirects)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    broker.socket = context.wrap_socket(broker.socket, server_side=True)
    env = {**env_of(svc), "IAM_SORRY_CA_BUNDLE": str(tmp_path / "ca.pem")}
    servers = [threading.Thread(target=s.serve_forever, daemon=True) for s in (broker, elsewhere)]
    for thread in servers:
        thread.start()
    try:
        url = f"https://localhost:{broker.server_address[1]}"
        assert_clean_error(run_cli("--broker", url, "--whoami", env=env), "follows no redirects")
    finally:
        for server in (broker, elsewhere):
            server.shutdown()
            server.server_close()
    assert followed == []


GOOD_ANSWER = {
    "Version": 1,
    "AccessKeyId": "ASIAHOSTILEHOSTILE01",
    "SecretAccessKey": "s3cr3t/s3cr3t+s3cr3t/s3cr3t+s3cr3t/s3cr3",
    "SessionToken": "FQoGZXIvYXdzEBYaD" + "A" * 300,
    "Expiration": "2099-01-01T00:00:00Z",
}


class HostileBroker:
    """A broker that answers what a test chooses, over TLS on localhost.  A
    Kerberos client insists on the broker's mutual-authentication token:
    this one gets it by passing the client's ticket on to the real service
    (a broker in the middle, with a certificate the client trusts), then
    answers in its own words."""

    def __init__(self, svc: servicekit.Service, folder: Path) -> None:
        import http.server
        import ssl

        self.svc, self.status, self.body, self.length = svc, 200, b"{}", None
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                owner.answer(self)

            def do_GET(self) -> None:
                owner.answer(self)

            def log_message(self, *args: object) -> None:
                pass

        folder.mkdir()
        _, cert, key = servicekit.make_tls(folder)
        self.ca = folder / "ca.pem"
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(cert), str(key))
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://localhost:{self.server.server_address[1]}"

    def vouch(self, authorization: str) -> str:
        """The real service's answer token to the client's ticket."""
        import urllib.request

        request = urllib.request.Request(self.svc.url + "/v1/whoami", headers={"Authorization": authorization})
        with urllib.request.urlopen(request, context=self.svc.tls(), timeout=30) as reply:
            return str(reply.headers["WWW-Authenticate"])

    def answer(self, handler: Any) -> None:
        handler.send_response(self.status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(self.length or len(self.body)))
        if self.status == 200:
            handler.send_header("WWW-Authenticate", self.vouch(handler.headers["Authorization"]))
        handler.end_headers()
        try:
            if self.length is None:
                handler.wfile.write(self.body)
            else:  # the claimed length, in chunks, until the client hangs up
                sent = 0
                while sent < self.length:
                    handler.wfile.write(self.body)
                    sent += len(self.body)
        except OSError:
            pass

    def __enter__(self) -> HostileBroker:
        import threading

        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hostile(svc: servicekit.Service, tmp_path: Path) -> Iterator[HostileBroker]:
    with HostileBroker(svc, tmp_path / "hostile") as broker:
        yield broker


def eval_through(broker: HostileBroker) -> Any:
    env = {**env_of(broker.svc), "IAM_SORRY_CA_BUNDLE": str(broker.ca), "IAM_SORRY_BROKER": broker.url}
    return run_cli("--eval", "sue", env=env)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("SessionToken", 12345),
        ("SessionToken", "FQoG\u2028[prod]\u2028aws_access_key_id = AKIAEVILEVILEVILEVIL"),
        ("SessionToken", "FQoG'$(touch /tmp/x)'AAAAAAAAAAAAAAAA"),
        ("AccessKeyId", ["ASIAHOSTILEHOSTILE01"]),
        ("SecretAccessKey", "secret\nwith a line break in it"),
        ("Expiration", 4102444800),
        ("Expiration", "tomorrow, probably"),
    ],
)
def test_credentials_a_broker_sends_must_have_the_form_of_aws_credentials(
    hostile: HostileBroker, private_home: Path, field: str, value: Any
) -> None:
    hostile.body = json.dumps(GOOD_ANSWER).encode()
    proc = eval_through(hostile)  # the control: this broker passes for a real one
    assert proc.returncode == 0 and f"export AWS_SESSION_TOKEN='{GOOD_ANSWER['SessionToken']}'" in proc.stdout
    creds_file(private_home).unlink()
    hostile.body = json.dumps({**GOOD_ANSWER, field: value}).encode()
    proc = eval_through(hostile)
    assert_clean_error(proc, f"sent credentials with a malformed {field}: refused")
    assert not creds_file(private_home).exists() and proc.stdout == ""


@pytest.mark.parametrize("status", [200, 500])
def test_a_broker_answer_nested_too_deep_is_refused_in_one_line(
    hostile: HostileBroker, private_home: Path, status: int
) -> None:
    hostile.status, hostile.body = status, b"[" * 100_000 + b"]" * 100_000  # under 1 MiB, beyond any parser's depth
    proc = eval_through(hostile)
    assert_clean_error(proc, "did not answer in JSON" if status == 200 else "the broker refused (500): HTTP 500")
    assert not creds_file(private_home).exists()


@pytest.mark.parametrize("status", [200, 500])
def test_a_broker_that_answers_without_end_is_cut_off_at_one_mib(
    hostile: HostileBroker, private_home: Path, status: int
) -> None:
    hostile.status, hostile.body, hostile.length = status, b"[" * 65536, 64 << 20
    proc = eval_through(hostile)
    assert_clean_error(proc, "answered with more than 1 MiB: is it an iam-sorry broker?")
    hostile.length, hostile.body = None, json.dumps({"error": "no", "pad": "x" * ((1 << 20) - 40)}).encode()
    assert len(hostile.body) < 1 << 20  # just under the cap: still read and understood
    proc = eval_through(hostile)
    assert_clean_error(proc, "answered without credentials" if status == 200 else "the broker refused (500): no")
