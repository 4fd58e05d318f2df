#!/usr/bin/env python3
"""Build iam-sorry for air-gapped cluster nodes.

    python3 build.py                      # dist/iam-sorry.pyz for this host
    python3 build.py --python-version 3.9 --platform manylinux2014_aarch64
    python3 build.py --slim               # only the AWS service models iam-sorry uses
    python3 build.py --vendor DIR         # plain importable directory instead of a .pyz

The .pyz is a shiv zipapp holding the script (as module ``iamsorry``) plus boto3,
botocore, cryptography and bcrypt, pinned with hashes by requirements.lock.  Two
builds of the same commit give identical bytes.  Everything runs in a private
virtualenv under build/, so nothing is installed into the user's environment.
See vendor-notes.md for the contents, verification and pin updates.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import inspect
import json
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import time
import venv
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path
from typing import NoReturn

HERE = Path(__file__).resolve().parent
DEFAULT_LOCK = HERE / "requirements.lock"
DEFAULT_SCRIPT = HERE / "iam-sorry"

# Top-level requirements; everything else in the lock is resolved from these.
RUNTIME_REQUIREMENTS = ("bcrypt", "boto3", "botocore", "cryptography")
BUILD_REQUIREMENTS = ("packaging", "pip", "shiv")
LOCK_TOOL_REQUIREMENTS = ("uv",)
# Oldest interpreter the lock must serve.  3.9.0 and 3.9.1 are excluded because
# cryptography declares Requires-Python ">=3.9,!=3.9.0,!=3.9.1".
LOCK_PYTHON_FLOOR = "3.9.2"
CHECK_PYTHONS = ("3.9", "3.10", "3.11", "3.12", "3.13")
CHECK_PLATFORMS = ("manylinux2014_x86_64", "manylinux2014_aarch64")

# Zip timestamps cannot predate 1980, so outside a git checkout every build is
# stamped 1980-01-01T00:00:00Z: still reproducible, obviously not a real date.
FALLBACK_SOURCE_DATE_EPOCH = 315532800
SHEBANG = "/usr/bin/env python3"
ENTRY_POINT = "iamsorry:main"
MARKER_NAME = "iam-sorry-vendor.json"
HELPER_MODULE = "iamsorry_bundle"
PREAMBLE_NAME = "iamsorry_preamble.py"

# --slim keeps these botocore/boto3 service models.  sso, sso-oidc and signin are
# kept because botocore's credential providers create those clients implicitly
# when a profile uses SSO or `aws login`.
SLIM_SERVICES = ("iam", "signin", "sso", "sso-oidc", "sts")

# Extraction housekeeping inside the bundle (see bundle_cleanup).
STAMP_NAME = ".iam-sorry-last-used"
# Each run holds a shared flock on this file in its extraction for its whole
# life; a cleaner removes an old extraction only with an exclusive one.
IN_USE_NAME = ".iam-sorry-in-use"
STAMP_REFRESH_SECONDS = 3600
CLEANUP_GRACE_SECONDS = 86400
# The caller's umask, kept while shiv extracts with a stricter one.
UMASK_VARIABLE = "_IAM_SORRY_UMASK"
# The script's "folder is ours alone" rule and where extractions live, copied
# into __main__.py from the bundled script so that both check alike.
SHARED_WITH_SCRIPT = ("_private_tree", "_shiv_root")

PLATFORM_RE = re.compile(r"manylinux(?:2014|_2_\d+)_(x86_64|aarch64)")
PYTHON_RE = re.compile(r"3\.\d+(?:\.\d+)?")


class BuildError(Exception):
    """A problem the user can act on; printed without a traceback."""


@dataclass(frozen=True)
class Target:
    """The interpreter and platform the bundle will run on."""

    python: str  # "3.11"
    full_version: str  # what pip and markers see, e.g. "3.11.99"
    platform: str | None  # pip platform tag; None means "this host"
    machine: str  # "x86_64", "aarch64"

    @property
    def label(self) -> str:
        return "host" if self.platform is None else f"py{self.python}-{self.platform}"


def supported(python: str) -> str:
    if tuple(int(part) for part in python.split(".")[:2]) < (3, 9):
        raise BuildError(f"iam-sorry needs Python 3.9 or newer, not {python}")
    return python


def host_target() -> Target:
    version = supported(platform.python_version())
    return Target(".".join(version.split(".")[:2]), version, None, platform.machine())


def make_target(python: str | None, plat: str | None) -> Target:
    """Resolve --python-version/--platform; either one alone implies the other."""
    if python is None and plat is None:
        return host_target()
    python = python or ".".join(platform.python_version().split(".")[:2])
    if not PYTHON_RE.fullmatch(python):
        raise BuildError(f"--python-version must look like 3.11 or 3.11.4, not {python!r}")
    supported(python)
    plat = plat or f"manylinux2014_{platform.machine()}"
    match = PLATFORM_RE.fullmatch(plat)
    if not match:
        raise BuildError(f"--platform must be manylinux2014_x86_64 or manylinux2014_aarch64, not {plat!r}")
    minor = ".".join(python.split(".")[:2])
    # Without a patch level assume a current patch release: some packages exclude
    # early patches via Requires-Python (cryptography: !=3.9.0,!=3.9.1).
    full = python if python.count(".") == 2 else f"{python}.99"
    return Target(minor, full, plat, match.group(1))


def target_environment(target: Target) -> dict[str, str]:
    """PEP 508 marker environment of the target node, not of the build host."""
    if target.platform is None:
        from packaging.markers import default_environment

        return {key: str(value) for key, value in default_environment().items()}
    return {
        "implementation_name": "cpython",
        "implementation_version": target.full_version,
        "os_name": "posix",
        "platform_machine": target.machine,
        "platform_python_implementation": "CPython",
        "platform_release": "",
        "platform_system": "Linux",
        "platform_version": "",
        "python_full_version": target.full_version,
        "python_version": target.python,
        "sys_platform": "linux",
    }


# --------------------------------------------------------------------------
# Lock file: one file, several sections, each a pip requirements file with hashes.


def read_lock_sections(path: Path) -> dict[str, str]:
    """Split the lock into its ``# [name]`` sections."""
    if not path.is_file():
        raise BuildError(f"lock file {path} is missing; create it with: python3 build.py --update-lock")
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in path.read_text().splitlines():
        header = re.fullmatch(r"#\s*\[([\w-]+)\]\s*", line)
        if header:
            current = sections.setdefault(header.group(1), [])
        elif current is not None:
            current.append(line)
    return {name: "\n".join(lines) + "\n" for name, lines in sections.items()}


