"""SSH-key sign-in to the department service: OpenSSH's allowed_signers and
SSHSIG (PROTOCOL.sshsig) read the way ``ssh-keygen -Y verify`` reads them,
proved against the real ssh-keygen and ssh-agent in both directions; then
the exchange end to end on the real server (challenge, signature, bearer
token) beside Kerberos, and an SSH-only server.  One server per module."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import servicekit
from conftest import assert_clean_error, iamsorry, run_bare, run_cli
from sshkit import Agent, make_key

REALM = "IAMSORRY.TEST"
SUE, ANN = f"sue@{REALM}", f"ann@{REALM}"
SHOWN: list[str] = []  # every token and signature this module handled: none may reach the log or the audit


# -- real OpenSSH helpers -------------------------------------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Unprotected keys for ssh-keygen -Y sign, of every type the service takes."""
    folder = tmp_path_factory.mktemp("keys")
    kinds = {
        "ed25519": ("ed25519", None),
        "rsa": ("rsa", 3072),
        "p256": ("ecdsa", 256),
        "p384": ("ecdsa", 384),
        "p521": ("ecdsa", 521),
        "other": ("ed25519", None),
        "bob": ("ed25519", None),
        "eve": ("ed25519", None),
    }
    return {name: make_key(folder, name, kind, bits, passphrase="") for name, (kind, bits) in kinds.items()}


def public(key: Path) -> str:
    """``keytype base64`` of a key, as allowed_signers wants it."""
    return " ".join(Path(f"{key}.pub").read_text().split()[:2])


def keygen_sign(key: Path, message: bytes, namespace: str = "iam-sorry", *options: str) -> str:
    """``ssh-keygen -Y sign -n NAMESPACE -f KEY`` over ``message``."""
    folder = key.parent / "signing"
    folder.mkdir(exist_ok=True)
    data = folder / "message"
    data.write_bytes(message)
    sig = Path(f"{data}.sig")
    sig.unlink(missing_ok=True)
    cmd = ["ssh-keygen", "-q", "-Y", "sign", "-n", namespace, "-f", str(key), *options, str(data)]
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return sig.read_text()


def keygen_verifies(folder: Path, allowed: str, principal: str, signature: str, message: bytes) -> bool:
    """``ssh-keygen -Y verify -f allowed_signers -I PRINCIPAL -n iam-sorry``."""
    (folder / "allowed").write_text(allowed)
    (folder / "sig").write_text(signature)
    cmd = [
        "ssh-keygen",
        "-Y",
        "verify",
        "-f",
        str(folder / "allowed"),
        "-I",
        principal,
        "-n",
        "iam-sorry",
        "-s",
        str(folder / "sig"),
    ]
    proc = subprocess.run(cmd, input=message, capture_output=True, timeout=30)
    return proc.returncode == 0


def service_verdict(folder: Path, allowed: str, principal: str | None, signature: str, message: bytes) -> str:
    """What the service's verifier says: "ok", or why not."""
    (folder / "allowed").write_text(allowed)
    signers = iamsorry.read_allowed_signers(str(folder / "allowed"), [REALM])
    try:
        sig = iamsorry.parse_sshsig(signature)
        got = iamsorry.admit_signature(signers, sig, message, principal, iamsorry.now())
    except iamsorry.SignatureRefused as exc:
        return str(exc)
    assert principal is None or got == principal
    return "ok"


def agent_sshsig(agent: Agent, key: Path, message: bytes, flags: int | None = None) -> str:
    """An SSHSIG made by the script's own agent client; ``flags`` forces an
    RSA hash (0: SHA-1, which nobody may accept)."""
    client = iamsorry._Agent(agent.sock)
    found = next(k for k in client.identities() if k.blob == iamsorry._read_pub(str(key)).blob)
    if flags is None:
        return iamsorry.sshsig_sign(client, found, message)
    sig = client.signature(found, iamsorry.sshsig_signed_data(message), flags)
    blob = b"SSHSIG" + (1).to_bytes(4, "big") + iamsorry._pack(found.blob, b"iam-sorry", b"", b"sha512", sig)
    return iamsorry.sshsig_armor(blob)


# -- the verifier against ssh-keygen ------------------------------------------------

MESSAGE = b"iam-sorry login v1 localhost AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


