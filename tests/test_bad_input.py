"""Bad input: every case exits non-zero with one clear ``iam-sorry: error:``
line, no traceback, and leaves every file exactly as it was.

The world (a bootstrapped manager with a fresh [sue]) is built once for the
module; each case gets its own copy of the ~/.aws files."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import (
    ADMIN_KEY,
    admin_profile,
    assert_clean_error,
    aws_client,
    expire_profile,
    exported,
    hand_over,
    iamsorry,
    run_cli,
)
from sshkit import Agent, make_key


class World:
    def __init__(self, root: Path, url: str, agent: Agent) -> None:
        self.root, self.url, self.agent = root, url, agent
        self.secrets: list[str] = []

    @property
    def env(self) -> dict[str, str]:
        return {"HOME": str(self.root), "AWS_ENDPOINT_URL": self.url, "SSH_AUTH_SOCK": self.agent.sock}


@pytest.fixture(scope="module")
def world(moto_url: str, tmp_path_factory: pytest.TempPathFactory):
    import urllib.request

    import moto_shim

    urllib.request.urlopen(urllib.request.Request(moto_url + "/moto-api/reset", method="POST")).read()
    moto_shim.install().reset()
    root = tmp_path_factory.mktemp("world")
    agent = Agent(root)
    try:
        yield _make_world(root, moto_url, agent)
    finally:
        agent.stop()


def _make_world(root: Path, moto_url: str, agent: Agent) -> World:
    """sue-mgr bootstrapped into ``root`` with a fresh [sue], and the role profiles the cases need."""
    key = make_key(root / ".ssh")
    agent.add(key)
    aws_dir = admin_profile(root)
    w = World(root, moto_url, agent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    key = hand_over(env={**env, **w.env})
    boot = run_cli(env={**env, **w.env, **exported(key)})
    assert boot.returncode == 0, boot.stderr
    shown = run_cli("--show-decrypted", "sue-mgr", env={**env, **w.env}).stdout
    w.secrets = [line.split(" = ", 1)[1] for line in shown.splitlines() if line.startswith("aws_")]
    sue = iamsorry.read_aws_credentials(str(aws_dir / "credentials"))["sue"]
    w.secrets += [sue["aws_secret_access_key"], sue["aws_session_token"], ADMIN_KEY[1]]
    (aws_dir / "config").write_text(
        (aws_dir / "config").read_text() + "\n[profile sue-svc]\nrole_arn = arn:aws:iam::123456789012:role/other\n"
        "\n[profile loop-a]\nrole_arn = arn:aws:iam::123456789012:role/a\n"
        "source_profile = loop-b\n"
        "\n[profile loop-b]\nrole_arn = arn:aws:iam::123456789012:role/b\n"
        "source_profile = loop-a\n"
        "\n[profile sue-odd]\nrole_arn = arn:aws:iam::123456789012:role/iam-sorry-sue-odd\n"
        "source_profile = sue\nduration_seconds = an hour\n"
    )
    return w


def _expired(home: Path) -> None:
    expire_profile()


def _corrupt_manager(home: Path) -> None:
    path = home / ".aws" / "credentials"
    text = path.read_text()
    sealed = iamsorry.read_aws_credentials()["sue-mgr"]["aws_secret_access_key"]
    path.write_text(text.replace(sealed, sealed[:-8] + ("A" if sealed[-8] != "A" else "B") + sealed[-7:]))


def _malformed(home: Path) -> None:
    path = home / ".aws" / "credentials"
    path.write_text(path.read_text() + "this is not ini\n")


def _directory(home: Path) -> None:
    path = home / ".aws" / "credentials"
    path.unlink()
    path.mkdir()


def _symlink_loop(home: Path) -> None:
    path = home / ".aws" / "credentials"
    path.unlink()
    path.symlink_to(path)


def _not_utf8(home: Path) -> None:
    path = home / ".aws" / "credentials"
    path.write_bytes(path.read_bytes() + b"\n# caf\xe9\n")


def _no_key_in_agent(home: Path) -> dict[str, str]:
    other = Agent(home)  # an agent holding some other key
    try:
        other.add(make_key(home / "elsewhere", "other"))
    except BaseException:
        other.stop()
        raise
    return {"SSH_AUTH_SOCK": other.sock, "_STOP_AGENT": str(other.pid)}


def _expired_session_env(home: Path) -> dict[str, str]:
    """Session credentials of the manager, expired: what a user who exported
    yesterday's temporary keys would have."""
    import moto_shim

    values = iamsorry.read_aws_credentials(auto_decrypt=True)["sue-mgr"]
    sts = aws_client(
        os.environ["AWS_ENDPOINT_URL"], "sts", values["aws_access_key_id"], values["aws_secret_access_key"]
    )
    c = sts.get_session_token(DurationSeconds=900)["Credentials"]
    moto_shim.install().expire_sessions()
    empty = home / "empty-credentials"
    empty.write_text("")
    return {
        "AWS_ACCESS_KEY_ID": c["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": c["SecretAccessKey"],
        "AWS_SESSION_TOKEN": c["SessionToken"],
        "AWS_SHARED_CREDENTIALS_FILE": str(empty),
    }


def _revoke(home: Path) -> None:
    iam = aws_client(os.environ["AWS_ENDPOINT_URL"], "iam")
    for key in iam.list_access_keys(UserName="sue-mgr")["AccessKeyMetadata"]:
        iam.update_access_key(UserName="sue-mgr", AccessKeyId=key["AccessKeyId"], Status="Inactive")


def _reinstate() -> None:
    iam = aws_client(os.environ["AWS_ENDPOINT_URL"], "iam")
    keys = iam.list_access_keys(UserName="sue-mgr")["AccessKeyMetadata"]
    newest = max(keys, key=lambda k: k["CreateDate"])
    iam.update_access_key(UserName="sue-mgr", AccessKeyId=newest["AccessKeyId"], Status="Active")


Setup = Callable[[Path], object]
CASES: list[tuple[str, list[str], Setup | None, dict[str, str], str]] = [
    ("duration 0", ["sue", "--duration", "0"], None, {}, "between 1 and 36"),
    ("duration 37", ["sue", "--duration", "37"], None, {}, "between 1 and 36"),
    ("duration nan", ["sue", "--duration", "lots"], None, {}, "whole number"),
    ("invalid name", ["sue;rm -rf ~"], None, {}, "invalid IAM user name"),
    ("eval missing", ["--eval", "nobody"], None, {}, "[nobody] is not in"),
    ("show missing", ["--show-decrypted", "nobody"], None, {}, "[nobody] is not in"),
    ("unknown --profile", ["sue", "--profile", "nope"], None, {}, "[nope] is not in"),
    ("chown to nobody", ["ghost-x", "--chown", "ghost"], None, {}, "'ghost' is not an IAM user"),
    ("aws unreachable", ["--eval", "sue"], _expired, {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, "cannot reach AWS"),
    ("agent lacks key", ["--eval", "sue-mgr"], _no_key_in_agent, {}, "is not in ssh-agent"),
    ("lambda of non-role", ["--print-lambda-policy", "sue"], None, {}, "not an iam-sorry role profile"),
    ("lambda of other role", ["--print-lambda-policy", "sue-svc"], None, {}, "not an iam-sorry role profile"),
    ("malformed file", ["--eval", "sue"], _malformed, {}, "credentials:"),
    ("corrupt ciphertext", ["sue"], _corrupt_manager, {}, "integrity check"),
    ("outside namespace", ["bob"], None, {}, "outside your namespace"),
    ("credentials is a directory", ["--profiles"], _directory, {}, "is a directory"),
    ("credentials unreadable", ["--eval", "sue"], _symlink_loop, {}, "cannot read"),
    ("credentials not utf-8", ["--profiles"], _not_utf8, {}, "not UTF-8"),
    ("unknown option", ["--frobnicate"], None, {}, "unrecognized arguments"),
    (
        "min-ttl not shorter than duration",
        ["--eval", "sue", "--duration", "1", "--min-ttl", "90"],
        None,
        {},
        "not shorter than --duration",
    ),
    ("role profiles in a loop", ["--eval", "loop-a"], None, {}, "loop through source_profile"),
    ("bad timeout setting", ["--eval", "sue"], _expired, {"IAM_SORRY_LOCK_TIMEOUT": "soon"}, "IAM_SORRY_LOCK_TIMEOUT"),
    ("timeout never reached", ["--eval", "sue"], _expired, {"IAM_SORRY_LOCK_TIMEOUT": "nan"}, "must be a finite"),
    ("conflicting actions", ["--eval", "sue", "--profiles"], None, {}, "cannot be combined"),
    ("env keys expired (bootstrap)", [], _expired_session_env, {}, "ExpiredToken"),
    ("manager key revoked", ["sue"], _revoke, {}, "administrator"),
    ("role duration not a number", ["--eval", "sue-odd"], None, {}, "duration_seconds in [profile sue-odd]"),
]


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_symlink() or p.is_dir() or p.name.endswith(".lock"):
            continue
        out[str(p)] = (p.read_bytes(), p.stat().st_mode)
    return out


@pytest.mark.parametrize(("argv", "setup", "extra_env", "needle"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(
    world: World,
    private_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    setup: Setup | None,
    extra_env: dict[str, str],
    needle: str,
) -> None:
    shutil.copytree(world.root / ".aws", private_home / ".aws", dirs_exist_ok=True)
    shutil.copytree(world.root / ".ssh", private_home / ".ssh", dirs_exist_ok=True)
    for key, value in world.env.items():
        if key != "HOME":
            monkeypatch.setenv(key, value)
    extra = {k: v.format(home=private_home) for k, v in extra_env.items()}
    stop = None
    try:  # whatever the setup started or changed is undone however this ends
        made = setup(private_home) if setup else None
        if isinstance(made, dict):
            extra.update(made)
        stop = extra.pop("_STOP_AGENT", None)
        before = _snapshot(private_home / ".aws")
        proc = run_cli(*argv, env=extra, timeout=30)
    finally:
        if stop:
            os.kill(int(stop), 15)
        if setup is _revoke:
            _reinstate()
    assert_clean_error(proc, needle)
    assert proc.stdout == ""
    assert _snapshot(private_home / ".aws") == before
    for secret in world.secrets:
        assert secret not in proc.stderr
