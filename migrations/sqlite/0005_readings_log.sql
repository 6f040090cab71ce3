-- SQLite only: readings as they are committed, in arrival order. `readings` is clustered by
-- (stream_id, ts), so a commit of one reading for each of 1,000 streams wrote 1,000 of its
-- leaf pages; appended here it writes a few. The storage writer moves the log into
-- `readings` in (stream_id, ts) order once it holds enough rows (or the writer is idle),
-- touching each stream's leaf once for all its rows (docs/PERFORMANCE.md). Reads take both
-- tables: a stream's rows here are always newer than its rows in `readings`.
CREATE TABLE readings_log (
    stream_id     BIGINT  NOT NULL,
    ts            BIGINT  NOT NULL,
    value         DOUBLE PRECISION NOT NULL,
    expected      DOUBLE PRECISION NOT NULL,
    lower         DOUBLE PRECISION NOT NULL,
    upper         DOUBLE PRECISION NOT NULL,
    score         DOUBLE PRECISION NOT NULL,
    anomaly       BIGINT  NOT NULL,
    channels_json TEXT
);
