#!/usr/bin/env python3
"""Where a single reading's time goes on an idle `tsad serve`.

Posts single readings (or `--readings N` a request) to one stream, one at a time over a
kept-alive connection, and prints the client's p50/p99 beside the server's own means over the
same requests (from /metrics): verdict latency (arrival to judged), inference call, commit.

    target/release/tsad serve --database-url sqlite:///tmp/single.db --listen 127.0.0.1:8099 &
    scripts/single-reading.py --url http://127.0.0.1:8099 --requests 3000

Uses a stream named `single-reading-<random>`; warms it up with 300 requests first.
`--pause-ms 5` leaves the server idle between requests (back to back, a request can meet the
work the previous one left for after its reply).
"""
import argparse
import http.client
import json
import random
import time
import urllib.parse


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--pause-ms", type=float, default=0.0, help="wait between requests (0: back to back)")
    p.add_argument("--readings", type=int, default=1, help="readings a request, consecutive of the one stream")
    a = p.parse_args()
    u = urllib.parse.urlparse(a.url)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80)
    stream = f"single-reading-{random.randrange(1 << 30)}"
    base = 1_767_225_600_000

    def post(i):
        first = i * a.readings
        body = json.dumps(
            {"readings": [{"ts": base + k * 1000, "value": float(k % 17)} for k in range(first, first + a.readings)]}
        )
        conn.request("POST", f"/v1/streams/{stream}/readings", body, {"content-type": "application/json"})
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            raise SystemExit(f"unexpected {r.status}")

    def metrics():
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()

    for i in range(300):
        post(i)
    before = metrics()
    latencies = []
    for i in range(300, 300 + a.requests):
        t = time.perf_counter()
        post(i)
        latencies.append((time.perf_counter() - t) * 1e3)
        if a.pause_ms:
            time.sleep(a.pause_ms / 1e3)
    after = metrics()
    latencies.sort()
    n = len(latencies)
    print(f"client: p50 {latencies[n // 2]:.3f} ms, p99 {latencies[int(n * 0.99)]:.3f} ms, {n} requests")

    def value(text, name):
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0

    for h in ["verdict_latency_seconds", "inference_latency_seconds", "commit_latency_seconds"]:
        s = value(after, f"tsad_{h}_sum") - value(before, f"tsad_{h}_sum")
        c = value(after, f"tsad_{h}_count") - value(before, f"tsad_{h}_count")
        print(f"server mean {h}: {1e3 * s / c:.3f} ms" if c else f"server {h}: none")


if __name__ == "__main__":
    main()
