"""The command line: the option table, the fast argv path, help and version, what a cached --eval imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SCRIPT, creds_file, iamsorry, run_cli


@pytest.mark.parametrize(
    ("action", "config"),
    [
        ("--eval", ""),
        ("--eval", "[profile sue]\nbroker = https://broker.example\n"),
        ("--credential-process", ""),  # with a broker it keeps nothing to serve from: it signs in each time
    ],
    ids=["eval", "eval-broker", "credential-process"],
)
def test_cached_eval_imports_nothing_heavy(private_home: Path, action: str, config: str) -> None:
    """A fresh [sue] is exported (or handed to an SDK) without boto3,
    botocore or cryptography loaded at all, and (a broker configured or
    not) without the modules of a network client: urllib, ssl, ctypes,
    gssapi, http, socket."""
    creds_file(private_home).write_text(
        "[sue]\naws_access_key_id = ASIAXXXXXXXXXXXXXXX1\naws_secret_access_key = s\naws_session_token = t\n"
        "expiration = 2099-01-01T00:00:00Z\ncredentials_owner = sue\n"
    )
    if config:
        (private_home / ".aws" / "config").write_text(config)
    code = (
        "import importlib.machinery, sys, io, contextlib\n"
        "before = set(sys.modules)\n"  # site hooks may have imported some of the network ones already
        "m = importlib.machinery.SourceFileLoader('iamsorry', sys.argv[1]).load_module()\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    assert m.main(['{action}', 'sue']) == 0\n"
        "heavy = [n for n in sys.modules if n.split('.')[0] in ('boto3', 'botocore', 'cryptography')]\n"
        "network = [n for n in set(sys.modules) - before if n.split('.')[0] in "
        "('gssapi', 'ctypes', 'ssl', 'urllib', 'http', 'socket')]\n"
        "print(sorted(heavy + network))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(SCRIPT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_version_and_help(private_home: Path) -> None:
    assert run_cli("--version").stdout.strip() == f"iam-sorry {iamsorry.__version__}"
    helptext = run_cli("--help").stdout
    for group in ("for users", "for managers", "for administrators", "output", "examples:"):
        assert group in helptext


@pytest.mark.parametrize(
    "argv",
    [
        ["--eval", "sue"],
        ["--eval=sue", "--shell", "csh"],
        ["--credential-process", "sue", "--min-ttl", "30"],
        ["-q", "--eval", "sue", "--profile", "sue-mgr", "--ssh-key", "/k", "--duration", "12"],
        ["--eval", "sue", "--debug", "--shell=fish"],
    ],
)
def test_fast_argument_path_matches_argparse(argv: list[str]) -> None:
    fast = iamsorry._fast_args(argv)
    assert fast is not None
    assert fast.as_dict() == iamsorry.build_parser().parse_args(argv, namespace=iamsorry.Args()).as_dict()


@pytest.mark.parametrize(
    "argv",
    [
        ["--eval"],
        ["--eval", "sue", "--eval", "x"],
        ["--eval", "sue", "sue"],
        ["--eval", "sue", "--profiles"],
        ["--shell", "zsh", "--eval", "sue"],
        ["sue"],
        ["--eval", "-x"],
        [],
    ],
)
def test_fast_argument_path_leaves_the_rest_to_argparse(argv: list[str]) -> None:
    assert iamsorry._fast_args(argv) is None


def test_every_option_is_declared_once_and_the_fast_path_takes_only_fast_ones() -> None:
    options = iamsorry._options()
    flags = [flag for opt in options for flag in opt.flags]
    assert len(flags) == len(set(flags))
    assert len({opt.name for opt in options}) == len(options)
    fast = sorted(flag for opt in options if "fast" in opt.traits for flag in opt.flags)
    assert fast == sorted(
        ["--eval", "--credential-process", "--shell", "--min-ttl", "--profile", "--ssh-key", "--duration"]
        + ["--quiet", "-q", "--debug", "--json", "--broker", "--broker-login"]
    )
    for opt in options:  # what is not fast goes to argparse, whole
        if "fast" not in opt.traits and opt.flags and not isinstance(opt, iamsorry._Version):
            argv = [opt.flags[0]] if isinstance(opt, iamsorry._Switch) else [opt.flags[0], "x"]
            assert iamsorry._fast_args(["--eval", "sue", *argv]) is None


def test_parse_args_returns_typed_args_from_either_path() -> None:
    for argv in (["--eval", "sue"], ["sue", "--duration", "2"], ["--print-policy"]):
        args = iamsorry.parse_args(argv)
        assert isinstance(args, iamsorry.Args)
    args = iamsorry.parse_args(["sue", "--duration", "2"])
    assert (args.action, args.name, args.hours, args.min_ttl_minutes) == ("mint", "sue", 2, 15)
    assert iamsorry.parse_args(["--print-policy"]).print_policy == ""
    assert iamsorry.parse_args(["--eval", "sue", "-q"]).quiet is True
    with pytest.raises(AttributeError):
        iamsorry.Args().colour = "red"  # type: ignore[attr-defined]
    assert set(iamsorry._HANDLERS) >= {o.name for o in iamsorry._options() if "action" in o.traits}


def test_main_restores_what_it_changes(private_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A host program that calls main() gets its silent library back: our
    message stream, quietness and stderr's error handling as they were."""
    import io

    raw = io.BytesIO()
    stderr = io.TextIOWrapper(raw, encoding="ascii", errors="strict")
    monkeypatch.setattr(sys, "stderr", stderr)
    iamsorry.UI.stream, iamsorry.UI.quiet = None, False
    assert iamsorry.main(["--quiet", "--fix-profiles"]) == 0
    assert iamsorry.main(["--fix-profiles"]) == 0  # ✓ goes out as "?", not a crash
    assert (iamsorry.UI.stream, iamsorry.UI.quiet, stderr.errors) == (None, False, "strict")
    stderr.flush()
    assert b"?" in raw.getvalue()


@pytest.mark.parametrize("action", ["--eval", "--credential-process"])
def test_cached_credentials_read_each_aws_file_once(private_home: Path, action: str) -> None:
    """Every process of a job array pays for each read of ~/.aws (often on NFS)."""
    creds_file(private_home).write_text(
        "[sue]\naws_access_key_id = ASIAXXXXXXXXXXXXXXX1\naws_secret_access_key = s\naws_session_token = t\n"
        "expiration = 2099-01-01T00:00:00Z\ncredentials_owner = sue\n"
    )
    (private_home / ".aws" / "config").write_text("[profile sue]\nregion = us-west-2\n")
    code = (
        "import collections, contextlib, importlib.machinery, io, json, sys\n"
        "m = importlib.machinery.SourceFileLoader('iamsorry', sys.argv[1]).load_module()\n"
        "opened = collections.Counter()\n"
        "def hook(event, args):\n"
        "    if event == 'open' and isinstance(args[0], str) and '/.aws/' in args[0]:\n"
        "        opened[args[0].rsplit('/', 1)[1]] += 1\n"
        "sys.addaudithook(hook)\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert m.main([sys.argv[2], 'sue']) == 0\n"
        "print(json.dumps(opened))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(SCRIPT), action], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"credentials": 1, "config": 1}
