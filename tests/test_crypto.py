"""SSH keys and agent-bound encryption: only the private key can open it."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import assert_clean_error, iamsorry, run_cli, run_in_pty
from sshkit import PASSPHRASE, Agent, change_passphrase, make_key

MANAGER = "[sue-mgr]\naws_access_key_id = AKIAMANAGERKEY000001\naws_secret_access_key = manager/secret+KEY\n"


def _creds(home: Path, text: str = MANAGER) -> Path:
    p = home / ".aws" / "credentials"
    p.parent.mkdir(exist_ok=True)
    p.write_text(text)
    p.chmod(0o600)
    return p


def _sealed(home: Path) -> dict[str, str]:
    return dict(iamsorry.read_aws_credentials()["sue-mgr"])


def test_encrypt_ed25519_through_agent_and_decrypt(private_home: Path, ed25519: Path) -> None:
    path = _creds(private_home)
    proc = run_cli("--profile", "sue-mgr", "--encrypt")
    assert proc.returncode == 0, proc.stderr
    values = _sealed(private_home)
    fp = iamsorry.resolve_ssh_key().fingerprint
    for field in ("aws_access_key_id", "aws_secret_access_key"):
        assert values[field].startswith(f"__encrypted__:v2:{fp[7:]}:")
    assert "AKIAMANAGERKEY000001" not in path.read_text()
    shown = run_cli("--show-decrypted", "sue-mgr")
    assert shown.stdout == MANAGER
    # Idempotent: a second --encrypt leaves the sealed values alone.
    assert run_cli("--profile", "sue-mgr", "--encrypt").returncode == 0
    assert _sealed(private_home) == values


def _ssh_str(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


@contextmanager
def planted_agent(path: Path, blob: bytes) -> Iterator[Path]:
    """An "agent" someone else runs on a socket the victim's SSH_AUTH_SOCK
    names: it lists the victim's public key and answers every sign request
    with bytes it chose."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()

    def answer(conn: socket.socket) -> None:
        with conn:
            while len(head := conn.recv(4)) == 4:
                request = conn.recv(struct.unpack(">I", head)[0])
                if request[:1] == b"\x0b":  # identities
                    reply = b"\x0c" + struct.pack(">I", 1) + _ssh_str(blob) + _ssh_str(b"victim")
                else:  # a signature of the attacker's choosing
                    reply = b"\x0e" + _ssh_str(_ssh_str(b"ssh-ed25519") + _ssh_str(b"\x42" * 64))
                conn.sendall(_ssh_str(reply))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:  # closed: the test is over
                return
            answer(conn)

    worker = threading.Thread(target=serve, daemon=True)
    worker.start()
    try:
        yield path
    finally:
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        worker.join(10)


def test_an_agent_that_cannot_sign_for_the_key_is_refused(private_home: Path, ed25519: Path, tmp_path: Path) -> None:
    """A stale forwarded SSH_AUTH_SOCK taken over by another user: if its
    made-up "signature" were used, the sealing secret would be one it knows."""
    path = _creds(private_home)
    before = path.read_text()
    blob = base64.b64decode(Path(f"{ed25519}.pub").read_text().split()[1])
    with planted_agent(tmp_path / "planted.sock", blob) as sock:
        proc = run_cli("--profile", "sue-mgr", "--encrypt", env={"SSH_AUTH_SOCK": str(sock)})
    fp = iamsorry.resolve_ssh_key().fingerprint
    assert_clean_error(proc, f"answered with a signature that is not by {fp}")
    assert path.read_text() == before


def test_rsa_3072_is_accepted_and_rsa_2048_refused(private_home: Path, ssh_dir: Path, agent) -> None:
    _creds(private_home)
    rsa = make_key(ssh_dir, "id_rsa", "rsa", 3072)
    agent.add(rsa)
    assert run_cli("--profile", "sue-mgr", "--encrypt", "--ssh-key", str(rsa)).returncode == 0
    assert run_cli("--show-decrypted", "sue-mgr", "--ssh-key", str(rsa)).stdout == MANAGER
    weak = make_key(ssh_dir, "id_rsa2k", "rsa", 2048)
    _creds(private_home)
    assert_clean_error(run_cli("--profile", "sue-mgr", "--encrypt", "--ssh-key", str(weak)), "2048 bits")