@dataclass(frozen=True)
class LockEntry:
    requirement: str  # "name==version ; marker"
    hashes: tuple[str, ...]


def parse_lock_section(text: str) -> list[LockEntry]:
    """Parse requirements-file syntax: comments, backslash continuations, --hash."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if line:
            logical.append(line)
    entries = []
    for line in logical:
        hashes = tuple(re.findall(r"--hash=(\S+)", line))
        requirement = re.split(r"\s--hash=", " " + line, maxsplit=1)[0].strip()
        entries.append(LockEntry(requirement, hashes))
    return entries


def canonical_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def select_for_target(entries: Iterable[LockEntry], env: dict[str, str]) -> dict[str, LockEntry]:
    """Evaluate the lock's markers against the *target* and keep one pin per name.

    pip would evaluate them against the building interpreter, which is exactly the
    cross-version pitfall this avoids.
    """
    from packaging.requirements import Requirement

    chosen: dict[str, LockEntry] = {}
    for entry in entries:
        req = Requirement(entry.requirement)
        if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
            continue
        name = canonical_name(req.name)
        if name in chosen:
            raise BuildError(
                f"lock pins {name} twice for this target: {chosen[name].requirement!r}, {entry.requirement!r}"
            )
        if not entry.hashes:
            raise BuildError(f"lock entry {entry.requirement!r} has no --hash")
        chosen[name] = LockEntry(f"{req.name}{req.specifier}", entry.hashes)
    missing = [name for name in RUNTIME_REQUIREMENTS if name not in chosen]
    if missing:
        raise BuildError(f"lock has no pin for {', '.join(missing)} on this target; run --update-lock")
    return chosen


def write_requirements(entries: Iterable[LockEntry], path: Path) -> Path:
    """Write marker-free requirement lines so pip cannot re-evaluate markers."""
    lines = [f"{e.requirement} " + " ".join(f"--hash={h}" for h in e.hashes) for e in entries]
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------
# Post-install verification against the target's markers.


@dataclass(frozen=True)
class Dist:
    name: str  # canonical
    version: str
    requires: tuple[str, ...]
    requires_python: str | None


def installed_dists(site_dir: Path) -> dict[str, Dist]:
    dists = {}
    for meta_path in sorted(site_dir.glob("*.dist-info/METADATA")):
        meta = Parser().parsestr(meta_path.read_text(encoding="utf-8"), headersonly=True)
        name = canonical_name(meta["Name"])
        dists[name] = Dist(name, meta["Version"], tuple(meta.get_all("Requires-Dist") or ()), meta["Requires-Python"])
    return dists


def check_installed(site_dir: Path, env: dict[str, str], roots: Iterable[str] = RUNTIME_REQUIREMENTS) -> list[str]:
    """Return problems with the installed set *as seen by the target interpreter*.

    Every Requires-Dist whose marker holds on the target must be installed at a
    matching version, and every installed distribution must be needed by a root.
    """
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    dists = installed_dists(site_dir)
    problems = [f"{r} is not installed" for r in roots if canonical_name(r) not in dists]
    needed = {canonical_name(r) for r in roots}
    todo = sorted(needed & set(dists))
    python = env["python_full_version"]
    while todo:
        dist = dists[todo.pop()]
        if dist.requires_python and not SpecifierSet(dist.requires_python).contains(python, prereleases=True):
            problems.append(f"{dist.name} {dist.version} requires Python {dist.requires_python}")
        for line in dist.requires:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
                continue
            dep = canonical_name(req.name)
            if dep not in dists:
                problems.append(f"{dist.name} requires {line!r} on the target, but {dep} is not installed")
            elif not req.specifier.contains(dists[dep].version, prereleases=True):
                problems.append(f"{dist.name} requires {line!r}, but {dep} {dists[dep].version} is installed")
            if dep in dists and dep not in needed:
                needed.add(dep)
                todo.append(dep)
    problems += [f"{name} is installed but nothing requires it on the target" for name in sorted(set(dists) - needed)]
    return problems


# --------------------------------------------------------------------------
# Staging a site-packages directory.


def run(cmd: Sequence[str | Path], env: dict[str, str] | None = None) -> None:
    args = [os.fspath(c) for c in cmd]
    print("+ " + " ".join(args), flush=True)
    result = subprocess.run(args, env=env)
    if result.returncode:
        raise BuildError(f"command failed with exit code {result.returncode}: {' '.join(args[:4])}")


def pip_install(pins: dict[str, LockEntry], site_dir: Path, target: Target, work: Path) -> None:
    req_file = write_requirements(pins.values(), work / f"requirements-{target.label}.txt")
    cmd: list[str | Path] = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--target",
        site_dir,
        "--no-deps",
        "--require-hashes",
        "--only-binary=:all:",
        "--no-compile",
        "--no-warn-script-location",
        "-r",
        req_file,
    ]
    if target.platform is not None:
        cmd += ["--platform", target.platform, "--python-version", target.full_version, "--implementation", "cp"]
    run(cmd)


def normalise_site_packages(site_dir: Path) -> None:
    """Remove what depends on the build machine rather than on the pins.

    pip writes console scripts to bin/ with the build venv's path in the shebang,
    and lists them (with hashes) in RECORD; file modes follow the umask.
    """
    shutil.rmtree(site_dir / "bin", ignore_errors=True)
    for record in site_dir.glob("*.dist-info/RECORD"):
        lines = record.read_text(encoding="utf-8").splitlines()
        record.write_text("".join(line + "\n" for line in lines if not line.startswith("../")), encoding="utf-8")
    for path in sorted(site_dir.rglob("*")):
        if path.is_symlink():
            raise BuildError(f"unexpected symlink in staged site-packages: {path}")
        if path.is_dir():
            path.chmod(0o755)
        else:
            path.chmod(0o755 if path.stat().st_mode & 0o111 else 0o644)


def slim_service_models(site_dir: Path) -> int:
    """Drop botocore/boto3 service models other than SLIM_SERVICES; return files removed.

    Top-level files in botocore/data (endpoints, partitions, _retry,
    sdk-default-configuration) are what botocore needs to start, so they stay.
    """
    removed = 0
    for data_dir in (site_dir / "botocore" / "data", site_dir / "boto3" / "data"):
        if not data_dir.is_dir():
            raise BuildError(f"--slim: {data_dir} not found")
        for service in sorted(p for p in data_dir.iterdir() if p.is_dir()):
            if service.name not in SLIM_SERVICES:
                removed += sum(1 for p in service.rglob("*") if p.is_file())
                shutil.rmtree(service)
    if not (site_dir / "botocore" / "data" / "sts").is_dir():
        raise BuildError("--slim: botocore has no sts model")
    return removed


def required_glibc(site_dir: Path) -> str | None:
    """Oldest glibc that loads every installed wheel, from the WHEEL files' tags.

    A wheel loads if any of its tags fits, so take each wheel's easiest tag and
    the hardest wheel.  A host build on a new distribution picks manylinux_2_34
    wheels that an older cluster node cannot load.
    """
    legacy = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
    hardest = (0, 0)
    for wheel in site_dir.glob("*.dist-info/WHEEL"):
        needs = []
        for tag in Parser().parsestr(wheel.read_text(encoding="utf-8"), headersonly=True).get_all("Tag") or ():
            plat = tag.rsplit("-", 1)[-1]
            match = re.match(r"manylinux_(\d+)_(\d+)_", plat)
            needs.append((int(match[1]), int(match[2])) if match else legacy.get(plat.split("_", 1)[0], (0, 0)))
        hardest = max(hardest, min(needs, default=(0, 0)))
    return None if hardest == (0, 0) else f"{hardest[0]}.{hardest[1]}"


def vendor_marker(site_dir: Path, target: Target, slim: bool) -> dict[str, object]:
    packages = {d.name: d.version for d in installed_dists(site_dir).values()}
    return {
        "python": target.python,
        "platform": target.platform or "host",
        "machine": target.machine,
        "glibc": required_glibc(site_dir),
        "packages": dict(sorted(packages.items())),
        "slim": slim,
    }


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def stage_dependencies(lock: Path, target: Target, work: Path, slim: bool) -> Path:
    """Install the target's pins into work/site-packages, verify, optionally slim."""
    site_dir = work / "site-packages"
    shutil.rmtree(site_dir, ignore_errors=True)
    site_dir.mkdir(parents=True)
    env = target_environment(target)
    pins = select_for_target(parse_lock_section(read_lock_sections(lock)["runtime"]), env)
    pip_install(pins, site_dir, target, work)
    normalise_site_packages(site_dir)
    problems = check_installed(site_dir, env)
    dists = installed_dists(site_dir)
    for name, entry in pins.items():
        got = dists[name].version if name in dists else "nothing"
        if entry.requirement.partition("==")[2] != got:
            problems.append(f"lock pins {entry.requirement} but {got} was installed")
    if problems:
        raise BuildError(
            f"refusing to build for {target.label}: the installed set is wrong for Python "
            f"{target.full_version} on {target.machine}:\n  " + "\n  ".join(problems)
        )
    if slim:
        print(f"--slim: removed {slim_service_models(site_dir)} service model files")
    write_json(site_dir / MARKER_NAME, vendor_marker(site_dir, target, slim))
    return site_dir