@pytest.mark.parametrize("kind", ["ed25519", "rsa", "p256", "p384", "p521"])
@pytest.mark.parametrize("hashalg", ["sha512", "sha256"])
def test_ssh_keygen_signatures_verify_in_the_service(
    keys: dict[str, Path], tmp_path: Path, kind: str, hashalg: str
) -> None:
    sig = keygen_sign(keys[kind], MESSAGE, "iam-sorry", "-O", f"hashalg={hashalg}")
    allowed = f"{SUE} {public(keys[kind])}\n"
    assert keygen_verifies(tmp_path, allowed, SUE, sig, MESSAGE)
    assert service_verdict(tmp_path, allowed, SUE, sig, MESSAGE) == "ok"
    assert service_verdict(tmp_path, allowed, None, sig, MESSAGE) == "ok"  # the principal found by the key
    assert "does not verify" in service_verdict(tmp_path, allowed, SUE, sig, MESSAGE + b"x")


def test_the_clients_signatures_verify_with_ssh_keygen(tmp_path: Path, agent: Agent) -> None:
    """The script's agent client signs (Ed25519; RSA with rsa-sha2-512) and
    ssh-keygen -Y verify accepts; an RSA SHA-1 signature both refuse."""
    folder = tmp_path / "client"
    ed, rsa = make_key(folder, "id_ed25519"), make_key(folder, "id_rsa", "rsa", 3072)
    agent.add(ed)
    agent.add(rsa)
    for key in (ed, rsa):
        sig = agent_sshsig(agent, key, MESSAGE)
        algorithm = iamsorry._ssh_string(iamsorry.parse_sshsig(sig).signature, 0)[0]
        assert algorithm == (b"ssh-ed25519" if key is ed else b"rsa-sha2-512")
        allowed = f"{SUE} {public(key)}\n"
        assert keygen_verifies(tmp_path, allowed, SUE, sig, MESSAGE), key
        assert service_verdict(tmp_path, allowed, SUE, sig, MESSAGE) == "ok"
    sha1 = agent_sshsig(agent, rsa, MESSAGE, flags=0)
    allowed = f"{SUE} {public(rsa)}\n"
    assert not keygen_verifies(tmp_path, allowed, SUE, sha1, MESSAGE)
    assert "refused (SHA-1?)" in service_verdict(tmp_path, allowed, SUE, sha1, MESSAGE)


#: allowed_signers lines (``{key}`` is the signer's, ``{other}`` another key),
#: the principal asked for, and whether it must admit the signature.
LINES = [
    ("sue@R {key}", SUE, True),
    ('sue@R valid-before="20200101" {key}', SUE, False),
    ('sue@R valid-after="29990101" {key}', SUE, False),
    ('sue@R valid-after="20200101Z",valid-before="29991231235959Z" {key}', SUE, True),
    ('sue@R valid-after="202001011200" {key} comment words', SUE, True),
    ('sue@R namespaces="git,iam-sorry" {key}', SUE, True),
    ('sue@R namespaces="*" {key}', SUE, True),
    ('sue@R namespaces="iam-*" {key}', SUE, True),
    ('sue@R NAMESPACES="iam-sorry" {key}', SUE, True),
    ("ann@R {key}", SUE, False),
    ('"ann@R,sue@R" {key}', SUE, True),
    ("ann@R,sue@R {key}", SUE, True),
    ("sue@R {other}", SUE, False),
    ('sue@R valid-before="20200101" {key}\nsue@R {key}', SUE, True),
    ("# sue@R {key}\n\nann@R {key}", SUE, False),
]


@pytest.mark.parametrize(("line", "principal", "admitted"), LINES)
def test_allowed_signers_means_what_it_means_to_ssh_keygen(
    keys: dict[str, Path], tmp_path: Path, line: str, principal: str, admitted: bool
) -> None:
    allowed = line.replace("@R", f"@{REALM}").format(key=public(keys["ed25519"]), other=public(keys["other"])) + "\n"
    sig = keygen_sign(keys["ed25519"], MESSAGE)
    assert keygen_verifies(tmp_path, allowed, principal, sig, MESSAGE) is admitted
    verdict = service_verdict(tmp_path, allowed, principal, sig, MESSAGE)
    assert (verdict == "ok") is admitted, verdict


