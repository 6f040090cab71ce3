-- SQLite only: a stream's run of readings committed together (32 or more), packed into one
-- row (layout in src/storage/blocks.rs). Rows a reading cost SQLite ~1.7 µs each in the
-- clustered `readings`, most of a 1,000-reading request's commit; a block is one record
-- (docs/PERFORMANCE.md, "Reading blocks"). A stream's readings are in `readings`,
-- `readings_log` and here, never one reading in two of them but for a log move's overlap
-- (0005); reads take all three. Blocks of a stream never overlap in time: keyed by their
-- last reading, the blocks a time range needs are one index range.
CREATE TABLE reading_blocks (
    stream_id BIGINT NOT NULL,
    last_ts   BIGINT NOT NULL,
    first_ts  BIGINT NOT NULL,
    readings  BIGINT NOT NULL,
    data      BLOB   NOT NULL,
    PRIMARY KEY (stream_id, last_ts)
) WITHOUT ROWID;
