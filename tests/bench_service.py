#!/usr/bin/env python3
"""The department service under load, for the README "Department service" figures.

    python3 tests/bench_service.py                  # about a minute
    python3 tests/bench_service.py --clients 50 --requests 40 --stampede 200

On one machine, with real parts: a throwaway MIT Kerberos realm, the real
``iam-sorry serve`` (gunicorn over TLS), a moto server that counts every AWS
call, and clients that each do what ``iam-sorry --credential-process``
does: a new TLS connection and a new Kerberos (SPNEGO) handshake per request.
Clients and server share the machine's cores, so the figures are a floor.

It reports:
1. mints caused by N clients asking at once for a user whose credentials
   have just gone stale (fewer than 15 minutes left): counted at the AWS
   endpoint, target exactly 1;
2. cached credential requests per second with p50 and p99, at M clients;
3. the ratio of a cached credential request to an authenticated /v1/whoami
   on the same server, target <= 1.3x;
4. the service's peak RSS.

This is a report, not a test: it exits 0 whatever the numbers, and 1 only
when something failed to run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import krbkit  # noqa: E402
import moto_shim  # noqa: E402
import servicekit  # noqa: E402
from conftest import iamsorry  # noqa: E402

RATIO_TARGET = 1.3


def say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def stampede(url: str, shim: moto_shim.Shim, clients: int) -> tuple[int, int, float]:
    """(mints of the first request, mints caused by the stampede once those
    credentials are stale, seconds the stampede took)."""
    shim.session_seconds = 900 + 5  # AWS's minimum lifetime: stale (under 15 minutes) 5 s after the mint
    start = shim.calls["CreateAccessKey"]
    iamsorry.broker_credentials(url, "sue-batch", 1)
    first = shim.calls["CreateAccessKey"]
    time.sleep(6)
    shim.session_seconds = None
    gate = threading.Barrier(clients)

    def one(_: int) -> str:
        gate.wait()
        return iamsorry.broker_credentials(url, "sue-batch", 1).access_key_id

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        keys = set(pool.map(one, range(clients)))
    took = time.monotonic() - started
    if len(keys) != 1:
        raise RuntimeError(f"{clients} clients got {len(keys)} different credentials")
    return first - start, shim.calls["CreateAccessKey"] - first, took


def load(call: Callable[[], Any], clients: int, requests: int) -> dict[str, float]:
    """Each of ``clients`` threads makes ``requests`` calls back to back."""
    latencies: list[float] = []
    lock = threading.Lock()

    def worker(_: int) -> None:
        mine = []
        for _ in range(requests):
            t = time.perf_counter()
            call()
            mine.append(time.perf_counter() - t)
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "rps": len(ordered) / wall,
        "p50": 1000 * statistics.median(ordered),
        "p99": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "n": len(ordered),
    }


def peak_rss(pid: int) -> dict[str, float]:
    """VmHWM (peak resident set) of the gunicorn master and its worker, MiB."""
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            status = (proc / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(proc.name) == pid or int(fields.get("PPid", "0").strip() or 0) == pid:
            role = "master" if int(proc.name) == pid else "worker"
            found[role] = int(fields["VmHWM"].split()[0]) / 1024
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stampede", type=int, default=200, help="clients asking at once for stale credentials")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients for the cached load")
    parser.add_argument("--requests", type=int, default=40, help="requests per client in the cached load")
    args = parser.parse_args()
    for name in [n for n in os.environ if n.startswith(("AWS_", "IAM_SORRY_", "KRB5"))]:
        del os.environ[name]
    folder = Path(tempfile.mkdtemp(prefix="iam-sorry-bench-"))
    realm = krbkit.start_realm()
    url, stop_moto = moto_shim.start_server()
    svc = None
    try:
        shim = servicekit.reset_aws(url)
        # The bench measures the service, not its per-principal rate limit.
        svc = servicekit.prepare(folder, realm, url, extra="threads = 64\n\n[limits]\nrate = 0")
        svc.start()
        say(f"service {svc.url} (pid {svc.proc.pid if svc.proc else '?'}), realm {realm.realm}, moto {url}")
        realm.kinit("sue")
        os.environ.update(svc.client_env("sue"))
        iamsorry.broker_request(svc.url, "/v1/create-user", {"user": "sue-batch"})
        report(svc, shim, args)
        return 0
    except Exception as exc:  # noqa: BLE001 - a report: say what failed
        say(f"FAILED: {type(exc).__name__}: {exc}")
        if svc is not None:
            say(svc.log_text()[-2000:])
        return 1
    finally:
        if svc is not None:
            svc.stop()
        stop_moto()
        realm.stop()
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


def report(svc: servicekit.Service, shim: moto_shim.Shim, args: argparse.Namespace) -> None:
    say(f"{args.stampede} clients at once on stale credentials ...")
    before, mints, took = stampede(svc.url, shim, args.stampede)
    say(f"cached load: {args.clients} clients x {args.requests} requests, credentials then whoami ...")
    creds = load(lambda: iamsorry.broker_credentials(svc.url, "sue-batch", 1), args.clients, args.requests)
    whoami = load(lambda: iamsorry.broker_request(svc.url, "/v1/whoami"), args.clients, args.requests)
    single_c = load(lambda: iamsorry.broker_credentials(svc.url, "sue-batch", 1), 1, 100)
    single_w = load(lambda: iamsorry.broker_request(svc.url, "/v1/whoami"), 1, 100)
    assert svc.proc is not None
    rss = peak_rss(svc.proc.pid)
    ratio_load, ratio_single = creds["p50"] / whoami["p50"], single_c["p50"] / single_w["p50"]
    cpus = os.cpu_count()
    print(f"Measured by `python3 tests/bench_service.py` on {cpus} cores (clients, server, KDC and moto share them).\n")
    print("| What | Result |")
    print("| --- | ---: |")
    print(f"| mints caused by {args.stampede} clients at once on stale credentials (at the AWS endpoint) "
          f"| **{mints}** (target 1), all {args.stampede} answered in {took:.1f} s |")  # fmt: skip
    print(f"| cached credentials, {args.clients} clients | {creds['rps']:.0f} req/s, "
          f"p50 {creds['p50']:.1f} ms, p99 {creds['p99']:.1f} ms |")  # fmt: skip
    print(f"| authenticated /v1/whoami, {args.clients} clients | {whoami['rps']:.0f} req/s, "
          f"p50 {whoami['p50']:.1f} ms, p99 {whoami['p99']:.1f} ms |")  # fmt: skip
    print(f"| cached credentials / whoami, p50 at {args.clients} clients | **{ratio_load:.2f}×** "
          f"(target ≤ {RATIO_TARGET}×) |")  # fmt: skip
    print(f"| the same, one client at a time | {ratio_single:.2f}× ({single_c['p50']:.1f} / "
          f"{single_w['p50']:.1f} ms) |")  # fmt: skip
    print(f"| peak RSS of the service | worker {rss.get('worker', 0):.0f} MiB, "
          f"master {rss.get('master', 0):.0f} MiB |")  # fmt: skip
    print()
    print(
        f"verdict: one mint per expiry: {'MET' if mints == 1 else 'MISSED'} ({mints}; {before} for the first request)"
    )
    print(f"verdict: cached/whoami <= {RATIO_TARGET}x: {'MET' if ratio_load <= RATIO_TARGET else 'MISSED'}")


if __name__ == "__main__":
    sys.exit(main())