def test_a_signature_for_another_namespace_is_refused(keys: dict[str, Path], tmp_path: Path) -> None:
    sig = keygen_sign(keys["ed25519"], MESSAGE, "git")
    allowed = f"{SUE} {public(keys['ed25519'])}\n"
    assert not keygen_verifies(tmp_path, allowed, SUE, sig, MESSAGE)
    assert "namespace 'git', not 'iam-sorry'" in service_verdict(tmp_path, allowed, SUE, sig, MESSAGE)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("sue@R cert-authority {key}", "cert-authority is not supported"),
        ('sue@R cert-authority,namespaces="iam-sorry" {key}', "cert-authority is not supported"),
        ("sue@R no-touch-required {key}", "unsupported option 'no-touch-required'"),
        ('sue@R namespaces="iam-sorry",verify-required {key}', "unsupported option 'verify-required'"),
        ("*@R {key}", "principal patterns (*@IAMSORRY.TEST) are not supported"),
        ("sue@R,!ann@R {key}", "principal patterns (!ann@IAMSORRY.TEST) are not supported"),
        ("sue@OTHER.REALM {key}", "is not user@REALM of a configured realm (IAMSORRY.TEST)"),
        ("sue {key}", "is not user@REALM of a configured realm"),
        ('sue@R valid-before="2020-01-01" {key}', "valid-before='2020-01-01' is not YYYYMMDD[HHMM[SS]][Z]"),
        ("sue@R namespaces= {key}", "option namespaces needs a value"),
        ('sue@R namespaces="iam-sorry {key}', "unterminated quote"),
        ("sue@R", "no key"),
        ("sue@R ssh-ed25519 AAAA!!!", "not valid base64 key data"),
        ("sue@R ssh-dss AAAAB3NzaC1kc3MAAAA", "ssh-dss: not a supported key type"),
        ("sue@R sk-ssh-ed25519@openssh.com AAAAGnNr", "FIDO (sk-) keys are not supported"),
        ("sue@R ssh-ed25519-cert-v01@openssh.com AAAAIHNz", "SSH certificates"),
        ("sue@R ssh-rsa {ed}", "the key says it is ssh-ed25519, not ssh-rsa"),
        ("sue@R ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAAQA=", "is damaged"),
    ],
)
def test_what_the_service_does_not_support_is_refused_clearly(
    keys: dict[str, Path], tmp_path: Path, line: str, message: str
) -> None:
    ed = public(keys["ed25519"])
    text = line.replace("@R", f"@{REALM}").format(key=ed, ed=ed.split()[1])
    path = tmp_path / "allowed_signers"
    path.write_text(f"# people\n{text}\n")
    with pytest.raises(iamsorry.UsageError) as caught:
        iamsorry.read_allowed_signers(str(path), [REALM])
    assert str(caught.value).startswith(f"{path}:2: ") and message in str(caught.value), caught.value


def test_a_small_rsa_key_is_refused(tmp_path: Path) -> None:
    key = make_key(tmp_path, "small", "rsa", 1024, passphrase="")
    (tmp_path / "allowed").write_text(f"{SUE} {public(key)}\n")
    with pytest.raises(iamsorry.UsageError, match="has 1024 bits; 2048..16384 are accepted"):
        iamsorry.read_allowed_signers(str(tmp_path / "allowed"), [REALM])


@pytest.mark.parametrize(
    ("name", "patterns", "matched"),
    [
        ("iam-sorry", ["iam-sorry"], True),
        ("iam-sorry", ["git"], False),
        ("iam-sorry", ["i?m-*"], True),
        ("iam-sorry", ["*", "!iam-*"], False),
        ("iam-sorry", ["!git"], False),
        ("iam-sorry", ["iam"], False),
        ("iam-sorry", ["IAM-SORRY"], False),
        ("iam-sorry", ["iam.sorry"], False),
    ],
)
def test_namespace_patterns_match_as_in_openssh(name: str, patterns: list[str], matched: bool) -> None:
    assert iamsorry.pattern_list_match(name, patterns) is matched


