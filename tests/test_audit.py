"""The audit trail: an HMAC hash chain in SQLite whose key file only the
service can read; ``audit verify`` names the first edited, deleted, inserted
or reordered record; a store that cannot be written fails closed; ``audit
list`` filters by person and age."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import servicekit
from conftest import assert_clean_error, iamsorry, run_cli

AuditTrail = iamsorry.AuditTrail


def write_config(folder: Path) -> Path:
    config = folder / "service.toml"
    config.write_text(
        '[service]\ntls_cert = "c"\ntls_key = "k"\nkeytab = "kt"\nrealms = ["IAMSORRY.TEST"]\n'
        'audit = "sqlite:///audit/audit.db"\n'
    )
    return config


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path)


def open_trail(config: Path, timeout: float = 5.0) -> AuditTrail:
    cfg = iamsorry.load_service_config(str(config))
    store = iamsorry.SqliteAuditStore(cfg.audit_path(), timeout)
    return AuditTrail(store, iamsorry.audit_key(cfg.audit_key, create=True))


def entry(n: int, principal: str = "sue@IAMSORRY.TEST", **more: object) -> dict[str, object]:
    return {
        "time": iamsorry.format_time(iamsorry.now()),
        "principal": principal,
        "user": principal.split("@")[0],
        "action": "credentials",
        "target": f"sue-{n}",
        "status": 200,
        "result": "ok",
        **more,
    }


def filled(config: Path, count: int = 5) -> AuditTrail:
    trail = open_trail(config)
    for n in range(1, count + 1):
        trail.record(entry(n))
    return trail


def db(config: Path) -> sqlite3.Connection:
    """The file as someone who can write it sees it: the append-only
    triggers stop mistakes, not them, so they drop the triggers first."""
    c = sqlite3.connect(config.parent / "audit" / "audit.db", isolation_level=None)
    c.executescript("DROP TRIGGER IF EXISTS audit_no_update; DROP TRIGGER IF EXISTS audit_no_delete;")
    return c


def test_the_key_file_is_made_private_and_refused_when_it_is_not(config: Path) -> None:
    key_path = config.parent / "audit" / "audit.key"
    key = iamsorry.audit_key(str(key_path), create=True)
    assert len(key) == 32 and key_path.stat().st_mode & 0o777 == 0o600
    assert iamsorry.audit_key(str(key_path), create=True) == key  # made once, then kept
    key_path.chmod(0o640)
    with pytest.raises(iamsorry.AuditError, match="open to others"):
        iamsorry.audit_key(str(key_path))
    key_path.chmod(0o600)
    link = config.parent / "link.key"
    link.symlink_to(key_path)
    with pytest.raises(iamsorry.AuditError, match="cannot read"):
        iamsorry.audit_key(str(link))
    with pytest.raises(iamsorry.AuditError, match="does not exist"):
        iamsorry.audit_key(str(config.parent / "none.key"))


def test_an_intact_trail_verifies(config: Path) -> None:
    report = filled(config).verify()
    assert (report.count, report.bad, report.pending) == (5, "", [])
    proc = run_cli("audit", "verify", "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("audit trail intact: 5 records; newest #5, MAC ")


def _edit(c: sqlite3.Connection) -> None:
    body = json.loads(c.execute("SELECT body FROM audit WHERE seq = 3").fetchone()[0])
    body["principal"] = "ann@IAMSORRY.TEST"
    c.execute("UPDATE audit SET body = ? WHERE seq = 3", (json.dumps(body, sort_keys=True, separators=(",", ":")),))


def _delete(c: sqlite3.Connection) -> None:
    c.execute("DELETE FROM audit WHERE seq = 3")


def _delete_and_renumber(c: sqlite3.Connection) -> None:
    c.execute("DELETE FROM audit WHERE seq = 3")
    c.execute("UPDATE audit SET seq = seq - 1 WHERE seq > 3")


def _insert(c: sqlite3.Connection) -> None:
    c.execute("UPDATE audit SET seq = -seq WHERE seq >= 3")
    c.execute("UPDATE audit SET seq = 1 - seq WHERE seq < 0")
    c.execute("INSERT INTO audit (seq, body, mac) VALUES (3, ?, ?)", (json.dumps(entry(99)), "0" * 64))


def _reorder(c: sqlite3.Connection) -> None:
    rows = {seq: (body, mac) for seq, body, mac in c.execute("SELECT seq, body, mac FROM audit")}
    c.execute("UPDATE audit SET body = ?, mac = ? WHERE seq = 2", rows[3])
    c.execute("UPDATE audit SET body = ?, mac = ? WHERE seq = 3", rows[2])


def _forged_tail(c: sqlite3.Connection) -> None:
    import hashlib
    import hmac

    prev = c.execute("SELECT mac FROM audit WHERE seq = 5").fetchone()[0]
    body = json.dumps(entry(6))
    mac = hmac.new(b"x" * 32, f"6\n{prev}\n{body}".encode(), hashlib.sha256).hexdigest()  # not the service's key
    c.execute("INSERT INTO audit (seq, body, mac) VALUES (6, ?, ?)", (body, mac))


@pytest.mark.parametrize(
    ("tamper", "first_bad"),
    [
        (_edit, "record #3 fails its check"),
        (_delete, "record #3 is missing"),
        (_delete_and_renumber, "record #3 fails its check"),
        (_insert, "record #3 fails its check"),
        (_reorder, "record #2 fails its check"),
        (_forged_tail, "record #6 fails its check"),
    ],
    ids=["edited", "deleted", "deleted-renumbered", "inserted", "reordered", "forged-without-key"],
)
def test_each_kind_of_tampering_is_detected_at_the_first_bad_record(
    config: Path, tamper: Callable[[sqlite3.Connection], None], first_bad: str
) -> None:
    filled(config).store.close()
    with db(config) as c:
        tamper(c)
    report = open_trail(config).verify()
    assert first_bad in report.bad
    proc = run_cli("audit", "verify", "--config", str(config))
    assert_clean_error(proc, first_bad)
    assert proc.returncode == 9


def test_an_unfinished_request_is_reported_until_its_record_is_written(config: Path) -> None:
    trail = filled(config, 2)
    rid = trail.reserve(entry(3, action="create-user"))
    assert [p["reserved"] for p in trail.verify().pending] == [rid]
    proc = run_cli("audit", "verify", "--config", str(config))
    assert proc.returncode == 0 and f"request {rid} (create-user sue-3" in proc.stderr
    trail.record(entry(3, action="create-user"), release=rid)
    report = trail.verify()
    assert (report.count, report.pending, report.bad) == (3, [], "")


def test_concurrent_appends_make_one_chain(config: Path) -> None:
    trail = open_trail(config)

    def write(worker: int) -> None:
        for n in range(25):
            trail.record(entry(worker * 100 + n))

    threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = trail.verify()
    assert (report.count, report.bad) == (200, "")


def test_a_store_that_cannot_be_written_fails_closed(config: Path) -> None:
    trail = open_trail(config, timeout=0.2)
    trail.record(entry(1))
    hold = db(config)
    hold.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(iamsorry.AuditError, match="cannot write the audit record"):
            trail.record(entry(2))
        with pytest.raises(iamsorry.AuditError, match="cannot reserve the audit record"):
            trail.reserve(entry(2))
    finally:
        hold.execute("ROLLBACK")
        hold.close()
    trail.record(entry(2))
    assert trail.verify().count == 2


def test_an_unusable_store_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "audit").write_text("a file where the folder should be")
    with pytest.raises(iamsorry.AuditError, match="cannot open the audit store"):
        iamsorry.SqliteAuditStore(str(tmp_path / "audit" / "audit.db"))
    config = write_config(tmp_path)
    assert_clean_error(run_cli("audit", "list", "--config", str(config)), "audit key")
    (tmp_path / "audit").unlink()
    iamsorry.audit_key(str(tmp_path / "audit" / "audit.key"), create=True)
    assert_clean_error(run_cli("audit", "verify", "--config", str(config)), "there is no audit trail at")


def test_audit_list_filters_by_person_and_age(config: Path) -> None:
    trail = open_trail(config)
    old = dict(entry(1), time="2020-01-01T00:00:00Z")
    trail.record(old)
    trail.record(entry(2, "ann@IAMSORRY.TEST", status=403, result="not a member", key_id=None))
    trail.record(entry(3, key_id="ASIAABCDEFGHIJKLMNOP"))
    everything = json.loads(run_cli("audit", "list", "--config", str(config), "--json").stdout)
    assert [e["seq"] for e in everything] == [1, 2, 3]
    proc = run_cli("audit", "list", "--config", str(config), "--json", "--user", "ann")
    assert [e["seq"] for e in json.loads(proc.stdout)] == [2]
    proc = run_cli("audit", "list", "--config", str(config), "--json", "--since", "1d")
    assert [e["seq"] for e in json.loads(proc.stdout)] == [2, 3]
    table = run_cli("audit", "list", "--config", str(config), "--user", "sue@IAMSORRY.TEST").stdout
    assert table.splitlines()[0].split() == ["#", "TIME", "PRINCIPAL", "FROM", "ACTION", "TARGET", "RESULT", "KEY"]
    assert "ASIA…MNOP" in table and "ASIAABCDEFGHIJKLMNOP" not in table and "ann@" not in table


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("30m", 1800), ("12h", 43200), ("7d", 604800)])
def test_ages(text: str, seconds: float) -> None:
    assert iamsorry.parse_age(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-1h", "1y"])
def test_bad_ages_are_usage_errors(config: Path, text: str) -> None:
    assert_clean_error(run_cli("audit", "list", "--config", str(config), "--since", text), "--since")


def test_audit_needs_a_subcommand_and_a_config(config: Path) -> None:
    assert_clean_error(run_cli("audit"), "audit needs verify or list")
    assert_clean_error(run_cli("audit", "show", "--config", str(config)), "audit needs verify or list")
    assert_clean_error(run_cli("audit", "verify"), "needs --config FILE")
    assert_clean_error(run_cli("audit", "verify", "--config", str(config), "--check"), "--check belongs")
    assert_clean_error(run_cli("audit", "verify", "--config", str(config), "--user", "x"), "audit list")


def test_a_cut_off_tail_is_found_with_the_head_the_log_saw(config: Path) -> None:
    """The chain alone cannot show its newest records were deleted; the
    ``audit=#N:MAC`` the service logs for every request can."""
    trail = filled(config)
    seq, mac = trail.record(entry(6))
    head = f"{seq}:{mac[:12]}"
    trail.store.close()
    assert run_cli("audit", "verify", "--config", str(config), "--head", head).returncode == 0
    with db(config) as c:
        c.execute("DELETE FROM audit WHERE seq >= 5")
    assert run_cli("audit", "verify", "--config", str(config)).returncode == 0  # the chain itself still holds
    proc = run_cli("audit", "verify", "--config", str(config), "--head", head)
    assert_clean_error(proc, "record #5 and after are gone", "the log saw #6")
    with db(config) as c:  # a different record #6 in its place: forged with the key, or an older copy
        c.execute("DELETE FROM audit")
    other = open_trail(config)
    for n in range(1, 7):
        other.record(entry(100 + n))
    other.store.close()
    assert_clean_error(run_cli("audit", "verify", "--config", str(config), "--head", head), "not the one the log saw")
    assert_clean_error(run_cli("audit", "verify", "--config", str(config), "--head", "six"), "--head must be N:MAC")