# --------------------------------------------------------------------------
# Code shipped inside the bundle.  The bundle_* functions are copied verbatim
# (inspect.getsource) into the zipapp's __main__.py and into the module
# iamsorry_bundle, so they use only os/sys/time at import time: every
# millisecond here is paid by each `eval $(iam-sorry --eval ...)`.

BUILT_FOR: dict[str, str | None] = {}  # the target; filled in the generated module


def bundle_refuse(folder: str) -> NoReturn:
    """Stop before anything is imported from, or extracted into, a folder someone else may control."""
    real = os.path.realpath(folder)
    where = folder if real == folder else f"{folder} (that is, {real})"
    sys.stderr.write(
        f"iam-sorry: error: {where} is not yours alone: it or a folder above it belongs to another user "
        "or others can write to it, so code found there could be theirs\n"
        "iam-sorry: hint: point SHIV_ROOT at a folder only you can write to (it is created if missing), "
        "or chmod go-w your own folders on that path and remove what another user put there\n"
    )
    raise SystemExit(1)


def bundle_extraction(
    build_id: str, private_tree: Callable[[str], str | None], shiv_root: Callable[[], str]
) -> tuple[str, str]:
    """The checked real SHIV_ROOT and this build's extraction folder in it.

    Stops the run unless the root, and whatever shiv would import from or
    write to in it (the extraction, its site-packages, the half-done .tmp
    extraction, the lock file), is ours alone.  A missing root is created
    private first, so a first extraction is checked like any later one.
    The rule itself is the script's, passed in by the generated __main__.py.
    """
    root = shiv_root()
    umask = os.umask(0o077)  # every folder it creates, not only the last
    try:
        os.makedirs(root, exist_ok=True)
    except OSError:
        pass  # the check names the folder
    finally:
        os.umask(umask)
    real = private_tree(root)
    if real is None:
        bundle_refuse(root)
    name = os.path.basename(os.path.realpath(sys.argv[0]))
    extraction = os.path.join(real, f"{name}_{build_id}")
    tmp = extraction + ".tmp"
    lock = os.path.join(real, f".{name}_{build_id}_lock")
    # What is missing is fine: only we can add it to a root that is ours
    # alone.  The walk up from site-packages covers its extraction.
    for inner, outer in (
        (os.path.join(extraction, "site-packages"), extraction),
        (os.path.join(tmp, "site-packages"), tmp),
        (lock, lock),
    ):
        path = inner if os.path.lexists(inner) else outer
        # Asked again on failure: a concurrent first run renames .tmp away at any moment.
        if os.path.lexists(path) and private_tree(path) != path and os.path.lexists(path):
            bundle_refuse(outer if private_tree(outer) != outer else path)
    return real, extraction


