-- The albef registry on SQLite: experiments and runs, metric history with a per-run summary,
-- checkpoints, models, aliases and their promotion history, dataset versions and shards,
-- ingestion schedules/jobs, and generic work leases. Times are epoch milliseconds (INTEGER). JSON is TEXT.

CREATE TABLE experiments (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);

CREATE TABLE datasets (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);

CREATE TABLE dataset_versions (
    id           INTEGER PRIMARY KEY,
    dataset_id   BIGINT NOT NULL REFERENCES datasets(id),
    version      BIGINT NOT NULL,
    uri          TEXT NOT NULL,
    parent_id    BIGINT REFERENCES dataset_versions(id),
    stage        TEXT NOT NULL,
    params       TEXT NOT NULL,
    stats        TEXT,
    status       TEXT NOT NULL CHECK (status IN ('BUILDING', 'FINISHED', 'FAILED')),
    created_at   BIGINT NOT NULL,
    finished_at  BIGINT,
    UNIQUE (dataset_id, version)
);
CREATE INDEX dataset_versions_parent ON dataset_versions(parent_id);

CREATE TABLE shards (
    version_id  BIGINT NOT NULL REFERENCES dataset_versions(id),
    idx         BIGINT NOT NULL,
    uri         TEXT NOT NULL,
    rows        BIGINT NOT NULL,
    stats       TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (version_id, idx)
);

CREATE TABLE runs (
    id                  INTEGER PRIMARY KEY,
    experiment_id       BIGINT NOT NULL REFERENCES experiments(id),
    name                TEXT NOT NULL,
    status              TEXT NOT NULL CHECK (status IN ('RUNNING', 'FINISHED', 'FAILED', 'KILLED')),
    config              TEXT NOT NULL,
    code_version        TEXT NOT NULL,
    host                TEXT NOT NULL,
    dataset_version_id  BIGINT REFERENCES dataset_versions(id),
    start_time          BIGINT NOT NULL,
    end_time            BIGINT,
    UNIQUE (experiment_id, name)
);
CREATE INDEX runs_start_time ON runs(start_time);

CREATE TABLE params (
    run_id  BIGINT NOT NULL REFERENCES runs(id),
    key     TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE INDEX params_key_value ON params(key, value, run_id);

CREATE TABLE tags (
    run_id  BIGINT NOT NULL REFERENCES runs(id),
    key     TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE INDEX tags_key_value ON tags(key, value, run_id);

-- The lean key MLflow users asked for (mlflow#12813): one row per (run, key, step).
CREATE TABLE metrics (
    run_id     BIGINT NOT NULL REFERENCES runs(id),
    key        TEXT NOT NULL,
    step       BIGINT NOT NULL,
    value      REAL NOT NULL,
    logged_at  BIGINT NOT NULL,
    PRIMARY KEY (run_id, key, step)
);

-- Written in the same statement as the points it summarises.
CREATE TABLE metric_summaries (
    run_id      BIGINT NOT NULL REFERENCES runs(id),
    key         TEXT NOT NULL,
    last_value  REAL NOT NULL,
    last_step   BIGINT NOT NULL,
    min_value   REAL NOT NULL,
    max_value   REAL NOT NULL,
    count       BIGINT NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE INDEX metric_summaries_key_min ON metric_summaries(key, min_value);

CREATE TABLE checkpoints (
    id          INTEGER PRIMARY KEY,
    run_id      BIGINT NOT NULL REFERENCES runs(id),
    uri         TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    bytes       BIGINT NOT NULL,
    step        BIGINT NOT NULL,
    metrics     TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX checkpoints_run ON checkpoints(run_id);

CREATE TABLE models (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);

-- One holder per (model, alias), enforced by the key.
CREATE TABLE aliases (
    model_id       BIGINT NOT NULL REFERENCES models(id),
    alias          TEXT NOT NULL,
    checkpoint_id  BIGINT NOT NULL REFERENCES checkpoints(id),
    updated_at     BIGINT NOT NULL,
    PRIMARY KEY (model_id, alias)
);
CREATE INDEX aliases_checkpoint ON aliases(checkpoint_id);

-- Append-only: every alias move, promotion or rollback, with its gate and reason.
CREATE TABLE promotion_events (
    id                      INTEGER PRIMARY KEY,
    model_id                BIGINT NOT NULL REFERENCES models(id),
    alias                   TEXT NOT NULL,
    kind                    TEXT NOT NULL CHECK (kind IN ('promote', 'rollback')),
    actor                   TEXT NOT NULL,
    at                      BIGINT NOT NULL,
    previous_checkpoint_id  BIGINT REFERENCES checkpoints(id),
    new_checkpoint_id       BIGINT NOT NULL REFERENCES checkpoints(id),
    gate                    TEXT,
    gate_result             TEXT,
    reason                  TEXT
);
CREATE INDEX promotion_events_model_alias ON promotion_events(model_id, alias, id);

-- Scheduled ingestion (tables only; the scheduler issue fills them).
CREATE TABLE ingestion_schedules (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    cron        TEXT NOT NULL,
    config      TEXT NOT NULL,
    enabled     INTEGER NOT NULL DEFAULT 1,
    next_run_at BIGINT,
    created_at  BIGINT NOT NULL
);

CREATE TABLE ingestion_jobs (
    id           INTEGER PRIMARY KEY,
    schedule_id  BIGINT REFERENCES ingestion_schedules(id),
    config       TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('QUEUED', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED')),
    run_at       BIGINT NOT NULL,
    priority     BIGINT NOT NULL DEFAULT 0,
    owner        TEXT,
    lease_until  BIGINT,
    attempts     BIGINT NOT NULL DEFAULT 0,
    max_attempts BIGINT NOT NULL DEFAULT 3,
    created_at   BIGINT NOT NULL
);
CREATE INDEX ingestion_jobs_due ON ingestion_jobs(status, run_at);

CREATE TABLE ingestion_job_runs (
    id                  INTEGER PRIMARY KEY,
    job_id              BIGINT NOT NULL REFERENCES ingestion_jobs(id),
    owner               TEXT NOT NULL,
    attempt             BIGINT NOT NULL,
    status              TEXT NOT NULL CHECK (status IN ('RUNNING', 'SUCCEEDED', 'FAILED')),
    started_at          BIGINT NOT NULL,
    finished_at         BIGINT,
    dataset_version_id  BIGINT REFERENCES dataset_versions(id),
    error               TEXT
);
CREATE INDEX ingestion_job_runs_job ON ingestion_job_runs(job_id);

-- Units of work (e.g. URL-list chunks) shared by workers on several machines.
CREATE TABLE work_leases (
    scope        TEXT NOT NULL,
    unit         TEXT NOT NULL,
    owner        TEXT NOT NULL,
    lease_until  BIGINT NOT NULL,
    attempts     BIGINT NOT NULL DEFAULT 1,
    done         INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, unit)
);
