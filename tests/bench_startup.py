#!/usr/bin/env python3
"""Start-up, memory and AWS traffic of iam-sorry, for the README "Performance" section.

    python3 tests/bench_startup.py                  # everything, about a minute
    python3 tests/bench_startup.py --quick          # fewer repetitions, no .pyz build
    python3 tests/bench_startup.py --pyz dist/iam-sorry.pyz --reps 60

Prints Markdown tables, then one verdict line per target.  This is a report,
not a test: it exits 0 whatever the numbers, and 1 only when a command failed
to run.  Start-up is given as a ratio against ``python -c pass`` on the same
interpreter, because that carries across machines and load levels far better
than milliseconds do.  Everything happens in one temporary directory (a venv
with the package installed, .pyz builds, a throwaway HOME, a moto server and
an ssh-agent of this process), all removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "iam-sorry"
REGION = "us-west-2"
ADMIN_KEY = ("AKIAADMINADMINADMIN1", "admin/secret/admin/secret/admin/secret00")
FAR_FUTURE = "2099-01-01T00:00:00Z"
PREDECESSOR_ROW = "| predecessor (quoted, not measured) | `--eval` | 269 | ~19× | | | |"
RSS_TARGET_MIB = 20.0
RSS_REPS = 5
SESSION_FIELDS = ("CreateAccessKey", "GetSessionToken", "DeleteAccessKey")

# Measures one command's peak RSS from a small process.  Needed because the
# kernel carries a parent's high-water mark into every child it forks, so
# wait4() in this process (which hosts moto) would report hundreds of MiB.
RSS_HELPER = (
    "import os, sys\n"
    "pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)\n"
    "_, status, usage = os.wait4(pid, 0)\n"
    "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def say(msg: str) -> None:
    """Progress goes to stderr so that stdout is only the report."""
    print(f"bench: {msg}", file=sys.stderr, flush=True)


@dataclass
class Sample:
    wall_ms: float
    cpu_ms: float
    status: int


@dataclass
class Cmd:
    path: str  # how iam-sorry is started: "entry point", "script", "pyz"
    shown: str  # the command as the table shows it
    argv: list[str]
    expect: str  # a working run prints this on stdout
    target: float | None = None  # the start-up ratio it must stay under
    samples: list[Sample] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(s, attr) for s in self.samples)

    def fastest(self) -> float:
        return min(s.wall_ms for s in self.samples)


@dataclass
class Report:
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cmds: list[Cmd] = field(default_factory=list)
    rss: dict[str, float | None] = field(default_factory=dict)
    calls: dict[str, Counter[str]] = field(default_factory=dict)

    def fail(self, what: str, detail: str = "") -> None:
        tail = "\n    ".join(detail.strip().splitlines()[-6:])
        self.failures.append(f"{what}" + (f"\n    {tail}" if tail else ""))
        say(f"FAILED: {what}")


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The caller's environment without anything that would steer iam-sorry,
    botocore, shiv or the interpreter elsewhere."""
    skip = ("AWS_", "IAM_SORRY_", "SHIV_", "PYTHON", "SSH_AUTH_SOCK", "SSH_AGENT_PID", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
    env.update(HOME=str(home), AWS_EC2_METADATA_DISABLED="true", **extra)
    return env


def run_checked(
    argv: list[str], env: dict[str, str] | None, what: str, report: Report, timeout: float = 180, expect: str = ""
) -> subprocess.CompletedProcess[str] | None:
    """Run to completion; a non-zero exit or missing output is a failure."""
    try:
        proc = subprocess.run(
            argv,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        report.fail(what, str(exc))
        return None
    if proc.returncode != 0 or expect not in proc.stdout:
        report.fail(f"{what} (exit {proc.returncode})", proc.stderr or proc.stdout)
        return None
    return proc


# -- start-up ------------------------------------------------------------------


def spawn(argv: list[str], env: dict[str, str]) -> Sample:
    """One run, output discarded.  posix_spawn + wait4 keep the measuring
    side as thin as possible and give the child's own CPU time."""
    quiet = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
    start = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, env, file_actions=quiet)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    return Sample(wall * 1000, (usage.ru_utime + usage.ru_stime) * 1000, os.waitstatus_to_exitcode(status))


def write_cached_home(home: Path) -> None:
    """A [sue] profile as iam-sorry leaves it after a mint, valid for decades,
    so that --eval takes the cached path and needs neither AWS nor an agent."""
    aws = home / ".aws"
    aws.mkdir(parents=True)
    creds = aws / "credentials"
    creds.write_text(
        "[sue]\naws_access_key_id = ASIABENCHBENCHBENCH1\n"
        "aws_secret_access_key = bench/secret/bench/secret/bench/secret00\n"
        f"aws_session_token = {'IQoJb3JpZ2luX2VjEBench' * 20}\n"
        f"expiration = {FAR_FUTURE}\ncredentials_owner = sue\n"
    )
    creds.chmod(0o600)
    (aws / "config").write_text(f"[profile sue]\nregion = {REGION}\n")


def make_venv(root: Path, report: Report) -> Path | None:
    """The package installed the way users install it, without dependencies:
    the cached paths must not import anything third-party anyway."""
    venv = root / "venv"
    started = time.monotonic()
    if run_checked([sys.executable, "-m", "venv", str(venv)], None, "python -m venv", report) is None:
        return None
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", str(ROOT)]
    if run_checked(pip, None, "pip install --no-deps <repo>", report, timeout=600) is None:
        return None
    report.notes.append(f"venv + `pip install --no-deps` took {time.monotonic() - started:.1f} s")
    return venv


def build_pyzs(root: Path, report: Report) -> list[Path]:
    """Full and --slim bundles, sharing one private build directory so the
    repository's build/ stays untouched."""
    built = []
    for name, extra in (("iam-sorry.pyz", []), ("iam-sorry-slim.pyz", ["--slim"])):
        out = root / name
        say(f"building {name} ...")
        started = time.monotonic()
        argv = [sys.executable, str(ROOT / "build.py"), *extra, "--out", str(out), "--build-dir", str(root / "build")]
        if run_checked(argv, None, f"build.py {' '.join(extra)}".strip(), report, timeout=900) is not None:
            size = out.stat().st_size / 2**20
            report.notes.append(f"{name}: built in {time.monotonic() - started:.1f} s, {size:.1f} MiB")
            built.append(out)
    return built


def startup_commands(venv: Path, pyzs: list[Path]) -> list[Cmd]:
    py, ep = str(venv / "bin" / "python"), str(venv / "bin" / "iam-sorry")
    exports = "AWS_SESSION_TOKEN="
    cmds = [
        Cmd("baseline", "`python -c pass`", [py, "-c", "pass"], ""),
        Cmd("entry point", "`iam-sorry --eval sue`", [ep, "--eval", "sue"], exports, 2.0),
        Cmd(
            "entry point", "`iam-sorry --credential-process sue`", [ep, "--credential-process", "sue"], '"SessionToken"'
        ),
        Cmd("entry point", "`iam-sorry --profiles`", [ep, "--profiles"], "sue"),
        Cmd("script", "`python iam-sorry --eval sue`", [py, str(SCRIPT), "--eval", "sue"], exports, 3.0),
    ]
    cmds += [Cmd("pyz", f"`python {p.name} --eval sue`", [py, str(p), "--eval", "sue"], exports, 3.0) for p in pyzs]
    return cmds


def time_commands(cmds: list[Cmd], env: dict[str, str], reps: int, report: Report) -> None:
    """Interleaved, in a fresh random order per round, so that drift in the
    machine's load spreads evenly over all commands."""
    rng = random.Random(20240101)
    order = list(cmds)
    for _ in range(2):  # warm the page cache and the .pyc files
        for cmd in cmds:
            spawn(cmd.argv, env)
    for _ in range(reps):
        rng.shuffle(order)
        for cmd in order:
            cmd.samples.append(spawn(cmd.argv, env))
    for cmd in cmds:
        bad = [s.status for s in cmd.samples if s.status != 0]
        if bad:
            report.fail(f"{cmd.shown} exited {bad[0]} in {len(bad)} of {reps} timed runs")


def bench_startup(root: Path, args: argparse.Namespace, report: Report) -> None:
    venv = make_venv(root, report)
    if venv is None:
        return
    if args.pyz:
        pyzs = [Path(p).resolve() for p in args.pyz]
    else:
        pyzs = [] if args.quick else build_pyzs(root, report)
    home = root / "cached-home"
    write_cached_home(home)
    env = clean_env(home, SHIV_ROOT=str(root / "shiv"))
    # The check runs double as the .pyz's first run, which extracts it.
    cmds = [
        c
        for c in startup_commands(venv, pyzs)
        if run_checked(c.argv, env, c.shown, report, expect=c.expect) is not None
    ]
    say(f"timing {len(cmds)} commands x {args.reps} interleaved runs ...")
    time_commands(cmds, env, args.reps, report)
    report.cmds = cmds
    for cmd in cmds:
        if cmd.path != "entry point" or "--eval" in cmd.argv:
            report.rss[cmd.shown] = peak_rss_mib(cmd.argv, env, root, report)


# -- peak RSS ------------------------------------------------------------------


def gnu_time() -> str | None:
    """/usr/bin/time if it is GNU time (it needs -f and -o)."""
    path = shutil.which("time", path="/usr/bin:/bin")
    if path is None:
        return None
    probe = subprocess.run([path, "-f", "%M", "-o", os.devnull, "true"], capture_output=True)
    return path if probe.returncode == 0 else None


GNU_TIME = gnu_time()


def rss_prefix(out: Path) -> list[str]:
    """Prepended to a command so that its peak RSS (KiB) lands in ``out``."""
    if GNU_TIME:
        return [GNU_TIME, "-f", "%M", "-o", str(out)]
    return [sys.executable, "-S", "-c", RSS_HELPER, str(out)]


def read_rss_mib(out: Path) -> float | None:
    try:
        # GNU time puts "Command exited with non-zero status" first on failure.
        return int(out.read_text().split()[-1]) / 1024
    except (OSError, ValueError, IndexError):
        return None


def peak_rss_mib(argv: list[str], env: dict[str, str], root: Path, report: Report) -> float | None:
    out = root / "rss.out"
    values = []
    for _ in range(RSS_REPS):
        run_checked([*rss_prefix(out), *argv], env, f"peak RSS of {' '.join(argv[-3:])}", report)
        value = read_rss_mib(out)
        if value is not None:
            values.append(value)
    return statistics.median(values) if values else None


# -- AWS calls ------------------------------------------------------------------


def fake_aws(stack: contextlib.ExitStack, root: Path) -> tuple[Any, dict[str, str]]:
    """The moto server with the identity shim in this process, a real
    ssh-agent holding a passphrase-protected key, and an admin profile."""
    import moto_shim
    from sshkit import Agent, make_key

    say("starting the moto server and an ssh-agent ...")
    url, stop = moto_shim.start_server()
    stack.callback(stop)
    shim = moto_shim.install()
    home = root / "aws-home"
    (home / ".aws").mkdir(parents=True)
    creds = home / ".aws" / "credentials"
    creds.write_text(f"[aws-admin]\naws_access_key_id = {ADMIN_KEY[0]}\naws_secret_access_key = {ADMIN_KEY[1]}\n")
    creds.chmod(0o600)
    (home / ".aws" / "config").write_text(f"[profile aws-admin]\nregion = {REGION}\n")
    ssh = home / ".ssh"
    ssh.mkdir(mode=0o700)
    (root / "agent").mkdir()
    agent = Agent(root / "agent")
    stack.callback(agent.stop)
    agent.add(make_key(ssh))
    env = clean_env(home, SSH_AUTH_SOCK=agent.sock, AWS_ENDPOINT_URL=url, IAM_SORRY_PROPAGATION_TIMEOUT="20")
    return shim, env


def counted(
    shim: Any, label: str, args: list[str], env: dict[str, str], report: Report, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str] | None:
    """Run the CLI once and keep the AWS calls the server saw for it."""
    shim.reset_calls()
    proc = run_checked([*prefix, sys.executable, str(SCRIPT), *args], env, label, report)
    report.calls[label] = Counter(shim.calls)  # a copy: the shim clears its own
    return proc


def expire(credentials: Path, profile: str) -> None:
    """Backdate one profile's expiration, leaving the rest of the file as is."""
    lines, section = [], None
    for line in credentials.read_text().splitlines(keepends=True):
        text = line.strip()
        if text.startswith("[") and text.endswith("]"):
            section = text[1:-1].strip()
        elif section == profile and text.partition("=")[0].strip() == "expiration":
            line = "expiration = 2020-01-01T00:00:00Z\n"
        lines.append(line)
    credentials.write_text("".join(lines))


def handover_env(stdout: str) -> dict[str, str]:
    key_id = stdout.split("aws_access_key_id = ", 1)[1].split()[0]
    secret = stdout.split("aws_secret_access_key = ", 1)[1].split()[0]
    return {"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": REGION}


def bench_aws(stack: contextlib.ExitStack, root: Path, report: Report) -> None:
    """The Quick Start, counting what each step costs at the server."""
    shim, env = fake_aws(stack, root)
    say("running the Quick Start against moto ...")
    made = counted(
        shim,
        "admin: `--profile aws-admin --create-iam-sorry sue-mgr`",
        ["--profile", "aws-admin", "--create-iam-sorry", "sue-mgr"],
        env,
        report,
    )
    if made is None or "aws_secret_access_key = " not in made.stdout:
        report.fail("no key handed over by --create-iam-sorry")
        return
    if (
        counted(
            shim,
            "bootstrap: bare `iam-sorry` with the handed-over key",
            [],
            {**env, **handover_env(made.stdout)},
            report,
        )
        is None
    ):
        return
    counted(shim, "first mint of a new user: `iam-sorry sue-x`", ["sue-x"], env, report)
    rss_out = root / "mint-rss.out"
    counted(
        shim, "daily mint of an existing user: `iam-sorry sue`", ["sue"], env, report, prefix=tuple(rss_prefix(rss_out))
    )
    report.rss["full mint `iam-sorry sue` (moto)"] = read_rss_mib(rss_out)
    expire(Path(env["HOME"]) / ".aws" / "credentials", "sue")
    refresh = counted(shim, "refresh: `--eval sue` with [sue] expired", ["--eval", "sue"], env, report)
    if refresh is not None and "Refreshed [sue]" not in refresh.stderr:
        report.fail("--eval sue did not refresh the expired [sue]", refresh.stderr)
    counted(shim, "role: `iam-sorry --role sue-lambda`", ["--role", "sue-lambda"], env, report)


# -- the report ------------------------------------------------------------------


def header(args: argparse.Namespace) -> str:
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"## iam-sorry {version()}: start-up, memory and AWS calls\n\n"
        f"Python {platform.python_version()} ({sys.executable}), {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average at start {load}; {args.reps} interleaved runs per command.\n"
    )