def test_a_challenge_is_good_once_and_only_while_young() -> None:
    state = iamsorry.SignInState(challenge_seconds=60, token_seconds=600)
    first, second = state.challenge("localhost"), state.challenge("localhost")
    assert first != second and first.startswith("iam-sorry login v1 localhost ")
    body = state.issued(first)
    assert body is not None and state.spend(body) and not state.spend(body)  # one-time use
    assert state.issued(first) is None
    tag = second.rsplit(" ", 1)[1]
    raw = base64.urlsafe_b64decode(tag)
    forgeries = [
        second.replace("localhost", "evil.example.org"),  # the host is under the MAC
        iamsorry.SignInState(60, 600).challenge("localhost"),  # another worker's (or instance's)
        second[:-2] + ("AA" if second[-2:] != "AA" else "BB"),
        second.replace(tag, base64.b64encode(raw).decode()) if "-" in tag or "_" in tag else second + " ",
        second.replace("v1", "v2"),
        "",
        "iam-sorry login v1 localhost " + "A" * 64,
    ]
    assert [state.issued(f) for f in forgeries] == [None] * len(forgeries)
    for _ in range(1000):
        state.challenge("localhost")
    assert len(state._spent) == 1  # issuing stores nothing: a flood of requests fills no memory
    assert state.issued(second) is not None
    key = iamsorry.SshKey(b"\0\0\0\x0bssh-ed25519")
    token = state.issue(SUE, "sue", key)
    assert state.session(token) is not None and state.session(token + "x") is None
    assert token not in repr(state.__dict__)  # kept by its hash only
    # On the real clock, with lifetimes of a second: a challenge grows too
    # old, and a token and the record of a spent challenge go away.
    short = iamsorry.SignInState(challenge_seconds=1, token_seconds=1)
    ageing, spent = short.challenge("localhost"), short.challenge("localhost")
    assert short.spend(base64.urlsafe_b64decode(spent.rsplit(" ", 1)[1])[:24])
    token = short.issue(SUE, "sue", key)
    deadline = time.monotonic() + 10
    while short.issued(ageing) is not None or short.session(token) is not None or short._spent:
        assert time.monotonic() < deadline, "the challenge, the token or the spent record outlived 10 s"
        time.sleep(0.05)


def test_the_client_signs_only_a_challenge_for_the_host_it_talks_to() -> None:
    good = "iam-sorry login v1 iam.example.edu " + "A" * 43
    assert iamsorry._checked_challenge("https://IAM.example.edu:8443", good) == good
    relayed = good.replace("iam.example.edu", "other.example.edu")
    with pytest.raises(iamsorry.BrokerError, match="asked to sign a sign-in to 'other.example.edu'"):
        iamsorry._checked_challenge("https://iam.example.edu:8443", relayed)
    for junk in (None, 7, "sign this", good + " more", good[:-1] + "!"):
        with pytest.raises(iamsorry.BrokerError, match="sent no sign-in challenge"):
            iamsorry._checked_challenge("https://iam.example.edu:8443", junk)


# -- the exchange on the real server, beside Kerberos -------------------------------


@pytest.fixture(scope="module")
def client_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sue's own key as a client keeps it: passphrase-protected, used through ssh-agent."""
    return make_key(tmp_path_factory.mktemp("client"), "id_ed25519")


def allowed_signers(keys: dict[str, Path], client_key: Path) -> str:
    return "".join(
        line.replace("@R", f"@{REALM}") + "\n"
        for line in (
            "# the department's people and their keys",
            f"sue@R {public(client_key)} sue's laptop",
            f"sue@R {public(keys['ed25519'])}",
            f"ann@R {public(keys['rsa'])}",
            f'bob@R valid-before="20200101Z" {public(keys["bob"])}',
            f'eve@R valid-after="29990101Z" {public(keys["eve"])}',
        )
    )


@pytest.fixture(scope="module")
def svc(
    krb_realm: Any, moto_url: str, tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path], client_key: Path
) -> Iterator[servicekit.Service]:
    """Both sign-ins: Kerberos (the keytab) and SSH keys (allowed_signers)."""
    servicekit.reset_aws(moto_url)
    folder = tmp_path_factory.mktemp("sshsig-service")
    service = servicekit.prepare(folder, krb_realm, moto_url, 'allowed_signers = "allowed_signers"')
    (folder / "allowed_signers").write_text(allowed_signers(keys, client_key))
    try:
        service.start()
        krb_realm.kinit("sue")
        status, _, doc = service.curl("sue", "/v1/create-user", {"user": "sue"})
        assert status == 201, doc
        yield service
    finally:
        service.stop()


def post(svc: servicekit.Service, path: str, body: Any, *args: str) -> tuple[int, dict[str, str], Any]:
    """An unauthenticated (or bearer) request: curl without --negotiate."""
    return svc.curl(None, path, body, *args, negotiate=False)


def bearer(token: str) -> tuple[str, str]:
    return ("-H", f"Authorization: Bearer {token}")