def test_encrypt_with_another_key_moves_the_seal_to_it(private_home: Path, ed25519: Path, ssh_dir: Path, agent) -> None:
    """Moving off a key: --encrypt --ssh-key NEW re-seals what the old key
    sealed (the old key opens it), instead of saying so and leaving it."""
    path = _creds(private_home)
    assert run_cli("--profile", "sue-mgr", "--encrypt").returncode == 0
    rsa = make_key(ssh_dir, "id_rsa", "rsa", 3072)
    agent.add(rsa)
    moved = run_cli("--profile", "sue-mgr", "--encrypt", "--ssh-key", str(rsa))
    assert moved.returncode == 0, moved.stderr
    fp = iamsorry.resolve_ssh_key(str(rsa)).fingerprint
    assert all(v.startswith(f"__encrypted__:v2:{fp[7:]}:") for f, v in _sealed(private_home).items() if "key" in f)
    assert run_cli("--show-decrypted", "sue-mgr", "--ssh-key", str(rsa)).stdout == MANAGER
    third = make_key(ssh_dir, "id_third")
    agent.remove_all()
    agent.add(third)  # the rsa key gone from the agent, and no terminal: its seal cannot be opened
    before = path.read_text()
    assert_clean_error(run_cli("--profile", "sue-mgr", "--encrypt", "--ssh-key", str(third)), f"the key {fp} is not")
    assert path.read_text() == before


