"""A throwaway MIT Kerberos realm for tests, built by k5test: a KDC on loopback
ports of its own, ``HTTP/localhost`` in a keytab, users with passwords, and one
``FILE:`` credential cache per user.

Nothing here reads the machine's /etc/krb5.conf or the caller's ticket cache:
every process that should see the realm gets ``realm.env(...)``.  The KDC (and
kadmind, when asked for) is stopped by its pid in ``Realm.stop()``, which
``start_realm`` also calls itself when start-up fails half way."""

from __future__ import annotations

import atexit
import os
import shlex
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REALM = "IAMSORRY.TEST"
SERVICE = "HTTP/localhost"
USERS = {"sue": "sue-kerberos-pw", "ann": "ann-kerberos-pw", "bob": "bob-kerberos-pw"}
# k5test uses portbase .. portbase+4 (kdc, kadmind, kpasswd, kprop, iprop).
# IAM_SORRY_KRB_PORTBASE pins it; otherwise the first free block from here on.
DEFAULT_PORTBASE = 47810
PORT_STRIDE = 10
_TRIES = 20

_KRB5_CONF: dict[str, Any] = {
    "libdefaults": {
        "default_realm": "$realm",
        "dns_lookup_kdc": "false",
        "dns_lookup_realm": "false",
        "dns_canonicalize_hostname": "false",
        "rdns": "false",
        "udp_preference_limit": "1",  # TCP only: no UDP retry waits on a busy CI box
    },
    "realms": {
        "$realm": {"kdc": "127.0.0.1:$port0", "admin_server": "127.0.0.1:$port1", "kpasswd_server": "127.0.0.1:$port2"}
    },
    "domain_realm": {"localhost": "$realm"},
}
_KDC_CONF: dict[str, Any] = {
    "realms": {
        "$realm": {
            "kdc_listen": "127.0.0.1:$port0",
            "kdc_tcp_listen": "127.0.0.1:$port0",
            "kdc_ports": None,
            "kdc_tcp_ports": None,
            "kadmind_listen": "127.0.0.1:$port1",
            "kadmind_port": None,
            "kpasswd_listen": "127.0.0.1:$port2",
            "kpasswd_port": None,
        }
    },
}


class RealmError(RuntimeError):
    pass


