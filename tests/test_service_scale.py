"""The service at department scale, end to end with real parts: two
``iam-sorry serve`` instances (gunicorn, TLS) on one PostgreSQL (pgkit), the
Kerberos realm, the moto server; curl and the broker client as outside
clients.  What is proved: the schema's privileges and trigger, one mint for
200 clients over two instances, sealed shared credentials, SIGKILL at every
step of a mint (50 kills, no key left behind), a database outage under load
(503, nothing in AWS, no restart), and a full or read-only SQLite store (503
and /healthz says why, recovery by itself)."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import servicekit
from conftest import REQUIRE_TOOLS, assert_clean_error, iamsorry, require_root, run_cli, thread_states
from servicekit import ensure_user, keys_of, trail_of

Pair = tuple[servicekit.Service, servicekit.Service]


@pytest.fixture(scope="module")
def database(pg_server: Any) -> tuple[Any, str, str]:
    """(server, owner DSN, service DSN) of a database made for this module."""
    if not pg_server.running:
        pg_server.start()
    owner, app = servicekit.pg_database(pg_server, "scale")
    return pg_server, owner, app


@pytest.fixture(scope="module")
def pair(
    krb_realm: Any, moto_url: str, tmp_path_factory: pytest.TempPathFactory, database: tuple[Any, str, str]
) -> Iterator[Pair]:
    """Two instances of one service: one database, one audit key file, one
    AWS identity; each with its own port and TLS certificate."""
    _, owner, app = database
    servicekit.reset_aws(moto_url)
    base = tmp_path_factory.mktemp("pair")
    extra = f'audit_key = "{base / "shared" / "audit.key"}"\nreconcile_interval = 0.5'
    a = servicekit.prepare(base / "a", krb_realm, moto_url, extra, audit=app)
    made = servicekit.audit_init(a.config, owner)
    assert made.returncode == 0, made.stderr
    b = servicekit.sibling(a, base / "b", extra, audit=app)
    (base / "both-ca.pem").write_bytes(a.ca.read_bytes() + b.ca.read_bytes())
    for svc in (a, b):
        svc.extra_env["IAM_SORRY_TEST_PAUSE_FILE"] = str(svc.folder / "pause")
        svc.ca = base / "both-ca.pem"
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda svc: svc.stop(), (a, b)))


@pytest.fixture(autouse=True)
def tickets(krb_realm: Any) -> None:
    krb_realm.kinit("sue")


def call(svc: servicekit.Service, action: str, body: Any) -> tuple[int, Any]:
    return servicekit.call(svc, "sue", action, body)


def sql(dsn: str, query: str, params: Any = ()) -> list[Any]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        cur = conn.execute(query, params)
        return list(cur.fetchall()) if cur.description else []


def test_audit_init_makes_tables_the_service_cannot_rewrite(pair: Pair, database: tuple[Any, str, str]) -> None:
    import psycopg

    a, _ = pair
    _, owner, app = database
    for statement in (
        "UPDATE audit SET body = 'x'",
        "DELETE FROM audit",
        "TRUNCATE audit",
        "ALTER TABLE audit DISABLE TRIGGER ALL",
        "DROP TABLE audit",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            sql(app, statement)
    for statement in ("UPDATE audit SET body = 'x'", "DELETE FROM audit", "TRUNCATE audit"):
        with pytest.raises(psycopg.errors.RaiseException, match="audit is append-only"):
            sql(owner, statement)  # even the owner goes through the trigger
    again = servicekit.audit_init(a.config, owner)  # idempotent
    assert again.returncode == 0 and "may only read and append" in again.stdout, again.stderr
    assert_clean_error(servicekit.audit_init(a.config, app), "the service's own role")
    assert_clean_error(servicekit.audit_init(a.config, None), "IAM_SORRY_DB_OWNER")
    check = run_cli("serve", "--config", str(a.config), "--check", env=servicekit.clean_env(**a.realm.env(keytab=True)))
    assert check.returncode == 0, check.stderr
    assert "PostgreSQL: the service may only read and append" in check.stdout
    assert "password" not in check.stdout and app.split(":")[2].split("@")[0] not in check.stdout


def test_200_clients_over_two_instances_cause_one_mint(pair: Pair, shim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = pair
    ensure_user(a, "sue-fleet")
    shim.reset_calls()
    for name, value in a.client_env("sue").items():
        monkeypatch.setenv(name, value)
    gate = threading.Barrier(200)

    def one(i: int) -> str:
        gate.wait()
        return iamsorry.broker_credentials((a, b)[i % 2].url, "sue-fleet", 4).access_key_id

    with ThreadPoolExecutor(200) as pool:
        got = list(pool.map(one, range(200)))
    assert len(set(got)) == 1
    assert shim.calls["CreateAccessKey"] == shim.calls["GetSessionToken"] == 1
    outcomes = [e["result"] for e in trail_of(a) if e.get("target") == "sue-fleet" and e["action"] == "credentials"]
    assert outcomes.count("minted") == 1 and "cached from the shared store" in outcomes
    assert len(outcomes) == 200
    assert servicekit.audit_verify(a.config).returncode == 0


def test_shared_credentials_are_sealed_for_their_user(pair: Pair, database: tuple[Any, str, str]) -> None:
    a, _ = pair
    _, owner, app = database
    ensure_user(a, "sue-sealed")
    status, doc = call(a, "credentials", {"user": "sue-sealed", "hours": 2})
    assert status == 200, doc
    [(blob,)] = sql(owner, "SELECT blob FROM cred_cache WHERE user_name = 'sue-sealed'")
    stored = base64.b64decode(blob)  # the row is base64 text: look at the bytes it holds
    for secret in (doc["SecretAccessKey"], doc["SessionToken"], doc["AccessKeyId"]):
        assert secret.encode() not in stored
    cfg = iamsorry.load_service_config(str(a.config))
    store = iamsorry.PgAuditStore(app)
    key = iamsorry.audit_key(cfg.audit_key)
    try:
        opened = iamsorry.SharedCredentials(store, key).fresh("sue-sealed")
        assert opened is not None and opened.secret_access_key == doc["SecretAccessKey"]
        assert iamsorry.SharedCredentials(store, b"k" * 32).fresh("sue-sealed") is None  # another key file
        sql(
            owner,
            "INSERT INTO cred_cache SELECT 'sue-moved', expires, blob FROM cred_cache WHERE user_name = 'sue-sealed'",
        )
        assert iamsorry.SharedCredentials(store, key).fresh("sue-moved") is None  # bound to its user
    finally:
        store.close()


def test_rotations_flooding_both_instances_leave_the_user_one_key(pair: Pair) -> None:
    """A client fires service-key for one user at both instances at once:
    without one lock across instances, two rotations both see the old key,
    and the user ends with two keys (or AWS refuses a third).  Serialised,
    each rotation replaces the one before, and exactly one key is left."""
    a, b = pair
    ensure_user(a, "sue-rotor")
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: call((a, b)[i % 2], "service-key", {"user": "sue-rotor"}), range(8)))
    assert [status for status, _ in answers] == [200] * 8, answers
    issued = [doc["AccessKeyId"] for _, doc in answers]
    replaced = [masked for _, doc in answers for masked in doc["Replaced"]]
    [left] = keys_of(a, "sue-rotor")
    assert left in issued and sorted(replaced) == sorted(iamsorry.mask_key_id(k) for k in issued if k != left)


def test_a_user_deleted_on_one_instance_is_served_by_no_other(pair: Pair) -> None:
    """Credentials of a deleted user are dead in AWS: no instance hands out
    its copy in memory after the deletion, and none for a new user of the
    same name either."""
    a, b = pair
    ensure_user(a, "sue-dropped")
    status, first = call(a, "credentials", {"user": "sue-dropped", "hours": 2})
    assert status == 200, first
    for _ in range(2):  # b reads the shared copy, then serves it from its memory
        status, doc = call(b, "credentials", {"user": "sue-dropped", "hours": 2})
        assert (status, doc["AccessKeyId"]) == (200, first["AccessKeyId"]), doc
    outcomes = [e["result"] for e in trail_of(b) if e["target"] == "sue-dropped" and e["action"] == "credentials"]
    assert outcomes[-2:] == ["cached from the shared store", "cached from memory"]
    assert call(a, "delete-user", {"user": "sue-dropped"})[0] == 200
    status, doc = call(b, "credentials", {"user": "sue-dropped", "hours": 2})
    assert status == 404 and "does not exist" in doc["error"], doc
    ensure_user(a, "sue-dropped")
    status, doc = call(b, "credentials", {"user": "sue-dropped", "hours": 2})
    assert status == 200 and doc["AccessKeyId"] != first["AccessKeyId"], doc
    assert b.arn_of(doc).endswith(":user/iam-sorry/sue-dropped")


def test_shared_rows_are_read_only_while_fresh_and_go_with_their_user(
    pair: Pair, database: tuple[Any, str, str]
) -> None:
    a, _ = pair
    _, owner, app = database
    ensure_user(a, "sue-row")
    status, doc = call(a, "credentials", {"user": "sue-row", "hours": 1})
    assert status == 200, doc
    cfg = iamsorry.load_service_config(str(a.config))
    store = iamsorry.PgAuditStore(app)
    shared = iamsorry.SharedCredentials(store, iamsorry.audit_key(cfg.audit_key))
    try:
        found = shared.fresh("sue-row")
        assert found is not None and found.access_key_id == doc["AccessKeyId"]
        sql(owner, "UPDATE cred_cache SET expires = %s WHERE user_name = 'sue-row'", (time.time() + 60,))
        assert shared.fresh("sue-row") is None  # the row says it has under 15 minutes left
    finally:
        store.close()
    status, doc = call(a, "delete-user", {"user": "sue-row"})
    assert status == 200, doc
    assert sql(owner, "SELECT count(*) FROM cred_cache WHERE user_name = 'sue-row'") == [(0,)]


def request(svc: servicekit.Service, user: str) -> subprocess.Popen[str]:
    """A credentials request as sue, by curl, left running."""
    cmd = [
        "curl",
        "-sS",
        "--max-time",
        "120",
        "--cacert",
        str(svc.ca),
        "--negotiate",
        "-u",
        ":",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        json.dumps({"user": user, "hours": 1}),
        svc.url + "/v1/credentials",
    ]
    env = servicekit.clean_env(**svc.realm.env("sue"))
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def stopped_worker(svc: servicekit.Service, client: subprocess.Popen[str]) -> int:
    """The worker's pid once it has stopped itself at the pause step."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pid = svc.worker_pid()
        if pid is not None and thread_states(pid) == {"T"}:
            return pid
        if client.poll() is not None:
            raise AssertionError(f"the request ended before the pause: {client.communicate()}")
        time.sleep(0.01)
    raise AssertionError("the worker never reached its pause step")