def test_agent_and_passphrase_give_the_same_signature(
    private_home: Path, ed25519: Path, agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = iamsorry.resolve_ssh_key()
    via_agent = iamsorry._Agent(agent.sock).sign(key, iamsorry._KDF_CHALLENGE)
    monkeypatch.setattr("getpass.getpass", lambda prompt="": PASSPHRASE)
    via_file = iamsorry._sign_locally(key.fingerprint, str(ed25519))
    assert via_agent is not None and len(via_agent) == 64
    assert via_agent == via_file


def test_rsa_agent_and_passphrase_give_the_same_signature(
    private_home: Path, ssh_dir: Path, agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    rsa = make_key(ssh_dir, "id_rsa", "rsa", 3072)
    agent.add(rsa)
    key = iamsorry.resolve_ssh_key(str(rsa))
    monkeypatch.setattr("getpass.getpass", lambda prompt="": PASSPHRASE)
    assert iamsorry._Agent(agent.sock).sign(key, iamsorry._KDF_CHALLENGE) == iamsorry._sign_locally(
        key.fingerprint, str(rsa)
    )


def test_changed_passphrase_still_decrypts(private_home: Path, ed25519: Path, agent) -> None:
    _creds(private_home)
    assert run_cli("--profile", "sue-mgr", "--encrypt").returncode == 0
    change_passphrase(ed25519, PASSPHRASE, "a brand new passphrase")
    agent.remove_all()
    agent.add(ed25519, passphrase="a brand new passphrase")
    assert run_cli("--show-decrypted", "sue-mgr").stdout == MANAGER


def test_tampered_and_swapped_ciphertexts_are_rejected(private_home: Path, ed25519: Path) -> None:
    _creds(private_home)
    assert run_cli("--profile", "sue-mgr", "--encrypt").returncode == 0
    values = _sealed(private_home)
    key_id, secret = values["aws_access_key_id"], values["aws_secret_access_key"]
    raw = bytearray(base64.b64decode(key_id.rsplit(":", 1)[1]))
    raw[-20] ^= 1
    flipped = key_id.rsplit(":", 1)[0] + ":" + base64.b64encode(bytes(raw)).decode()
    for text in (
        MANAGER.replace("AKIAMANAGERKEY000001", flipped).replace("manager/secret+KEY", secret),
        MANAGER.replace("AKIAMANAGERKEY000001", secret).replace("manager/secret+KEY", key_id),
    ):
        _creds(private_home, text)
        proc = run_cli("--show-decrypted", "sue-mgr")
        assert_clean_error(proc, "integrity check")
        assert "AKIAMANAGERKEY000001" not in proc.stdout + proc.stderr


def test_unprotected_key_is_refused_and_nothing_changes(private_home: Path, ssh_dir: Path, agent) -> None:
    path = _creds(private_home)
    key = make_key(ssh_dir, passphrase="")
    agent.add(key, passphrase="")
    proc = run_cli("--profile", "sue-mgr", "--encrypt")
    assert_clean_error(proc, "not passphrase-protected", "ssh-keygen -p")
    assert path.read_text() == MANAGER


def test_ecdsa_and_sk_keys_are_refused_with_reasons(private_home: Path, ssh_dir: Path) -> None:
    _creds(private_home)
    ecdsa = make_key(ssh_dir, "id_ecdsa", "ecdsa")
    assert_clean_error(run_cli("--profile", "sue-mgr", "--encrypt", "--ssh-key", str(ecdsa)), "randomised")
    # A FIDO key needs hardware to create; its public half is enough to be refused.
    blob = iamsorry._pack(b"sk-ssh-ed25519@openssh.com", b"\x01" * 32, b"ssh:")
    sk = ssh_dir / "id_ed25519_sk"
    sk.write_text("private part lives on the token\n")
    Path(str(sk) + ".pub").write_text(f"sk-ssh-ed25519@openssh.com {base64.b64encode(blob).decode()} me\n")
    assert_clean_error(run_cli("--profile", "sue-mgr", "--encrypt", "--ssh-key", str(sk)), "counter")


def test_private_key_protection_detection(ssh_dir: Path) -> None:
    protected, plain = make_key(ssh_dir, "a"), make_key(ssh_dir, "b", passphrase="")
    assert iamsorry.private_key_is_protected(protected.read_bytes())
    assert not iamsorry.private_key_is_protected(plain.read_bytes())
    pem = make_key(ssh_dir, "c", "rsa", 3072)
    subprocess.run(
        ["ssh-keygen", "-q", "-p", "-m", "PEM", "-P", PASSPHRASE, "-N", PASSPHRASE, "-f", str(pem)],
        check=True,
        capture_output=True,
    )
    assert b"ENCRYPTED" in pem.read_bytes()
    assert iamsorry.private_key_is_protected(pem.read_bytes())


def test_legacy_kdf_over_a_v2_value_fails(private_home: Path, ed25519: Path) -> None:
    """The 0.2.x attack: derive the key from the key file bytes alone."""
    _creds(private_home)
    assert run_cli("--profile", "sue-mgr", "--encrypt").returncode == 0
    value = _sealed(private_home)["aws_access_key_id"]
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    raw = base64.b64decode(value.rsplit(":", 1)[1])
    attacker_key = iamsorry.legacy_key(ed25519.read_bytes())
    for nonce_at in (0, 16):  # as 0.2.x laid it out, and at v2's offset
        with pytest.raises(InvalidTag):
            AESGCM(attacker_key).decrypt(raw[nonce_at : nonce_at + 12], raw[nonce_at + 12 :], None)
    with pytest.raises(iamsorry.CryptoError):
        iamsorry.open_legacy("__encrypted__:" + value.rsplit(":", 1)[1], str(ed25519))


def _legacy_seal(plain: str, key_file: Path) -> str:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(12)
    ct = AESGCM(iamsorry.legacy_key(key_file.read_bytes())).encrypt(nonce, plain.encode(), None)
    return "__encrypted__:" + base64.b64encode(nonce + ct).decode()


def test_legacy_values_decrypt_warn_and_migrate(private_home: Path, ed25519: Path) -> None:
    legacy = MANAGER.replace("AKIAMANAGERKEY000001", _legacy_seal("AKIAMANAGERKEY000001", ed25519)).replace(
        "manager/secret+KEY", _legacy_seal("manager/secret+KEY", ed25519)
    )
    _creds(private_home, legacy)
    shown = run_cli("--show-decrypted", "sue-mgr")
    assert shown.stdout == MANAGER
    assert shown.stderr.count("weak 0.2.x encryption") == 1
    assert "0.2.x" in run_cli("--show-encrypted", "sue-mgr").stdout
    assert run_cli("--profile", "sue-mgr", "--encrypt").returncode == 0
    assert all(v.startswith("__encrypted__:v2:") for k, v in _sealed(private_home).items() if k.startswith("aws_"))
    again = run_cli("--show-decrypted", "sue-mgr")
    assert again.stdout == MANAGER and "weak" not in again.stderr


def test_no_agent_and_no_terminal_is_a_clear_error(
    private_home: Path, ed25519: Path, agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    _creds(private_home)
    assert run_cli("--profile", "sue-mgr", "--encrypt").returncode == 0
    monkeypatch.delenv("SSH_AUTH_SOCK")
    proc = run_cli("--eval", "sue-mgr")
    assert_clean_error(proc, "no ssh-agent", "no terminal", "ssh-add")
    assert proc.stdout == ""


def test_key_missing_from_agent_names_fingerprint(private_home: Path, ed25519: Path, agent) -> None:
    _creds(private_home)
    assert run_cli("--profile", "sue-mgr", "--encrypt").returncode == 0
    agent.remove_all()
    other = make_key(private_home / "elsewhere", "other")
    agent.add(other)
    fp = iamsorry.resolve_ssh_key().fingerprint
    assert_clean_error(run_cli("--eval", "sue-mgr"), f"the key {fp} is not in ssh-agent (ssh-add {ed25519})")


def test_locked_agent_has_its_own_message(private_home: Path, ed25519: Path, agent) -> None:
    _creds(private_home)
    assert run_cli("--profile", "sue-mgr", "--encrypt").returncode == 0
    agent.lock()
    assert_clean_error(run_cli("--eval", "sue-mgr"), "locked", "ssh-add -X")


def test_destination_constrained_key_refusal(private_home: Path, ssh_dir: Path, agent) -> None:
    key = make_key(ssh_dir)
    host = make_key(ssh_dir / "host", "host_key", passphrase="")
    known = ssh_dir / "known_hosts_test"
    known.write_text("somehost.example " + Path(str(host) + ".pub").read_text())
    agent.add(key, "-H", str(known), "-h", "somehost.example")
    _creds(private_home)
    proc = run_cli("--profile", "sue-mgr", "--encrypt")
    assert_clean_error(proc, "refused to sign", "destination-constrained")


def test_agent_socket_gone(private_home: Path, ed25519: Path, agent) -> None:
    _creds(private_home)
    assert run_cli("--profile", "sue-mgr", "--encrypt").returncode == 0
    agent.stop()
    assert agent.wait_gone(), f"ssh-agent {agent.pid} still runs after SIGTERM"
    assert_clean_error(run_cli("--eval", "sue-mgr"), "is gone")


def test_forwarded_agent_key_without_a_file_is_allowed(
    private_home: Path, ssh_dir: Path, agent, tmp_path: Path
) -> None:
    elsewhere = make_key(tmp_path / "laptop", "id_ed25519")
    agent.add(elsewhere)
    _creds(private_home)
    proc = run_cli("--profile", "sue-mgr", "--encrypt")  # default ~/.ssh/id_ed25519 does not exist here
    assert proc.returncode == 0, proc.stderr
    assert "forwarded agent" in proc.stderr
    assert run_cli("--show-decrypted", "sue-mgr").stdout == MANAGER


def test_show_encrypted_needs_no_agent(
    private_home: Path, ed25519: Path, agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    _creds(private_home)
    assert run_cli("--profile", "sue-mgr", "--encrypt").returncode == 0
    fp = iamsorry.resolve_ssh_key().fingerprint
    monkeypatch.delenv("SSH_AUTH_SOCK")
    proc = run_cli("--show-encrypted", "sue-mgr")
    assert proc.returncode == 0
    assert f"# sealed for SSH key {fp}" in proc.stdout
    assert "AKIAMANAGERKEY000001" not in proc.stdout


def test_eval_of_sealed_profile_exports_plaintext(private_home: Path, ed25519: Path) -> None:
    _creds(private_home)
    assert run_cli("--profile", "sue-mgr", "--encrypt").returncode == 0
    proc = run_cli("--eval", "sue-mgr", "--shell", "sh")
    assert proc.stdout.splitlines()[:3] == [
        "export AWS_ACCESS_KEY_ID='AKIAMANAGERKEY000001'",
        "export AWS_SECRET_ACCESS_KEY='manager/secret+KEY'",
        "unset AWS_SESSION_TOKEN",
    ]


def test_lazy_decryption_reads_without_the_agent(
    private_home: Path, ed25519: Path, agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    _creds(private_home, MANAGER + "[plain]\naws_access_key_id = AKIAPLAINPLAINPLAIN1\naws_secret_access_key = p\n")
    assert run_cli("--profile", "sue-mgr", "--encrypt").returncode == 0
    monkeypatch.setenv("SSH_AUTH_SOCK", "/nonexistent/agent.sock")
    profiles = iamsorry.read_aws_credentials(auto_decrypt=True)  # must not touch the agent
    assert profiles["plain"]["aws_access_key_id"] == "AKIAPLAINPLAINPLAIN1"
    assert "sealed" not in repr(profiles["sue-mgr"]) and "AKIA" not in repr(profiles["sue-mgr"])
    with pytest.raises(iamsorry.AgentError):
        profiles["sue-mgr"]["aws_access_key_id"]
    monkeypatch.setenv("SSH_AUTH_SOCK", agent.sock)
    assert profiles["sue-mgr"]["aws_access_key_id"] == "AKIAMANAGERKEY000001"
    assert "AKIAMANAGERKEY000001" not in (private_home / ".aws" / "credentials").read_text()


def test_passphrase_prompt_under_a_pty(private_home: Path, ed25519: Path, agent) -> None:
    _creds(private_home)
    assert run_cli("--profile", "sue-mgr", "--encrypt").returncode == 0
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    status, shown = run_in_pty(["--show-decrypted", "sue-mgr"], env, ["wrong one", PASSPHRASE])
    assert status == 0, shown
    assert "Wrong passphrase" in shown
    assert "aws_access_key_id = AKIAMANAGERKEY000001" in shown


def test_three_wrong_passphrases_give_up(private_home: Path, ed25519: Path) -> None:
    _creds(private_home)
    assert run_cli("--profile", "sue-mgr", "--encrypt").returncode == 0
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    status, shown = run_in_pty(["--show-decrypted", "sue-mgr"], env, ["a", "b", "c"])
    assert status != 0
    assert "wrong passphrase for" in shown and "(3 attempts)" in shown and "Traceback" not in shown
    assert shown.count("Enter passphrase for") == 3
    assert shown.count("Wrong passphrase, try again.") == 2  # after the third, no "try again"


def test_encrypt_refuses_default_with_the_seed_message(private_home: Path, ed25519: Path) -> None:
    _creds(private_home, "[default]\naws_access_key_id = AKIAXXXXXXXXXXXXXXX1\naws_secret_access_key = s\n")
    assert_clean_error(run_cli("--profile", "default", "--encrypt"), "Cannot encrypt 'default' profile")
    assert_clean_error(run_cli("--encrypt", env={"AWS_PROFILE": "default"}), "Cannot encrypt 'default' profile")


# -- known-answer vectors: the sealed format, pinned ---------------------------
VECTORS = Path(__file__).resolve().parent / "vectors"
KAT = json.loads((VECTORS / "sealed.json").read_text())["vectors"]
# Written out here, not read from the script: a changed challenge re-keys every sealed file.
KDF_CHALLENGE = b"iam-sorry/v2 key derivation"


def _vector_secret(name: str) -> bytes:
    """The signature of the challenge, made here from the committed private key
    with cryptography alone (Ed25519 and PKCS#1 v1.5 are deterministic)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

    key = serialization.load_ssh_private_key((VECTORS / name).read_bytes(), PASSPHRASE.encode())
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(KDF_CHALLENGE)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 3072
    return key.sign(KDF_CHALLENGE, padding.PKCS1v15(), hashes.SHA256())


@pytest.mark.parametrize("name", sorted(KAT))
def test_known_answer_vectors_open_forever(name: str) -> None:
    """Values sealed by 0.3.0 open with the committed key; a change to the KDF,
    HKDF info, AAD or byte layout that would strand yesterday's files fails here."""
    vector = KAT[name]
    pub = iamsorry._read_pub(str(VECTORS / name))
    assert pub is not None and pub.fingerprint == vector["fingerprint"]
    secret = _vector_secret(name)
    for field, plain in vector["plaintext"].items():
        sealed = vector["sealed"][field]
        assert sealed.startswith("__encrypted__:v2:" + vector["fingerprint"][len("SHA256:") :] + ":")
        assert iamsorry.sealed_fingerprint(sealed) == vector["fingerprint"]
        assert iamsorry.open_sealed(sealed, field, secret) == plain


@pytest.mark.parametrize("name", sorted(KAT))
def test_known_answer_vectors_open_through_the_cli_and_a_real_agent(
    private_home: Path, ssh_dir: Path, agent, name: str
) -> None:
    vector = KAT[name]
    key = ssh_dir / name
    shutil.copy(VECTORS / name, key)
    shutil.copy(VECTORS / f"{name}.pub", f"{key}.pub")
    key.chmod(0o600)  # git does not keep modes; ssh-add refuses a readable key
    agent.add(key)
    sealed = "".join(f"{field} = {value}\n" for field, value in vector["sealed"].items())
    _creds(private_home, f"[vec]\n{sealed}")
    proc = run_cli("--show-decrypted", "vec", "--ssh-key", str(key))
    plain = "".join(f"{field} = {value}\n" for field, value in vector["plaintext"].items())
    assert (proc.returncode, proc.stdout) == (0, f"[vec]\n{plain}"), proc.stderr


def test_two_seals_of_one_value_differ_in_salt_nonce_and_ciphertext() -> None:
    fp, secret = KAT["ed25519"]["fingerprint"], b"\x07" * 64
    values = [iamsorry.seal("the same secret", "aws_secret_access_key", fp, secret) for _ in range(2)]
    first, second = (base64.b64decode(v.rsplit(":", 1)[1]) for v in values)
    assert len(first) == len(second) == 16 + 12 + len("the same secret") + 16
    assert first[:16] != second[:16], "salt reused"
    assert first[16:28] != second[16:28], "nonce reused"
    assert first[28:] != second[28:], "ciphertext repeated"
    assert [iamsorry.open_sealed(v, "aws_secret_access_key", secret) for v in values] == ["the same secret"] * 2


def test_a_value_relabelled_with_another_keys_fingerprint_fails() -> None:
    """The fingerprint is bound into the AAD: claiming a value for another
    key fails with that key's secret and with the original one."""
    ed, rsa, mine = KAT["ed25519"]["fingerprint"], KAT["rsa3072"]["fingerprint"], _vector_secret("ed25519")
    sealed = iamsorry.seal("sue's secret", "aws_secret_access_key", ed, mine)
    assert iamsorry.open_sealed(sealed, "aws_secret_access_key", mine) == "sue's secret"
    relabelled = sealed.replace(ed[7:], rsa[7:])
    assert iamsorry.sealed_fingerprint(relabelled) == rsa
    for secret in (_vector_secret("rsa3072"), mine):
        with pytest.raises(iamsorry.CryptoError, match="integrity check"):
            iamsorry.open_sealed(relabelled, "aws_secret_access_key", secret)


def test_unreadable_key_file_is_an_ssh_key_error(tmp_path: Path) -> None:
    with pytest.raises(iamsorry.SshKeyError, match="cannot read SSH key"):
        iamsorry._load_private_key(str(tmp_path / "no-such-key"), KAT["ed25519"]["fingerprint"])


def _vector_keys(folder: Path, *names: str) -> dict[str, Path]:
    """Copies of the committed vector keys (and .pub), mode 0600 as ssh-add wants."""
    out = {}
    for name in names:
        key = folder / name
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(VECTORS / name, key)
        shutil.copy(VECTORS / f"{name}.pub", f"{key}.pub")
        key.chmod(0o600)
        out[name] = key
    return out


@pytest.mark.parametrize("order", [("rsa3072", "ed25519"), ("ed25519", "rsa3072")])
def test_the_agent_signs_with_the_key_that_sealed_the_value(
    private_home: Path, ssh_dir: Path, agent, order: tuple[str, str]
) -> None:
    """An agent holding several keys: the one whose fingerprint the value
    names signs, whatever the order the agent lists them in."""
    for key in _vector_keys(ssh_dir, *order).values():
        agent.add(key)
    for name in order:
        iamsorry.forget_secrets()
        assert iamsorry.key_secret(KAT[name]["fingerprint"]) == _vector_secret(name)


def test_without_an_agent_a_key_file_of_another_key_is_refused(
    private_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI in a session of its own, as run_cli runs it: no agent, and no terminal to ask on."""
    keys = _vector_keys(tmp_path, "ed25519", "rsa3072")
    for wanted, other in (("ed25519", "rsa3072"), ("rsa3072", "ed25519")):
        fp = KAT[wanted]["fingerprint"]
        _creds(private_home, "[vec]\n" + "".join(f"{f} = {v}\n" for f, v in KAT[wanted]["sealed"].items()))
        show = ("--show-decrypted", "vec", "--ssh-key", str(keys[other]))
        assert_clean_error(
            run_cli(*show), f"no ssh-agent is running (SSH_AUTH_SOCK is not set); and {keys[other]} is not the key {fp}"
        )
        # the file alone, its .pub gone: the passphrase would be asked, and there is no terminal
        os.rename(f"{keys[other]}.pub", f"{keys[other]}.pub.away")
        assert_clean_error(run_cli(*show), f"no terminal to ask for the passphrase of {keys[other]}")
        os.rename(f"{keys[other]}.pub.away", f"{keys[other]}.pub")
        monkeypatch.setattr("getpass.getpass", lambda prompt="": PASSPHRASE)
        with pytest.raises(iamsorry.SshKeyError, match=re.escape(f"is not the key {fp}")):
            iamsorry._sign_locally(fp, str(keys[other]))


def test_without_an_agent_the_default_key_path_is_used(
    private_home: Path, ed25519: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _creds(private_home)
    sealed = run_cli("--profile", "sue-mgr", "--encrypt")
    assert sealed.returncode == 0, sealed.stderr
    monkeypatch.delenv("SSH_AUTH_SOCK")
    assert_clean_error(run_cli("--show-decrypted", "sue-mgr"), f"no terminal to ask for the passphrase of {ed25519}")


def test_an_agent_failing_to_sign_falls_back_and_says_why(private_home: Path, ed25519: Path, tmp_path: Path) -> None:
    """An agent that holds the key but will not sign with it: the key needs
    a confirmation (ssh-add -c), and the agent's askpass always says no."""
    _creds(private_home)
    sealed = run_cli("--profile", "sue-mgr", "--encrypt")
    assert sealed.returncode == 0, sealed.stderr
    say_no = tmp_path / "say-no"
    say_no.write_text("#!/bin/sh\nexit 1\n")
    say_no.chmod(0o700)
    (tmp_path / "refusing").mkdir()
    refusing = Agent(
        tmp_path / "refusing", env={"SSH_ASKPASS": str(say_no), "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"}
    )
    try:
        refusing.add(ed25519, "-c")
        proc = run_cli("--show-decrypted", "sue-mgr", env=refusing.env)
    finally:
        refusing.stop()
    assert_clean_error(proc, "ssh-agent refused to sign with", "(ssh-add -c); and there is no terminal to ask")


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("__encrypted__:v2::AAAA", "malformed"),  # no fingerprint
        ("__encrypted__:v2:AAAA", "malformed"),  # no blob
        ("__encrypted__:v2:FP:AAAA!AAAA", "bad base64"),  # valid once the ! is dropped
    ],
)
def test_malformed_sealed_values_are_crypto_errors(value: str, error: str) -> None:
    with pytest.raises(iamsorry.CryptoError, match=error):
        iamsorry.open_sealed(value, "aws_access_key_id", b"\x07" * 64)


@pytest.mark.parametrize(("size", "error"), [(16 + 12 + 16 - 1, "too short"), (16 + 12 + 16, "integrity check")])
def test_sealed_blob_shorter_than_salt_nonce_and_tag_is_corrupt(size: int, error: str) -> None:
    fp = KAT["ed25519"]["fingerprint"]
    value = f"__encrypted__:v2:{fp[7:]}:" + base64.b64encode(b"\x01" * size).decode()
    with pytest.raises(iamsorry.CryptoError, match=error):
        iamsorry.open_sealed(value, "aws_access_key_id", b"\x07" * 64)


def test_a_legacy_value_with_stray_characters_does_not_open(ed25519: Path) -> None:
    good = _legacy_seal("AKIAMANAGERKEY000001", ed25519)
    assert iamsorry.open_legacy(good, str(ed25519)) == "AKIAMANAGERKEY000001"
    stray = good[:30] + "!" + good[30:]
    with pytest.raises(iamsorry.CryptoError, match="cannot open a 0.2.x sealed value"):
        iamsorry.open_legacy(stray, str(ed25519))