def test_the_database_and_its_wal_are_private_whatever_the_umask(config: Path) -> None:
    """audit init, audit verify and the store itself: 0600 from the first
    byte, although 022 would leave every principal and key id readable."""
    folder = config.parent / "audit"
    old = os.umask(0o022)
    try:
        proc = run_cli("audit", "init", "--config", str(config))
        assert proc.returncode == 0, proc.stderr
        assert (folder / "audit.db").stat().st_mode & 0o777 == 0o600
        trail = open_trail(config)
        trail.record(entry(1))
        for name in ("audit.db", "audit.db-wal", "audit.db-shm", "audit.key"):
            assert (folder / name).stat().st_mode & 0o777 == 0o600, name
        trail.store.close()
        (folder / "audit.db").chmod(0o644)  # made by an older version
        assert run_cli("audit", "verify", "--config", str(config)).returncode == 0
        assert (folder / "audit.db").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_one_user_is_one_lock_and_one_record_whatever_the_case(config: Path) -> None:
    """IAM user names are unique regardless of case: sue-Bob is sue-bob, so
    a request spelled otherwise must not get past a mint of the other."""
    store = filled(config, 1).store
    try:
        with store.user_lock("sue-bob", None) as held:
            assert held
            with store.user_lock("SUE-Bob", None) as also:
                assert not also
        row = {"id": "r1", "user_name": "sue-bob", "namespace": "sue", "principal": "sue@IAMSORRY.TEST"}
        row.update(groups="[]", instance="h:1", started=1.0, keys_before="[]", access_key_id=None, reserved=None)
        store.inflight_begin(row)
        assert [r["user_name"] for r in store.inflight("Sue-BOB")] == ["sue-bob"]
    finally:
        store.close()