class Kills:
    """SIGKILLs of one instance's worker at chosen steps of a mint; gunicorn
    starts a new worker, which reconciles at start-up."""

    def __init__(self, svc: servicekit.Service) -> None:
        self.svc = svc
        self.seen: list[tuple[str, str, list[str], list[str]]] = []  # user, step, keys paused, keys after

    def kill_at(self, user: str, step: str) -> None:
        (self.svc.folder / "pause").write_text(step)
        client = request(self.svc, user)
        pid: int | None = None
        try:
            pid = stopped_worker(self.svc, client)
            paused = keys_of(self.svc, user)
        finally:
            if pid is None:  # failed: a worker stopped at its pause step would hang the instance
                pid = self.svc.worker_pid()
                pid = pid if pid is not None and thread_states(pid) == {"T"} else None
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
            try:
                client.wait(timeout=130)  # its --max-time
            finally:
                if client.poll() is None:
                    client.kill()
                    client.wait()
        self.seen.append((user, step, paused, keys_of(self.svc, user)))


def test_sigkill_at_every_step_of_a_mint_leaves_no_key_behind(
    pair: Pair, shim: Any, database: tuple[Any, str, str]
) -> None:
    """50 kills over both instances at once, at every step in turn; each
    instance's users change half way, so that the other instance finds what
    the first left.  Credentials go stale at once: every request mints."""
    a, b = pair
    _, owner, _ = database
    users = [f"sue-crash{i}" for i in range(6)]
    for user in users:
        ensure_user(a, user)
    shim.session_seconds = 900
    steps = iamsorry.MINT_STEPS
    kills, swap = (Kills(a), Kills(b)), threading.Barrier(2)

    def run(side: int) -> None:
        for n in range(25):
            if n == 13:
                swap.wait(timeout=300)
            mine = users[:3] if (side == 0) == (n < 13) else users[3:]
            kills[side].kill_at(mine[n % 3], steps[(n + 4 * side) % len(steps)])

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(run, (0, 1)))
    seen = kills[0].seen + kills[1].seen
    assert len(seen) == 50 and {step for _, step, _, _ in seen} == set(steps)
    assert max(len(paused) for _, _, paused, _ in seen) <= 1
    assert max(len(after) for _, _, _, after in seen) <= 1  # never two keys blocking the next mint
    left = ("created", "recorded", "token")
    odd = [x for x in seen if x[1] in left and len(x[2]) != 1]
    assert not odd, odd  # each of these kills leaves exactly one key behind
    deadline = time.monotonic() + 60
    while sql(owner, "SELECT count(*) FROM mint_inflight") != [(0,)] or any(keys_of(a, u) for u in users):
        assert time.monotonic() < deadline, sql(owner, "SELECT * FROM mint_inflight")
        time.sleep(0.2)
    reconciled = {e["key_id"] for e in trail_of(a) if e["action"] == "reconcile"}
    leftovers = {key for _, step, paused, _ in seen if step in left for key in paused}
    assert leftovers and leftovers <= reconciled  # every leftover key was found and deleted
    shim.session_seconds = None
    for user in users:  # and every user can be minted for again
        status, doc = call((a, b)[users.index(user) % 2], "credentials", {"user": user, "hours": 1})
        assert status == 200, doc
    verify = servicekit.audit_verify(a.config)
    assert verify.returncode == 0, verify.stderr
    assert "Traceback" not in a.log_text() + b.log_text()


