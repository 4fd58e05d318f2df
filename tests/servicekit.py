"""A real ``iam-sorry serve`` for tests, the demo and the benchmark: gunicorn
over TLS (a trustme certificate), the throwaway Kerberos realm's keytab, a
moto server for AWS, and the AWS side made by ``--setup-service`` itself.

    with running_service(realm, moto_url, folder) as svc:
        svc.curl("sue", "/v1/whoami")
        svc.client_env("sue")          # for iam-sorry --broker svc.url ...

The server is a subprocess in its own session, stopped by its pid (SIGTERM,
then SIGKILL) also when the block fails; its stderr goes to ``svc.log``."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conftest import REGION, ROOT, admin_profile, aws_client, children, iamsorry

# The service needs the server extra, so it always runs from the checkout, never a built .pyz.
SCRIPT = ROOT / "iam-sorry"

SQLITE = "sqlite:///audit/audit.db"

#: The namespaces every test service has: sue's own (everything, for sue),
#: and a lab namespace that sue and ann share for credentials and listing.
NAMESPACES = """
[groups]
lab = ["sue", "ann"]

[namespaces.sue]
members = ["sue"]
actions = ["credentials", "create-user", "delete-user", "attach-policy", "detach-policy", "create-role",
           "service-key", "list"]
policies = ["arn:aws:iam::123456789012:policy/team-readonly", "arn:aws:iam::123456789012:policy/sue-*"]
max_hours = 36

[namespaces.lab]
members = ["group:lab"]
actions = ["credentials", "list"]
max_hours = 12
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_tls(folder: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate chain, server key) for localhost."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    paths = folder / "ca.pem", folder / "tls.crt", folder / "tls.key"
    ca.cert_pem.write_to_path(str(paths[0]))
    cert.private_key_pem.write_to_path(str(paths[2]))
    paths[1].write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    paths[2].chmod(0o600)
    return paths


def write_config(
    folder: Path, realm: Any, port: int, extra: str = "", namespaces: str = NAMESPACES, audit: str = SQLITE
) -> Path:
    config = folder / "service.toml"
    config.write_text(
        f"""[service]
listen = "127.0.0.1:{port}"
tls_cert = "tls.crt"
tls_key = "tls.key"
keytab = "{realm.keytab}"
realms = ["{realm.realm}"]
audit = "{audit}"
region = "{REGION}"
aws_profile = "iam-sorry-service"
audit_timeout = 1
{extra}
{namespaces}"""
    )
    return config


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without AWS, iam-sorry or Kerberos settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "IAM_SORRY_", "KRB5", "SSL_CERT"))}
    env.update(AWS_EC2_METADATA_DISABLED="true", **extra)
    return env


def admin_home(folder: Path) -> Path:
    """A HOME whose [aws-admin] profile is the fake account's administrator."""
    home = folder / "admin"
    admin_profile(home)
    return home


def setup_service(folder: Path, config: Path, moto_url: str) -> subprocess.CompletedProcess[str]:
    """``iam-sorry --profile aws-admin --setup-service CONFIG`` as the administrator."""
    env = clean_env(HOME=str(admin_home(folder)), AWS_ENDPOINT_URL=moto_url)
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--profile", "aws-admin", "--setup-service", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def store_service_key(folder: Path, handover: str) -> Path:
    """The key --setup-service printed, as the service's AWS credentials file."""
    section = handover[handover.index("[iam-sorry-service]") :]
    lines = [ln for ln in section.splitlines() if ln.startswith(("[", "aws_"))][:3]
    aws = folder / "service-aws"
    aws.mkdir(exist_ok=True)
    (aws / "credentials").write_text("\n".join(lines) + "\n")
    (aws / "credentials").chmod(0o600)
    (aws / "config").write_text(f"[profile iam-sorry-service]\nregion = {REGION}\n")
    return aws


