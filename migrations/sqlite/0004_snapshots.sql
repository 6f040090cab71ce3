-- Each stream's scoring state (JSON, ~2 KB) in a table of its own, written every few seconds,
-- apart from the stream row's bookkeeping, which every commit updates: with the state inline
-- a commit of one reading for each of 1,000 streams rewrote 1,000 pages of 4 KB
-- (docs/PERFORMANCE.md). `last_ts` is the last reading the state has judged; a state is
-- replaced only by one at least as recent.
CREATE TABLE stream_snapshots (
    stream_id INTEGER PRIMARY KEY REFERENCES streams (id),
    last_ts   BIGINT NOT NULL,
    snapshot  TEXT   NOT NULL
);
INSERT INTO stream_snapshots (stream_id, last_ts, snapshot)
    SELECT id, COALESCE(last_ts, 0), snapshot FROM streams WHERE snapshot IS NOT NULL;
ALTER TABLE streams DROP COLUMN snapshot;