def healthz(svc: servicekit.Service) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(svc.url + "/healthz", context=svc.tls(), timeout=30) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def until(what: str, done: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.1)


def test_a_database_outage_fails_closed_and_heals_without_a_restart(
    pair: Pair, shim: Any, database: tuple[Any, str, str]
) -> None:
    """PostgreSQL stopped and started again under load that mints on every
    request: while it is down every answer is 503 with one line, /healthz
    says so and AWS sees no new key; afterwards the same workers answer."""
    a, b = pair
    server, owner, _ = database
    users = ["sue-outage0", "sue-outage1"]
    for user in users:
        ensure_user(a, user)
    workers = (a.worker_pid(), b.worker_pid())
    shim.session_seconds = 900
    phase, answers, done = ["up"], [], threading.Event()

    def load(i: int) -> None:
        while not done.is_set():
            began = phase[0]
            status, _, doc = (a, b)[i % 2].curl("sue", "/v1/credentials", {"user": users[i // 2 % 2], "hours": 1})
            answers.append((began if phase[0] == began else "between", i % 2, status, doc))  # the phase it ran in

    def seen(name: str, status: int | None = None) -> list[Any]:
        return [x for x in answers if x[0] == name and status in (None, x[2])]

    with ThreadPoolExecutor(4) as pool:
        running = [pool.submit(load, i) for i in range(4)]
        try:
            until("answers before the outage", lambda: len(seen("up", 200)) >= 8)
            with server.outage("fast"):  # started again however the block ends
                phase[0] = "settling"  # mints that got their intent in before the stop finish (and delete their key)
                time.sleep(1.0)
                created, phase[0] = shim.calls["CreateAccessKey"], "down"
                until("answers during the outage", lambda: len(seen("down")) >= 12)
                down_health = healthz(a), healthz(b)
                created = shim.calls["CreateAccessKey"] - created
                phase[0] = "back"
            until("both instances answer again", lambda: {x[1] for x in seen("back", 200)} == {0, 1})
        finally:
            done.set()
            for future in running:
                future.result()
    assert {x[2] for x in seen("down")} == {503}
    assert {x[3]["error"] for x in seen("down")} == {"the audit trail cannot be written; nothing was answered"}
    assert created == 0  # nothing happened in AWS
    for status, doc in down_health:
        assert status == 503 and "is unavailable" in doc["error"] and "password" not in doc["error"]
    assert (a.worker_pid(), b.worker_pid()) == workers  # no restart
    assert healthz(a) == healthz(b) == (200, {"ok": True})
    until("no mint left in flight", lambda: sql(owner, "SELECT count(*) FROM mint_inflight") == [(0,)])
    assert not any(keys_of(a, u) for u in users)
    verify = servicekit.audit_verify(a.config)
    assert verify.returncode == 0, verify.stderr
    for svc in (a, b):
        log = svc.log_text()
        assert "Traceback" not in log
        assert "is unavailable: " in log and "works again" in log


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs for the audit store, so that it can fill up or go read-only."""
    require_root("mounting a tmpfs")
    folder = tmp_path / "disk"
    folder.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if made.returncode != 0:  # root in a container without CAP_SYS_ADMIN: no test can mount anything here
        why = f"the kernel refuses to mount a tmpfs here: {made.stderr.strip()}"
        if REQUIRE_TOOLS:  # CI fails rather than skips
            pytest.fail(why)
        pytest.skip(why)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture
def on_disk(krb_realm: Any, moto_url: str, tmp_path: Path, small_disk: Path) -> Iterator[servicekit.Service]:
    servicekit.reset_aws(moto_url)
    svc = servicekit.prepare(tmp_path / "svc", krb_realm, moto_url, audit=f"sqlite:///{small_disk}/audit.db")
    try:
        svc.start()
        yield svc
    finally:
        svc.stop()


def fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as fh:
        for size in (1 << 16, 1 << 12, 1 << 9):
            try:
                while True:
                    fh.write(b"\0" * size)
            except OSError:
                continue
    return filler


def fails_closed_then_recovers(
    svc: servicekit.Service, shim: Any, user: str, why: str, logged: str, repair: Callable[[], object]
) -> None:
    """With the audit store broken, creating ``user`` is 503 and reaches no
    AWS, and /healthz is 503 and says ``why``; after ``repair()`` the service
    heals by itself, and its log says ``logged``, that it failed closed and
    that the store works again."""
    shim.reset_calls()
    status, doc = call(svc, "create-user", {"user": user})
    assert status == 503 and "audit" in doc["error"], doc
    status, health = healthz(svc)
    assert status == 503 and why in health["error"], health
    assert shim.calls["CreateUser"] == 0
    repair()
    until("healthz is 200 again", lambda: healthz(svc)[0] == 200)
    assert call(svc, "create-user", {"user": user})[0] == 201
    assert servicekit.audit_verify(svc.config).returncode == 0
    log = svc.log_text()
    assert logged in log and "requests fail closed (503)" in log and "works again" in log
    assert "Traceback" not in log


def test_a_full_audit_store_fails_closed_says_why_and_recovers(
    on_disk: servicekit.Service, small_disk: Path, shim: Any
) -> None:
    svc = on_disk
    ensure_user(svc, "sue-full")
    filler = fill(small_disk)
    full = "database or disk is full"
    fails_closed_then_recovers(svc, shim, "sue-full2", full, full, filler.unlink)


def remount(folder: Path, mode: str) -> None:
    """``mount -o remount,MODE``; the kernel refuses read-only while any
    process still has a file there open for writing (a dying one, briefly)."""
    deadline = time.monotonic() + 10
    while True:
        made = subprocess.run(["mount", "-o", f"remount,{mode}", str(folder)], capture_output=True, text=True)
        if made.returncode == 0:
            return
        assert time.monotonic() < deadline, (made.stderr, holders(folder))
        time.sleep(0.1)


def holders(folder: Path) -> list[str]:
    """Which processes have files under ``folder`` open or mapped."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            names = [os.readlink(fd) for fd in (proc / "fd").iterdir()] + (proc / "maps").read_text().split()
        except OSError:
            continue
        found += [f"{proc.name}: {n}" for n in names if n.startswith(str(folder))]
    return found


def test_a_read_only_audit_store_fails_closed_says_why_and_recovers(
    on_disk: servicekit.Service, small_disk: Path, shim: Any
) -> None:
    """The worker restarts (after a crash) on a file system that went
    read-only: a file system with the store open for writing cannot be made
    read-only, so gunicorn's master is held while its worker is killed."""
    svc = on_disk
    ensure_user(svc, "sue-ro")
    assert svc.proc is not None
    master, worker = svc.proc.pid, svc.worker_pid()
    assert worker is not None
    os.kill(master, signal.SIGSTOP)  # it must not start a new worker yet
    try:
        os.kill(worker, signal.SIGKILL)
        until(
            "the worker is gone",
            lambda: not Path(f"/proc/{worker}/fd").exists() or not any(Path(f"/proc/{worker}/fd").iterdir()),
        )
        remount(small_disk, "ro")
    finally:
        os.kill(master, signal.SIGCONT)
    fails_closed_then_recovers(svc, shim, "sue-ro2", "readonly", "readonly database", lambda: remount(small_disk, "rw"))


def test_sqlite_the_restarted_worker_deletes_what_the_killed_one_left(
    krb_realm: Any, moto_url: str, tmp_path: Path, shim: Any
) -> None:
    """The same code path on SQLite, one host: a flock is the mint lock, and
    the worker gunicorn starts after the kill finds the key at start-up."""
    servicekit.reset_aws(moto_url)
    svc = servicekit.prepare(tmp_path / "svc", krb_realm, moto_url, "reconcile_interval = 3600")
    svc.extra_env["IAM_SORRY_TEST_PAUSE_FILE"] = str(svc.folder / "pause")
    made = servicekit.audit_init(svc.config, None)  # on SQLite it needs no owner: the file is the service's
    assert made.returncode == 0 and "audit store" in made.stdout and "is ready" in made.stdout, made.stderr
    try:
        svc.start()
        ensure_user(svc, "sue-flock")
        kills = Kills(svc)
        kills.kill_at("sue-flock", "recorded")
        [(_, _, [left], _)] = kills.seen
        # The sweep deletes the key, then records that it did: wait for both.
        until("the new worker's start-up sweep deleted it", lambda: keys_of(svc, "sue-flock") == [])
        until("the sweep's record", lambda: any(e["action"] == "reconcile" for e in trail_of(svc)))
        [entry] = [e for e in trail_of(svc) if e["action"] == "reconcile"]
        assert entry["key_id"] == left and entry["target"] == "sue-flock" and entry["via"] == "reconcile"
        assert entry["principal"] == "sue@IAMSORRY.TEST"  # on behalf of the person whose mint it was
        status, doc = call(svc, "credentials", {"user": "sue-flock", "hours": 1})
        assert status == 200, doc
        assert servicekit.audit_verify(svc.config).returncode == 0
    finally:
        svc.stop()
