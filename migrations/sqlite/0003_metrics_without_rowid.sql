-- Metric points in one b-tree ordered by (run, key, step): WITHOUT ROWID, so that a point is
-- written once instead of into a table and again into its primary-key index. No foreign key per
-- point (a lookup of the run for every row): the writer checks the run once per flush, and the
-- summary upserted in the same transaction keeps its foreign key.
CREATE TABLE metrics_points (
    run_id     BIGINT NOT NULL,
    key        TEXT NOT NULL,
    step       BIGINT NOT NULL,
    value      REAL NOT NULL,
    logged_at  BIGINT NOT NULL,
    PRIMARY KEY (run_id, key, step)
) WITHOUT ROWID;
INSERT INTO metrics_points (run_id, key, step, value, logged_at)
    SELECT run_id, key, step, value, logged_at FROM metrics;
DROP TABLE metrics;
ALTER TABLE metrics_points RENAME TO metrics;