def challenge(svc: servicekit.Service) -> str:
    status, _, doc = post(svc, "/v1/login/nonce", {})
    assert status == 200 and doc["namespace"] == "iam-sorry" and doc["expires_in"] == 60, doc
    return str(doc["challenge"])


def sign_in(
    svc: servicekit.Service, key: Path, principal: str | None = None, namespace: str = "iam-sorry"
) -> tuple[int, dict[str, str], Any, dict[str, Any]]:
    """A challenge, signed by ssh-keygen -Y sign, sent back: (status, headers, answer, what was sent)."""
    text = challenge(svc)
    body = {"challenge": text, "signature": keygen_sign(key, text.encode(), namespace)}
    if principal:
        body["principal"] = principal
    status, headers, doc = post(svc, "/v1/login/ssh", body)
    SHOWN.append(body["signature"])
    if isinstance(doc, dict) and doc.get("token"):
        SHOWN.append(doc["token"])
    return status, headers, doc, body


def test_ssh_keygen_signs_in_and_the_token_works_beside_kerberos(
    svc: servicekit.Service, keys: dict[str, Path]
) -> None:
    status, _, doc, sent = sign_in(svc, keys["ed25519"])
    assert status == 200, doc
    assert (doc["principal"], doc["user"], doc["token_type"], doc["expires_in"]) == (SUE, "sue", "Bearer", 600)
    token = doc["token"]
    status, _, who = post(svc, "/v1/whoami", None, *bearer(token))
    assert status == 200 and (who["principal"], who["via"]) == (SUE, "ssh-key") and "sue" in who["namespaces"]
    status, _, creds = post(svc, "/v1/credentials", {"user": "sue", "hours": 1}, *bearer(token))
    assert status == 200 and svc.arn_of(creds).endswith(":user/iam-sorry/sue")
    SHOWN.extend([creds["SecretAccessKey"], creds["SessionToken"]])
    status, _, who = svc.curl("sue", "/v1/whoami")  # Kerberos, on the same server
    assert status == 200 and (who["principal"], who["via"]) == (SUE, "negotiate")
    status, headers, again = post(svc, "/v1/login/ssh", sent)  # the same signed challenge once more
    assert status == 401 and "already used" in again["error"] and "token" not in again
    assert headers["www-authenticate"] == 'Bearer realm="iam-sorry"'
    status, _, doc, _ = sign_in(svc, keys["rsa"])  # RSA (rsa-sha2-512, as ssh-keygen signs)
    assert status == 200 and doc["principal"] == ANN, doc


def test_concurrent_replays_of_one_signature_give_one_token(svc: servicekit.Service, keys: dict[str, Path]) -> None:
    text = challenge(svc)
    body = {"challenge": text, "signature": keygen_sign(keys["ed25519"], text.encode())}
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: post(svc, "/v1/login/ssh", body), range(8)))
    assert sorted(status for status, _, _ in answers) == [200] + [401] * 7
    SHOWN.extend(doc["token"] for status, _, doc in answers if status == 200)


def test_every_refused_sign_in_is_a_clear_4xx_and_no_token(svc: servicekit.Service, keys: dict[str, Path]) -> None:
    cases = [
        (sign_in(svc, keys["ed25519"], principal=ANN), 401, f"may not sign in as {ANN}"),
        (sign_in(svc, keys["bob"]), 401, "expired at 2020-01-01T00:00:00Z"),
        (sign_in(svc, keys["eve"]), 401, "is valid only after 2999-01-01T00:00:00Z"),
        (sign_in(svc, keys["ed25519"], namespace="git"), 401, "namespace 'git', not 'iam-sorry'"),
        (sign_in(svc, keys["other"]), 401, "is not in the service's allowed_signers"),
    ]
    first, second = challenge(svc), challenge(svc)
    crossed = {"challenge": first, "signature": keygen_sign(keys["ed25519"], second.encode())}
    made_up = "iam-sorry login v1 localhost " + "A" * 43
    forged = {"challenge": made_up, "signature": keygen_sign(keys["ed25519"], made_up.encode())}
    retried = {**cases[0][0][3], "principal": SUE}  # a challenge is spent by a failed attempt too
    for body, status, needle in [
        (crossed, 401, "does not verify"),
        (forged, 401, "unknown, expired or already used"),
        (retried, 401, "unknown, expired or already used"),
        ({"challenge": challenge(svc), "signature": "hello"}, 400, "not an armored SSH signature"),
        ({"signature": crossed["signature"]}, 400, '"challenge" and "signature"'),
        ({**crossed, "principal": 7}, 400, '"principal", if given'),
    ]:
        cases.append((post(svc, "/v1/login/ssh", body) + (body,), status, needle))
    for (got, headers, doc, _), status, needle in cases:
        assert (got, isinstance(doc, dict) and "token" in doc) == (status, False), doc
        assert needle in doc["error"], (needle, doc)
        if got == 401:
            assert headers["www-authenticate"] == 'Bearer realm="iam-sorry"' and "SSH key" in doc["hint"]
    assert post(svc, "/v1/login/nonce", None)[0] == 405
    status, headers, doc = post(svc, "/v1/whoami", None, *bearer("iss_" + "A" * 43))
    assert (
        status == 401 and "unknown or has expired" in doc["error"] and headers["www-authenticate"].startswith("Bearer")
    )
    status, headers, doc = post(svc, "/v1/whoami", None)  # no header at all: Kerberos is offered, as before
    assert status == 401 and headers["www-authenticate"] == "Negotiate"
    assert "Traceback" not in svc.log_text()


