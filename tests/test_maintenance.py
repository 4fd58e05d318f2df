"""Profile maintenance: listing, repairing, showing and resetting profiles."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from conftest import FakeAws, assert_clean_error, creds_file, iamsorry, run_cli, run_in_pty


def test_profiles_lists_kinds_and_expiry(private_home: Path) -> None:
    path = creds_file(private_home)
    path.write_text(
        "[sue-mgr]\naws_access_key_id = __encrypted__:v2:abc:AAAA\naws_secret_access_key = __encrypted__:v2:abc:AAAA\n"
        "[sue]\naws_access_key_id = ASIAXXXXXXXXXXXXXXX1\naws_secret_access_key = s\naws_session_token = t\n"
        "expiration = 2020-01-01T00:00:00Z\ncredentials_owner = sue\n"
        "[static]\naws_access_key_id = AKIAXXXXXXXXXXXXXXX1\naws_secret_access_key = s\n"
    )
    (private_home / ".aws" / "config").write_text(
        "[profile sue-lambda]\nrole_arn = arn:aws:iam::123456789012:role/iam-sorry-sue-lambda\nsource_profile = sue\n"
    )
    proc = run_cli("--profiles")
    assert proc.returncode == 0, proc.stderr
    lines = {ln.split()[0]: ln for ln in proc.stdout.splitlines()[1:]}
    assert "manager" in lines["sue-mgr"] and "SHA256:abc" in lines["sue-mgr"]
    assert "session" in lines["sue"] and "EXPIRED" in lines["sue"]
    assert "static" in lines["static"]
    assert "role" in lines["sue-lambda"] and " sue " in lines["sue-lambda"]
    rows = json.loads(run_cli("--profiles", "--json").stdout)
    assert {r["profile"]: r["kind"] for r in rows} == {
        "sue-mgr": "manager",
        "sue": "session",
        "static": "static",
        "sue-lambda": "role",
    }


def test_fix_profiles_adds_regions_from_the_manager_and_reports_config_only(private_home: Path) -> None:
    path = creds_file(private_home)
    path.write_text(
        "[sue-mgr]\naws_access_key_id = __encrypted__:v2:abc:AAAA\n"
        "aws_secret_access_key = __encrypted__:v2:abc:AAAA\n"
        "[sue]\naws_access_key_id = ASIAXXXXXXXXXXXXXXX1\naws_secret_access_key = s\n"
    )
    cfg = private_home / ".aws" / "config"
    original = "# mine\n[profile sue-mgr]\nregion = eu-north-1\n\n[profile lonely]\noutput = json\n"
    cfg.write_text(original)
    proc = run_cli("--fix-profiles")
    assert proc.returncode == 0, proc.stderr
    assert cfg.read_text() == original + "\n[profile sue]\nregion = eu-north-1\n"
    assert "lonely" in proc.stderr
    assert path.read_text().startswith("[sue-mgr]")


def test_fix_profiles_falls_back_to_us_east_1_with_a_warning(private_home: Path) -> None:
    creds_file(private_home).write_text("[a]\naws_access_key_id = AKIAXXXXXXXXXXXXXXX1\naws_secret_access_key = s\n")
    proc = run_cli("--fix-profiles")
    assert proc.returncode == 0 and "us-east-1" in proc.stderr and "warning" in proc.stderr
    assert "[profile a]\nregion = us-east-1\n" in (private_home / ".aws" / "config").read_text()


def test_reset_needs_yes_without_terminal_and_keeps_backups(private_home: Path) -> None:
    creds = creds_file(private_home)
    original = (
        "[keep]\naws_access_key_id = AKIAXXXXXXXXXXXXXXX1\naws_secret_access_key = s\n\n"
        "[sue-mgr]\naws_access_key_id = __encrypted__:v2:abc:AAAA\n"
        "aws_secret_access_key = __encrypted__:v2:abc:AAAA\n"
    )
    creds.write_text(original)
    cfg = private_home / ".aws" / "config"
    cfg.write_text("[profile sue-mgr]\nregion = us-west-2\n[profile keep]\nregion = us-west-2\n")
    proc = run_cli("--reset")
    assert_clean_error(proc, "--yes")
    assert creds.read_text() == original
    proc = run_cli("--reset", "--yes")
    assert proc.returncode == 0, proc.stderr
    assert creds.read_text() == "[keep]\naws_access_key_id = AKIAXXXXXXXXXXXXXXX1\naws_secret_access_key = s\n\n"
    assert cfg.read_text() == "[profile keep]\nregion = us-west-2\n"
    backups = sorted(p.name for p in creds.parent.iterdir() if ".bak-" in p.name)
    assert len(backups) == 2
    assert all(stat.S_IMODE((creds.parent / b).stat().st_mode) == 0o600 for b in backups)
    assert (creds.parent / backups[1]).read_text() == original


def test_show_decrypted_of_plain_profile_prints_the_section(private_home: Path) -> None:
    creds_file(private_home).write_text("[svc]\naws_access_key_id = AKIAXXXXXXXXXXXXXXX1\naws_secret_access_key = s\n")
    proc = run_cli("--show-decrypted", "svc")
    assert proc.returncode == 0
    assert proc.stdout == "[svc]\naws_access_key_id = AKIAXXXXXXXXXXXXXXX1\naws_secret_access_key = s\n"


@pytest.mark.parametrize(("answer", "removed"), [("y", True), ("n", False)])
def test_reset_asks_on_a_terminal(private_home: Path, answer: str, removed: bool) -> None:
    creds = creds_file(private_home)
    creds.write_text(
        "[sue-mgr]\naws_access_key_id = __encrypted__:v2:abc:AAAA\naws_secret_access_key = __encrypted__:v2:abc:AAAA\n"
    )
    status, shown = run_in_pty(["--reset"], dict(os.environ), [answer], prompt=b"[y/N]")
    assert "Remove manager [sue-mgr]" in shown
    assert (status == 0) is removed
    assert ("sue-mgr" in creds.read_text()) is not removed


def test_profiles_show_owner_and_time_left(manager: FakeAws) -> None:
    assert run_cli("--role", "sue-lambda").returncode == 0
    soon = iamsorry.format_time(iamsorry.now() + 2 * 3600 + 5 * 60 + 30)
    with iamsorry.Store().edit() as s:
        s.creds.set("sue", {"expiration": soon})
        s.creds.set(
            "old",
            {
                "aws_access_key_id": "ASIAOLDOLDOLDOLDOLD1",
                "aws_secret_access_key": "x",
                "aws_session_token": "t",
                "expiration": iamsorry.format_time(iamsorry.now() - 7300),
                "credentials_owner": "sue-old",
            },
        )
    lines = {ln.split()[0]: ln.split() for ln in run_cli("--list").stdout.splitlines()[1:]}
    assert lines["sue"][1:] == ["session", "sue", "2h05m"]
    assert lines["old"][1:] == ["session", "sue-old", "EXPIRED", "2h01m", "ago"]
    assert lines["sue-mgr"][1:3] == ["manager", "sue-mgr"]
    assert lines["sue-lambda"][1:3] == ["role", "sue"]
    rows = {r["profile"]: r for r in json.loads(run_cli("--profiles", "--json").stdout)}
    assert rows["sue"]["kind"] == "session" and 2 * 3600 < rows["sue"]["seconds_left"] <= 2 * 3600 + 330
    assert rows["old"]["seconds_left"] < 0 and rows["sue-lambda"]["role_arn"].endswith("role/iam-sorry-sue-lambda")


def test_backups_never_write_through_a_planted_link(private_home: Path, tmp_path: Path, monkeypatch) -> None:
    """A neighbour who can write the folder plants links at every name it can
    predict; the backup name carries a random part, and even a link at that
    exact name is refused (O_EXCL|O_NOFOLLOW), leaving its target alone."""
    creds = creds_file(private_home)
    creds.write_text("[sue-mgr]\naws_access_key_id = x\naws_secret_access_key = y\n")
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    stamp = iamsorry.format_time(iamsorry.now()).replace("-", "").replace(":", "")
    (creds.parent / f"credentials.bak-{stamp}").symlink_to(victim)  # the 0.3 name
    proc = run_cli("--reset", "--yes", "--profile", "sue-mgr")
    assert proc.returncode == 0, proc.stderr
    (backup,) = [p for p in creds.parent.iterdir() if p.name.startswith("credentials.bak-") and not p.is_symlink()]
    assert len(backup.name) == len(f"credentials.bak-{stamp}-") + 12
    assert backup.stat().st_mode & 0o777 == 0o600 and "sue-mgr" in backup.read_text()
    assert victim.read_text() == "precious\n"
    monkeypatch.setattr("secrets.token_hex", lambda n: "0" * 2 * n)
    moment = int(iamsorry.now())
    for second in range(moment - 1, moment + 60):  # a link at the exact name, whichever second the backup is made in
        stamp = iamsorry.format_time(second).replace("-", "").replace(":", "")
        Path(f"{creds}.bak-{stamp}-{'0' * 12}").symlink_to(victim)
    with pytest.raises(iamsorry.StoreError, match="cannot write the backup"):
        iamsorry.write_backup(str(creds), "secret text")
    assert victim.read_text() == "precious\n"
