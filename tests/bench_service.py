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

With ``--instances 2`` it measures two instances of one service on one
PostgreSQL (a throwaway pgkit cluster), clients spread over both:
1. mints per expiry across both instances (N clients at once on stale
   credentials, several expiries), target 1;
2. 5,000 credential requests from 200 clients: errors (must be 0),
   throughput, p50 and p99;
3. each instance's RSS after 1,000 and after 10,000 requests.

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


def stampede(url: str | list[str], shim: moto_shim.Shim, clients: int) -> tuple[int, int, float]:
    """(mints of the first request, mints caused by the stampede once those
    credentials are stale, seconds the stampede took); with several URLs
    the clients take them in turn."""
    urls = [url] if isinstance(url, str) else url
    shim.session_seconds = 900 + 5  # AWS's minimum lifetime: stale (under 15 minutes) 5 s after the mint
    start = shim.calls["CreateAccessKey"]
    iamsorry.broker_credentials(urls[0], "sue-batch", 1)
    first = shim.calls["CreateAccessKey"]
    time.sleep(6)
    shim.session_seconds = None
    gate = threading.Barrier(clients)

    def one(i: int) -> str:
        gate.wait()
        return iamsorry.broker_credentials(urls[i % len(urls)], "sue-batch", 1).access_key_id

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
    parser.add_argument("--instances", type=int, choices=(1, 2), default=1, help="2: two instances on PostgreSQL")
    parser.add_argument("--expiries", type=int, default=3, help="--instances 2: stale-credential stampedes")
    parser.add_argument("--rss-requests", type=int, default=10000, help="--instances 2: requests per instance")
    args = parser.parse_args()
    for name in [n for n in os.environ if n.startswith(("AWS_", "IAM_SORRY_", "KRB5"))]:
        del os.environ[name]
    if args.instances == 2:
        return two_instances(args)
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
    print(
        f"| mints caused by {args.stampede} clients at once on stale credentials (at the AWS endpoint) "
        f"| **{mints}** (target 1), all {args.stampede} answered in {took:.1f} s |"
    )
    print(
        f"| cached credentials, {args.clients} clients | {creds['rps']:.0f} req/s, "
        f"p50 {creds['p50']:.1f} ms, p99 {creds['p99']:.1f} ms |"
    )
    print(
        f"| authenticated /v1/whoami, {args.clients} clients | {whoami['rps']:.0f} req/s, "
        f"p50 {whoami['p50']:.1f} ms, p99 {whoami['p99']:.1f} ms |"
    )
    print(
        f"| cached credentials / whoami, p50 at {args.clients} clients | **{ratio_load:.2f}×** "
        f"(target ≤ {RATIO_TARGET}×) |"
    )
    print(
        f"| the same, one client at a time | {ratio_single:.2f}× ({single_c['p50']:.1f} / {single_w['p50']:.1f} ms) |"
    )
    print(f"| peak RSS of the service | worker {rss.get('worker', 0):.0f} MiB, master {rss.get('master', 0):.0f} MiB |")
    print()
    print(
        f"verdict: one mint per expiry: {'MET' if mints == 1 else 'MISSED'} ({mints}; {before} for the first request)"
    )
    print(f"verdict: cached/whoami <= {RATIO_TARGET}x: {'MET' if ratio_load <= RATIO_TARGET else 'MISSED'}")


def spread_load(urls: list[str], clients: int, requests: int) -> dict[str, float]:
    """``clients`` threads, each making ``requests`` credential requests
    back to back, client i always at ``urls[i % len(urls)]``; failures are
    counted, not raised."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        mine, failed = [], []
        for _ in range(requests):
            t = time.perf_counter()
            try:
                iamsorry.broker_credentials(urls[i % len(urls)], "sue-batch", 1)
                mine.append(time.perf_counter() - t)
            except Exception as exc:  # noqa: BLE001 - a report counts failures
                failed.append(f"{type(exc).__name__}: {exc}")
        with lock:
            latencies.extend(mine)
            errors.extend(failed)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    wall = time.perf_counter() - started
    ordered = sorted(latencies) or [0.0]
    if errors:
        say(f"{len(errors)} errors, first: {errors[0]}")
    return {
        "rps": len(latencies) / wall,
        "p50": 1000 * statistics.median(ordered),
        "p99": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "n": len(latencies),
        "errors": len(errors),
    }


def expiries(urls: list[str], shim: moto_shim.Shim, clients: int, rounds: int) -> list[int]:
    """Mints caused by ``clients`` asking at once (spread over ``urls``) for
    credentials that have just gone stale, ``rounds`` times: every mint's
    lifetime is cut to 15 minutes + 5 s, so its credentials go stale (under
    15 minutes left) 5 s later."""
    shim.session_seconds = 900 + 5
    try:
        iamsorry.broker_credentials(urls[0], "sue-batch", 1)
        mints = []
        for _ in range(rounds):
            time.sleep(6)
            before, gate = shim.calls["CreateAccessKey"], threading.Barrier(clients)

            def one(i: int, gate: threading.Barrier = gate) -> str:
                gate.wait()
                return iamsorry.broker_credentials(urls[i % len(urls)], "sue-batch", 1).access_key_id

            with ThreadPoolExecutor(clients) as pool:
                keys = set(pool.map(one, range(clients)))
            if len(keys) != 1:
                raise RuntimeError(f"{clients} clients got {len(keys)} different credentials")
            mints.append(shim.calls["CreateAccessKey"] - before)
    finally:
        shim.session_seconds = None
    return mints


def rss(svc: servicekit.Service) -> float:
    """The worker's resident set now (VmRSS), MiB."""
    pid = svc.worker_pid()
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:", 1)[1].split()[0]) / 1024