def test_a_challenge_names_only_a_host_the_certificate_covers(svc: servicekit.Service) -> None:
    status, _, doc = post(svc, "/v1/login/nonce", {}, "-H", "Host: evil.example.org")
    assert status == 400 and "this service is not 'evil.example.org'" in doc["error"]
    port = svc.url.rsplit(":", 1)[1]
    status, _, doc = post(svc, "/v1/login/nonce", {}, "-H", f"Host: 127.0.0.1:{port}")  # the certificate's address
    assert status == 200 and doc["challenge"].startswith("iam-sorry login v1 127.0.0.1 ")


def test_the_client_signs_in_through_its_agent_and_writes_nothing(
    svc: servicekit.Service, client_key: Path, agent: Agent, private_home: Path
) -> None:
    agent.add(client_key)
    env = svc.client_env(None, IAM_SORRY_SSH_KEY=str(client_key))  # no Kerberos ticket at all
    who = run_cli("--broker", svc.url, "--broker-login", "ssh", "--whoami", env=env)
    assert who.returncode == 0, who.stderr
    assert f"{SUE} (local user sue) at {svc.url}\nsigned in by: ssh-key\n" in who.stdout
    assert_clean_error(run_cli("--broker", svc.url, "--whoami", env=env), "no Kerberos ticket")
    proc = run_bare("--broker", svc.url, "--credential-process", "sue", env={**env, "IAM_SORRY_BROKER_LOGIN": "ssh"})
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert svc.arn_of(doc).endswith(":user/iam-sorry/sue")
    SHOWN.extend([doc["SecretAccessKey"], doc["SessionToken"]])
    assert not (private_home / ".aws").exists()  # credential_process mode writes nothing, the token neither
    assert sorted(p.name for p in private_home.iterdir()) == []


def test_client_failures_are_one_clear_line(
    svc: servicekit.Service, client_key: Path, keys: dict[str, Path], agent: Agent, tmp_path: Path
) -> None:
    env = svc.client_env(None, IAM_SORRY_SSH_KEY=str(client_key), IAM_SORRY_BROKER_LOGIN="ssh")
    args = ("--broker", svc.url, "--whoami")
    assert_clean_error(run_cli(*args, env=env), "ssh-agent will not sign with SHA256:", "ssh-add")
    stranger = make_key(tmp_path, "id_stranger")
    agent.add(stranger)
    proc = run_cli(*args, env={**env, "IAM_SORRY_SSH_KEY": str(stranger)})
    assert_clean_error(proc, "the broker did not accept your SSH-key sign-in: key SHA256:", "not in the service's")
    assert_clean_error(run_cli(*args, env={**env, "SSH_AUTH_SOCK": ""}), "needs ssh-agent (SSH_AUTH_SOCK is not set)")
    assert_clean_error(run_cli(*args, env={**env, "IAM_SORRY_BROKER_LOGIN": "pgp"}), "must be kerberos or ssh")
    assert_clean_error(run_cli(*args, "--broker-login", "pgp", env=env), "invalid choice: 'pgp'")


