-- The albef registry on Postgres: experiments and runs, metric history with a per-run summary,
-- checkpoints, models, aliases and their promotion history, dataset versions and shards,
-- ingestion schedules/jobs, and generic work leases. Times are epoch milliseconds (BIGINT).

CREATE TABLE experiments (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);

CREATE TABLE datasets (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);

CREATE TABLE dataset_versions (
    id           BIGSERIAL PRIMARY KEY,
    dataset_id   BIGINT NOT NULL REFERENCES datasets(id),
    version      BIGINT NOT NULL,
    uri          TEXT NOT NULL,
    parent_id    BIGINT REFERENCES dataset_versions(id),
    stage        TEXT NOT NULL,
    params       JSONB NOT NULL,
    stats        JSONB,
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
    stats       JSONB NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (version_id, idx)
);

CREATE TABLE runs (
    id                  BIGSERIAL PRIMARY KEY,
    experiment_id       BIGINT NOT NULL REFERENCES experiments(id),
    name                TEXT NOT NULL,
    status              TEXT NOT NULL CHECK (status IN ('RUNNING', 'FINISHED', 'FAILED', 'KILLED')),
    config              JSONB NOT NULL,
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
    key     TEXT COLLATE "C" NOT NULL,
    value   TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE INDEX params_key_value ON params(key, value, run_id);

CREATE TABLE tags (
    run_id  BIGINT NOT NULL REFERENCES runs(id),
    key     TEXT COLLATE "C" NOT NULL,
    value   TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE INDEX tags_key_value ON tags(key, value, run_id);

-- The lean key MLflow users asked for (mlflow#12813): one row per (run, key, step). Keys use
-- the "C" collation (byte order: index maintenance is several times cheaper than with the
-- database's linguistic collation). No foreign key per point (an RI trigger per row costs more
-- than the insert itself): every flush upserts metric_summaries in the same statement, and its
-- foreign key refuses the whole batch when the run does not exist.
CREATE TABLE metrics (
    run_id     BIGINT NOT NULL,
    key        TEXT COLLATE "C" NOT NULL,
    step       BIGINT NOT NULL,
    value      DOUBLE PRECISION NOT NULL,
    logged_at  BIGINT NOT NULL,
    PRIMARY KEY (run_id, key, step)
);

-- Written in the same statement as the points it summarises.
CREATE TABLE metric_summaries (
    run_id      BIGINT NOT NULL REFERENCES runs(id),
    key         TEXT COLLATE "C" NOT NULL,
    last_value  DOUBLE PRECISION NOT NULL,
    last_step   BIGINT NOT NULL,
    min_value   DOUBLE PRECISION NOT NULL,
    max_value   DOUBLE PRECISION NOT NULL,
    count       BIGINT NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE INDEX metric_summaries_key_min ON metric_summaries(key, min_value);

CREATE TABLE checkpoints (
    id          BIGSERIAL PRIMARY KEY,
    run_id      BIGINT NOT NULL REFERENCES runs(id),
    uri         TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    bytes       BIGINT NOT NULL,
    step        BIGINT NOT NULL,
    metrics     JSONB NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX checkpoints_run ON checkpoints(run_id);

CREATE TABLE models (
    id          BIGSERIAL PRIMARY KEY,
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
    id                      BIGSERIAL PRIMARY KEY,
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
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    cron        TEXT NOT NULL,
    config      JSONB NOT NULL,
    enabled     BOOLEAN NOT NULL DEFAULT TRUE,
    next_run_at BIGINT,
    created_at  BIGINT NOT NULL
);

CREATE TABLE ingestion_jobs (
    id           BIGSERIAL PRIMARY KEY,
    schedule_id  BIGINT REFERENCES ingestion_schedules(id),
    config       JSONB NOT NULL,
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
    id                  BIGSERIAL PRIMARY KEY,
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
    done         BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (scope, unit)
);
