-- Scheduled ingestion: job runs record their stats and a LOST status for attempts whose worker
-- stopped heartbeating (another worker took the job over); at most one queued or running job
-- per schedule, enforced by the database. SQLite cannot alter a CHECK, so the table is rebuilt
-- (nothing references it).
CREATE TABLE ingestion_job_runs_new (
    id                  INTEGER PRIMARY KEY,
    job_id              BIGINT NOT NULL REFERENCES ingestion_jobs(id),
    owner               TEXT NOT NULL,
    attempt             BIGINT NOT NULL,
    status              TEXT NOT NULL CHECK (status IN ('RUNNING', 'SUCCEEDED', 'FAILED', 'LOST')),
    started_at          BIGINT NOT NULL,
    finished_at         BIGINT,
    dataset_version_id  BIGINT REFERENCES dataset_versions(id),
    error               TEXT,
    stats               TEXT
);
INSERT INTO ingestion_job_runs_new (id, job_id, owner, attempt, status, started_at, finished_at, dataset_version_id, error)
    SELECT id, job_id, owner, attempt, status, started_at, finished_at, dataset_version_id, error FROM ingestion_job_runs;
DROP TABLE ingestion_job_runs;
ALTER TABLE ingestion_job_runs_new RENAME TO ingestion_job_runs;
CREATE INDEX ingestion_job_runs_job ON ingestion_job_runs(job_id);
ALTER TABLE ingestion_jobs ADD COLUMN last_error TEXT;
CREATE UNIQUE INDEX ingestion_jobs_one_active ON ingestion_jobs(schedule_id)
    WHERE status IN ('QUEUED', 'RUNNING');