def bundle_fast_site_packages(extraction: str) -> str | None:
    """This build's extracted site-packages, if shiv's bootstrap would only add it to sys.path.

    shiv's bootstrap opens the archive with zipfile (parsing thousands of index
    entries) and imports compileall, subprocess and runpy before it looks.
    bundle_extraction has already checked that the folder is ours alone.
    """
    if any(name.startswith("SHIV_") and name != "SHIV_ROOT" for name in os.environ):
        return None  # interpreter mode, forced extraction, other entry point: shiv decides
    site_packages = os.path.join(extraction, "site-packages")
    return site_packages if os.path.isdir(site_packages) else None


def bundle_bootstrap(root: str) -> None:
    """shiv's own bootstrap, on the checked root, extracting with no group or other write bits.

    shiv creates the extraction's folders with the umask; with 002 they would
    fail the check on every later run.  bundle_preamble restores the umask
    before the entry point or interpreter runs.
    """
    os.environ["SHIV_ROOT"] = root
    umask = os.umask(0o077)
    os.umask(umask | 0o022)
    os.environ[UMASK_VARIABLE] = str(umask)
    import _bootstrap  # shiv's, inside the zipapp

    _bootstrap.bootstrap()


def bundle_enter(site_packages: str, module: str, function: str) -> None:
    """Do what shiv's bootstrap does for an extracted build, then run the entry point."""
    import site

    length = len(sys.path)
    stems = [os.path.splitext(os.path.basename(os.path.normpath(p)))[0] if p else "" for p in sys.path]
    index = next((i for i, stem in enumerate(stems) if stem in ("site-packages", "dist-packages")), None) or length
    site.addsitedir(site_packages)
    sys.path = sys.path[:index] + sys.path[length:] + sys.path[index:length]
    import iamsorry_bundle

    iamsorry_bundle.bundle_preamble(site_packages)
    entry = getattr(__import__(module), function)
    sys.exit(entry())


def bundle_mismatch() -> str | None:
    """Why this interpreter cannot load the bundle's compiled wheels, or None."""
    here = (f"{sys.version_info[0]}.{sys.version_info[1]}", os.uname().machine)
    if sys.implementation.name != "cpython" or (BUILT_FOR["python"], BUILT_FOR["machine"]) != here:
        return (
            f"this bundle is for CPython {BUILT_FOR['python']} on {BUILT_FOR['machine']}, "
            f"but this is {sys.implementation.name} {here[0]} on {here[1]}"
        )
    need = BUILT_FOR.get("glibc")
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
        # Not glibc (musl, macOS): nothing cheap to compare, let the import decide.
        if need and libc.startswith("glibc "):
            have = libc.split()[1]
            if tuple(map(int, have.split(".")[:2])) < tuple(map(int, need.split("."))):
                return f"this bundle's wheels need glibc {need}, but this node has glibc {have}"
    except (AttributeError, ValueError, OSError):
        pass
    return None


def bundle_check_target(site_packages: str) -> None:
    """Stop with advice, before an obscure ImportError, when the wheels cannot load here."""
    problem = None if os.environ.get("IAM_SORRY_SKIP_TARGET_CHECK") else bundle_mismatch()
    if problem is None:
        return
    python, machine = f"{sys.version_info[0]}.{sys.version_info[1]}", os.uname().machine
    sys.stderr.write(
        f"iam-sorry: error: {problem} (built for {BUILT_FOR['platform']})\n"
        f"iam-sorry: hint: build one for this node: python3 build.py --python-version {python} "
        f"--platform manylinux2014_{machine}; IAM_SORRY_SKIP_TARGET_CHECK=1 tries anyway\n"
    )
    raise SystemExit(1)


