#!/usr/bin/env python3
"""Try iam-sorry without an AWS account: play the Quick Start against a local
moto server, in a throwaway HOME, with a throwaway SSH key in a private
ssh-agent.  Run from the repository: ``python3 tests/demo.py``.

``python3 tests/demo.py --service`` plays the department flow instead: an
administrator sets up ``iam-sorry serve`` (gunicorn over TLS) with a
throwaway MIT Kerberos realm, sue signs in with kinit and gets credentials and
a role through the service, ann is refused, and the audit trail is listed and
verified.  It needs the MIT KDC (Debian: krb5-kdc krb5-admin-server
krb5-user) and, to build python-gssapi, libkrb5-dev and a C compiler.

Missing dependencies go into a private venv under ~/.cache/iam-sorry-demo
(kept, so the next run starts at once); ``--no-install`` uses this Python."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parent.parent / "iam-sorry"
# moto_shim patches moto internals and refuses other moto versions.  IAM and
# STS need only flask on top of moto; moto[server] would add ~180 MB (cfn-lint,
# sympy, docker...) that this demo never uses.
PACKAGES = ["boto3", "cryptography", "bcrypt", "moto==5.2.1", "flask", "flask-cors", "awscli"]
SERVICE_PACKAGES = ["gssapi", "gunicorn", "trustme", "k5test", "tomli; python_version < '3.11'"]
REGION = "us-west-2"
SUE_ARN = "arn:aws:iam::123456789012:user/iam-sorry/sue"  # moto's default account
BOLD, PLAIN = ("\033[1m", "\033[0m") if sys.stdout.isatty() and "NO_COLOR" not in os.environ else ("", "")


class DemoError(Exception):
    """A step did not do what the Quick Start promises."""


def missing_dependency(service: bool = False) -> str | None:
    """Why this interpreter cannot run the demo, or None if it can."""
    try:
        for name in ("bcrypt", "boto3", "cryptography") + (("gssapi", "gunicorn", "trustme", "k5test") * service):
            importlib.import_module(name)
        import moto_shim

        moto_shim.install()  # checks the moto internals the shim needs
    except (ImportError, RuntimeError) as exc:
        return str(exc)
    return None


def base_python() -> tuple[str, str]:
    """An interpreter for the venv and its version: moto 5.2, which moto_shim
    is written for, needs Python 3.10+, so on 3.9 borrow a newer one."""
    if sys.version_info >= (3, 10):
        return sys.executable, f"{sys.version_info[0]}.{sys.version_info[1]}"
    for minor in range(14, 9, -1):
        found = shutil.which(f"python3.{minor}")
        # A pyenv shim exists for versions it will refuse to run: try it.
        if found and subprocess.run([found, "-c", "import venv"], capture_output=True).returncode == 0:
            return found, f"3.{minor}"
    raise DemoError("the demo needs Python 3.10 or newer for moto 5.2, and PATH has no python3.10..3.14")


def reexec_in_venv(reason: str, packages: list[str]) -> None:
    """Install into a private venv, never into the user's environment, and
    run this script again inside it."""
    base, version = base_python()
    venv = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "iam-sorry-demo" / f"venv-py{version}"
    python, marker = venv / "bin" / "python", venv / "installed.txt"
    if os.environ.get("IAM_SORRY_DEMO_VENV"):  # we are in it already: do not loop
        raise DemoError(f"the demo venv {venv} still cannot run the demo: {reason}")
    wanted = "\n".join(packages)
    if not marker.exists() or marker.read_text() != wanted:  # absent, half-built or outdated
        print(
            f"This Python cannot run the demo ({reason}).\nInstalling {' '.join(packages)} into {venv} "
            "(once; delete that folder to undo)",
            flush=True,
        )
        if subprocess.run([base, "-m", "venv", "--clear", str(venv)]).returncode != 0:
            raise DemoError(f"could not create {venv}; on Debian/Ubuntu: apt install python3-venv")
        if subprocess.run([str(python), "-m", "pip", "install", "-q", *packages]).returncode != 0:
            raise DemoError(f"pip could not install the demo's packages into {venv} (see above)")
        marker.write_text(wanted)
    os.environ["IAM_SORRY_DEMO_VENV"] = "1"
    os.execv(str(python), [str(python), __file__, *sys.argv[1:]])


def base_env(root: Path, url: str) -> dict[str, str]:
    """The user's environment minus anything that could reach a real AWS
    account or their own ssh-agent."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "IAM_SORRY_")) and k not in ("SSH_AUTH_SOCK", "SSH_AGENT_PID")
    }
    bin_dir = root / "bin"
    bin_dir.mkdir()
    # `iam-sorry` and `python3` in the printed commands mean this interpreter and this work tree.
    for name, argv in (("iam-sorry", [sys.executable, str(SCRIPT)]), ("python3", [sys.executable])):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec {shlex.join(argv)} "$@"\n')
        (bin_dir / name).chmod(0o755)
    path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), env.get("PATH", "/usr/bin:/bin")])
    # SHELL: --eval prints sh syntax; PYTHONUNBUFFERED keeps stdout and stderr in order.
    env.update(
        PATH=path,
        SHELL="/bin/sh",
        PYTHONUNBUFFERED="1",
        AWS_ENDPOINT_URL=url,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_PAGER="",
    )
    return env


