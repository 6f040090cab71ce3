-- SQLite only: `reading_blocks` (0007) as a rowid table with its key in an index. As a
-- WITHOUT ROWID table each block's record, its blob of 0.5–50 kB included, lived in the
-- key's b-tree: a leaf held a few blocks, inserts by stream landed all over the tree, and
-- most commits split a leaf, renumbering its siblings (docs/PERFORMANCE.md, "The writer's
-- page cache"). Now the records append at the end of the table and the index of
-- (stream_id, last_ts), a few dozen bytes an entry, takes the scattered inserts.
CREATE TABLE reading_blocks_by_rowid (
    id        INTEGER PRIMARY KEY,
    stream_id BIGINT NOT NULL,
    last_ts   BIGINT NOT NULL,
    first_ts  BIGINT NOT NULL,
    readings  BIGINT NOT NULL,
    data      BLOB   NOT NULL
);
INSERT INTO reading_blocks_by_rowid (stream_id, last_ts, first_ts, readings, data)
    SELECT stream_id, last_ts, first_ts, readings, data FROM reading_blocks ORDER BY stream_id, last_ts;
DROP TABLE reading_blocks;
ALTER TABLE reading_blocks_by_rowid RENAME TO reading_blocks;
CREATE UNIQUE INDEX reading_blocks_by_stream ON reading_blocks (stream_id, last_ts);