def bundle_is_stale(root: str, name: str, current_id: str, now: float) -> bool:
    """Is root/name an extraction of another iam-sorry build, unused for the grace period?"""
    import re

    match = re.fullmatch(r".+_([0-9a-f]{64})(\.tmp)?", name)
    base = os.path.join(root, name)
    if not match or match.group(1) == current_id or os.path.islink(base) or not os.path.isdir(base):
        return False
    # Only touch what is recognisably ours: other shiv apps share the root.
    if not os.path.isfile(os.path.join(base, "site-packages", MARKER_NAME)):
        return False
    try:
        last_used = os.stat(base).st_mtime
    except OSError:
        return False
    try:
        last_used = max(last_used, os.stat(os.path.join(base, STAMP_NAME)).st_mtime)
    except OSError:
        pass
    return now - last_used > CLEANUP_GRACE_SECONDS


def bundle_hold(here: str, mode: int) -> int | None:
    """flock ``mode`` (LOCK_SH: this run uses the extraction; LOCK_EX: a
    cleaner may remove it) on its in-use file, without waiting: the fd that
    holds it, or None.  A job started days ago from an older build still
    reads botocore's models from its extraction."""
    import fcntl

    try:
        fd = os.open(os.path.join(here, IN_USE_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def bundle_remove(root: str, name: str) -> bool:
    import fcntl
    import shutil

    held = bundle_hold(os.path.join(root, name), fcntl.LOCK_EX)
    if held is None:
        return False  # a run still uses it (or it cannot be locked: leave it)
    # Rename first: atomic, so concurrent cleaners never delete the same tree
    # twice, and a starting run sees the extraction whole or not at all.
    trash = os.path.join(root, f".{name}.iam-sorry-trash-{os.getpid()}")
    try:
        os.rename(os.path.join(root, name), trash)
    except OSError:
        return False
    finally:
        os.close(held)
    shutil.rmtree(trash, ignore_errors=True)
    if not name.endswith(".tmp"):
        try:
            os.unlink(os.path.join(root, f".{name}_lock"))
        except OSError:
            pass
    return True


def bundle_cleanup(site_packages: str, now: float | None = None) -> list[str]:
    """Delete extractions of other iam-sorry builds unused for CLEANUP_GRACE_SECONDS.

    Each run refreshes a last-used stamp in its own extraction at most once per
    STAMP_REFRESH_SECONDS and only then scans the root, so most runs cost one
    stat.  The running build id is never touched, so concurrent runs are safe.
    """
    here = os.path.dirname(os.path.abspath(site_packages))
    root = os.path.dirname(here)
    now = time.time() if now is None else now
    stamp = os.path.join(here, STAMP_NAME)
    try:
        if now - os.stat(stamp).st_mtime < STAMP_REFRESH_SECONDS:
            return []
    except OSError:
        pass
    try:
        with open(stamp, "a"):
            pass
        os.utime(stamp, (now, now))
    except OSError:
        return []  # read-only cache: not ours to tidy
    import re  # only now: most runs return above, and these imports cost them milliseconds
    import shutil

    current_id = os.path.basename(here).rsplit("_", 1)[-1]
    removed = []
    for name in sorted(os.listdir(root)):
        if re.fullmatch(r"\..+\.iam-sorry-trash-\d+", name):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)  # left by a killed cleaner
        elif bundle_is_stale(root, name, current_id, now) and bundle_remove(root, name):
            removed.append(name)
    return removed


def bundle_preamble(site_packages: str) -> None:
    import fcntl

    site_packages = os.fspath(site_packages)
    bundle_check_target(site_packages)
    bundle_hold(os.path.dirname(os.path.abspath(site_packages)), fcntl.LOCK_SH)  # kept open until the run ends
    if os.environ.get("IAM_SORRY_SHIV_CLEANUP", "1") != "0":
        try:
            bundle_cleanup(site_packages)
        except Exception:  # housekeeping must never break a credential fetch
            pass
    umask = os.environ.pop(UMASK_VARIABLE, "")
    if umask.isdigit():  # set by bundle_bootstrap for shiv's extraction and the stamp above
        os.umask(int(umask))


def generated_source(
    doc: str, imports: str, constants: dict[str, object], funcs: Iterable[Callable[..., object] | str], tail: str = ""
) -> str:
    """A module of constants and functions; a function is given as an object or as its source."""
    head = f'"""{doc}"""\n\nfrom __future__ import annotations\n\n' + "".join(f"import {m}\n" for m in imports.split())
    parts = [head + "".join(f"\n{name} = {value!r}" for name, value in constants.items())]
    parts += [func if isinstance(func, str) else inspect.getsource(func) for func in funcs]
    return "\n\n".join(parts) + tail


def function_sources(source: str, names: Iterable[str]) -> list[str]:
    """The named top-level functions of ``source``, exactly as written there."""
    defs = {node.name: node for node in ast.parse(source).body if isinstance(node, ast.FunctionDef)}
    missing = [name for name in names if name not in defs]
    if missing:
        raise BuildError(f"the script has no top-level function {', '.join(missing)}")
    return [(ast.get_source_segment(source, defs[name]) or "") + "\n" for name in names]


def helper_module_source(target: Target, glibc: str | None) -> str:
    """iamsorry_bundle.py: the target check and extraction clean-up the preamble runs."""
    built_for = {
        "python": target.python,
        "machine": target.machine,
        "platform": target.platform or "host",
        "glibc": glibc,
    }
    constants = {
        "BUILT_FOR": built_for,
        "MARKER_NAME": MARKER_NAME,
        "STAMP_NAME": STAMP_NAME,
        "IN_USE_NAME": IN_USE_NAME,
        "STAMP_REFRESH_SECONDS": STAMP_REFRESH_SECONDS,
        "CLEANUP_GRACE_SECONDS": CLEANUP_GRACE_SECONDS,
        "UMASK_VARIABLE": UMASK_VARIABLE,
    }
    funcs = (
        bundle_mismatch,
        bundle_check_target,
        bundle_is_stale,
        bundle_hold,
        bundle_remove,
        bundle_cleanup,
        bundle_preamble,
    )
    return generated_source(
        "Start-up checks for the iam-sorry zipapp; generated by build.py.", "os sys time", constants, funcs
    )


def main_stub_source(build_id: str, script_source: str) -> str:
    """__main__.py: the ownership check, then a fast path for an already extracted build, else shiv's stub.

    ``script_source`` is the bundled script, whose "ours alone" rule the
    check applies verbatim.
    """
    module, _, function = ENTRY_POINT.partition(":")
    tail = (
        f"\n\n_root, _extraction = bundle_extraction({build_id!r}, {', '.join(SHARED_WITH_SCRIPT)})\n"
        "_site_packages = bundle_fast_site_packages(_extraction)\n"
        "if _site_packages is None:\n    bundle_bootstrap(_root)\n"
        f"else:\n    bundle_enter(_site_packages, {module!r}, {function!r})\n"
    )
    doc = "iam-sorry zipapp entry (shiv layout); generated by build.py."
    funcs: list[Callable[..., object] | str] = [*function_sources(script_source, SHARED_WITH_SCRIPT)]
    funcs += [bundle_refuse, bundle_extraction, bundle_fast_site_packages, bundle_bootstrap, bundle_enter]
    return generated_source(doc, "os sys", {"UMASK_VARIABLE": UMASK_VARIABLE}, funcs, tail)


PREAMBLE_SOURCE = f"""\
# shiv --preamble: runs on every start, before {ENTRY_POINT}; shiv passes site_packages.
import {HELPER_MODULE}

{HELPER_MODULE}.bundle_preamble(site_packages)  # noqa: F821
"""


# --------------------------------------------------------------------------
# The zipapp.


def script_version(script: Path) -> str:
    """Read ``__version__ = "X.Y.Z"`` without importing the script (it needs boto3)."""
    for node in ast.parse(script.read_text(encoding="utf-8")).body:
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant)
            and any(isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets)
        ):
            return str(node.value.value)
    raise BuildError(f"{script} has no literal __version__ = '...'")


