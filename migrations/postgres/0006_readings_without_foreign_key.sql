-- Readings lose their foreign key to `streams`: PostgreSQL checks a foreign key with one
-- index lookup and one trigger call per inserted row, which was 64 % of the time of a
-- `COPY` of 40,000 readings (273 ms with it, 98 ms without) and held ingest at ~110 k
-- readings/s (docs/PERFORMANCE.md). The storage writer checks instead, once per stream per
-- commit: it updates the stream row of every stream in the commit (locking it) and fails
-- the commit if one is gone; deleting a stream locks its row (`FOR UPDATE`) before it
-- deletes its readings, so readings are never left without their stream.
ALTER TABLE readings DROP CONSTRAINT IF EXISTS readings_stream_id_fkey;