def test_removing_a_key_ends_its_sessions_and_a_broken_file_fails_closed(
    svc: servicekit.Service, keys: dict[str, Path]
) -> None:
    status, _, doc, _ = sign_in(svc, keys["ed25519"])
    assert status == 200, doc
    path, line = svc.folder / "allowed_signers", public(keys["ed25519"])
    original = path.read_text()
    try:
        path.write_text("".join(ln + "\n" for ln in original.splitlines() if line not in ln))
        status, _, gone = post(svc, "/v1/whoami", None, *bearer(doc["token"]))
        assert status == 401 and "no longer signs you in" in gone["error"], gone
        path.write_text(original + f"sue@{REALM} cert-authority {line}\n")
        status, _, broken, _ = sign_in(svc, keys["ed25519"])
        assert status == 503 and "allowed_signers cannot be used" in broken["error"], broken
        assert "cert-authority is not supported" in svc.log_text()
    finally:
        path.write_text(original)
    assert sign_in(svc, keys["ed25519"])[0] == 200  # no restart needed either way


def test_a_service_with_ssh_keys_alone(
    svc: servicekit.Service, keys: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    alone = servicekit.sibling(svc, tmp_path_factory.mktemp("ssh-only") / "svc")
    text = "".join(ln + "\n" for ln in alone.config.read_text().splitlines() if not ln.startswith("keytab"))
    alone.config.write_text(text.replace("[service]\n", '[service]\nallowed_signers = "allowed_signers"\n', 1))
    good = (svc.folder / "allowed_signers").read_text()
    (alone.folder / "allowed_signers").write_text(
        good + f'sue@{REALM} namespaces="iam-sorry",no-touch-required {public(keys["other"])}\n'
    )
    failed = run_cli("serve", "--config", str(alone.config), "--check", env=alone.server_env())
    assert_clean_error(failed, "allowed_signers:7: unsupported option 'no-touch-required'")
    (alone.folder / "allowed_signers").write_text(good)
    check = run_cli("serve", "--config", str(alone.config), "--check", env=alone.server_env())
    assert check.returncode == 0, check.stderr
    assert "✓ Kerberos sign-in: off (no keytab)\n" in check.stdout
    assert "allowed_signers" in check.stdout and "5 key(s) for 4 principal(s)" in check.stdout
    try:
        alone.start()
        status, headers, doc = alone.curl("sue", "/v1/whoami")  # a ticket is no use here
        assert status == 401 and headers["www-authenticate"] == 'Bearer realm="iam-sorry"', doc
        status, _, doc, _ = sign_in(alone, keys["ed25519"])
        assert status == 200, doc
        status, _, who = post(alone, "/v1/whoami", None, *bearer(doc["token"]))
        assert status == 200 and who["via"] == "ssh-key"
    finally:
        alone.stop()
    assert "Traceback" not in alone.log_text()


def test_the_audit_says_how_each_person_signed_in_and_holds_no_token(svc: servicekit.Service) -> None:
    verify = servicekit.audit(svc.config, "verify")
    assert verify.returncode == 0 and verify.stdout.startswith("audit trail intact: "), verify.stderr
    listed = servicekit.audit(svc.config, "list", "--json")
    entries = json.loads(listed.stdout)
    signed_in = [e for e in entries if e["action"] == "login/ssh" and e["status"] == 200]
    assert signed_in and all(e["via"] == "ssh-key" and e["signer"].startswith("SHA256:") for e in signed_in)
    assert {e["principal"] for e in signed_in} == {SUE, ANN}
    refused = [e for e in entries if e["action"] == "login/ssh" and e["status"] == 401]
    assert any("expired" in e["result"] and e["signer"] for e in refused)
    by_token = [e for e in entries if e["action"] == "credentials" and e["via"] == "ssh-key"]
    assert by_token and by_token[0]["principal"] == SUE and by_token[0]["signer"] == signed_in[0]["signer"]
    assert any(e["action"] == "whoami" and e["via"] == "negotiate" for e in entries)
    assert len(SHOWN) > 10
    bodies = ["".join(s.splitlines()[1:-1]) if s.startswith("-----BEGIN") else s for s in SHOWN]  # armor off
    servicekit.assert_nothing_stored(svc, bodies)
    with sqlite3.connect(svc.folder / "audit" / "audit.db") as conn:
        assert conn.execute("SELECT count(*) FROM audit").fetchone()[0] == len(entries)


def test_an_allowed_signers_file_others_may_write_is_refused(keys: dict[str, Path], tmp_path: Path) -> None:
    """Whoever may write the file may add their key as anyone: as sue, say."""
    path = tmp_path / "allowed_signers"
    path.write_text(f"{SUE} {public(keys['ed25519'])}\n")
    path.chmod(0o666)
    with pytest.raises(iamsorry.UsageError, match=r"may be written by group or others \(mode 666\)"):
        iamsorry.read_allowed_signers(str(path), [REALM])
    path.chmod(0o644)
    assert len(iamsorry.read_allowed_signers(str(path), [REALM])) == 1
    os.chown(path, 65534, 65534)  # another local user's file (the tests run as root)
    with pytest.raises(iamsorry.UsageError, match="belongs to uid 65534: only root or the service's user"):
        iamsorry.read_allowed_signers(str(path), [REALM])
    os.chown(path, 0, 0)
    link = tmp_path / "link"
    link.symlink_to(path)
    with pytest.raises(iamsorry.UsageError, match="cannot read allowed_signers"):
        iamsorry.read_allowed_signers(str(link), [REALM])
    watched = iamsorry.AllowedSigners(str(path), [REALM])
    assert len(watched.current()) == 1
    path.chmod(0o666)  # while the service runs: SSH-key sign-in fails closed
    with pytest.raises(iamsorry.UsageError, match="may be written by group or others"):
        watched.current()


@pytest.mark.parametrize(
    ("principal", "message"),
    [
        ("s" * 58 + "@" + REALM, "can never sign in: AWS takes at most 64 characters"),  # 72 characters
        ("süe@" + REALM, "can never sign in"),
        ("sue\u0661@" + REALM, "can never sign in"),  # an Arabic-Indic digit: \d and \w take it
    ],
)
def test_a_principal_the_service_could_never_map_is_refused_when_read(
    keys: dict[str, Path], tmp_path: Path, principal: str, message: str
) -> None:
    path = tmp_path / "allowed_signers"
    path.write_text(f"{SUE} {public(keys['ed25519'])}\n{principal} {public(keys['other'])}\n")
    with pytest.raises(iamsorry.UsageError) as caught:
        iamsorry.read_allowed_signers(str(path), [REALM])
    assert str(caught.value).startswith(f"{path}:2: principal ") and message in str(caught.value)


@pytest.mark.parametrize("namespaces", ["git", "*,!iam-sorry", "!iam-sorry"])
def test_a_line_for_other_namespaces_only_is_refused_when_read(
    keys: dict[str, Path], tmp_path: Path, namespaces: str
) -> None:
    """ssh-keygen would never admit its key for iam-sorry; the service
    says so once, when the file is read, not at each sign-in."""
    line = f'{SUE} namespaces="{namespaces}" {public(keys["ed25519"])}\n'
    assert not keygen_verifies(tmp_path, line, SUE, keygen_sign(keys["ed25519"], MESSAGE), MESSAGE)
    path = tmp_path / "allowed_signers"
    path.write_text(line)
    with pytest.raises(iamsorry.UsageError) as caught:
        iamsorry.read_allowed_signers(str(path), [REALM])
    assert str(caught.value) == f"{path}:1: namespaces={namespaces} does not admit iam-sorry"


@pytest.mark.parametrize("kind", ["ed25519", "p256"])
def test_a_signature_with_trailing_bytes_is_refused(keys: dict[str, Path], tmp_path: Path, kind: str) -> None:
    """As by ssh-keygen: bytes after the signature (or, for ECDSA, after
    its r and s) are refused, not ignored."""
    good = iamsorry.parse_sshsig(keygen_sign(keys[kind], MESSAGE))
    alg, pos = iamsorry._ssh_string(good.signature, 0)
    raw, _ = iamsorry._ssh_string(good.signature, pos)
    signature = good.signature + b"\0\0\0\0" if kind == "ed25519" else iamsorry._pack(alg, raw + b"\0\0\0\0")
    blob = b"SSHSIG" + (1).to_bytes(4, "big") + iamsorry._pack(good.key.blob, b"iam-sorry", b"", b"sha512", signature)
    armored = iamsorry.sshsig_armor(blob)
    allowed = f"{SUE} {public(keys[kind])}\n"
    assert keygen_verifies(tmp_path, allowed, SUE, keygen_sign(keys[kind], MESSAGE), MESSAGE)
    assert not keygen_verifies(tmp_path, allowed, SUE, armored, MESSAGE)
    assert "does not verify" in service_verdict(tmp_path, allowed, SUE, armored, MESSAGE)