def install_script(script: Path, site_dir: Path, target: Target) -> str:
    """Install the script as module iamsorry with a minimal dist-info.

    The dist-info lets importlib.metadata and pip see iam-sorry and records the
    console script, as a wheel built by hatchling would.
    """
    version = script_version(script)
    shutil.copyfile(script, site_dir / "iamsorry.py")
    (site_dir / "iamsorry.py").chmod(0o644)
    glibc = json.loads((site_dir / MARKER_NAME).read_text(encoding="utf-8"))["glibc"]
    (site_dir / f"{HELPER_MODULE}.py").write_text(helper_module_source(target, glibc), encoding="utf-8")
    info = site_dir / f"iam_sorry-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: iam-sorry\nVersion: {version}\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[console_scripts]\niam-sorry = {ENTRY_POINT}\n", encoding="utf-8")
    (info / "top_level.txt").write_text(f"iamsorry\n{HELPER_MODULE}\n", encoding="utf-8")
    return version


def source_date_epoch(script: Path) -> int:
    """SOURCE_DATE_EPOCH if set, else the last commit's time, else a fixed date."""
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return int(os.environ["SOURCE_DATE_EPOCH"])
    try:
        out = subprocess.run(
            ["git", "-C", str(script.parent), "log", "-1", "--format=%ct"], capture_output=True, text=True, check=True
        ).stdout.strip()
        return int(out)
    except (OSError, subprocess.CalledProcessError, ValueError):
        print(f"not a git checkout with commits: using SOURCE_DATE_EPOCH={FALLBACK_SOURCE_DATE_EPOCH}")
        return FALLBACK_SOURCE_DATE_EPOCH


def note_uncommitted(paths: Iterable[Path]) -> None:
    """Say so when the bundle will not match what the commit's epoch suggests."""
    try:
        out = subprocess.run(
            ["git", "-C", str(HERE), "status", "--porcelain", "--", *map(str, paths)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return
    if out.strip():
        print("note: uncommitted changes, so no commit reproduces this build:\n" + out.rstrip())


def finish_zip(src: Path, dst: Path, epoch: int) -> None:
    """Rewrite shiv's archive: sorted entries, fixed metadata, fast-path __main__.py.

    shiv adds its bootstrap files in directory-listing order, with modes from the
    build venv; sorting and fixing them makes the bytes depend only on content.
    """
    date_time = time.gmtime(epoch)[:6]
    with src.open("rb") as f:
        shebang = f.readline()
    with zipfile.ZipFile(src) as zin, dst.open("wb") as out:
        build_id = json.loads(zin.read("environment.json"))["build_id"]
        stub = main_stub_source(build_id, zin.read("site-packages/iamsorry.py").decode("utf-8"))
        out.write(shebang)
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
            for info in sorted(zin.infolist(), key=lambda i: i.filename):
                new = zipfile.ZipInfo(info.filename, date_time=date_time)
                new.compress_type = zipfile.ZIP_DEFLATED
                new.create_system = 3  # Unix, whatever the build OS
                mode = 0o755 if (info.external_attr >> 16) & 0o111 else 0o644
                new.external_attr = (stat.S_IFREG | mode) << 16
                data = stub.encode() if info.filename == "__main__.py" else zin.read(info)
                zout.writestr(new, data)
    dst.chmod(0o755)


def run_shiv(site_dir: Path, work: Path, out: Path, epoch: int) -> None:
    preamble = work / PREAMBLE_NAME
    preamble.write_text(PREAMBLE_SOURCE, encoding="utf-8")
    preamble.chmod(0o644)
    raw = work / "shiv-output.pyz"
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch)}
    run(
        [
            sys.executable,
            "-m",
            "shiv",
            "--site-packages",
            site_dir,
            "--entry-point",
            ENTRY_POINT,
            "--output-file",
            raw,
            "--python",
            SHEBANG,
            "--compile-pyc",
            "--reproducible",
            "--preamble",
            preamble,
        ],
        env=env,
    )
    partial = out.with_name(out.name + ".part")
    finish_zip(raw, partial, epoch)
    os.replace(partial, out)


