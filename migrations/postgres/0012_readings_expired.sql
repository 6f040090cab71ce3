-- Readings the retention has deleted (`Storage::expire_readings`, `--retention`): a stream
-- reports its readings stored as `readings_count - readings_expired`. `readings_count`
-- stays the readings the stream has taken, which its actor counts on from.
ALTER TABLE streams ADD COLUMN readings_expired BIGINT NOT NULL DEFAULT 0;