def test_a_reconcile_record_names_the_person_as_their_requests_do(config: Path) -> None:
    """sue@ELSEWHERE's unfinished mint is not recorded as sue's: audit list
    --user sue must not show it."""
    import logging

    cfg = iamsorry.load_service_config(str(config))
    trail = open_trail(config)
    minting = iamsorry.CrashSafeMint(trail.store, trail, iamsorry.ServiceAws(cfg), logging.getLogger("test"))
    row = {"id": "r1", "user_name": "sue-x", "groups": "[]", "instance": "h:1", "started": 1.0}
    try:
        for principal, user in (("sue@ELSEWHERE.TEST", "sue@ELSEWHERE.TEST"), ("sue@IAMSORRY.TEST", "sue")):
            assert minting._entry({**row, "principal": principal}, ([], []), [])["user"] == user
    finally:
        trail.store.close()


def test_names_a_client_makes_up_leave_a_bounded_number_of_lock_files(config: Path) -> None:
    """Every mint, rotation or deletion locks its user's name before AWS
    says whether the user exists: 5,000 made-up names must not leave 5,000
    files behind."""
    store = filled(config, 1).store
    try:
        for n in range(5000):
            with store.user_lock(f"sue-{n}", None) as held:
                assert held
        assert len(list(Path(f"{store.path}.locks").iterdir())) <= iamsorry._LOCK_STRIPES
    finally:
        store.close()