def two_instances(args: argparse.Namespace) -> int:
    import shutil

    import pgkit

    folder = Path(tempfile.mkdtemp(prefix="iam-sorry-bench2-"))
    realm = krbkit.start_realm()
    url, stop_moto = moto_shim.start_server()
    pg = pgkit.start()
    pair: list[servicekit.Service] = []
    try:
        shim = servicekit.reset_aws(url)
        owner, app = servicekit.pg_database(pg, "bench")
        extra = f'threads = 64\naudit_key = "{folder / "shared" / "audit.key"}"'
        a = servicekit.prepare(folder / "a", realm, url, extra, audit=app)
        made = servicekit.audit_init(a.config, owner)
        if made.returncode != 0:
            raise RuntimeError(made.stderr)
        b = servicekit.sibling(a, folder / "b", extra, audit=app)
        bundle = folder / "both-ca.pem"
        bundle.write_bytes(a.ca.read_bytes() + b.ca.read_bytes())
        a.ca = b.ca = bundle
        for svc in (a, b):  # the production default: tests use 1 s to fail fast
            svc.config.write_text(svc.config.read_text().replace("audit_timeout = 1\n", "audit_timeout = 5\n"))
            svc.start()
            pair.append(svc)
        say(f"instances {a.url} and {b.url} on PostgreSQL {pg.port}, realm {realm.realm}, moto {url}")
        realm.kinit("sue")
        os.environ.update(a.client_env("sue"))
        iamsorry.broker_request(a.url, "/v1/create-user", {"user": "sue-batch"})
        report_two(a, b, shim, args)
        return 0
    except Exception as exc:  # noqa: BLE001 - a report: say what failed
        say(f"FAILED: {type(exc).__name__}: {exc}")
        for svc in pair:
            say(svc.log_text()[-2000:])
        return 1
    finally:
        for svc in pair:
            svc.stop()
        pg.destroy()
        stop_moto()
        realm.stop()
        shutil.rmtree(folder, ignore_errors=True)


def report_two(a: servicekit.Service, b: servicekit.Service, shim: moto_shim.Shim, args: argparse.Namespace) -> None:
    urls = [a.url, b.url]
    say(f"{args.expiries} expiries, {args.stampede} clients at once over both instances each time ...")
    mints = expiries(urls, shim, args.stampede, args.expiries)
    per_instance = args.rss_requests
    served = (args.expiries * args.stampede + 1) // 2
    say("warming up to 1,000 requests per instance (as many clients as later: memory follows concurrency) ...")
    warm = spread_load(urls, 200, max(0, 2 * (1000 - served)) // 200)
    early = [rss(a), rss(b)]
    say("5,000 credential requests from 200 clients over both instances ...")
    measured = spread_load(urls, 200, 25)
    rest = max(0, 2 * (per_instance - 1000) - 5000) // 200
    say(f"{200 * rest:,} more, to {per_instance:,} requests per instance ...")
    tail = spread_load(urls, 200, rest)
    late = [rss(a), rss(b)]
    errors = warm["errors"] + measured["errors"] + tail["errors"]
    print(
        f"Measured by `python3 tests/bench_service.py --instances 2` on {os.cpu_count()} cores "
        "(clients, both instances, PostgreSQL, the KDC and moto share them).\n"
    )
    print("| What | Result |")
    print("| --- | ---: |")
    print(
        f"| mints per expiry, {args.stampede} clients at once over 2 instances ({args.expiries} expiries) "
        f"| **{', '.join(map(str, mints))}** (target 1) |"
    )
    print(
        f"| 5,000 credential requests, 200 clients over 2 instances | {measured['rps']:.0f} req/s, "
        f"p50 {measured['p50']:.0f} ms, p99 {measured['p99']:.0f} ms, **{measured['errors']} errors** |"
    )
    for name, first, last in (("A", early[0], late[0]), ("B", early[1], late[1])):
        print(
            f"| instance {name} worker RSS after 1,000 / {per_instance:,} requests | "
            f"{first:.0f} / {last:.0f} MiB ({last - first:+.0f} MiB) |"
        )
    print()
    print(f"verdict: one mint per expiry across instances: {'MET' if set(mints) == {1} else 'MISSED'} ({mints})")
    print(
        f"verdict: no errors in {warm['n'] + measured['n'] + tail['n'] + errors:,} requests: "
        f"{'MET' if errors == 0 else 'MISSED'} ({errors})"
    )


if __name__ == "__main__":
    sys.exit(main())
