//! The promotion workflow: an alias of a model (`albef@production`) points at one checkpoint;
//! promoting moves it, after a gate (`metrics.r1 >= current`) is evaluated against the checkpoint
//! that holds it now, in the same transaction, and records an append-only event. Rollback moves
//! the alias back to the holder before the last promotion and is recorded too, as is removing an
//! alias (which ends its chain: a later rollback does not reach past the removal). The model row is
//! locked (`FOR UPDATE` on Postgres; `BEGIN IMMEDIATE` takes the write lock on SQLite), so that
//! concurrent promotions run one after another and the history stays a chain.
use super::checkpoints::{load, verify_file, Checkpoint};
use crate::db::{Dialect, Tx};
use crate::query::lexer::Tok;
use crate::query::{Agg, Field, FieldParser, Op, QueryError};
use crate::{check_key, now_ms, Registry};
use anyhow::{bail, Context, Result};
use serde::Serialize;

/// The right-hand side of a gate condition.
#[derive(Clone, Debug, PartialEq)]
enum Bound {
    /// The same metric of the checkpoint that holds the alias now.
    Current,
    Num(f64),
}

#[derive(Clone, Debug, PartialEq)]
struct Condition {
    key: String,
    op: Op,
    bound: Bound,
}

/// A promotion gate: `metrics.X OP (current | NUMBER)` joined by AND.
#[derive(Clone, Debug, PartialEq)]
pub struct Gate {
    text: String,
    conditions: Vec<Condition>,
}

impl Gate {
    pub fn parse(text: &str) -> Result<Gate, QueryError> {
        let run = || {
            let mut p = FieldParser::new(text)?;
            let mut conditions = Vec::new();
            loop {
                let col = p.peek().col;
                let key = match p.field()? {
                    Field::Metric {
                        key,
                        agg: Agg::Last,
                    } => key,
                    other => {
                        return Err(p.error_at(
                            col,
                            format!("a gate compares checkpoint metrics (metrics.X), not {other}"),
                        ))
                    }
                };
                let op_tok = p.advance();
                let op = match op_tok.tok {
                    Tok::Op("=") => Op::Eq,
                    Tok::Op("!=") => Op::Ne,
                    Tok::Op("<") => Op::Lt,
                    Tok::Op("<=") => Op::Le,
                    Tok::Op(">") => Op::Gt,
                    Tok::Op(">=") => Op::Ge,
                    other => {
                        return Err(p.error_at(
                            op_tok.col,
                            format!(
                                "expected a comparison operator after metrics.{key}, found {}",
                                other.describe()
                            ),
                        ))
                    }
                };
                let v = p.advance();
                let bound = match v.tok {
                    Tok::Num(n, _) => Bound::Num(n),
                    Tok::Word(w) if w.eq_ignore_ascii_case("current") => Bound::Current,
                    other => {
                        return Err(p.error_at(
                            v.col,
                            format!(
                                "expected 'current' or a number after '{}', found {}",
                                op.sql(),
                                other.describe()
                            ),
                        ))
                    }
                };
                conditions.push(Condition { key, op, bound });
                if !p.keyword("AND") {
                    break;
                }
            }
            p.expect_end("AND or the end")?;
            Ok(Gate {
                text: text.to_string(),
                conditions,
            })
        };
        run().map_err(|e: QueryError| e.of("gate"))
    }

    /// Checks the candidate against the holder (None: nobody holds the alias). Ok carries a
    /// description of what passed; Err says which condition failed and why.
    fn evaluate(
        &self,
        candidate: &Checkpoint,
        holder: Option<&Checkpoint>,
    ) -> Result<String, String> {
        let mut passed = Vec::new();
        for c in &self.conditions {
            let Some(value) = candidate.metric(&c.key) else {
                return Err(format!(
                    "checkpoint {} has no metric {:?}",
                    candidate.id, c.key
                ));
            };
            let (bound, what) = match (&c.bound, holder) {
                (Bound::Num(n), _) => (*n, format!("{n}")),
                (Bound::Current, None) => {
                    passed.push(format!("metrics.{} (no current holder)", c.key));
                    continue;
                }
                (Bound::Current, Some(h)) => match h.metric(&c.key) {
                    Some(v) => (v, format!("current {v} (checkpoint {})", h.id)),
                    None => {
                        passed.push(format!("metrics.{} (checkpoint {} has none)", c.key, h.id));
                        continue;
                    }
                },
            };
            let line = format!("metrics.{} = {value} {} {what}", c.key, c.op.sql());
            if !c.op.holds(value, bound) {
                return Err(format!("{line} is false"));
            }
            passed.push(line);
        }
        Ok(format!("passed: {}", passed.join("; ")))
    }
}

