"""A throwaway PostgreSQL server for tests: Debian's binaries, ``initdb`` and
``pg_ctl`` in a private temporary folder, listening on 127.0.0.1 at a free
port and on a Unix socket inside that folder.

PostgreSQL refuses to run as root, and CI runs as root, so the server's
processes then run as the ``postgres`` system user that Debian's package
creates (``nobody`` where it does not exist), through ``subprocess``'s own
``user=``/``group=``/``extra_groups=`` switch: no ``runuser``/``sudo`` needed
and no root supplementary group leaks into the server.  Run as anybody else,
the server simply runs as that user.

The server is stopped by ``pg_ctl stop``, and when that fails by killing the
postmaster's pid from ``postmaster.pid``; ``stop()``/``start()`` keep the data
directory and the port, so the same DSN works again after a simulated
outage."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote

ADMIN = "pgadmin"
_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    # Safe against a killed server (the kernel still holds the writes), not a
    # power cut.  synchronous_commit stays on: with it off, a crash stop loses
    # the last commits, which an outage test would rightly call data loss.
    "fsync": "off",
    "max_connections": "100",
    "shared_buffers": "32MB",
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] %u '",
}


def find_bindir() -> Path:
    """Debian keeps the server programs out of PATH, one folder per major
    version; the newest wins, then whatever ``pg_ctl`` PATH has."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parent.parent.name))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(os.path.realpath(on_path)).parent
    raise RuntimeError("PostgreSQL server programs not found: apt-get install -y postgresql")


def _server_account() -> Optional[pwd.struct_passwd]:
    """None when we are not root: the server then runs as us."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' account exists")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dsn(user: str, password: str, port: int, dbname: str = "postgres", host: str = "127.0.0.1") -> str:
    return f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/{quote(dbname, safe='')}"


class Server:
    """One cluster in a private folder.  ``dsn`` is the superuser's."""

    def __init__(self, base: Path, bindir: Path, account: Optional[pwd.struct_passwd]) -> None:
        self.base, self.bindir, self.account = base, bindir, account
        self.data, self.sockdir, self.log = base / "data", base / "sock", base / "server.log"
        self.password = secrets.token_urlsafe(18)
        self.port = 0
        self.start_seconds = 0.0  # initdb + first start, or the last start

    # -- running the server's programs as its user -------------------------
    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        kw: dict[str, Any] = {}
        if self.account is not None:
            kw = {"user": self.account.pw_uid, "group": self.account.pw_gid, "extra_groups": []}
        env = {"PATH": f"{self.bindir}:/usr/bin:/bin", "HOME": str(self.base), "LC_ALL": "C.UTF-8", "TZ": "UTC"}
        return subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            env=env,
            cwd=self.base,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            **kw,
        )

    def _chown(self, path: Path) -> None:
        if self.account is not None:
            os.chown(path, self.account.pw_uid, self.account.pw_gid)

    def initdb(self) -> None:
        self._chown(self.base)
        self.sockdir.mkdir(mode=0o700)
        self._chown(self.sockdir)
        pwfile = self.base / "pw"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        self._chown(pwfile)
        try:
            proc = self._run(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                ADMIN,
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
                "--no-locale",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
            )
        finally:
            pwfile.unlink()
        if proc.returncode != 0:
            raise RuntimeError(f"initdb failed: {proc.stderr.strip()}")
        settings = {**_SETTINGS, "unix_socket_directories": f"'{self.sockdir}'"}
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.writelines(f"{k} = {v}\n" for k, v in settings.items())

    def _set_port(self, port: int) -> None:
        self.port = port
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"port = {port}\n")  # the last setting of a name wins

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> Server:
        """Start (again) on the known port; the first start picks a free one
        and tries another when it was taken meanwhile."""
        tries = 1 if self.port else 3
        for _ in range(tries):
            if not self.port or tries > 1:
                self._set_port(_free_port())
            began = time.monotonic()
            proc = self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60")
            if proc.returncode == 0:
                self.start_seconds = time.monotonic() - began
                return self
            self.kill()
        raise RuntimeError(f"pg_ctl start failed: {proc.stdout.strip()} {proc.stderr.strip()}\n{self.log_tail()}")

    def stop(self, mode: str = "fast") -> None:
        """``fast`` disconnects clients and shuts down cleanly; ``immediate``
        is a crash (recovery on the next start).  Falls back to SIGKILL."""
        if not (self.data / "postmaster.pid").exists():
            return
        proc = self._run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w", "-t", "30")
        if proc.returncode != 0:
            self.kill()

    def restart(self, mode: str = "fast") -> Server:
        self.stop(mode)
        return self.start()

    @contextlib.contextmanager
    def outage(self, mode: str = "fast") -> Iterator[None]:
        """The server is down inside the block and up again after it."""
        self.stop(mode)
        try:
            yield
        finally:
            self.start()

    @property
    def pid(self) -> Optional[int]:
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    @property
    def running(self) -> bool:
        pid = self.pid
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, and not ours to signal
            pass
        return True

    def kill(self) -> None:
        """Last resort: SIGKILL the postmaster; its backends exit once they
        see it gone."""
        pid = self.pid
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        with contextlib.suppress(FileNotFoundError):
            (self.data / "postmaster.pid").unlink()

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- addresses and set-up -----------------------------------------------
    @property
    def dsn(self) -> str:
        return dsn(ADMIN, self.password, self.port)

    def dsn_for(self, user: str, password: str, dbname: str = "postgres") -> str:
        return dsn(user, password, self.port, dbname)

    def admin(self, dbname: str = "postgres") -> Any:
        """An autocommit superuser connection (psycopg is imported here so
        that importing this module needs nothing)."""
        import psycopg

        return psycopg.connect(dsn(ADMIN, self.password, self.port, dbname), autocommit=True, connect_timeout=10)

    def create_role(self, name: str, password: Optional[str] = None, *, login: bool = True) -> str:
        """A plain role (no superuser, no createrole/createdb); returns its password."""
        from psycopg import sql

        password = password or secrets.token_urlsafe(18)
        stmt = sql.SQL("CREATE ROLE {} " + ("LOGIN " if login else "NOLOGIN ") + "PASSWORD {}")
        with self.admin() as conn:
            conn.execute(stmt.format(sql.Identifier(name), sql.Literal(password)))
        return password

    def create_database(self, name: str, owner: str = ADMIN) -> None:
        """Owned by ``owner``; PUBLIC may connect but, as in PostgreSQL 15,
        may not create in schema public."""
        from psycopg import sql

        with self.admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(owner)))


def start(base: Optional[Path] = None) -> Server:
    """initdb and start a fresh cluster; stop and remove everything if either fails."""
    account = _server_account()
    # Not under pytest's tmp_path: its folders are 0700 root, closed to the server's user.
    base = base or Path(tempfile.mkdtemp(prefix="pgkit-"))
    server = Server(base, find_bindir(), account)
    began = time.monotonic()
    try:
        server.initdb()
        server.start()
    except BaseException:
        server.destroy()
        raise
    server.start_seconds = time.monotonic() - began
    return server