def default_output(dist: Path, target: Target, slim: bool) -> Path:
    name = "iam-sorry" if target.platform is None else f"iam-sorry-{target.label}"
    name += "-slim" if slim else ""
    return dist / f"{name}.pyz"


def report(path: Path) -> str:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    Path(f"{path}.sha256").write_text(f"{digest}  {path.name}\n")
    print(f"{path}: {path.stat().st_size:,} bytes ({path.stat().st_size / 1e6:.1f} MB)")
    print(f"sha256 {digest}")
    return digest


def build_pyz(script: Path, lock: Path, out: Path, target: Target, work: Path, slim: bool) -> Path:
    if not script.is_file():
        raise BuildError(f"script {script} not found (use --script)")
    out.parent.mkdir(parents=True, exist_ok=True)
    epoch = source_date_epoch(script)
    note_uncommitted([script, Path(__file__).resolve(), lock])
    site_dir = stage_dependencies(lock, target, work, slim)
    version = install_script(script, site_dir, target)
    normalise_site_packages(site_dir)
    print(f"bundling iam-sorry {version} for {target.label} (SOURCE_DATE_EPOCH={epoch})")
    run_shiv(site_dir, work, out, epoch)
    report(out)
    return out


def build_vendor(dest: Path, lock: Path, target: Target, work: Path, slim: bool) -> Path:
    """Install the target's pins into a plain directory for sys.path."""
    if dest.exists() and any(dest.iterdir()) and not (dest / MARKER_NAME).is_file():
        raise BuildError(f"{dest} exists and is not an iam-sorry vendor directory; refusing to replace it")
    site_dir = stage_dependencies(lock, target, work, slim)
    shutil.rmtree(dest, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(site_dir), str(dest))
    print(f"vendored {target.label} into {dest}; marker {dest / MARKER_NAME}:")
    print((dest / MARKER_NAME).read_text(encoding="utf-8"), end="")
    return dest


# --------------------------------------------------------------------------
# The private build environment.


def venv_python(venv_dir: Path) -> Path:
    return venv_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def venv_site_packages(python: Path) -> Path:
    out = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return Path(out.strip())


def ensure_tool_venv(venv_dir: Path, requirements: str) -> Path:
    """Create (or reuse) a venv holding exactly the hashed ``requirements``."""
    python = venv_python(venv_dir)
    stamp = venv_dir / ".iam-sorry-requirements.sha256"
    digest = hashlib.sha256((sys.version + requirements).encode()).hexdigest()
    if python.exists() and stamp.is_file() and stamp.read_text() == digest:
        return python
    shutil.rmtree(venv_dir, ignore_errors=True)
    venv_dir.parent.mkdir(parents=True, exist_ok=True)
    req_file = venv_dir.parent / f"{venv_dir.name}-requirements.txt"
    req_file.write_text(requirements)
    pip_args: list[str | Path] = [
        "--quiet",
        "--disable-pip-version-check",
        "--require-hashes",
        "--only-binary=:all:",
        "-r",
        req_file,
    ]
    try:
        venv.EnvBuilder(with_pip=True).create(venv_dir)
        run([python, "-m", "pip", "install", *pip_args])
    except (subprocess.CalledProcessError, BuildError) as exc:
        # Debian-style Pythons ship venv without ensurepip; the host's pip can
        # still install the pinned tools straight into the venv.
        print(f"venv with pip failed ({exc}); installing the build tools with the host pip")
        shutil.rmtree(venv_dir, ignore_errors=True)
        venv.EnvBuilder(with_pip=False).create(venv_dir)
        run([sys.executable, "-m", "pip", "install", "--target", venv_site_packages(python), *pip_args])
    stamp.write_text(digest)
    return python


def in_venv(venv_dir: Path) -> bool:
    return Path(sys.prefix).resolve() == venv_dir.resolve()


# --------------------------------------------------------------------------
# Maintaining the lock.

LOCK_HEADER = """\
# iam-sorry pinned dependencies, with sha256 hashes of every published file.
# Regenerate with: python3 build.py --update-lock   (then: python3 build.py --check-targets)
# build.py splits this file at the "# [section]" lines; each section is a pip
# requirements file.  Do not feed the whole file to pip.
#   [runtime]     bundled into the .pyz / vendor dir; markers are evaluated for the
#                 *target* interpreter by build.py, never by pip
#   [build]       the private build venv under build/ (shiv and its needs)
#   [lock-tools]  only for --update-lock
# Resolved for CPython >= {floor} on any platform.
"""


