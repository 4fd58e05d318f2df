"""The PostgreSQL that the service's tests run against, and the properties of
it that the service relies on: the server runs as a non-root user, the
service's role cannot rewrite the audit table and a trigger refuses even its
owner, an advisory lock dies with the process that held it, and the server
can be stopped and started under a test without losing data."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from conftest import require_module

psycopg = require_module("psycopg")  # in the [server] extra

OWNER, APP, DB = "pgkit_owner", "pgkit_app", "pgkit_audit"
SCHEMA = """
CREATE TABLE audit (seq bigint PRIMARY KEY, body text NOT NULL, mac bytea NOT NULL);
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit is append-only: % refused', TG_OP;
END $$;
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
REVOKE ALL ON audit FROM PUBLIC;
GRANT SELECT, INSERT ON audit TO pgkit_app;
"""
CHANGES = ["UPDATE audit SET body = 'edited'", "DELETE FROM audit", "TRUNCATE audit"]
HOLDER = """
import sys, time, psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True)
conn.execute("SELECT pg_advisory_lock(%s)", (int(sys.argv[2]),))
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture(scope="module")
def audit_db(pg_server):
    """A database owned by a NOLOGIN owner role; the service's role may only
    read and append.  Returns (service DSN, superuser DSN of that database)."""
    import pgkit

    pg_server.create_role(OWNER, login=False)
    app_password = pg_server.create_role(APP)
    pg_server.create_database(DB, owner=OWNER)
    admin_dsn = pgkit.dsn(pgkit.ADMIN, pg_server.password, pg_server.port, DB)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f"SET ROLE {OWNER}")
        conn.execute(SCHEMA)
        conn.execute("INSERT INTO audit VALUES (1, 'first', '\\x00')")
    return pg_server.dsn_for(APP, app_password, DB), admin_dsn


def test_the_server_runs_as_a_non_root_user_on_loopback(pg) -> None:
    server_uid = os.stat(f"/proc/{pg.pid}").st_uid
    assert server_uid != 0
    if os.geteuid() != 0:
        assert server_uid == os.geteuid()
    with psycopg.connect(pg.dsn) as conn:
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (True,)
    with psycopg.connect(host=str(pg.sockdir), port=pg.port, user="pgadmin", dbname="postgres") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_the_service_role_reads_and_appends(audit_db) -> None:
    app_dsn, _ = audit_db
    with psycopg.connect(app_dsn) as conn:
        conn.execute("INSERT INTO audit VALUES (100, 'appended', '\\x01')")
        assert conn.execute("SELECT body FROM audit WHERE seq = 100").fetchone() == ("appended",)
        conn.rollback()


@pytest.mark.parametrize("change", CHANGES)
def test_the_service_role_cannot_rewrite_the_audit(audit_db, change: str) -> None:
    app_dsn, _ = audit_db
    with psycopg.connect(app_dsn) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(change)


@pytest.mark.parametrize("role", [OWNER, "pgadmin"])
@pytest.mark.parametrize("change", CHANGES)
def test_the_trigger_refuses_the_owner_and_the_superuser(audit_db, change: str, role: str) -> None:
    _, admin_dsn = audit_db
    with psycopg.connect(admin_dsn) as conn:
        conn.execute(f"SET ROLE {role}")
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute(change)
        conn.rollback()
        assert conn.execute("SELECT body FROM audit WHERE seq = 1").fetchone() == ("first",)


def test_an_advisory_lock_dies_with_its_holder(pg) -> None:
    key = -4242424242424242
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, pg.dsn, str(key)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            assert conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone() == (False,)
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait()
            conn.execute("SET lock_timeout = '60s'")  # a bound on a hang, not a timing claim
            conn.execute("SELECT pg_advisory_lock(%s)", (key,))
            held = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid()"
            ).fetchone()
            assert held == (1,)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_the_server_can_go_down_and_come_back_mid_test(pg) -> None:
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS survives (n int)")
        conn.execute("INSERT INTO survives VALUES (7)")
    before = psycopg.connect(pg.dsn, autocommit=True)
    port, pid = pg.port, pg.pid
    try:
        with pg.outage():
            assert not pg.running
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(pg.dsn, connect_timeout=5)
            with pytest.raises(psycopg.OperationalError):
                before.execute("SELECT 1")
            assert before.broken
    finally:
        before.close()
    assert pg.running and pg.port == port and pg.pid != pid
    with psycopg.connect(pg.dsn) as conn:
        assert conn.execute("SELECT n FROM survives").fetchall() == [(7,)]


def test_a_crash_stop_recovers_on_restart(pg) -> None:
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS crashed (n int)")
        conn.execute("INSERT INTO crashed VALUES (9)")
    pg.stop("immediate")
    assert not pg.running
    pg.start()
    with psycopg.connect(pg.dsn) as conn:
        assert conn.execute("SELECT n FROM crashed").fetchall() == [(9,)]
