//! MLflow's registered models and their aliases on the registry's models and aliases: a model
//! version is a checkpoint (version "3" is checkpoint 3). Setting an alias is a promotion by
//! actor `mlflow`, recorded in the promotion history like `albef ckpt promote` (without a gate);
//! deleting one is a recorded removal; reading one is `get_model_version_by_alias`. A model is
//! created by `create_registered_model` or by its first alias, and read by
//! `get_registered_model` (which MLflow's client calls before it sets an alias).
use super::{run_id_hex, Answer, Body, MlflowError, Params, Writer};
use crate::http::AppState;
use crate::models::{Checkpoint, ModelAliases, PromotionRequest};
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

/// The actor of promotions and removals made through the MLflow API.
const ACTOR: &str = "mlflow";

/// A checkpoint as a version of `model`, in MLflow's form.
fn model_version(model: &str, c: &Checkpoint) -> Value {
    let aliases: Vec<&str> = c
        .aliases
        .iter()
        .filter_map(|a| a.strip_prefix(model)?.strip_prefix('@'))
        .collect();
    json!({
        "name": model,
        "version": c.id.to_string(),
        "creation_timestamp": c.created_at,
        "last_updated_timestamp": c.created_at,
        "current_stage": "None",
        "description": "",
        "source": c.uri,
        "run_id": run_id_hex(c.run_id),
        "status": "READY",
        "aliases": aliases,
        "run_link": "",
    })
}

/// A model in MLflow's form. albef keeps no model description or tags.
fn registered_model(m: &ModelAliases) -> Value {
    let aliases: Vec<Value> = m
        .aliases
        .iter()
        .map(|a| json!({"alias": a.alias, "version": a.checkpoint_id.to_string()}))
        .collect();
    let updated = m
        .aliases
        .iter()
        .map(|a| a.updated_at)
        .max()
        .unwrap_or(m.created_at);
    json!({
        "name": m.name,
        "creation_timestamp": m.created_at,
        "last_updated_timestamp": updated,
        "description": "",
        "aliases": aliases,
        "tags": [],
        "latest_versions": [],
    })
}

#[derive(Deserialize)]
pub(super) struct CreateModel {
    name: String,
    #[serde(default)]
    tags: Vec<super::KeyValue>,
    description: Option<String>,
}

/// `POST registered-models/create` (token).
pub(super) async fn create_model(
    State(s): State<AppState>,
    _: Writer,
    Body(b): Body<CreateModel>,
) -> Answer {
    if !b.tags.is_empty() || b.description.as_deref().is_some_and(|d| !d.is_empty()) {
        return Err(MlflowError::invalid(format!(
            "registered model {:?}: albef keeps no model tags or description; create it without them",
            b.name
        )));
    }
    s.reg.create_model(&b.name).await?;
    let m = s.reg.model(&b.name).await?;
    Ok(Json(json!({"registered_model": registered_model(&m)})))
}

#[derive(Deserialize)]
pub(super) struct ModelName {
    name: String,
}

/// `GET registered-models/get?name=M`: the model with its aliases.
pub(super) async fn get_model(State(s): State<AppState>, Params(q): Params<ModelName>) -> Answer {
    let m = s.reg.model(&q.name).await?;
    Ok(Json(json!({"registered_model": registered_model(&m)})))
}

#[derive(Deserialize)]
pub(super) struct SetAlias {
    name: String,
    alias: String,
    version: String,
}

/// `POST registered-models/alias` (token): points NAME@ALIAS at checkpoint VERSION. Setting the
/// holder it has already changes nothing, as in MLflow.
pub(super) async fn set_alias(
    State(s): State<AppState>,
    _: Writer,
    Body(b): Body<SetAlias>,
) -> Answer {
    let checkpoint: i64 = b.version.parse().map_err(|_| {
        MlflowError::invalid(format!(
            "version {:?} is not a checkpoint id: albef's model versions are its checkpoints",
            b.version
        ))
    })?;
    let current = s
        .reg
        .resolve_checkpoint(&format!("{}@{}", b.name, b.alias))
        .await;
    if current.is_ok_and(|c| c.id == checkpoint) {
        return Ok(Json(json!({})));
    }
    s.reg
        .promote(&PromotionRequest {
            checkpoint,
            model: b.name,
            alias: b.alias,
            require: None,
            reason: Some("set through the MLflow API".into()),
            actor: ACTOR.into(),
        })
        .await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub(super) struct AliasRef {
    name: String,
    alias: String,
}

/// `GET registered-models/alias?name=M&alias=A`: the version (checkpoint) holding it.
pub(super) async fn get_by_alias(State(s): State<AppState>, Params(q): Params<AliasRef>) -> Answer {
    let c = s
        .reg
        .resolve_checkpoint(&format!("{}@{}", q.name, q.alias))
        .await?;
    Ok(Json(json!({"model_version": model_version(&q.name, &c)})))
}

/// `DELETE registered-models/alias` (token), with the name and alias in the body as MLflow's
/// client sends them: a recorded removal.
pub(super) async fn delete_alias(
    State(s): State<AppState>,
    _: Writer,
    Body(b): Body<AliasRef>,
) -> Answer {
    s.reg
        .remove_alias(
            &b.name,
            &b.alias,
            ACTOR,
            Some("deleted through the MLflow API"),
        )
        .await?;
    Ok(Json(json!({})))
}
