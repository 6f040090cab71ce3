-- Training jobs (admin API): parameters and progress as JSON, timestamps in Unix ms.
CREATE TABLE jobs (
    id          BIGSERIAL PRIMARY KEY,
    model       TEXT   NOT NULL,
    status      TEXT   NOT NULL, -- queued | running | succeeded | failed | cancelled
    params      TEXT   NOT NULL,
    progress    TEXT,
    error       TEXT,
    version     TEXT,
    created_at  BIGINT NOT NULL,
    started_at  BIGINT,
    finished_at BIGINT
);
CREATE INDEX jobs_by_time ON jobs (id DESC);