def compile_section(python: Path, requirements: Iterable[str], work: Path) -> str:
    source = work / "requirements.in"
    source.write_text("\n".join(requirements) + "\n")
    result = subprocess.run(
        [
            str(python),
            "-m",
            "uv",
            "pip",
            "compile",
            str(source),
            "--universal",
            "--python-version",
            LOCK_PYTHON_FLOOR,
            "--generate-hashes",
            "--no-header",
            "--no-python-downloads",
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode:
        raise BuildError(f"uv pip compile failed:\n{result.stderr}")
    return result.stdout.replace(str(source), "requirements.in")


def update_lock(lock: Path, work: Path) -> None:
    sections = read_lock_sections(lock) if lock.is_file() else {}
    tools = sections.get("lock-tools")
    if tools is None:
        print("no [lock-tools] section yet: installing the newest uv without hash checking")
        python = venv_python(work / "lock-venv")
        venv.EnvBuilder(with_pip=True, clear=True).create(work / "lock-venv")
        run([python, "-m", "pip", "install", "--quiet", "uv"])
    else:
        python = ensure_tool_venv(work / "lock-venv", tools)
    parts = [LOCK_HEADER.format(floor=LOCK_PYTHON_FLOOR)]
    for name, reqs in (
        ("runtime", RUNTIME_REQUIREMENTS),
        ("build", BUILD_REQUIREMENTS),
        ("lock-tools", LOCK_TOOL_REQUIREMENTS),
    ):
        parts.append(f"\n# [{name}]\n" + compile_section(python, reqs, work))
    lock.write_text("".join(parts))
    print(f"wrote {lock}; now run: python3 build.py --check-targets")


def check_targets(lock: Path, work: Path) -> None:
    """Stage every supported target: proves the lock has hashed wheels for each."""
    failures = []
    for plat in CHECK_PLATFORMS:
        for python in CHECK_PYTHONS:
            target = make_target(python, plat)
            try:
                stage_dependencies(lock, target, work / "check" / target.label, slim=False)
                print(f"ok   {target.label}")
            except BuildError as exc:
                failures.append(f"{target.label}: {exc}")
                print(f"FAIL {target.label}")
    shutil.rmtree(work / "check", ignore_errors=True)
    if failures:
        raise BuildError("\n".join(failures))


# --------------------------------------------------------------------------
# Command line.


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python-version", help="target CPython, e.g. 3.9 (default: this interpreter's)")
    parser.add_argument("--platform", help="target wheel platform: manylinux2014_x86_64 or manylinux2014_aarch64")
    parser.add_argument("--slim", action="store_true", help=f"keep only the {', '.join(SLIM_SERVICES)} service models")
    parser.add_argument("--vendor", metavar="DIR", type=Path, help="install the pinned packages into DIR, not a .pyz")
    parser.add_argument("--out", metavar="PATH", type=Path, help="write the .pyz here (default: DIST/<name>.pyz)")
    parser.add_argument("--dist", metavar="DIR", type=Path, default=HERE / "dist", help="output directory (dist/)")
    parser.add_argument(
        "--build-dir", metavar="DIR", type=Path, default=HERE / "build", help="venv and staging (build/)"
    )
    parser.add_argument("--script", metavar="PATH", type=Path, default=DEFAULT_SCRIPT, help="the iam-sorry script")
    parser.add_argument("--lock", metavar="PATH", type=Path, default=DEFAULT_LOCK, help="lock file")
    parser.add_argument("--update-lock", action="store_true", help="re-resolve the newest pins into the lock")
    parser.add_argument("--check-targets", action="store_true", help="stage every supported target from the lock")
    args = parser.parse_args(argv)
    if args.out and args.vendor:
        parser.error("--out and --vendor are exclusive")
    return args


def locked_tool_venv(build_dir: Path, lock: Path) -> Path:
    """Build venv creation under a lock, so parallel builds sharing build/ do not race."""
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / ".venv.lock", "w") as handle:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX)
        except ImportError:
            pass
        return ensure_tool_venv(build_dir / "venv", read_lock_sections(lock)["build"])


def build_target(
    target: Target, build_dir: Path, lock: Path, slim: bool, vendor: Path | None, script: Path, out: Path
) -> Path:
    """Runs inside the build venv, where shiv and packaging are importable: a vendor directory or a .pyz."""
    kind = "vendor" if vendor else "stage"
    work = build_dir / f"{kind}-{target.label}{'-slim' if slim else ''}"
    work.mkdir(parents=True, exist_ok=True)
    if vendor:
        return build_vendor(vendor, lock, target, work, slim)
    return build_pyz(script, lock, out, target, work, slim)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    build_dir = args.build_dir.resolve()
    started = time.monotonic()
    try:
        if args.update_lock:
            update_lock(args.lock, build_dir)
        elif in_venv(build_dir / "venv") and args.check_targets:
            check_targets(args.lock, build_dir)
            return 0
        elif in_venv(build_dir / "venv"):
            target = make_target(args.python_version, args.platform)
            out = args.out or default_output(args.dist, target, args.slim)
            build_target(target, build_dir, args.lock, args.slim, args.vendor, args.script, out)
            return 0
        else:
            python = locked_tool_venv(build_dir, args.lock)
            code = subprocess.call([str(python), str(Path(__file__).resolve()), *argv])
            if code:
                return code
    except BuildError as exc:
        print(f"build.py: error: {exc}", file=sys.stderr)
        return 1
    print(f"done in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
