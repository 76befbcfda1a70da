-- An alias can be removed (`Registry::remove_alias`, the MLflow API's alias delete): a 'remove'
-- event records the holder it had and no new checkpoint.
ALTER TABLE promotion_events DROP CONSTRAINT promotion_events_kind_check;
ALTER TABLE promotion_events ADD CONSTRAINT promotion_events_kind_check
    CHECK (kind IN ('promote', 'rollback', 'remove'));
ALTER TABLE promotion_events ALTER COLUMN new_checkpoint_id DROP NOT NULL;
ALTER TABLE promotion_events ADD CONSTRAINT promotion_events_new_checkpoint
    CHECK ((kind = 'remove') = (new_checkpoint_id IS NULL));