@dataclass
class Service:
    folder: Path
    realm: Any
    config: Path
    url: str
    ca: Path
    log: Path
    moto_url: str
    proc: subprocess.Popen[bytes] | None = None
    handover: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)

    def server_env(self) -> dict[str, str]:
        aws = self.folder / "service-aws"
        (self.folder / "home").mkdir(exist_ok=True)
        return clean_env(
            HOME=str(self.folder / "home"),
            AWS_ENDPOINT_URL=self.moto_url,
            AWS_SHARED_CREDENTIALS_FILE=str(aws / "credentials"),
            AWS_CONFIG_FILE=str(aws / "config"),
            IAM_SORRY_PROPAGATION_TIMEOUT="20",
            **self.realm.env(keytab=True),
            **self.extra_env,
        )

    def start(self, timeout: float = 60) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(SCRIPT), "serve", "--config", str(self.config)],
                env=self.server_env(),
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.get("/healthz")
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"iam-sorry serve did not start:\n{self.log_text()}") from None
                time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        """Stop the server by its pid; its exit status (None if it had to be killed)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def worker_pid(self) -> int | None:
        """The pid of gunicorn's worker (the master's one child), or None."""
        if self.proc is None:
            return None
        return next(iter(children(self.proc.pid)), None)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def get(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + path, context=self.tls(), timeout=10) as reply:
            return dict(json.load(reply))

    def arn_of(self, doc: dict[str, Any]) -> str:
        """Whom AWS (the moto server) takes credentials in credential_process JSON for."""
        sts = aws_client(self.moto_url, "sts", doc["AccessKeyId"], doc["SecretAccessKey"], doc.get("SessionToken"))
        return str(sts.get_caller_identity()["Arn"])

    def client_env(self, user: str | None, **extra: str) -> dict[str, str]:
        """For a client process of ``user`` (None: no ticket at all)."""
        return {**self.realm.env(user), "IAM_SORRY_CA_BUNDLE": str(self.ca), **extra}

    def curl(
        self, user: str | None, path: str, body: Any = None, *args: str, negotiate: bool = True
    ) -> tuple[int, dict[str, str], Any]:
        """``curl --negotiate -u :`` as ``user``: (status, headers, JSON body)."""
        cmd = ["curl", "-sS", "--cacert", str(self.ca), "-D", "-", "-o", "-", *args]
        if negotiate:
            cmd += ["--negotiate", "-u", ":"]
        if body is not None:
            data = body if isinstance(body, str) else json.dumps(body)
            cmd += ["-H", "Content-Type: application/json", "--data-binary", data]
        proc = subprocess.run(
            [*cmd, self.url + path], capture_output=True, text=True, env=clean_env(**self.realm.env(user)), timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        return parse_http(proc.stdout)


def parse_http(raw: str) -> tuple[int, dict[str, str], Any]:
    """The last response of curl -D - -o - (curl --negotiate may show a 401 first)."""
    blocks = raw.replace("\r\n", "\n").split("HTTP/")
    last = "HTTP/" + blocks[-1]
    head, _, body = last.partition("\n\n")
    lines = head.splitlines()
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    try:
        doc = json.loads(body) if body.strip() else None
    except ValueError:
        doc = body
    return status, headers, doc


#: Customer-managed policies every test account has (moto loads no AWS-managed ones).
POLICIES = ("team-readonly", "sue-extra", "admin-all")


def reset_aws(moto_url: str) -> Any:
    """An empty fake account with the POLICIES; the shim's counters and logs cleared."""
    import moto_shim

    urllib.request.urlopen(urllib.request.Request(moto_url + "/moto-api/reset", method="POST")).read()
    shim = moto_shim.install()
    shim.reset()
    iam = aws_client(moto_url, "iam")
    document = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:List*", "Resource": "*"}]}
    for name in POLICIES:
        iam.create_policy(PolicyName=name, PolicyDocument=json.dumps(document))
    return shim


