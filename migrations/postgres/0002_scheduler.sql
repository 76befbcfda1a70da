-- Scheduled ingestion: job runs record their stats and a LOST status for attempts whose worker
-- stopped heartbeating (another worker took the job over); at most one queued or running job
-- per schedule, enforced by the database.
ALTER TABLE ingestion_job_runs DROP CONSTRAINT ingestion_job_runs_status_check;
ALTER TABLE ingestion_job_runs ADD CONSTRAINT ingestion_job_runs_status_check
    CHECK (status IN ('RUNNING', 'SUCCEEDED', 'FAILED', 'LOST'));
ALTER TABLE ingestion_job_runs ADD COLUMN stats JSONB;
ALTER TABLE ingestion_jobs ADD COLUMN last_error TEXT;
CREATE UNIQUE INDEX ingestion_jobs_one_active ON ingestion_jobs(schedule_id)
    WHERE status IN ('QUEUED', 'RUNNING');
