-- Searches ordered by a metric's last or max value read these in order (the min has its index
-- since 0001), so that "top N by metrics.X" stops after N runs instead of sorting all of them.
CREATE INDEX metric_summaries_key_last ON metric_summaries(key, last_value);
CREATE INDEX metric_summaries_key_max ON metric_summaries(key, max_value);
