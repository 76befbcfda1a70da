-- A gate that refuses a checkpoint is recorded too (`Registry::judge_promotion`, the pipeline's
-- promote stage): a 'refused' event names the candidate and the holder it was compared with,
-- and the alias does not move.
ALTER TABLE promotion_events DROP CONSTRAINT promotion_events_kind_check;
ALTER TABLE promotion_events ADD CONSTRAINT promotion_events_kind_check
    CHECK (kind IN ('promote', 'rollback', 'remove', 'refused'));