def prepare(
    folder: Path, realm: Any, moto_url: str, extra: str = "", namespaces: str = NAMESPACES, audit: str = SQLITE
) -> Service:
    """Files, TLS, config and the AWS side (--setup-service); not started."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, _, _ = make_tls(folder)
    port = free_port()
    config = write_config(folder, realm, port, extra, namespaces, audit)
    made = setup_service(folder, config, moto_url)
    if made.returncode != 0:
        raise RuntimeError(f"--setup-service failed:\n{made.stderr}")
    store_service_key(folder, made.stdout)
    return Service(
        folder, realm, config, f"https://localhost:{port}", ca, folder / "serve.log", moto_url, handover=made.stdout
    )


def sibling(svc: Service, folder: Path, extra: str = "", audit: str = SQLITE) -> Service:
    """Another server (files, TLS, port) on the same AWS side: its key, its
    roles; with the same ``audit`` (and an ``audit_key`` in ``extra``) it is
    a second instance of the same service."""
    folder.mkdir(parents=True)
    ca, _, _ = make_tls(folder)
    port = free_port()
    config = write_config(folder, svc.realm, port, extra, audit=audit)
    shutil.copytree(svc.folder / "service-aws", folder / "service-aws")
    return Service(folder, svc.realm, config, f"https://localhost:{port}", ca, folder / "serve.log", svc.moto_url)


@contextlib.contextmanager
def running_service(realm: Any, moto_url: str, folder: Path, extra: str = "") -> Iterator[Service]:
    """prepare() and start(); stopped by pid however the block ends."""
    svc = prepare(folder, realm, moto_url, extra)
    try:
        svc.start()
        yield svc
    finally:
        svc.stop()


# -- raw clients, for hostile tests ------------------------------------------

SPNEGO = "1.3.6.1.5.5.2"


def negotiate_token(realm: Any, user: str, host: str = "localhost") -> bytes:
    """A fresh SPNEGO token of ``user`` (from its ccache) for ``HTTP@host``,
    made in this process with python-gssapi (far cheaper than a curl per
    request).  The process needs the realm's KRB5_CONFIG in its environment."""
    import gssapi

    creds = gssapi.Credentials(usage="initiate", store={"ccache": realm.ccache(user)})
    ctx = gssapi.SecurityContext(
        name=gssapi.Name(f"HTTP@{host}", gssapi.NameType.hostbased_service),
        creds=creds,
        usage="initiate",
        mech=gssapi.OID.from_int_seq(SPNEGO),
        flags=gssapi.RequirementFlag.mutual_authentication,
    )
    return bytes(ctx.step())


def request_bytes(
    method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"", close: bool = True
) -> bytes:
    """An HTTP/1.1 request (that closes its connection unless ``close`` is
    False), Content-Length set when there is a body."""
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost"] + ["Connection: close"] * close
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k in headers or {}):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class Answer:
    """What a raw exchange got: the status (None: the connection closed with no answer) and the body."""

    status: int | None
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def exchange(svc: Service, data: bytes, timeout: float = 30, context: ssl.SSLContext | None = None) -> Answer:
    """Send ``data`` over a new TLS connection and read until the server
    closes it (the request asks for that)."""
    raw = socket.create_connection(("127.0.0.1", svc.port), timeout=timeout)
    try:
        tls = (context or svc.tls()).wrap_socket(raw, server_hostname="localhost")
    except BaseException:
        raw.close()
        raise
    got = b""
    with tls:
        try:
            tls.sendall(data)
        except OSError:  # the server may answer and close before it has read everything
            pass
        try:
            while chunk := tls.recv(65536):
                got += chunk
        except (ssl.SSLError, ConnectionResetError):
            pass
    return parse_answer(got)


def parse_answer(got: bytes) -> Answer:
    if not got:
        return Answer(None, {}, b"")
    head, _, body = got.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return Answer(int(lines[0].split()[1]), headers, body)


class KeptAlive:
    """One client's connection, kept alive across requests (far cheaper
    than a TLS handshake each), made again whenever the server closed it."""

    def __init__(self, svc: Service, timeout: float = 60) -> None:
        self.svc, self.timeout, self.tls = svc, timeout, None
        self.buffer = b""

    def send(self, data: bytes) -> Answer:
        """``data`` must not ask to close; the answer is read by its Content-Length.
        A kept connection the server has closed meanwhile (it closes idle
        ones) is made again and the request sent once more."""
        for _ in range(2):
            reused = self.tls is not None
            if self.tls is None:
                raw = socket.create_connection(("127.0.0.1", self.svc.port), timeout=self.timeout)
                self.tls, self.buffer = self.svc.tls().wrap_socket(raw, server_hostname="localhost"), b""
            try:
                self.tls.sendall(data)
                answer = self._read()
            except OSError:
                answer = None
            if answer is None or answer.headers.get("connection", "").lower() == "close":
                self.close()
            if answer is not None or not reused:
                break
        return answer or Answer(None, {}, b"")

    def _read(self) -> Answer | None:
        assert self.tls is not None
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.tls.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        answer = parse_answer(head + b"\r\n\r\n")
        size = int(answer.headers.get("content-length", "0"))
        while len(rest) < size:
            chunk = self.tls.recv(65536)
            if not chunk:
                return None
            rest += chunk
        answer.body, self.buffer = rest[:size], rest[size:]
        return answer

    def close(self) -> None:
        if self.tls is not None:
            self.tls.close()
        self.tls = None


