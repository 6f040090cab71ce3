#!/usr/bin/env python3
"""Overload: a burst far above what `tsad serve` can commit, and its resident memory.

1. Measures the sustainable rate: a few clients post multi-stream batches back to back
   (each waits for its answer) for --measure seconds.
2. Bursts: enough concurrent clients, each firing without pause, to offer at least
   --factor times that rate for --burst seconds. Every answer must be 200 or 429/503 with
   Retry-After; nothing else, and the server must survive.
3. Samples the server's resident set (VmRSS) throughout and reports the baseline, the
   peak during the burst and the value after it; checks every acknowledged reading is
   stored.

    scripts/overload.py                   # debug binary, scratch SQLite
    scripts/overload.py --binary target/release/tsad --factor 10

Prints one JSON line; exits 1 on a 5xx, a crash, or a lost acknowledged reading.
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_TS = 1_767_225_600_000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body, timeout=60.0):
    req = urllib.request.Request(url, data=body, method="POST", headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            return r.status, r.headers.get("retry-after")
    except urllib.error.HTTPError as e:
        e.read()
        return e.code, e.headers.get("retry-after")


def get_json(url, timeout=30.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class Load:
    """Clients over disjoint stream sets; each client owns its streams' clocks."""

    def __init__(self, url, streams_per_request):
        self.url = url
        self.per = streams_per_request
        self.lock = threading.Lock()
        self.acked = 0  # readings acknowledged
        self.status = {}
        self.bad = []
        self.stop = threading.Event()
        self.steps = {}  # client id -> next step, kept across runs (a repeat would be a retry)

    def client(self, cid, pause):
        step = self.steps.get(cid, 0)
        while not self.stop.is_set():
            readings = [
                {"stream": f"c{cid}-s{s}", "ts": BASE_TS + step * 1000, "value": 10.0 + (s % 7) + 0.01 * (step % 50)}
                for s in range(self.per)
            ]
            body = json.dumps({"readings": readings}).encode()
            try:
                status, retry = post(self.url + "/v1/readings", body)
            except OSError as e:
                with self.lock:
                    self.bad.append(f"client {cid}: {e}")
                return
            with self.lock:
                self.status[status] = self.status.get(status, 0) + 1
                if status == 200:
                    self.acked += self.per
                elif status in (429, 503):
                    if retry is None:
                        self.bad.append(f"{status} without Retry-After")
                else:
                    self.bad.append(f"unexpected status {status}")
            if status == 200:
                step += 1  # a refused batch is retried unchanged
                self.steps[cid] = step
            if pause:
                time.sleep(pause)

    def run(self, clients, seconds, first_id=0, pause=0.0):
        self.stop.clear()
        threads = [threading.Thread(target=self.client, args=(first_id + i, pause), daemon=True) for i in range(clients)]
        started = time.time()
        for t in threads:
            t.start()
        time.sleep(seconds)
        self.stop.set()
        for t in threads:
            t.join(timeout=120)
        return time.time() - started


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--binary", default=os.path.join(ROOT, "target", "debug", "tsad"))
    p.add_argument("--streams-per-request", type=int, default=100)
    p.add_argument("--measure", type=float, default=10.0)
    p.add_argument("--measure-clients", type=int, default=4)
    p.add_argument("--burst", type=float, default=20.0)
    p.add_argument("--factor", type=float, default=10.0)
    p.add_argument("--min-burst-clients", type=int, default=160)
    a = p.parse_args()

    work = tempfile.mkdtemp(prefix="tsad-overload-")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(os.path.join(work, "tsad.log"), "ab")
    env = dict(os.environ, TSAD_AUTO_TRAIN_JOBS="0", TSAD_LOG="warn")
    server = subprocess.Popen(
        [a.binary, "serve", "--listen", f"127.0.0.1:{port}", "--database-url", f"sqlite://{work}/o.db?mode=rwc"],
        stdout=log,
        stderr=log,
        env=env,
    )
    deadline = time.time() + 60
    while True:
        try:
            if get_json(url + "/readyz", timeout=1)["status"] == "ready":
                break
        except (OSError, ValueError):
            pass
        if time.time() > deadline or server.poll() is not None:
            raise SystemExit("tsad did not start; see " + log.name)
        time.sleep(0.1)

    samples = []
    sampling = threading.Event()

    def sample():
        while not sampling.is_set():
            kib = rss_kib(server.pid)
            if kib:
                samples.append((time.time(), kib))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    baseline = rss_kib(server.pid)

    load = Load(url, a.streams_per_request)
    # Warm the streams (first readings create them) before measuring.
    load.run(a.measure_clients, 3.0)
    before = load.acked
    seconds = load.run(a.measure_clients, a.measure)
    sustainable = (load.acked - before) / seconds
    steady_rss = rss_kib(server.pid)

    # Offered load: each burst client fires back to back, so offered ≈ clients × the rate
    # one client gets alone; with the server saturated each refused request returns fast.
    # More clients than the server admits at once (max_ingest_requests, 64 by default), so
    # the burst meets admission control as well as the queues behind it.
    burst_clients = max(a.min_burst_clients, int(a.measure_clients * a.factor))
    status_before = dict(load.status)
    before = load.acked
    burst_start = time.time()
    seconds = load.run(burst_clients, a.burst, first_id=1000)
    burst_end = time.time()
    burst_acked = load.acked - before
    time.sleep(2.0)
    after_rss = rss_kib(server.pid)
    sampling.set()
    sampler.join()
    peak = max((kib for t, kib in samples if burst_start <= t <= burst_end + 2), default=None)
    burst_status = {k: v - status_before.get(k, 0) for k, v in load.status.items()}
    offered_requests = sum(burst_status.values())

    alive = server.poll() is None
    stored = None
    if alive:
        streams = get_json(url + "/v1/streams?limit=10000")
        stored = sum(s.get("readings", 0) for s in streams.get("streams", []))
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    result = {
        "binary": os.path.relpath(a.binary, ROOT),
        "streams_per_request": a.streams_per_request,
        "sustainable_readings_per_s": round(sustainable),
        "burst_clients": burst_clients,
        "burst_requests_per_s": round(offered_requests / seconds),
        "burst_offered_readings_per_s": round(offered_requests * a.streams_per_request / seconds),
        "burst_accepted_readings_per_s": round(burst_acked / seconds),
        "burst_status_counts": {str(k): v for k, v in sorted(burst_status.items())},
        "rss_mib": {
            "idle": round(baseline / 1024, 1),
            "steady": round(steady_rss / 1024, 1),
            "burst_peak": round(peak / 1024, 1) if peak else None,
            "after": round(after_rss / 1024, 1) if after_rss else None,
        },
        "server_survived": alive,
        "acknowledged": load.acked,
        "stored": stored,
        "problems": load.bad[:5],
    }
    print(json.dumps(result))
    ok = alive and not load.bad and stored is not None and stored >= load.acked
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
