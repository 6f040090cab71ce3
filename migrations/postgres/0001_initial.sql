-- Streams, readings with their verdicts, anomaly events and feedback (DESIGN.md §6).
-- Timestamps are Unix milliseconds (BIGINT) in every backend.

CREATE TABLE streams (
    id              BIGSERIAL PRIMARY KEY,
    name            TEXT    NOT NULL UNIQUE,
    channels        BIGINT  NOT NULL,
    model           TEXT    NOT NULL,
    sensitivity     DOUBLE PRECISION NOT NULL,
    warmup          BIGINT  NOT NULL,
    auto_train      BIGINT  NOT NULL, -- 0 or 1 (sqlx Any has no portable boolean)
    created_at      BIGINT  NOT NULL,
    last_ts         BIGINT,
    readings_count  BIGINT  NOT NULL DEFAULT 0,
    anomalies_count BIGINT  NOT NULL DEFAULT 0,
    -- The stream's scoring state after its last committed reading (JSON): normaliser,
    -- scorer, open event, recurrent state and the model version it belongs to.
    snapshot        TEXT
);

-- One row per reading; the first channel in columns, all channels in `channels_json`
-- for multichannel streams.
CREATE TABLE readings (
    stream_id     BIGINT  NOT NULL REFERENCES streams (id),
    ts            BIGINT  NOT NULL,
    value         DOUBLE PRECISION NOT NULL,
    expected      DOUBLE PRECISION NOT NULL,
    lower         DOUBLE PRECISION NOT NULL,
    upper         DOUBLE PRECISION NOT NULL,
    score         DOUBLE PRECISION NOT NULL,
    anomaly       BIGINT  NOT NULL, -- 0 or 1
    channels_json TEXT,
    PRIMARY KEY (stream_id, ts)
);

-- Anomaly events; (stream_id, start_ts) identifies an event while it is open.
CREATE TABLE anomalies (
    id            BIGSERIAL PRIMARY KEY,
    stream_id     BIGINT  NOT NULL REFERENCES streams (id),
    start_ts      BIGINT  NOT NULL,
    end_ts        BIGINT  NOT NULL,
    peak_ts       BIGINT  NOT NULL,
    peak_score    DOUBLE PRECISION NOT NULL,
    actual        TEXT    NOT NULL,
    expected      TEXT    NOT NULL,
    model         TEXT    NOT NULL,
    model_version TEXT    NOT NULL,
    status        TEXT    NOT NULL,
    UNIQUE (stream_id, start_ts)
);
CREATE INDEX anomalies_by_time ON anomalies (start_ts DESC, id DESC);
CREATE INDEX anomalies_by_stream ON anomalies (stream_id, start_ts DESC, id DESC);

CREATE TABLE feedback (
    id         BIGSERIAL PRIMARY KEY,
    anomaly_id BIGINT NOT NULL REFERENCES anomalies (id),
    label      TEXT   NOT NULL,
    note       TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX feedback_by_anomaly ON feedback (anomaly_id, id);
