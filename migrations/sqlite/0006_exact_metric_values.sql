-- Metric values kept bit for bit. A REAL column stores an integral value as an integer, so -0.0
-- came back as 0.0, and SQLite has no NaN (a bound NaN becomes NULL). The value columns are
-- rebuilt without a declared type (no type affinity): a double is stored as it is, -0.0
-- included, and the registry writes NaN as the text 'NaN', which SQLite orders above every
-- number as Postgres orders NaN (see `MetricValue` in registry/src/db.rs). Infinities were and
-- stay REAL.
CREATE TABLE metrics_exact (
    run_id     BIGINT NOT NULL,
    key        TEXT NOT NULL,
    step       BIGINT NOT NULL,
    value      NOT NULL,
    logged_at  BIGINT NOT NULL,
    PRIMARY KEY (run_id, key, step)
) WITHOUT ROWID;
INSERT INTO metrics_exact (run_id, key, step, value, logged_at)
    SELECT run_id, key, step, value, logged_at FROM metrics;
DROP TABLE metrics;
ALTER TABLE metrics_exact RENAME TO metrics;

CREATE TABLE metric_summaries_exact (
    run_id      BIGINT NOT NULL REFERENCES runs(id),
    key         TEXT NOT NULL,
    last_value  NOT NULL,
    last_step   BIGINT NOT NULL,
    min_value   NOT NULL,
    max_value   NOT NULL,
    count       BIGINT NOT NULL,
    PRIMARY KEY (run_id, key)
);
INSERT INTO metric_summaries_exact (run_id, key, last_value, last_step, min_value, max_value, count)
    SELECT run_id, key, last_value, last_step, min_value, max_value, count FROM metric_summaries;
DROP TABLE metric_summaries;
ALTER TABLE metric_summaries_exact RENAME TO metric_summaries;
CREATE INDEX metric_summaries_key_min ON metric_summaries(key, min_value);
CREATE INDEX metric_summaries_key_last ON metric_summaries(key, last_value);
CREATE INDEX metric_summaries_key_max ON metric_summaries(key, max_value);
