#!/usr/bin/env python3
"""Crash safety: sustained ingest into `tsad serve`, SIGKILL at random moments, restart.

Clients post batches of readings to several streams. A batch that got no answer (the
server died) is retried with the same readings after the restart, as a real client would:
tsad's ingest is idempotent on (stream, ts). At the end every stream's stored readings are
compared with what was acknowledged: each acknowledged reading stored exactly once with
its value, nothing stored that was not acknowledged, at most one open anomaly event per
stream, and scoring resumed (a spike after the last restart is flagged).

    scripts/crash-test.py --backend sqlite --cycles 20
    scripts/crash-test.py --backend sqlite --cycles 20 --retention 60   # with the retention deleting
    scripts/crash-test.py --backend postgres --cycles 20 --postgres postgres://postgres@127.0.0.1:5432/postgres

Prints one JSON line with the figures; exits 1 if anything was lost or doubled.
Needs a built binary (cargo build; --binary to choose another).
"""
import argparse
import json
import math
import os
import random
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
BASE_TS = 1_767_225_600_000  # 2026-01-01, ms


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url, method="GET", body=None, timeout=5.0):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


class Server:
    def __init__(self, binary, database_url, port, log, retention):
        self.args = [binary, "serve", "--listen", f"127.0.0.1:{port}", "--database-url", database_url]
        if retention:
            self.args += ["--retention", f"{retention}s"]
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.proc = None

    def start(self):
        env = dict(os.environ, TSAD_AUTO_TRAIN_JOBS="0", TSAD_LOG="warn")
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=self.log, env=env)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if request(self.url + "/readyz", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise SystemExit(f"tsad exited with {self.proc.returncode}; see the log")
            time.sleep(0.05)
        raise SystemExit("tsad did not become ready within 60 s")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def value(stream, i):
    return round(10 + 3 * math.sin(2 * math.pi * i / 60) + 0.3 * math.sin(i * 12.9898 + stream), 6)


class Client(threading.Thread):
    """Posts batches to one stream until stopped; retries unanswered batches unchanged."""

    def __init__(self, server, stream, batch, stats):
        super().__init__(daemon=True)
        self.server, self.stream, self.batch, self.stats = server, stream, batch, stats
        self.name = f"crash-{stream}"
        self.next = 0
        self.acked = {}  # ts -> value
        self.running = True
        self.error = None

    def run(self):
        try:
            while self.running:
                self.post_next()
        except SystemExit as e:  # in a thread it would end the thread quietly
            self.error = str(e)

    def post_next(self):
        readings = [
            {"ts": BASE_TS + i * 1000, "value": value(self.stream, i)} for i in range(self.next, self.next + self.batch)
        ]
        # Once sent, a batch is retried until answered even after stop(): a batch the
        # server committed just before dying must end acknowledged, as a real client's.
        deadline = None
        while True:
            if not self.running:
                deadline = deadline or time.time() + 120
                if time.time() > deadline:
                    raise SystemExit(f"{self.name}: batch unanswered for 120 s after stop")
            try:
                status, reply = request(
                    f"{self.server.url}/v1/streams/{self.name}/readings", "POST", {"readings": readings}
                )
            except (OSError, ValueError):
                self.stats["unanswered"] += 1
                time.sleep(0.1)
                continue  # the server is down or died mid-request: retry the same batch
            if status == 200:
                for r in readings:
                    self.acked[r["ts"]] = r["value"]
                self.next += self.batch
                return
            if status in (429, 503):
                time.sleep(0.05)
                continue
            raise SystemExit(f"{self.name}: unexpected {status}: {reply}")


def stored_readings(url, name):
    out, cursor = [], None
    while True:
        q = f"?limit=10000" + (f"&cursor={cursor}" if cursor else "")
        status, page = request(f"{url}/v1/streams/{name}/readings{q}", timeout=30)
        assert status == 200, page
        out.extend(page["readings"])
        cursor = page.get("next_cursor")
        if not cursor:
            return out


def parse_ts(text):
    # "2026-01-01T00:00:01Z" or with fractional seconds
    from datetime import datetime, timezone

    t = datetime.strptime(text.replace("Z", "+0000").split(".")[0].replace("+0000", ""), "%Y-%m-%dT%H:%M:%S")
    millis = int(text.split(".")[1].rstrip("Z")[:3].ljust(3, "0")) if "." in text else 0
    return int(t.replace(tzinfo=timezone.utc).timestamp() * 1000) + millis


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--cycles", type=int, default=20)
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--min-up", type=float, default=0.5, help="seconds of ingest before a kill, at least")
    p.add_argument("--max-up", type=float, default=2.5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--min-readings",
        type=int,
        default=300,
        help="readings each stream is brought to, after the kills, before the final spike "
        "(the service's default warm-up is 200: a younger stream cannot flag it)",
    )
    p.add_argument("--binary", default=os.path.join(ROOT, "target", "debug", "tsad"))
    p.add_argument(
        "--retention",
        type=int,
        default=0,
        help="seconds (at least 60): serve with --retention, whose passes delete old readings between the kills; "
        "an acknowledged reading may then be missing only if older than the retention before the newest and "
        "than every stored one, and the stream's readings plus readings_expired must be those acknowledged",
    )
    a = p.parse_args()
    rng = random.Random(a.seed)
    work = tempfile.mkdtemp(prefix="tsad-crash-")
    if a.backend == "sqlite":
        database_url = f"sqlite://{work}/crash.db?mode=rwc"
    else:
        name = f"tsad_crash_{os.getpid()}"
        subprocess.run(["psql", a.postgres, "-qc", f"CREATE DATABASE {name}"], check=True)
        database_url = a.postgres.rsplit("/", 1)[0] + "/" + name
    log = open(os.path.join(work, "tsad.log"), "ab")
    server = Server(a.binary, database_url, free_port(), log, a.retention)
    stats = {"unanswered": 0}
    server.start()
    clients = [Client(server, s, a.batch, stats) for s in range(a.streams)]
    for c in clients:
        c.start()
    started = time.time()
    for cycle in range(a.cycles):
        time.sleep(rng.uniform(a.min_up, a.max_up))
        server.kill()
        time.sleep(rng.uniform(0.0, 0.3))
        server.start()
    time.sleep(1.0)
    for c in clients:
        c.running = False
    for c in clients:
        c.join(timeout=60)
    errors = [c.error for c in clients if c.error]
    if errors:
        raise SystemExit("client failed: " + "; ".join(errors))
    # Every stream past its warm-up (a short run or many streams may end before it), so that
    # the spike below can be flagged.
    for c in clients:
        c.batch = 100
        while c.next < a.min_readings:
            c.post_next()
    # Scoring resumed: a spike on every stream after the last restart is flagged.
    flagged = 0
    for c in clients:
        i = c.next
        status, reply = request(
            f"{server.url}/v1/streams/{c.name}/readings",
            "POST",
            {"readings": [{"ts": BASE_TS + i * 1000, "value": value(c.stream, i) + 20.0}]},
        )
        assert status == 200, reply
        c.acked[BASE_TS + i * 1000] = value(c.stream, i) + 20.0
        flagged += len(reply["anomalies"]) > 0
    acked = lost = doubled = unexpected = changed = open_events = miscounted = expired = 0
    status, listed = request(f"{server.url}/v1/streams?limit=10000", timeout=30)
    assert status == 200, listed
    listed = {s["name"]: s for s in listed["streams"]}
    for c in clients:
        rows = stored_readings(server.url, c.name)
        seen = {}
        for r in rows:
            ts = parse_ts(r["ts"])
            if ts in seen:
                doubled += 1
            seen[ts] = r["value"]
        acked += len(c.acked)
        # The retention deletes only a prefix of a stream's readings, all older than the
        # retention before its newest.
        oldest_kept = min(seen) if seen else None
        expirable = max(c.acked) - a.retention * 1000 if a.retention else None
        for ts, v in c.acked.items():
            if ts not in seen:
                if expirable is not None and ts < expirable and (oldest_kept is None or ts < oldest_kept):
                    expired += 1
                else:
                    lost += 1
            elif seen[ts] != v:
                changed += 1
        unexpected += len(set(seen) - set(c.acked))
        # The stream's counts as reported (its own status and the list) against its readings:
        # on PostgreSQL the row holds them as of its last scoring state, the rest is counted.
        status, described = request(f"{server.url}/v1/streams/{c.name}", timeout=30)
        assert status == 200, described
        last = max(seen) if seen else None
        for reported in (described, listed.get(c.name, {})):
            reported_last = parse_ts(reported["last_ts"]) if reported.get("last_ts") else None
            taken = reported.get("readings", 0) + reported.get("readings_expired", 0)
            if reported.get("readings") != len(rows) or reported_last != last or taken != len(c.acked):
                miscounted += 1
                print(f"{c.name}: reported {reported.get('readings')} readings "
                      f"({reported.get('readings_expired')} expired), last {reported_last}; "
                      f"stored {len(rows)}, last {last}; acknowledged {len(c.acked)}", file=sys.stderr)
        status, events = request(f"{server.url}/v1/streams/{c.name}/anomalies?limit=1000", timeout=30)
        assert status == 200, events
        open_now = [e for e in events["anomalies"] if e["status"] == "open"]
        open_events += max(0, len(open_now) - 1)
    server.stop()
    if a.backend == "postgres":
        subprocess.run(["psql", a.postgres, "-qc", f"DROP DATABASE {name}"], check=False)
    result = {
        "backend": a.backend,
        "cycles": a.cycles,
        "streams": a.streams,
        "seconds": round(time.time() - started, 1),
        "readings_acknowledged": acked,
        "requests_unanswered_and_retried": stats["unanswered"],
        "retention_s": a.retention,
        "deleted_by_the_retention": expired,
        "lost": lost,
        "stored_twice": doubled,
        "stored_with_another_value": changed,
        "stored_but_never_acknowledged": unexpected,
        "streams_with_more_than_one_open_event": open_events,
        "stream_reports_whose_counts_differ_from_the_stored_readings": miscounted,
        "streams_flagging_a_spike_after_the_last_restart": flagged,
    }
    print(json.dumps(result))
    ok = lost == doubled == changed == unexpected == open_events == miscounted == 0 and flagged == a.streams
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