class Realm:
    """A running realm.  ``env(user)`` is what a subprocess (client or
    service) needs; ``kinit(user)`` fills that user's own ccache."""

    def __init__(self, k5: Any) -> None:
        self.k5 = k5
        self.realm: str = k5.realm
        self.portbase: int = k5.portbase
        self.folder = Path(k5.tmpdir)
        self.krb5_conf = self.folder / "krb5.conf"
        self.kdc_conf = self.folder / "kdc.conf"
        self.keytab = self.folder / "http.keytab"
        self.passwords: dict[str, str] = {}

    # -- names and files ---------------------------------------------------
    def principal(self, name: str) -> str:
        return f"{name}@{self.realm}"

    @property
    def service_principal(self) -> str:
        return self.principal(SERVICE)

    def ccache(self, user: str | None) -> str:
        """The FILE: ccache of ``user``; for None one that never exists, so a
        client has no ticket rather than the developer's own."""
        return f"FILE:{self.folder / ('ccache-' + (user or 'nobody'))}"

    def env(self, user: str | None = None, *, keytab: bool = False) -> dict[str, str]:
        """Variables for a subprocess, to merge into os.environ: this realm's
        krb5.conf, ``user``'s ccache, a private replay-cache directory (root's
        default one is shared by every process), and the HTTP keytab only for
        the acceptor (``keytab=True``); nothing falls back to /etc/krb5.conf,
        /tmp/krb5cc_0 or /etc/krb5.keytab."""
        env = {
            "KRB5_CONFIG": str(self.krb5_conf),
            "KRB5CCNAME": self.ccache(user),
            "KRB5RCACHEDIR": str(self.folder),
            "KRB5_CLIENT_KTNAME": str(self.folder / "no-client-keytab"),
        }
        if keytab:
            env["KRB5_KTNAME"] = f"FILE:{self.keytab}"
        else:
            env["KRB5_KTNAME"] = f"FILE:{self.folder / 'no-keytab'}"
        return env

    # -- administration ----------------------------------------------------
    def kadmin_local(self, query: str) -> str:
        return self._run([self.k5.kadmin_local, "-r", self.realm, "-q", query])

    def addprinc(self, name: str, password: str | None = None) -> str:
        princ = self.principal(name)
        key = ["-pw", password] if password else ["-randkey"]
        # Test passwords only: they pass through kadmin.local's argv.
        self.kadmin_local(shlex.join(["addprinc", *key, princ]))
        if password:
            self.passwords[name] = password
        return princ

    def add_service(self, name: str = SERVICE, keytab: Path | None = None) -> Path:
        """A random-key service principal, exported to ``keytab``."""
        path = keytab or self.keytab
        princ = self.addprinc(name)
        self.kadmin_local(f"ktadd -k FILE:{path} {princ}")
        return path

    def kinit(
        self, user: str, *, lifetime: str | None = None, ccache: str | None = None, password: str | None = None
    ) -> str:
        """Get ``user`` a TGT into its own ccache (or ``ccache``); returns it."""
        target = ccache or self.ccache(user)
        cmd = [self.k5._kinit, "-c", target]
        if lifetime:
            cmd += ["-l", lifetime]
        self._run([*cmd, self.principal(user)], input=(password or self.passwords[user]) + "\n", env=self.env(user))
        return target

    def kdestroy(self, user: str) -> None:
        Path(self.ccache(user)[len("FILE:") :]).unlink(missing_ok=True)

    def shift_clock(self, user: str, seconds: int) -> None:
        """Make ``user``'s Kerberos library believe it is ``seconds`` later,
        without touching the system clock: MIT keeps a KDC time offset in the
        FILE ccache header (v4, tag 1) and applies it (kdc_timesync, on by
        default).  Past the ticket's lifetime the ticket is expired; past 300 s
        the KDC and the service see clock skew."""
        path = Path(self.ccache(user)[len("FILE:") :])
        data = bytearray(path.read_bytes())
        if data[:2] != b"\x05\x04":
            raise RealmError(f"{path}: not a version 4 ccache")
        end, pos = 4 + int.from_bytes(data[2:4], "big"), 4
        while pos < end:
            tag, length = int.from_bytes(data[pos : pos + 2], "big"), int.from_bytes(data[pos + 2 : pos + 4], "big")
            if tag == 1 and length == 8:
                data[pos + 4 : pos + 12] = seconds.to_bytes(4, "big", signed=True) + bytes(4)
                path.write_bytes(bytes(data))
                return
            pos += 4 + length
        raise RealmError(f"{path}: no time offset field in the ccache header")

    def _run(self, cmd: list[str], input: str | None = None, env: dict[str, str] | None = None) -> str:
        full = {**os.environ, **self.k5.env, **(env or {})}
        proc = subprocess.run(
            cmd,
            input=input,
            env=full,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if proc.returncode != 0:
            raise RealmError(f"{' '.join(cmd[:2])} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
        return proc.stdout

    # -- lifetime ----------------------------------------------------------
    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self.k5._daemons]

    def stop(self) -> None:
        """SIGTERM each daemon by pid, SIGKILL any that lingers, remove the
        folder.  Safe to call twice."""
        for proc in list(self.k5._daemons):
            _stop_pid(proc)
            self.k5._daemons.remove(proc)
        self.k5._kdc_proc = self.k5._kadmind_proc = None
        shutil.rmtree(self.folder, ignore_errors=True)


def _stop_pid(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _log_tail(folder: Path) -> str:
    lines = []
    for name in ("kdc.log", "kadmind5.log"):
        log = folder / name
        if log.exists():
            lines += log.read_text(errors="replace").splitlines()[-3:]
    return ("\n  " + "\n  ".join(lines)) if lines else ""


def check_tools() -> None:
    """Fail loudly, naming the packages, when the MIT tools are missing."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"])
    missing = [
        t
        for t in ("kdb5_util", "krb5kdc", "kadmin.local", "kadmind", "kinit", "krb5-config")
        if shutil.which(t, path=search) is None
    ]
    if missing:
        raise RealmError(
            f"missing {', '.join(missing)}: apt-get install krb5-kdc krb5-admin-server krb5-user libkrb5-dev"
        )


def _ports_free(base: int) -> bool:
    for port in range(base, base + 5):
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            with socket.socket(socket.AF_INET, kind) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    return False
    return True


def _portbases() -> list[int]:
    pinned = os.environ.get("IAM_SORRY_KRB_PORTBASE")
    if pinned:
        return [int(pinned)]
    # Parallel runs (pytest-xdist workers, two checkouts on one machine) each
    # take the next free block; a race between probing and binding is caught
    # by the KDC failing to start, and the next block is tried.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or "0"
    first = DEFAULT_PORTBASE + PORT_STRIDE * _TRIES * int(worker)
    return [b for b in range(first, first + PORT_STRIDE * _TRIES, PORT_STRIDE) if _ports_free(b)]


def start_realm(users: dict[str, str] | None = None, *, kadmind: bool = False, realm: str = REALM) -> Realm:
    """A running realm with ``HTTP/localhost`` in ``realm.keytab`` and the
    given users (default sue, ann, bob).  Raises RealmError, with every
    daemon it had started already stopped, when it cannot."""
    from k5test import K5Realm

    check_tools()
    errors: list[str] = []
    for base in _portbases():
        # Only config files and the database are made here; nothing runs yet.
        k5 = K5Realm(
            realm=realm,
            portbase=base,
            krb5_conf=_KRB5_CONF,
            kdc_conf=_KDC_CONF,
            create_user=False,
            create_host=False,
            get_creds=False,
            start_kdc=False,
        )
        made = Realm(k5)
        try:
            for name, password in (USERS if users is None else users).items():
                made.addprinc(name, password)
            made.add_service()
            k5.start_kdc()
            if kadmind:
                k5.start_kadmind()
        except Exception as exc:  # a taken port shows up here as a KDC that did not start
            errors.append(f"port {base}: {exc}{_log_tail(made.folder)}")
            made.stop()
            continue
        except BaseException:
            made.stop()
            raise
        atexit.register(made.stop)
        return made
    raise RealmError("no Kerberos realm could start: " + ("; ".join(errors) or "no free port block"))


def session_realm() -> Iterator[Realm]:
    """Body of a session fixture: ``yield from session_realm()``.  Without
    k5test a developer's run skips; where every test must run (CI, see
    conftest.require_module) it fails, and a missing KDC fails everywhere
    rather than skipping silently."""
    from conftest import require_module

    require_module("k5test")
    realm = start_realm()
    try:
        yield realm
    finally:
        realm.stop()
