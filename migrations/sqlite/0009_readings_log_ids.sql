-- SQLite only: `readings_log` (0005) with ids that are never handed out again. The writer
-- moves the log's rows up to the last id it knows it wrote (src/storage/log.rs): with plain
-- row ids a log emptied by stream deletions began again from 1, and a range of ids could
-- take rows logged after the move began.
CREATE TABLE readings_log_by_id (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
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
INSERT INTO readings_log_by_id (stream_id, ts, value, expected, lower, upper, score, anomaly, channels_json)
    SELECT stream_id, ts, value, expected, lower, upper, score, anomaly, channels_json FROM readings_log ORDER BY rowid;
DROP TABLE readings_log;
ALTER TABLE readings_log_by_id RENAME TO readings_log;
