//! MLflow's experiment endpoints on the registry's experiments: get by name or id, create (what
//! `mlflow.set_experiment` calls when the name is new), and search.
use super::{Answer, Body, MlflowError, Page, Params, Writer};
use crate::http::AppState;
use crate::query::lexer::{lex, Tok};
use crate::tracking::Experiment;
use crate::Registry;
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

/// The name of the experiment that MLflow's id "0", its default experiment, stands for.
pub(super) const DEFAULT_EXPERIMENT: &str = "Default";

/// The most experiments one search answers with (MLflow's own bound).
const MAX_EXPERIMENTS: usize = 50_000;

/// An experiment in MLflow's form. albef keeps no experiment tags or artifact location.
fn experiment_json(e: &Experiment) -> Value {
    json!({
        "experiment_id": e.id.to_string(),
        "name": e.name,
        "artifact_location": "",
        "lifecycle_stage": "active",
        "creation_time": e.created_at,
        "last_update_time": e.created_at,
        "tags": [],
    })
}

/// The experiment an MLflow experiment id names.
pub(super) async fn by_id(reg: &Registry, id: &str) -> Result<Experiment, MlflowError> {
    if id == "0" {
        return Ok(reg.experiment(DEFAULT_EXPERIMENT).await?);
    }
    let n: i64 = id
        .parse()
        .map_err(|_| MlflowError::invalid(format!("experiment id {id:?} is not a number")))?;
    Ok(reg.experiment_by_id(n).await?)
}

#[derive(Deserialize)]
pub(super) struct ByName {
    experiment_name: String,
}

/// `GET experiments/get-by-name?experiment_name=N`.
pub(super) async fn get_by_name(State(s): State<AppState>, Params(q): Params<ByName>) -> Answer {
    let e = s.reg.experiment(&q.experiment_name).await?;
    Ok(Json(json!({"experiment": experiment_json(&e)})))
}

#[derive(Deserialize)]
pub(super) struct ById {
    experiment_id: String,
}

/// `GET experiments/get?experiment_id=N`.
pub(super) async fn get(State(s): State<AppState>, Params(q): Params<ById>) -> Answer {
    let e = by_id(&s.reg, &q.experiment_id).await?;
    Ok(Json(json!({"experiment": experiment_json(&e)})))
}

#[derive(Deserialize)]
pub(super) struct Create {
    name: String,
    #[serde(default)]
    tags: Vec<super::KeyValue>,
}

/// `POST experiments/create` (token): `{"experiment_id"}`.
pub(super) async fn create(State(s): State<AppState>, _: Writer, Body(b): Body<Create>) -> Answer {
    if !b.tags.is_empty() {
        return Err(MlflowError::invalid(format!(
            "experiment {:?}: albef keeps no experiment tags; create it without them",
            b.name
        )));
    }
    let e = s.reg.create_experiment(&b.name).await?;
    Ok(Json(json!({"experiment_id": e.id.to_string()})))
}

#[derive(Deserialize)]
pub(super) struct Search {
    max_results: Option<i64>,
    filter: Option<String>,
    page_token: Option<String>,
}

/// `POST experiments/search`: every experiment, or the one a `name = '...'` filter names.
pub(super) async fn search(State(s): State<AppState>, Body(b): Body<Search>) -> Answer {
    let page = Page::of(
        b.max_results,
        b.page_token.as_deref(),
        1000,
        MAX_EXPERIMENTS,
    )?;
    let name = match b.filter.as_deref().filter(|f| !f.trim().is_empty()) {
        Some(f) => Some(name_filter(f)?),
        None => None,
    };
    let mut all = s.reg.experiments().await?;
    all.retain(|e| name.as_ref().is_none_or(|n| &e.name == n));
    let (found, token) = page.cut(all);
    let list: Vec<Value> = found.iter().map(experiment_json).collect();
    Ok(Json(super::with_token(json!({"experiments": list}), token)))
}

/// The name in a filter `[attribute.]name = 'N'`, the one experiment filter albef answers.
fn name_filter(filter: &str) -> Result<String, MlflowError> {
    let refuse = || {
        MlflowError::invalid(format!(
            "experiment filter {filter:?}: albef answers experiments/search with no filter or \
             with name = '...'"
        ))
    };
    let tokens: Vec<Tok> = lex(filter)
        .map_err(|_| refuse())?
        .into_iter()
        .map(|t| t.tok)
        .collect();
    let rest = match tokens.as_slice() {
        [Tok::Word(p), Tok::Dot, rest @ ..] if p.to_ascii_lowercase().starts_with("attr") => rest,
        all => all,
    };
    match rest {
        [Tok::Word(n), Tok::Op("="), Tok::Str(v), Tok::End] if n.eq_ignore_ascii_case("name") => {
            Ok(v.clone())
        }
        _ => Err(refuse()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn name_filters() {
        assert_eq!(super::name_filter("name = 'a b'").unwrap(), "a b");
        assert_eq!(super::name_filter("attributes.name = 'x'").unwrap(), "x");
        assert!(super::name_filter("name LIKE 'x%'").is_err());
    }
}