def step(command: str, env: dict[str, str], fails: bool = False, expect: tuple[str, ...] = ()) -> str:
    """Show and run one shell command; fail unless it succeeds (or, with
    ``fails``, exits non-zero) and prints every string of ``expect``."""
    print(f"\n{BOLD}$ {command}{PLAIN}", flush=True)
    proc = subprocess.run(
        ["/bin/sh", "-c", command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=180,
    )
    print(proc.stdout, end="", flush=True)
    missing = [text for text in expect if text not in proc.stdout]
    if (proc.returncode != 0) != fails or missing:
        raise DemoError(f"`{command}` exited {proc.returncode}" + (f", output lacks {missing}" if missing else ""))
    return proc.stdout


def whoami(profile: str | None = None) -> str:
    """The real aws CLI when it sits next to this Python, else the same call in boto3."""
    if (Path(sys.executable).parent / "aws").exists():
        return "aws " + (f"--profile {profile} " if profile else "") + "sts get-caller-identity"
    session = f"profile_name={profile!r}" if profile else ""
    return f"python3 -c \"import boto3; print(boto3.Session({session}).client('sts').get_caller_identity()['Arn'])\""


def administrator(root: Path, env: dict[str, str]) -> tuple[str, str]:
    home = root / "admin"
    (home / ".aws").mkdir(parents=True)
    # Any keys work: moto accepts keys it never issued as the account's admin.
    (home / ".aws" / "credentials").write_text(
        "[aws-admin]\naws_access_key_id = AKIADEMOADMIN0000000\n"
        "aws_secret_access_key = demo/admin/secret/not/a/real/one/00\n"
    )
    (home / ".aws" / "config").write_text(f"[profile aws-admin]\nregion = {REGION}\n")
    print(f"\n## 1. Administrator (HOME={home}). The secret is shown: it belongs to a fake local account.")
    out = step(
        "iam-sorry --profile aws-admin --create-iam-sorry sue-mgr",
        {**env, "HOME": str(home)},
        expect=("aws_secret_access_key = ",),
    )
    return out.split("aws_access_key_id = ")[1].split()[0], out.split("aws_secret_access_key = ")[1].split()[0]


def user(root: Path, env: dict[str, str], handover: tuple[str, str], agent_sock: str) -> None:
    (root / "sue" / ".aws").mkdir(parents=True)
    env = {**env, "HOME": str(root / "sue"), "SSH_AUTH_SOCK": agent_sock}
    print(f"\n## 2. Sue, once (HOME={env['HOME']}): bootstrap with the key the administrator sent")
    step("ssh-add -l", env, expect=("ED25519",))
    step(
        f"export AWS_ACCESS_KEY_ID={shlex.quote(handover[0])} AWS_SECRET_ACCESS_KEY={shlex.quote(handover[1])} "
        f"AWS_REGION={REGION}; iam-sorry",
        env,
        expect=("Bootstrap complete",),
    )
    step("cat ~/.aws/credentials", env, expect=("__encrypted__:v2:",))
    step("iam-sorry --profiles", env)
    print("\n## 3. Sue, daily: fresh credentials that belong to user sue")
    step("iam-sorry sue", env, expect=("Successfully updated profile 'sue'",))
    step(f'eval "$(iam-sorry --eval sue)"; {whoami()}', env, expect=(SUE_ARN,))
    print("\n## 4. A role in sue's namespace, usable by any AWS tool through its profile")
    step("iam-sorry --role sue-lambda", env)
    step(whoami("sue-lambda"), env, expect=("assumed-role/iam-sorry-sue-lambda",))
    print("\n## 5. Outside the namespace: refused (a non-zero exit is the expected outcome)")
    step("iam-sorry bob", env, fails=True, expect=("outside your namespace",))
    print("\n## 6. The policy an administrator attaches to sue-mgr")
    step("iam-sorry --print-policy sue --account-id 123456789012 | head -n 15", env, expect=('"Version"',))


def start_agent(root: Path, stack: contextlib.ExitStack) -> str:
    """A passphrase-protected ed25519 key loaded into an ssh-agent that only
    this demo talks to; returns the agent's socket."""
    from sshkit import Agent, make_key

    passphrase = secrets.token_urlsafe(16)
    key = make_key(root / "sue" / ".ssh", passphrase=passphrase, comment="iam-sorry demo key")
    agent = Agent(root)
    stack.callback(stop_agent, agent.pid)
    print(f"ssh-agent pid {agent.pid} on {agent.sock}, key {key} (throwaway passphrase)")
    agent.add(key, passphrase=passphrase)
    return agent.sock


def stop_agent(pid: int) -> None:
    """Kill the agent by pid and wait until it is gone (or an unreaped zombie)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    for _ in range(50):
        try:  # the agent daemonized, so its parent (init) reaps it: a zombie counts as gone
            os.kill(pid, 0)
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return
        except OSError:
            return
        time.sleep(0.1)


def play(stack: contextlib.ExitStack) -> None:
    from moto_shim import start_server

    root = Path(tempfile.mkdtemp(prefix="iam-sorry-demo-"))
    stack.callback(shutil.rmtree, root, ignore_errors=True)  # registered first, so it runs last
    print(f"Throwaway HOMEs under {root}")
    url, stop_server = start_server()
    stack.callback(stop_server)
    print(f"Local fake AWS (moto) at {url}")
    sock = start_agent(root, stack)
    env = base_env(root, url)
    user(root, env, administrator(root, env), sock)


SERVICE_NAMESPACES = """
[namespaces.sue]
members = ["sue"]
actions = ["credentials", "create-user", "create-role", "list"]
max_hours = 12
"""
SERVICE_SUMMARY = (
    "An administrator set up the department service: one IAM user for the service, one role per namespace "
    "(iam-sorry-service.sue) carrying the namespace policy, a keytab, a TLS certificate and a config. Sue signed "
    "in with kinit and, without any AWS key of her own, got credentials that AWS attributes to user sue, a role, "
    "and a credential_process profile for cluster nodes; every IAM call was made by the namespace role with "
    "SourceIdentity sue@IAMSORRY.TEST. Ann, not a member of namespace sue, was refused. The audit trail lists "
    "every request and verifies. The server, the KDC, the moto server and the throwaway folders are gone."
)


def play_service(stack: contextlib.ExitStack) -> None:
    import krbkit
    from moto_shim import start_server

    krbkit.check_tools()
    root = Path(tempfile.mkdtemp(prefix="iam-sorry-demo-"))
    stack.callback(shutil.rmtree, root, ignore_errors=True)
    print(f"Throwaway HOMEs under {root}")
    url, stop_server = start_server()
    stack.callback(stop_server)
    print(f"Local fake AWS (moto) at {url}")
    realm = krbkit.start_realm()
    stack.callback(realm.stop)
    print(f"Throwaway Kerberos realm {realm.realm}: KDC pid {' '.join(map(str, realm.pids))}")
    env = base_env(root, url)
    svc = service_administrator(root, env, realm, url, stack)
    service_users(root, env, realm, svc)


def service_administrator(root: Path, env: dict[str, str], realm: Any, url: str, stack: Any) -> Any:
    import servicekit

    folder = root / "service"
    folder.mkdir()
    servicekit.make_tls(folder)
    port = servicekit.free_port()
    config = servicekit.write_config(folder, realm, port, namespaces=SERVICE_NAMESPACES)
    admin = {**env, "HOME": str(servicekit.admin_home(root)), "PWD": str(folder)}
    print(f"\n## 1. Administrator: keytab {realm.keytab} (HTTP/localhost), a TLS certificate, this config:")
    step(f"cd {folder} && cat service.toml", admin)
    made = step(
        f"cd {folder} && iam-sorry --profile aws-admin --setup-service service.toml",
        admin,
        expect=("iam-sorry-service.sue created", "aws_secret_access_key = "),
    )
    servicekit.store_service_key(folder, made)
    svc = servicekit.Service(
        folder, realm, config, f"https://localhost:{port}", folder / "ca.pem", folder / "serve.log", url
    )
    server_env = {**svc.server_env(), "PATH": env["PATH"]}  # `iam-sorry` is this work tree's
    print("The key goes into the service's own AWS credentials file (aws_profile in the config).")
    step(f"cd {folder} && iam-sorry serve --config service.toml --check", server_env, expect=("keytab",))
    stack.callback(svc.stop)
    svc.start()
    print(f"$ iam-sorry serve --config service.toml &    # gunicorn pid {svc.proc.pid}, {svc.url}, log {svc.log}")
    return svc


def service_users(root: Path, env: dict[str, str], realm: Any, svc: Any) -> None:
    def person(name: str) -> dict[str, str]:
        home = root / name
        (home / ".aws").mkdir(parents=True)
        (home / ".aws" / "config").write_text(f"[default]\nregion = {REGION}\n")
        return {**env, **svc.client_env(name), "HOME": str(home)}

    sue, broker = person("sue"), f"--broker {svc.url}"
    print(f"\n## 2. Sue signs in with Kerberos (HOME={sue['HOME']}); no AWS key is on her machine")
    step(
        f"printf '%s\\n' '{realm.passwords['sue']}' | kinit sue >/dev/null && klist | head -n 2",
        sue,
        expect=("sue@IAMSORRY.TEST",),
    )
    step(f"iam-sorry {broker} --whoami", sue, expect=("namespace sue:",))
    print("\n## 3. Sue: her base user, credentials that are hers, a role, and a profile for cluster nodes")
    step(
        f'curl -sS --negotiate -u : --cacert $IAM_SORRY_CA_BUNDLE -d \'{{"user": "sue"}}\' {svc.url}/v1/create-user',
        sue,
        expect=('"owner": "sue"',),
    )
    step(f"iam-sorry {broker} sue --duration 4", sue, expect=("valid until",))
    step(whoami("sue"), sue, expect=(SUE_ARN,))
    step(f"iam-sorry {broker} --role sue-lambda", sue, expect=("iam-sorry-sue-lambda",))
    step(whoami("sue-lambda"), sue, expect=("assumed-role/iam-sorry-sue-lambda",))
    line = f"credential_process = iam-sorry {broker} --credential-process sue"
    step(
        f"printf '[profile sue-node]\\n{line}\\nregion = {REGION}\\n' >> ~/.aws/config && {whoami('sue-node')}",
        sue,
        expect=(SUE_ARN,),
    )
    ann = person("ann")
    print(f"\n## 4. Ann (HOME={ann['HOME']}) is not a member of namespace sue: refused (non-zero exit expected)")
    step(f"printf '%s\\n' '{realm.passwords['ann']}' | kinit ann >/dev/null", ann)
    step(f"iam-sorry {broker} --credential-process sue", ann, fails=True, expect=("not a member of namespace sue",))
    print("\n## 5. The administrator lists and verifies the audit trail")
    admin = {**env, "HOME": str(svc.folder / "home")}
    step(f"iam-sorry audit list --config {svc.config}", admin, expect=("ann@IAMSORRY.TEST", "403"))
    step(f"iam-sorry audit verify --config {svc.config}", admin, expect=("audit trail intact",))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-install", action="store_true", help="use this Python as is; install nothing")
    parser.add_argument("--service", action="store_true", help="the department service with Kerberos instead")
    args = parser.parse_args()
    # Cleanup runs in `finally`; make SIGTERM and SIGHUP unwind like Ctrl-C does.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))
    started = time.monotonic()
    try:
        reason = missing_dependency(args.service)
        if reason and args.no_install:
            raise DemoError(f"this Python cannot run the demo ({reason}); run it without --no-install")
        if reason:
            reexec_in_venv(reason, PACKAGES + SERVICE_PACKAGES * args.service)
        with contextlib.ExitStack() as stack:
            (play_service if args.service else play)(stack)
    except (DemoError, OSError, subprocess.SubprocessError, AssertionError) as exc:  # sshkit asserts on ssh-add
        print(f"\ndemo: FAILED: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ndemo: interrupted; cleaned up", file=sys.stderr)
        return 130
    if args.service:
        print(f"\nDone in {time.monotonic() - started:.0f} s. {SERVICE_SUMMARY}")
        return 0
    print(
        f"\nDone in {time.monotonic() - started:.0f} s. An administrator created manager sue-mgr, confined to "
        "the namespace sue/sue-*, and handed its key over once. Sue's first run rotated that key away, sealed "
        "the new one in ~/.aws/credentials with her SSH key (opened only through ssh-agent), and from then on "
        "minted short-lived credentials that AWS attributes to user sue herself and to the role "
        "iam-sorry-sue-lambda; a name outside her namespace (bob) was refused. Everything ran against a local "
        "moto server; the agent, the server and the throwaway HOMEs are gone."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
