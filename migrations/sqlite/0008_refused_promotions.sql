-- A gate that refuses a checkpoint is recorded too (`Registry::judge_promotion`, the pipeline's
-- promote stage): a 'refused' event names the candidate and the holder it was compared with,
-- and the alias does not move. SQLite cannot change a column's constraints in place, so the
-- table is rebuilt with its rows and index.
CREATE TABLE promotion_events_v2 (
    id                      INTEGER PRIMARY KEY,
    model_id                BIGINT NOT NULL REFERENCES models(id),
    alias                   TEXT NOT NULL,
    kind                    TEXT NOT NULL CHECK (kind IN ('promote', 'rollback', 'remove', 'refused')),
    actor                   TEXT NOT NULL,
    at                      BIGINT NOT NULL,
    previous_checkpoint_id  BIGINT REFERENCES checkpoints(id),
    new_checkpoint_id       BIGINT REFERENCES checkpoints(id),
    gate                    TEXT,
    gate_result             TEXT,
    reason                  TEXT,
    CHECK ((kind = 'remove') = (new_checkpoint_id IS NULL))
);
INSERT INTO promotion_events_v2 (id, model_id, alias, kind, actor, at, previous_checkpoint_id,
        new_checkpoint_id, gate, gate_result, reason)
    SELECT id, model_id, alias, kind, actor, at, previous_checkpoint_id, new_checkpoint_id, gate,
        gate_result, reason FROM promotion_events;
DROP TABLE promotion_events;
ALTER TABLE promotion_events_v2 RENAME TO promotion_events;
CREATE INDEX promotion_events_model_alias ON promotion_events(model_id, alias, id);
