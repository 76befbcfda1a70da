-- The IANA time zone a schedule's cron expression is read in (`albef schedule add --tz`);
-- schedules made before it keep UTC.
ALTER TABLE ingestion_schedules ADD COLUMN tz TEXT NOT NULL DEFAULT 'UTC';
