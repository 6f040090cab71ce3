#!/usr/bin/env python3
"""Resident memory per stream: N streams get readings (so each has a live actor with its
recurrent and scoring state), then the server's resident set is read.

    scripts/stream-memory.py --streams 10000,100000 [--binary target/release/tsad]

Streams are created in steps of the given counts (each step adds streams to the same
server); at each step prints the RSS and (RSS − RSS before any stream) / live actors, and the
same for RssAnon, the anonymous part of the RSS (the heap, without the memory-mapped SQLite
database's pages, which the kernel may drop). One JSON line per step.
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_TS = 1_767_225_600_000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid, field="VmRSS"):
    """A resident-set figure of /proc/PID/status in KiB: VmRSS (everything), or RssAnon
    (heap and stacks only: without SQLite's memory-mapped database file, whose pages the
    kernel may drop and share with the page cache)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def post(url, body):
    req = urllib.request.Request(url, data=body, method="POST", headers={"content-type": "application/json"})
    while True:
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                r.read()
                return
        except urllib.error.HTTPError as e:
            if e.code in (429, 503):
                time.sleep(0.2)
                continue
            raise


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "tsad"))
    p.add_argument("--streams", default="10000,100000")
    p.add_argument("--readings", type=int, default=3, help="readings per stream")
    p.add_argument("--per-request", type=int, default=2000)
    p.add_argument("--database-url", help="default: a scratch SQLite file (its page cache and mmap count in RSS)")
    a = p.parse_args()
    work = tempfile.mkdtemp(prefix="tsad-mem-")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(os.path.join(work, "tsad.log"), "ab")
    # Idle actors stay in memory for the whole run (1 M streams take ~15 minutes to create;
    # the default eviction after 600 s idle would empty the first ones meanwhile).
    env = dict(os.environ, TSAD_AUTO_TRAIN_JOBS="0", TSAD_LOG="warn", TSAD_IDLE_EVICT_S="86400")
    server = subprocess.Popen(
        [a.binary, "serve", "--listen", f"127.0.0.1:{port}", "--database-url", a.database_url or f"sqlite://{work}/m.db?mode=rwc"],
        stdout=log,
        stderr=log,
        env=env,
    )
    for _ in range(600):
        try:
            urllib.request.urlopen(url + "/readyz", timeout=1).read()
            break
        except OSError:
            time.sleep(0.1)
    base = rss_kib(server.pid)
    base_anon = rss_kib(server.pid, "RssAnon")
    created = 0
    try:
        for target in [int(x) for x in a.streams.split(",")]:
            started = time.time()
            for step in range(a.readings):
                for first in range(created, target, a.per_request):
                    readings = ",".join(
                        f'{{"stream":"m{s}","ts":{BASE_TS + step * 1000},"value":{10 + (s % 13) * 0.1 + step * 0.01}}}'
                        for s in range(first, min(first + a.per_request, target))
                    )
                    post(url + "/v1/readings", ('{"readings":[' + readings + "]}").encode())
            created = target
            time.sleep(1.0)
            rss = rss_kib(server.pid)
            anon = rss_kib(server.pid, "RssAnon")
            active = None
            for line in urllib.request.urlopen(url + "/metrics").read().decode().splitlines():
                if line.startswith("tsad_active_streams "):
                    active = int(float(line.split()[1]))
            print(
                json.dumps(
                    {
                        "streams": target,
                        "active_actors": active,
                        "rss_mib": round(rss / 1024, 1),
                        "rss_before_streams_mib": round(base / 1024, 1),
                        "kib_per_stream": round((rss - base) / (active or target), 2),
                        "anon_kib_per_stream": round((anon - base_anon) / (active or target), 2),
                        "seconds_to_create": round(time.time() - started, 1),
                    }
                ),
                flush=True,
            )
    finally:
        # A graceful stop writes every stream's scoring state: timed, as an operator's
        # restart waits for it.
        stopping = time.time()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=1800)
        print(json.dumps({"streams": created, "seconds_to_stop": round(time.time() - stopping, 1)}), flush=True)


if __name__ == "__main__":
    main()