/// What `promote` is asked to do.
#[derive(Clone, Debug)]
pub struct PromotionRequest {
    pub checkpoint: i64,
    pub model: String,
    pub alias: String,
    /// A gate such as `metrics.r1 >= current`.
    pub require: Option<String>,
    pub reason: Option<String>,
    pub actor: String,
}

/// A promotion whose gate the caller evaluated itself, on figures it measured in its own run
/// (the pipeline evaluates the candidate and the holder on the same set), recorded as given: the
/// alias moves when `passed`, and either way the event ('promote' or 'refused') keeps the gate,
/// its result with the figures, and the reason.
#[derive(Clone, Debug)]
pub struct JudgedPromotion {
    pub checkpoint: i64,
    pub model: String,
    pub alias: String,
    /// The holder the candidate was compared with (None: the alias had none). When the alias
    /// holds another checkpoint by now, nothing is recorded and the call fails.
    pub compared_with: Option<i64>,
    pub gate: String,
    pub gate_result: String,
    pub passed: bool,
    pub reason: Option<String>,
    pub actor: String,
}

/// One entry of the append-only promotion history.
#[derive(Clone, Debug, Serialize)]
pub struct PromotionEvent {
    pub id: i64,
    pub model: String,
    pub alias: String,
    /// "promote", "rollback", "remove" or "refused" (a gate said no; the alias did not move).
    pub kind: String,
    pub actor: String,
    /// Epoch milliseconds.
    pub at: i64,
    pub previous_checkpoint_id: Option<i64>,
    /// None for a removal.
    pub new_checkpoint_id: Option<i64>,
    pub gate: Option<String>,
    pub gate_result: Option<String>,
    pub reason: Option<String>,
}

impl PromotionEvent {
    /// An event without a gate, before `move_alias` gives it its id and time.
    fn plain(
        model: &str,
        alias: &str,
        kind: &str,
        actor: &str,
        previous: Option<i64>,
        new: Option<i64>,
        reason: Option<&str>,
    ) -> PromotionEvent {
        PromotionEvent {
            id: 0,
            model: model.to_string(),
            alias: alias.to_string(),
            kind: kind.to_string(),
            actor: actor.to_string(),
            at: 0,
            previous_checkpoint_id: previous,
            new_checkpoint_id: new,
            gate: None,
            gate_result: None,
            reason: reason.map(str::to_string),
        }
    }
}