NOBODY = 65534  # another local user; the tests run as root in CI


def test_a_planted_key_is_refused(config: Path) -> None:
    """Another user who could put audit.key there first would know the key
    that seals the shared credentials."""
    folder = config.parent / "audit"
    folder.mkdir(mode=0o700)
    planted = folder / "audit.key"
    planted.write_text("ab" * 32 + "\n")
    planted.chmod(0o600)
    os.chown(planted, NOBODY, NOBODY)
    with pytest.raises(iamsorry.AuditError, match=f"belongs to uid {NOBODY}, not to the service's user"):
        iamsorry.audit_key(str(planted), create=True)
    assert_clean_error(run_cli("audit", "init", "--config", str(config)), f"audit.key belongs to uid {NOBODY}")


def test_a_folder_others_may_write_or_own_is_refused(config: Path) -> None:
    folder = config.parent / "audit"
    folder.mkdir(mode=0o700)
    folder.chmod(0o777)
    with pytest.raises(iamsorry.StoreUnavailable, match="is not the service's alone"):
        iamsorry.SqliteAuditStore(str(folder / "audit.db"))
    assert_clean_error(run_cli("audit", "init", "--config", str(config)), f"the audit folder {folder} is not")
    folder.chmod(0o700)
    config.parent.chmod(0o777)  # a folder above it will do as well: a neighbour could swap the whole folder
    try:
        with pytest.raises(iamsorry.StoreUnavailable, match="is not the service's alone"):
            iamsorry.SqliteAuditStore(str(folder / "audit.db"))
    finally:
        config.parent.chmod(0o700)
    os.chown(folder, NOBODY, NOBODY)
    with pytest.raises(iamsorry.StoreUnavailable, match="is not the service's alone"):
        iamsorry.SqliteAuditStore(str(folder / "audit.db"))


def test_a_database_or_lock_folder_of_another_user_is_refused(config: Path) -> None:
    """The owner of audit.db can delete records; the owner of the lock
    folder can hold any person's mint lock."""
    trail = filled(config, 1)
    store = trail.store
    locks = Path(f"{store.path}.locks")
    locks.mkdir(mode=0o700)
    os.chown(locks, NOBODY, NOBODY)
    with (
        pytest.raises(iamsorry.StoreUnavailable, match="the mint lock folder .* is not the service's alone"),
        store.user_lock("sue", None),
    ):
        pass
    locks.rmdir()
    with store.user_lock("sue", None) as held:
        assert held
    store.close()
    os.chown(store.path, NOBODY, NOBODY)
    with pytest.raises(iamsorry.StoreUnavailable, match=f"belongs to uid {NOBODY}"):
        open_trail(config)
    assert_clean_error(run_cli("audit", "verify", "--config", str(config)), f"belongs to uid {NOBODY}")