def version() -> str:
    for line in SCRIPT.read_text().splitlines():
        if line.startswith("__version__ = "):
            return line.split('"')[1]
    return "?"


def startup_table(cmds: list[Cmd]) -> list[str]:
    base = cmds[0]
    rows = [
        "| Path | Command | median ms | × bare | min ms | × bare (min) | CPU ms (median) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for c in cmds:
        rows.append(
            f"| {c.path} | {c.shown} | {c.median('wall_ms'):.1f} | "
            f"{c.median('wall_ms') / base.median('wall_ms'):.2f}× | {c.fastest():.1f} | "
            f"{c.fastest() / base.fastest():.2f}× | {c.median('cpu_ms'):.1f} |"
        )
    return [*rows, PREDECESSOR_ROW]


def rss_table(rss: dict[str, float | None]) -> list[str]:
    method = "GNU time" if GNU_TIME else "wait4 in a small helper process"
    rows = [f"| Command | peak RSS MiB ({method}, median of {RSS_REPS}; the mint: one run) |", "|---|---:|"]
    rows += [f"| {name} | {'n/a' if mib is None else f'{mib:.1f}'} |" for name, mib in rss.items()]
    return rows


def format_calls(calls: Counter[str]) -> str:
    # Counter keeps first-seen order, which is the order the CLI made the calls in.
    return ", ".join(f"{action} {n}" for action, n in calls.items()) or "none"


def calls_table(calls: dict[str, Counter[str]]) -> list[str]:
    rows = ["| Operation | AWS calls (counted at the server) | total |", "|---|---|---:|"]
    rows += [f"| {label} | {format_calls(c)} | {sum(c.values())} |" for label, c in calls.items()]
    return rows


def verdict(ok: bool | None, text: str) -> str:
    return f"- {'SKIP' if ok is None else 'PASS' if ok else 'MISS'}: {text}"


def startup_verdicts(cmds: list[Cmd]) -> list[str]:
    out = []
    for c in cmds[1:]:
        if c.target is not None:
            ratio = c.median("wall_ms") / cmds[0].median("wall_ms")
            out.append(verdict(ratio <= c.target, f"{c.path} {c.shown}: {ratio:.2f}× bare ≤ {c.target}×"))
    return out


def rss_verdicts(rss: dict[str, float | None], cmds: list[Cmd]) -> list[str]:
    out = []
    for c in cmds:
        if "--eval" in c.argv and c.path in ("entry point", "script"):
            mib = rss.get(c.shown)
            text = f"peak RSS of cached {c.path} {c.shown}: {'n/a' if mib is None else f'{mib:.1f}'} MiB"
            out.append(verdict(None if mib is None else mib <= RSS_TARGET_MIB, f"{text} ≤ {RSS_TARGET_MIB:.0f} MiB"))
    return out


def refresh_verdict(calls: dict[str, Counter[str]]) -> str:
    label = next((k for k in calls if k.startswith("refresh")), None)
    if label is None:
        return verdict(None, "refresh: not measured")
    c = calls[label]
    lookups = sum(n for action, n in c.items() if action not in SESSION_FIELDS)
    ok = c["CreateAccessKey"] <= 1 and c["DeleteAccessKey"] <= 1 and lookups <= 1
    return verdict(
        ok,
        f"refresh made {format_calls(c)} ≤ CreateAccessKey 1 + GetSessionToken (+polls) + "
        f"DeleteAccessKey 1 + one lookup (lookups: {lookups})",
    )


def print_report(report: Report, head: str) -> None:
    lines = [head]
    if report.cmds:
        lines += ["### Start-up of a cached profile", "", *startup_table(report.cmds), ""]
    if report.rss:
        lines += ["### Peak memory", "", *rss_table(report.rss), ""]
    if report.calls:
        lines += ["### AWS calls per operation", "", *calls_table(report.calls), ""]
    lines += ["### Verdicts", ""]
    if report.cmds:
        lines += [*startup_verdicts(report.cmds), *rss_verdicts(report.rss, report.cmds)]
    lines += [refresh_verdict(report.calls), ""]
    lines += [f"- note: {n}" for n in report.notes]
    lines += [f"- FAILED: {f}" for f in report.failures]
    print("\n".join(lines))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repetitions and no .pyz build")
    p.add_argument("--pyz", action="append", metavar="PATH", help="time this built .pyz (repeatable); skips the build")
    p.add_argument("--reps", type=int, help="timed runs per command (default 50, --quick 10)")
    args = p.parse_args(argv)
    args.reps = args.reps or (10 if args.quick else 50)
    if args.reps < 1:
        p.error("--reps must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    report = Report()
    head = header(args)
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="iam-sorry-bench-")))
        bench_startup(root, args, report)
        try:
            bench_aws(stack, root, report)
        except Exception as exc:  # noqa: BLE001 - report it, still print what was measured
            report.fail(f"AWS part: {type(exc).__name__}: {exc}")
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    report.notes.append(f"load average at the end {load}; total runtime {time.monotonic() - started:.0f} s")
    print_report(report, head)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