/// Creates the model if needed and locks its row for the rest of the transaction.
async fn lock_model(tx: &mut Tx, model: &str) -> Result<i64> {
    tx.q("INSERT INTO models (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
        .bind(model.to_string())
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .with_context(|| format!("creating model {model:?}"))?;
    let sql = match tx.dialect() {
        Dialect::Postgres => "SELECT id FROM models WHERE name = $1 FOR UPDATE",
        Dialect::Sqlite => "SELECT id FROM models WHERE name = $1",
    };
    Ok(tx
        .q(sql)
        .bind(model.to_string())
        .fetch_one(&mut *tx)
        .await?
        .get("id")?)
}

/// Locks the model (made if new) and returns its id and the alias's holder; fails when
/// `candidate` holds the alias already.
async fn lock_for(
    tx: &mut Tx,
    model: &str,
    alias: &str,
    candidate: i64,
) -> Result<(i64, Option<i64>)> {
    let model_id = lock_model(tx, model).await?;
    let previous = holder(tx, model_id, alias).await?;
    if previous == Some(candidate) {
        bail!("checkpoint {candidate} already holds {model}@{alias}");
    }
    Ok((model_id, previous))
}

async fn holder(tx: &mut Tx, model_id: i64, alias: &str) -> Result<Option<i64>> {
    let row = tx
        .q("SELECT checkpoint_id FROM aliases WHERE model_id = $1 AND alias = $2")
        .bind(model_id)
        .bind(alias.to_string())
        .fetch_optional(&mut *tx)
        .await?;
    Ok(match row {
        Some(r) => Some(r.get("checkpoint_id")?),
        None => None,
    })
}

/// Moves the alias to `event.new_checkpoint_id` (None removes it) and appends the event, inside
/// `tx`; returns the event with its id and time (`event.id` and `event.at` are set here).
async fn move_alias(tx: &mut Tx, model_id: i64, event: PromotionEvent) -> Result<PromotionEvent> {
    let at = now_ms();
    let alias = event.alias.clone();
    let change = match event.new_checkpoint_id {
        Some(new) => tx
            .q("INSERT INTO aliases (model_id, alias, checkpoint_id, updated_at) VALUES ($1, $2, $3, $4) \
                ON CONFLICT (model_id, alias) DO UPDATE SET checkpoint_id = excluded.checkpoint_id, \
                updated_at = excluded.updated_at")
            .bind(model_id)
            .bind(alias.clone())
            .bind(new)
            .bind(at),
        None => tx
            .q("DELETE FROM aliases WHERE model_id = $1 AND alias = $2")
            .bind(model_id)
            .bind(alias),
    };
    change.execute(&mut *tx).await.context("moving the alias")?;
    record_event(tx, model_id, event, at).await
}

/// Appends `event` at time `at` inside `tx`; returns it with its id and time.
async fn record_event(
    tx: &mut Tx,
    model_id: i64,
    mut event: PromotionEvent,
    at: i64,
) -> Result<PromotionEvent> {
    event.at = at;
    event.id = tx
        .q("INSERT INTO promotion_events (model_id, alias, kind, actor, at, previous_checkpoint_id, \
            new_checkpoint_id, gate, gate_result, reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
            RETURNING id")
        .bind(model_id)
        .bind(event.alias.clone())
        .bind(event.kind.clone())
        .bind(event.actor.clone())
        .bind(at)
        .bind(event.previous_checkpoint_id)
        .bind(event.new_checkpoint_id)
        .bind(event.gate.clone())
        .bind(event.gate_result.clone())
        .bind(event.reason.clone())
        .fetch_one(&mut *tx)
        .await
        .context("recording the promotion event")?
        .get("id")?;
    Ok(event)
}

/// Refuses model and alias names that the history could not hold or that `@` would split.
fn check_names(model: &str, alias: &str) -> Result<()> {
    check_key("model", model)?;
    check_key("alias", alias)?;
    if model.contains('@') || alias.contains('@') {
        bail!("model and alias names cannot contain '@' (got {model:?} and {alias:?})");
    }
    Ok(())
}

impl Registry {
    pub(crate) async fn model_id(&self, model: &str) -> Result<i64> {
        let row = self
            .db
            .q("SELECT id FROM models WHERE name = $1")
            .bind(model.to_string())
            .fetch_optional(&self.db)
            .await
            .with_context(|| format!("reading model {model:?}"))?;
        match row {
            Some(r) => Ok(r.get("id")?),
            None => bail!("no model named {model:?}"),
        }
    }

    /// Points `model@alias` at a checkpoint if the gate passes. A failed gate, a checkpoint whose
    /// file is missing or changed, or a checkpoint that already holds the alias changes nothing
    /// and is an error.
    pub async fn promote(&self, req: &PromotionRequest) -> Result<PromotionEvent> {
        check_names(&req.model, &req.alias)?;
        let gate = match &req.require {
            Some(g) => Some(Gate::parse(g)?),
            None => None,
        };
        let candidate = load(&self.db, &self.db, req.checkpoint).await?;
        verify_file(&candidate).await?;
        let mut tx = self.db.begin().await?;
        let (model_id, previous) = lock_for(&mut tx, &req.model, &req.alias, candidate.id).await?;
        let gate_result = match &gate {
            Some(gate) => {
                let current = match previous {
                    Some(id) => Some(load(&self.db, &mut tx, id).await?),
                    None => None,
                };
                match gate.evaluate(&candidate, current.as_ref()) {
                    Ok(result) => Some(result),
                    Err(why) => bail!(
                        "gate {:?} refused checkpoint {} for {}@{}: {why}; nothing changed",
                        gate.text,
                        candidate.id,
                        req.model,
                        req.alias
                    ),
                }
            }
            None => None,
        };
        let event = PromotionEvent {
            id: 0,
            model: req.model.clone(),
            alias: req.alias.clone(),
            kind: "promote".into(),
            actor: req.actor.clone(),
            at: 0,
            previous_checkpoint_id: previous,
            new_checkpoint_id: Some(candidate.id),
            gate: req.require.clone(),
            gate_result,
            reason: req.reason.clone(),
        };
        let event = move_alias(&mut tx, model_id, event).await?;
        tx.commit().await?;
        Ok(event)
    }

    /// Records the verdict of a gate the caller evaluated ([`JudgedPromotion`]): a promotion
    /// when it passed, a refusal otherwise; both in one transaction with the alias check.
    pub async fn judge_promotion(&self, req: &JudgedPromotion) -> Result<PromotionEvent> {
        check_names(&req.model, &req.alias)?;
        let candidate = load(&self.db, &self.db, req.checkpoint).await?;
        if req.passed {
            verify_file(&candidate).await?;
        }
        let mut tx = self.db.begin().await?;
        let (model_id, previous) = lock_for(&mut tx, &req.model, &req.alias, candidate.id).await?;
        let name = |id: Option<i64>| {
            id.map_or("no checkpoint".to_string(), |id| format!("checkpoint {id}"))
        };
        if previous != req.compared_with {
            bail!(
                "{}@{} is held by {} now, not by {} that the gate compared with; nothing \
                 changed (evaluate against the new holder and decide again)",
                req.model,
                req.alias,
                name(previous),
                name(req.compared_with)
            );
        }
        let event = PromotionEvent {
            id: 0,
            model: req.model.clone(),
            alias: req.alias.clone(),
            kind: if req.passed { "promote" } else { "refused" }.into(),
            actor: req.actor.clone(),
            at: 0,
            previous_checkpoint_id: previous,
            new_checkpoint_id: Some(candidate.id),
            gate: Some(req.gate.clone()),
            gate_result: Some(req.gate_result.clone()),
            reason: req.reason.clone(),
        };
        let event = if req.passed {
            move_alias(&mut tx, model_id, event).await?
        } else {
            record_event(&mut tx, model_id, event, now_ms()).await?
        };
        tx.commit().await?;
        Ok(event)
    }

    /// Points `model@alias` back at the checkpoint it held before its last promotion (undoing
    /// promotions one by one on repeated calls) and records a rollback event.
    pub async fn rollback(
        &self,
        model: &str,
        alias: &str,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<PromotionEvent> {
        self.model_id(model).await?;
        let mut tx = self.db.begin().await?;
        let model_id = lock_model(&mut tx, model).await?;
        let current = holder(&mut tx, model_id, alias).await?;
        let Some(current) = current else {
            bail!("no checkpoint holds {model}@{alias}; nothing to roll back");
        };
        let events = tx
            .q("SELECT kind, new_checkpoint_id FROM promotion_events WHERE model_id = $1 AND alias = $2 ORDER BY id")
            .bind(model_id)
            .bind(alias.to_string())
            .fetch_all(&mut tx)
            .await
            .context("reading the promotion history")?;
        // Replay: a promotion pushes its checkpoint, a rollback pops one, a removal clears all.
        let mut stack: Vec<i64> = Vec::new();
        for e in &events {
            match e.get::<String>("kind")?.as_str() {
                "promote" => stack.push(e.get("new_checkpoint_id")?),
                "rollback" => {
                    stack.pop();
                }
                "remove" => stack.clear(),
                _ => {} // a refusal moved nothing
            }
        }
        if stack.last() != Some(&current) {
            bail!("the promotion history of {model}@{alias} does not end at its holder {current}");
        }
        let Some(&target) = stack.len().checked_sub(2).and_then(|i| stack.get(i)) else {
            bail!("{model}@{alias} has no earlier holder to roll back to");
        };
        let target_ckpt = load(&self.db, &mut tx, target).await?;
        verify_file(&target_ckpt)
            .await
            .with_context(|| format!("cannot roll {model}@{alias} back to checkpoint {target}"))?;
        let event = move_alias(
            &mut tx,
            model_id,
            PromotionEvent::plain(
                model,
                alias,
                "rollback",
                actor,
                Some(current),
                Some(target),
                reason,
            ),
        )
        .await?;
        tx.commit().await?;
        Ok(event)
    }

    /// Removes `model@alias` and records a removal event: nothing holds the alias afterwards,
    /// until a promotion gives it a holder again.
    pub async fn remove_alias(
        &self,
        model: &str,
        alias: &str,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<PromotionEvent> {
        self.model_id(model).await?;
        let mut tx = self.db.begin().await?;
        let model_id = lock_model(&mut tx, model).await?;
        let Some(current) = holder(&mut tx, model_id, alias).await? else {
            bail!("alias {model}@{alias} does not exist; nothing to remove");
        };
        let event = move_alias(
            &mut tx,
            model_id,
            PromotionEvent::plain(model, alias, "remove", actor, Some(current), None, reason),
        )
        .await?;
        tx.commit().await?;
        Ok(event)
    }

    /// The promotion history of a model, oldest first.
    pub async fn promotion_history(&self, model: &str) -> Result<Vec<PromotionEvent>> {
        let model_id = self.model_id(model).await?;
        let rows = self
            .db
            .q("SELECT id, alias, kind, actor, at, previous_checkpoint_id, new_checkpoint_id, gate, \
                gate_result, reason FROM promotion_events WHERE model_id = $1 ORDER BY id")
            .bind(model_id)
            .fetch_all(&self.db)
            .await
            .with_context(|| format!("reading the promotion history of {model:?}"))?;
        rows.iter()
            .map(|r| {
                Ok(PromotionEvent {
                    id: r.get("id")?,
                    model: model.to_string(),
                    alias: r.get("alias")?,
                    kind: r.get("kind")?,
                    actor: r.get("actor")?,
                    at: r.get("at")?,
                    previous_checkpoint_id: r.get("previous_checkpoint_id")?,
                    new_checkpoint_id: r.get("new_checkpoint_id")?,
                    gate: r.get("gate")?,
                    gate_result: r.get("gate_result")?,
                    reason: r.get("reason")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ckpt(id: i64, metrics: serde_json::Value) -> Checkpoint {
        Checkpoint {
            id,
            run_id: 1,
            uri: String::new(),
            sha256: String::new(),
            bytes: 0,
            step: 0,
            metrics,
            created_at: 0,
            aliases: vec![],
        }
    }

    #[test]
    fn gate_compares_with_the_holder_or_a_number() {
        let g = Gate::parse("metrics.r1 >= current AND metrics.loss < 2").unwrap();
        let cand = ckpt(2, json!({"r1": 0.6, "loss": 1.5}));
        assert!(g.evaluate(&cand, None).is_ok());
        assert!(g
            .evaluate(&cand, Some(&ckpt(1, json!({"r1": 0.5}))))
            .is_ok());
        let why = g
            .evaluate(&cand, Some(&ckpt(1, json!({"r1": 0.7}))))
            .unwrap_err();
        assert!(why.contains("metrics.r1 = 0.6 >= current 0.7"), "{why}");
        let why = g.evaluate(&ckpt(3, json!({"loss": 1})), None).unwrap_err();
        assert!(why.contains("has no metric \"r1\""), "{why}");
    }

    #[test]
    fn gate_errors_point_at_the_problem() {
        let e = Gate::parse("metrics.r1 >= best").unwrap_err();
        assert_eq!((e.what, e.column), ("gate", 15));
        assert_eq!(Gate::parse("params.lr = 1").unwrap_err().column, 1);
        assert_eq!(Gate::parse("metrics.r1 LIKE 1").unwrap_err().column, 12);
    }
}