def test_starters_racing_for_the_key_all_read_the_whole_key(tmp_path: Path) -> None:
    """The key appears complete or not at all: a second starter never reads
    a file the first has created but not yet written."""
    for round_ in range(20):
        path = str(tmp_path / f"k{round_}" / "audit.key")
        start = threading.Barrier(8)
        keys: list[bytes | str] = []

        def make(path: str = path, start: threading.Barrier = start, keys: list[bytes | str] = keys) -> None:
            start.wait()
            try:
                keys.append(iamsorry.audit_key(path, create=True))
            except iamsorry.AuditError as exc:
                keys.append(str(exc))

        threads = [threading.Thread(target=make) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(set(keys)) == 1 and isinstance(keys[0], bytes), keys
        assert os.listdir(os.path.dirname(path)) == ["audit.key"]  # no temporary file left behind


def test_verify_and_list_read_the_trail_a_page_at_a_time(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(iamsorry, "_AUDIT_PAGE", 2)
    trail = filled(config, 7)
    reads: list[str] = []
    trail.store.db.set_trace_callback(lambda sql: reads.append(sql) if "FROM audit" in sql else None)
    report = trail.verify()
    assert (report.count, report.bad) == (7, "")
    assert len([r for r in reads if r.startswith("SELECT seq, body, mac")]) == 4  # 2 + 2 + 2 + 1
    assert [e["seq"] for e in trail.entries()] == list(range(1, 8))
    seq, mac = trail.record(entry(8))  # a full last page: one more, empty, read ends it
    assert trail.verify((seq, mac[:12])).count == 8
    trail.store.close()
    with db(config) as c:
        c.execute("DELETE FROM audit WHERE seq = 5")  # the first record of the third page
    assert "record #5 is missing" in open_trail(config).verify().bad
    with db(config) as c:
        c.execute("INSERT INTO audit (seq, body, mac) VALUES (0, '{}', ?)", ("0" * 64,))
    assert "record #1 is missing" in open_trail(config).verify().bad  # a record numbered below 1 is seen too


def test_a_dsn_is_shown_without_its_password_in_either_form() -> None:
    for dsn in (
        "postgresql://owner:s3cret@db.example.edu:5433/iamsorry?sslmode=require",
        "host=db.example.edu port=5433 user=owner password=s3cret dbname=iamsorry sslmode=require",
    ):
        assert iamsorry.shown_dsn(dsn) == "postgresql://owner@db.example.edu:5433/iamsorry", dsn
    assert iamsorry.shown_dsn("host=db password=s3cret dbname") == "postgresql://(unreadable DSN)"


def test_audit_init_prints_no_password_of_a_key_value_dsn(pg: Any, tmp_path: Path) -> None:
    from psycopg.conninfo import conninfo_to_dict

    owner_url, app_url = servicekit.pg_database(pg, "shown")
    owner = conninfo_to_dict(owner_url)
    words = " ".join(f"{k}={v}" for k, v in owner.items())
    config = tmp_path / "service.toml"
    config.write_text(
        '[service]\ntls_cert = "c"\ntls_key = "k"\nkeytab = "kt"\nrealms = ["IAMSORRY.TEST"]\n'
        f'audit = "{app_url}"\naudit_key = "audit.key"\n'
    )
    proc = servicekit.audit_init(config, words)
    assert proc.returncode == 0, proc.stderr
    assert f"audit tables in postgresql://{owner['user']}@127.0.0.1:{owner['port']}/shown" in proc.stdout
    wrong = words.replace(f"port={owner['port']}", "port=1")  # nothing listens there
    failed = servicekit.audit_init(config, wrong)
    assert_clean_error(failed, f"cannot set up the audit database postgresql://{owner['user']}@127.0.0.1:1/shown")
    for out in (proc.stdout, proc.stderr, failed.stdout, failed.stderr):
        assert str(owner["password"]) not in out and conninfo_to_dict(app_url)["password"] not in out
