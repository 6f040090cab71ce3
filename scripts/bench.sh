#!/usr/bin/env bash
# The benchmark suite (docs/PERFORMANCE.md): builds tsad (release), then measures
#   0. the host: the gaps a thread reading the clock on each core sees (its cores taken away);
#   1. the inference core: LSTM and GRU, hidden 64 and 128, 1 to 100k streams, two workers;
#   2. end to end over loopback HTTP, committed to SQLite and to PostgreSQL: readings/s,
#      p50/p99/p99.9 latency at the maximum rate, at half of it, and for single readings,
#      with requests of 1,000 readings and (SQLite) of 100 and 10;
#   3. resident memory per stream at 10k, 100k and 1M streams;
#   4. training: sequences/s in tsad and in PyTorch on the same work, as a ratio, on two
#      threads and on one.
# Results go to docs/bench/*.json (or $TSAD_BENCH_OUT) and print as tables.
#
# Environment:
#   TSAD_BENCH_SECONDS   seconds per measurement (default 10)
#   TSAD_BENCH_PG        PostgreSQL URL for the end-to-end run, which measures in a scratch
#                        database it creates on that server (default: the local test
#                        server scripts/postgres.sh provides; "none" skips it, loudly)
#   TSAD_BENCH_STREAMS   stream counts for the end-to-end runs (default 1000,10000,100000)
#   TSAD_BENCH_MEMORY    stream counts for the memory run (default 10000,100000,1000000)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
out=${TSAD_BENCH_OUT:-docs/bench}
seconds=${TSAD_BENCH_SECONDS:-10}
streams=${TSAD_BENCH_STREAMS:-1000,10000,100000}
memory=${TSAD_BENCH_MEMORY:-10000,100000,1000000}
mkdir -p "$out"
scripts/libtorch.sh
cargo build --release --quiet --bin tsad
tsad=target/release/tsad
echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), $(free -g | awk '/Mem:/ {print $2}') GiB"

# The host first, idle: a latency tail no shorter than the time its cores are taken away is
# the host's (a virtual machine's steal), not the service's.
echo "== 0. the host's stalls"
$tsad bench stalls --seconds 10 --json "$out/stalls.json"

echo "== 1. inference core"
$tsad bench inference --threads 2 --seconds 3 --json "$out/inference.json"
echo "== 1b. judging alone"
$tsad bench scoring --json "$out/scoring.json"

echo "== 2. end to end, SQLite"
$tsad bench http --streams "$streams" --batch 1000 --clients 8 --seconds "$seconds" --json "$out/http-sqlite.json"
# The same requests carrying 1,000 readings of one stream each.
$tsad bench http --streams 10000 --batch 1000 --per-stream 1000 --clients 8 --seconds "$seconds" \
  --json "$out/http-sqlite-per-stream.json"
# Latency against request size: 100 and 10 readings of one stream a request (the maximum is
# lower, a reading's wait for its request's serial work shorter).
for n in 100 10; do
  $tsad bench http --streams 10000 --batch $n --per-stream $n --clients 8 --seconds "$seconds" \
    --json "$out/http-sqlite-per-stream-$n.json"
done
pg=${TSAD_BENCH_PG:-}
if [[ -z $pg ]]; then
  pg=$(scripts/postgres.sh)
fi
if [[ $pg == none ]]; then
  echo "SKIPPED: end to end on PostgreSQL (TSAD_BENCH_PG=none)"
else
  echo "== 2. end to end, PostgreSQL"
  $tsad bench http --streams "$streams" --batch 1000 --clients 8 --seconds "$seconds" \
    --database-url "$pg" --json "$out/http-postgres.json"
  $tsad bench http --streams 10000 --batch 1000 --per-stream 1000 --clients 8 --seconds "$seconds" \
    --database-url "$pg" --json "$out/http-postgres-per-stream.json"
fi

echo "== 3. memory per stream"
python3 scripts/stream-memory.py --binary "$tsad" --streams "$memory" --database-url "${pg/#none/}" \
  | tee "$out/memory.jsonl"

echo "== 4. training, tsad and PyTorch"
# On the machine's two cores (tsad splits each batch over its threads, PyTorch runs its
# intra-op threads), and on one core each (the same oneDNN kernels on both sides).
$tsad bench training --threads 2 --python .tsad/venv/bin/python --json "$out/training.json"
$tsad bench training --threads 1 --python .tsad/venv/bin/python --json "$out/training-1-thread.json"
