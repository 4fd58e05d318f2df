"""The throwaway Kerberos realm works: users get tickets in their own caches,
a SPNEGO handshake against the HTTP/localhost keytab succeeds in both
directions, and every daemon the kit starts is gone after stop(), also when
start-up fails half way."""

from __future__ import annotations

import os
import socket
import subprocess
from typing import Any

import krbkit
import pytest
from conftest import children, require_module

SPNEGO = "1.3.6.1.5.5.2"
KRB5 = "1.2.840.113554.1.2.2"
KRB5KRB_AP_ERR_TKT_EXPIRED = -1765328352 & 0xFFFFFFFF
KRB5_FCC_NOFILE = -1765328189 & 0xFFFFFFFF


@pytest.fixture
def gssapi(krb_realm: krbkit.Realm, monkeypatch: pytest.MonkeyPatch) -> Any:
    """python-gssapi in this process, pointed at the test realm only."""
    module = require_module("gssapi")
    for name, value in krb_realm.env().items():
        monkeypatch.setenv(name, value)
    return module


def _initiator(gssapi: Any, ccache: str, mech: str = SPNEGO) -> Any:
    creds = gssapi.Credentials(usage="initiate", store={"ccache": ccache})
    name = gssapi.Name("HTTP@localhost", gssapi.NameType.hostbased_service)
    return gssapi.SecurityContext(
        name=name,
        creds=creds,
        usage="initiate",
        mech=gssapi.OID.from_int_seq(mech),
        flags=gssapi.RequirementFlag.mutual_authentication,
    )


def _children(command: str) -> set[int]:
    """Pids of this process's children running ``command``."""
    return children(os.getpid(), command)


def test_kinit_puts_each_user_in_their_own_ccache(krb_realm: krbkit.Realm) -> None:
    krb_realm.kdestroy("ann")
    cache = krb_realm.kinit("sue")
    klist = subprocess.run(["klist"], env={**os.environ, **krb_realm.env("sue")}, capture_output=True, text=True)
    assert klist.returncode == 0, klist.stderr
    assert f"Ticket cache: {cache}" in klist.stdout
    assert "Default principal: sue@IAMSORRY.TEST" in klist.stdout
    ann = subprocess.run(["klist"], env={**os.environ, **krb_realm.env("ann")}, capture_output=True, text=True)
    assert ann.returncode != 0 and "No credentials cache found" in ann.stderr


def test_keytab_holds_http_localhost(krb_realm: krbkit.Realm) -> None:
    out = subprocess.run(
        ["klist", "-k", str(krb_realm.keytab)],
        env={**os.environ, **krb_realm.env()},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "HTTP/localhost@IAMSORRY.TEST" in out
    assert krb_realm.env(keytab=True)["KRB5_KTNAME"] == f"FILE:{krb_realm.keytab}"


def test_wrong_password_gets_no_ticket(krb_realm: krbkit.Realm) -> None:
    with pytest.raises(krbkit.RealmError, match="Password incorrect"):
        krb_realm.kinit("bob", password="not-bobs-password", ccache=f"FILE:{krb_realm.folder}/cc-wrong")


def test_spnego_handshake_with_mutual_auth_against_the_keytab(krb_realm: krbkit.Realm, gssapi: Any) -> None:
    initiator = _initiator(gssapi, krb_realm.kinit("sue"))
    acceptor = gssapi.SecurityContext(
        usage="accept", creds=gssapi.Credentials(usage="accept", store={"keytab": f"FILE:{krb_realm.keytab}"})
    )
    reply = acceptor.step(initiator.step())
    assert acceptor.complete
    assert str(acceptor.initiator_name) == "sue@IAMSORRY.TEST"
    assert not initiator.complete  # mutual auth: the service's reply is still to be checked
    initiator.step(reply)
    assert initiator.complete
    assert str(initiator.target_name) == "HTTP/localhost@IAMSORRY.TEST"


def test_no_ticket_fails_before_any_token_is_sent(krb_realm: krbkit.Realm, gssapi: Any) -> None:
    with pytest.raises(gssapi.exceptions.GSSError) as caught:
        _initiator(gssapi, krb_realm.ccache(None)).step()
    assert caught.value.min_code == KRB5_FCC_NOFILE


def test_shift_clock_expires_a_ticket_without_waiting(krb_realm: krbkit.Realm, gssapi: Any) -> None:
    cache = krb_realm.kinit("bob")
    _initiator(gssapi, cache, KRB5).step()  # valid first, so the shift is what expires it
    krb_realm.shift_clock("bob", 2 * 86400)
    with pytest.raises(gssapi.exceptions.GSSError) as caught:
        _initiator(gssapi, cache, KRB5).step()
    assert caught.value.min_code == KRB5KRB_AP_ERR_TKT_EXPIRED


def test_stop_ends_every_daemon_by_pid_and_removes_the_folder(krb_realm: krbkit.Realm) -> None:
    other = krbkit.start_realm(users={}, kadmind=True)
    try:
        assert other.portbase != krb_realm.portbase
        pids = other.pids
        assert len(pids) == 2 and set(pids) <= _children("krb5kdc") | _children("kadmind")
    finally:
        other.stop()
    other.stop()
    assert not set(pids) & (_children("krb5kdc") | _children("kadmind"))
    assert not other.folder.exists()


def test_failed_start_leaves_no_daemon_running(krb_realm: krbkit.Realm, monkeypatch: pytest.MonkeyPatch) -> None:
    """kadmind cannot bind its port after the KDC has started: the KDC must
    be stopped too, and the error must say why."""
    before = _children("krb5kdc")
    base = next(b for b in range(48810, 49810, 10) if krbkit._ports_free(b))
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", base + 1))  # kadmind's port
        taken.listen()
        monkeypatch.setenv("IAM_SORRY_KRB_PORTBASE", str(base))
        with pytest.raises(krbkit.RealmError, match="kadmind"):
            krbkit.start_realm(users={}, kadmind=True)
    assert _children("krb5kdc") == before