def pg_database(server: Any, name: str) -> tuple[str, str]:
    """A database for the service on a pgkit server, laid out as a
    department would: owned by a role of its own (the one that runs ``audit
    init``), and the service's role owning nothing.  (owner DSN, service DSN)."""
    owner, app = f"{name}_owner", f"{name}_app"
    owner_pw, app_pw = server.create_role(owner), server.create_role(app)
    server.create_database(name, owner=owner)
    return server.dsn_for(owner, owner_pw, name), server.dsn_for(app, app_pw, name)


def audit(config: Path, *args: str, owner_dsn: str | None = None) -> subprocess.CompletedProcess[str]:
    """``iam-sorry audit ARGS --config CONFIG`` as the administrator runs it
    (``init`` as the database's owner when ``owner_dsn`` is given)."""
    env = clean_env(HOME=str(config.parent), **({"IAM_SORRY_DB_OWNER": owner_dsn} if owner_dsn else {}))
    return subprocess.run(
        [sys.executable, str(SCRIPT), "audit", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def audit_init(config: Path, owner_dsn: str | None) -> subprocess.CompletedProcess[str]:
    return audit(config, "init", owner_dsn=owner_dsn)


def audit_verify(config: Path) -> subprocess.CompletedProcess[str]:
    return audit(config, "verify")


# -- what the tests of the running service share ----------------------------------


def admin(svc: Service, service: str = "iam") -> Any:
    """The fake account's administrator, for looking behind the service's back."""
    return aws_client(svc.moto_url, service)


def keys_of(svc: Service, user: str) -> list[str]:
    """The access keys AWS holds for ``user``, counted at moto."""
    return [k["AccessKeyId"] for k in admin(svc).list_access_keys(UserName=user)["AccessKeyMetadata"]]


def trail_of(svc: Service) -> list[dict[str, Any]]:
    """The service's audit records, read as ``iam-sorry audit`` does."""
    return iamsorry.open_audit(iamsorry.load_service_config(str(svc.config))).entries()


def call(svc: Service, user: str | None, action: str, body: Any) -> tuple[int, Any]:
    """POST /v1/ACTION as ``user`` (curl --negotiate): (status, JSON body)."""
    status, _, doc = svc.curl(user, f"/v1/{action}", body)
    return status, doc


def ensure_user(svc: Service, name: str) -> None:
    """IAM user ``name`` in sue's namespace, made by sue unless it is there already."""
    status, doc = call(svc, "sue", "create-user", {"user": name})
    assert status in (201, 409), doc


def mint_in_flight(shim: Any, request: Callable[[], Any], timeout: float = 30) -> tuple[threading.Thread, list[Any]]:
    """Run ``request`` (one that mints) in a thread; return the thread and
    the list its answer will be put in, once AWS has seen its
    CreateAccessKey: from then on the mint is under way."""
    answer: list[Any] = []
    worker = threading.Thread(target=lambda: answer.append(request()))
    worker.start()
    deadline = time.monotonic() + timeout
    while shim.calls["CreateAccessKey"] == 0 and worker.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if shim.calls["CreateAccessKey"] != 1:
        worker.join(180)
        raise AssertionError(f"{shim.calls['CreateAccessKey']} CreateAccessKey calls instead of one; {answer}")
    return worker, answer


def assert_nothing_stored(svc: Service, shown: list[str]) -> None:
    """None of ``shown`` (secrets, tokens) is in the service's SQLite audit
    store, its write-ahead log included, or in its log."""
    db = svc.folder / "audit" / "audit.db"
    stored = db.read_bytes() + Path(f"{db}-wal").read_bytes()
    log = svc.log_text()
    for secret in shown:
        assert secret.encode() not in stored, "a secret is in the audit store"
        assert secret not in log, "a secret is in the log"
