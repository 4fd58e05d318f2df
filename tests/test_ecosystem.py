"""Fitting the AWS ecosystem: credential_process, every shell, expiry at a
glance, self-refreshing boto3 sessions, and quiet, masked messages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    REGION,
    FakeAws,
    assert_clean_error,
    aws_cli_arn,
    creds_file,
    exported,
    hand_over,
    iamsorry,
    require_program,
    run_cli,
)

HOSTILE_SECRET = 'it\'s $(touch PWNED1) `touch PWNED2` "dq" !bang \\back;semi $HOME\tend'
HOSTILE_TOKEN_LINES = ["first'line $(touch PWNED3)", "second `touch PWNED4` line!"]
DUMP = "import json, os; print(json.dumps({k: os.environ.get(k) for k in sorted(os.environ) if k.startswith('AWS_')}))"


def _hostile_profile(home: Path) -> None:
    path = home / ".aws" / "credentials"
    path.parent.mkdir(exist_ok=True)
    token = HOSTILE_TOKEN_LINES[0] + "\n    " + HOSTILE_TOKEN_LINES[1]
    path.write_text(
        f"[hostile]\naws_access_key_id = ASIAHOSTILEHOSTILE01\naws_secret_access_key = {HOSTILE_SECRET}\n"
        f"aws_session_token = {token}\nexpiration = 2099-01-01T00:00:00Z\ncredentials_owner = sue\n"
    )


EXPECTED_ENV = {
    "AWS_ACCESS_KEY_ID": "ASIAHOSTILEHOSTILE01",
    "AWS_SECRET_ACCESS_KEY": HOSTILE_SECRET,
    "AWS_SESSION_TOKEN": "\n".join(HOSTILE_TOKEN_LINES),
    "AWS_CREDENTIAL_EXPIRATION": "2099-01-01T00:00:00Z",
    "AWS_DEFAULT_REGION": "eu-central-1",
}

# The whole --eval text, multi-line token included, written out by hand per
# syntax: it is what a user's shell evaluates, checked even where that shell
# is missing.  sh: ' becomes '\''; csh: also ! becomes \! and a newline
# becomes backslash-newline; fish: \ becomes \\ and ' becomes \'.
EXPECTED_TEXT = {
    "sh": "export AWS_ACCESS_KEY_ID='ASIAHOSTILEHOSTILE01'\n"
    "export AWS_SECRET_ACCESS_KEY='it'\\''s $(touch PWNED1) `touch PWNED2` \"dq\" !bang \\back;semi $HOME\tend'\n"
    "export AWS_SESSION_TOKEN='first'\\''line $(touch PWNED3)\nsecond `touch PWNED4` line!'\n"
    "export AWS_CREDENTIAL_EXPIRATION='2099-01-01T00:00:00Z'\n"
    "export AWS_DEFAULT_REGION='eu-central-1'\n",
    "csh": "setenv AWS_ACCESS_KEY_ID 'ASIAHOSTILEHOSTILE01';\n"
    "setenv AWS_SECRET_ACCESS_KEY 'it'\\''s $(touch PWNED1) `touch PWNED2` \"dq\" \\!bang \\back;semi $HOME\tend';\n"
    "setenv AWS_SESSION_TOKEN 'first'\\''line $(touch PWNED3)\\\nsecond `touch PWNED4` line\\!';\n"
    "setenv AWS_CREDENTIAL_EXPIRATION '2099-01-01T00:00:00Z';\n"
    "setenv AWS_DEFAULT_REGION 'eu-central-1';\n",
    "fish": "set -gx AWS_ACCESS_KEY_ID 'ASIAHOSTILEHOSTILE01';\n"
    "set -gx AWS_SECRET_ACCESS_KEY 'it\\'s $(touch PWNED1) `touch PWNED2` \"dq\" !bang \\\\back;semi $HOME\tend';\n"
    "set -gx AWS_SESSION_TOKEN 'first\\'line $(touch PWNED3)\nsecond `touch PWNED4` line!';\n"
    "set -gx AWS_CREDENTIAL_EXPIRATION '2099-01-01T00:00:00Z';\n"
    "set -gx AWS_DEFAULT_REGION 'eu-central-1';\n",
}

RUNNERS = {  # how a user feeds --eval output to each shell
    "sh": ["sh", "-c", '. "$1" && "$2" -c "$3"', "sh"],
    "bash": ["bash", "-c", 'eval "$(cat "$1")" && "$2" -c "$3"', "bash"],
    "zsh": ["zsh", "-f", "-c", 'eval "$(cat "$1")" && "$2" -c "$3"', "zsh"],
    "dash": ["dash", "-c", '. "$1" && "$2" -c "$3"', "dash"],
    "tcsh": ["tcsh", "-f", "-c", "source $1:q && $2:q -c $3:q"],
    "csh": ["csh", "-f", "-c", "source $1:q && $2:q -c $3:q"],
    "fish": ["fish", "--no-config", "-c", "source $argv[1]; and $argv[2] -c $argv[3]"],
}
SYNTAX = {"sh": "sh", "bash": "sh", "zsh": "sh", "dash": "sh", "tcsh": "csh", "csh": "csh", "fish": "fish"}


@pytest.mark.parametrize("shell", list(SYNTAX))
def test_hostile_values_arrive_unchanged_in_every_shell(private_home: Path, tmp_path: Path, shell: str) -> None:
    _hostile_profile(private_home)
    (private_home / ".aws" / "config").write_text("[profile hostile]\nregion = eu-central-1\n")
    proc = run_cli("--eval", "hostile", "--shell", SYNTAX[shell])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == EXPECTED_TEXT[SYNTAX[shell]]
    require_program(shell)  # skipped on a developer's machine without it; in CI a failure
    script = tmp_path / "exports"
    script.write_text(proc.stdout)
    clean_env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "AWS_SESSION_TOKEN": "stale"}
    argv = [*RUNNERS[shell], str(script), sys.executable, DUMP]
    out = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, env=clean_env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == EXPECTED_ENV
    assert not list(tmp_path.glob("PWNED*"))


def test_shell_is_detected_from_SHELL(private_home: Path) -> None:
    _hostile_profile(private_home)
    for shell, prefix in (("/bin/tcsh", "setenv "), ("/usr/bin/fish", "set -gx "), ("/bin/zsh", "export ")):
        assert run_cli("--eval", "hostile", env={"SHELL": shell}).stdout.startswith(prefix)


def test_static_credentials_unset_the_token_in_each_syntax(private_home: Path) -> None:
    path = private_home / ".aws" / "credentials"
    path.parent.mkdir()
    path.write_text("[svc]\naws_access_key_id = AKIASVCSVCSVCSVCSVC1\naws_secret_access_key = s\n")
    for shell, line in (
        ("sh", "unset AWS_SESSION_TOKEN\n"),
        ("csh", "unsetenv AWS_SESSION_TOKEN;\n"),
        ("fish", "set -e AWS_SESSION_TOKEN;\n"),
    ):
        assert line in run_cli("--eval", "svc", "--shell", shell).stdout


def test_credential_process_with_the_real_aws_cli(manager: FakeAws) -> None:
    proc = run_cli("--add-process-profile", "sue")
    assert proc.returncode == 0, proc.stderr
    cfg = iamsorry.read_aws_config()["sue-auto"]
    assert cfg["credential_process"].endswith("--credential-process sue")
    doc = json.loads(run_cli("--credential-process", "sue").stdout)
    assert set(doc) == {"Version", "AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"}
    assert doc["Version"] == 1 and doc["Expiration"].endswith("Z")
    assert aws_cli_arn("sue-auto", {"AWS_REGION": REGION}) == "arn:aws:iam::123456789012:user/iam-sorry/sue"
    with iamsorry.Store().edit() as s:  # [sue] runs out; the next AWS CLI call must still work
        s.creds.set("sue", {"expiration": "2020-01-01T00:00:00Z"})
    manager.shim.expire_sessions()
    manager.shim.reset_calls()
    assert aws_cli_arn("sue-auto", {"AWS_REGION": REGION}) == "arn:aws:iam::123456789012:user/iam-sorry/sue"
    assert manager.shim.calls["GetSessionToken"] == 1


def test_credential_process_refreshes_inside_botocores_window(manager: FakeAws) -> None:
    soon = iamsorry.format_time(iamsorry.now() + 14 * 60)  # botocore refreshes at 15 min
    with iamsorry.Store().edit() as s:
        s.creds.set("sue", {"expiration": soon})
    doc = json.loads(run_cli("--credential-process", "sue", "--min-ttl", "0").stdout)
    assert iamsorry.parse_time(doc["Expiration"]) - iamsorry.now() > 35 * 3600


def test_credential_process_of_the_manager_is_long_term(manager: FakeAws) -> None:
    doc = json.loads(run_cli("--credential-process", "sue-mgr").stdout)
    assert "Expiration" not in doc and "SessionToken" not in doc
    assert doc["AccessKeyId"].startswith("AKIA")


def test_credential_process_errors_are_one_line_and_no_stdout(private_home: Path) -> None:
    proc = run_cli("--credential-process", "ghost")
    assert_clean_error(proc, "[ghost]")
    assert proc.stdout == ""


def test_quiet_silences_all_but_errors(manager: FakeAws) -> None:
    loud = run_cli("sue-x")
    assert "Successfully updated" in loud.stderr
    quiet = run_cli("sue-y", "--quiet")
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert_clean_error(run_cli("bob", "--quiet"), "outside your namespace")


def test_messages_mask_access_key_ids(aws: FakeAws, ed25519: Path) -> None:
    """Bootstrap names both keys it handles; it must name them masked.  (Every
    run_cli also scans all it prints for an unmasked id.)"""
    assert iamsorry.mask_key_id("AKIAIOSFODNN7EXAMPLE") == "AKIA…MPLE"
    assert iamsorry.mask_key_id("ASIAIOSFODNN7EXAMPLE") == "ASIA…MPLE"
    key = hand_over()
    boot = run_cli(env={**exported(key), "NO_COLOR": "1"})
    assert boot.returncode == 0, boot.stderr
    (new_key,) = set(aws.key_status("sue-mgr")) - {key[0]}
    minted = aws.profiles()["sue"]["aws_access_key_id"]
    for key_id in (key[0], new_key):
        assert iamsorry.mask_key_id(key_id) in boot.stderr  # named, so the check below means something
    for key_id in (key[0], new_key, minted):
        assert key_id not in boot.stdout + boot.stderr
    assert "\033[" not in boot.stderr


def test_process_profile_quotes_a_path_with_spaces(private_home: Path, tmp_path: Path) -> None:
    import shlex

    folder = tmp_path / "my tools"
    folder.mkdir()
    script = folder / "iam-sorry"
    shutil.copy(iamsorry.__file__, script)
    script.chmod(0o755)
    path = private_home / ".aws" / "credentials"
    path.parent.mkdir()
    path.write_text("[svc]\naws_access_key_id = AKIASVCSVCSVCSVCSVC1\naws_secret_access_key = s\n")
    proc = subprocess.run(
        [sys.executable, str(script), "--add-process-profile", "svc"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    assert proc.returncode == 0, proc.stderr
    line = iamsorry.read_aws_config()["svc-auto"]["credential_process"]
    argv = shlex.split(line)
    assert argv[0] == str(script) and argv[1:] == ["--credential-process", "svc"]
    doc = json.loads(subprocess.run(argv, capture_output=True, text=True).stdout)
    assert doc["AccessKeyId"] == "AKIASVCSVCSVCSVCSVC1"


def test_eval_of_static_profile_quotes_and_unsets_token(private_home: Path) -> None:
    creds_file(private_home).write_text(
        "[svc]\naws_access_key_id = AKIAXXXXXXXXXXXXXXX1\naws_secret_access_key = it's$(x)`y`\n"
    )
    proc = run_cli("--eval", "svc", env={"SHELL": "/bin/bash"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (
        "export AWS_ACCESS_KEY_ID='AKIAXXXXXXXXXXXXXXX1'\n"
        "export AWS_SECRET_ACCESS_KEY='it'\\''s$(x)`y`'\n"
        "unset AWS_SESSION_TOKEN\nunset AWS_CREDENTIAL_EXPIRATION\n"
    )
    out = subprocess.run(
        ["sh", "-c", proc.stdout + 'printf %s "$AWS_SECRET_ACCESS_KEY"'],
        capture_output=True,
        text=True,
        env={"AWS_SESSION_TOKEN": "stale", "PATH": os.environ["PATH"]},
    )
    assert out.stdout == "it's$(x)`y`"
