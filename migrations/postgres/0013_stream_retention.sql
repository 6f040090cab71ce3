-- A stream's own retention of raw readings in milliseconds (`PUT /v1/streams/{stream}`
-- `retention`); 0: the service's (`--retention`), which may be none.
ALTER TABLE streams ADD COLUMN retention_ms BIGINT NOT NULL DEFAULT 0;
-- The retention's task asks for the shortest of them before each pass.
CREATE INDEX streams_retention ON streams (retention_ms) WHERE retention_ms > 0;
