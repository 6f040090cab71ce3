-- A stream's deletion on PostgreSQL is two transactions (`Storage::delete_stream`). The first
-- waits for the commits in flight that hold readings (a `SHARE ROW EXCLUSIVE` lock on
-- `readings`: the storage writer checks that a commit's streams exist after it has inserted
-- their readings, no longer by updating every stream row) and deletes the stream's row, its
-- state and its anomalies, and records its id here; the second deletes its readings, which
-- may be many, without holding that lock, and then the id. A deletion cut short between the
-- two is finished at the next start.
CREATE TABLE streams_deleted (id BIGINT PRIMARY KEY);
