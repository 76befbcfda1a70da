//! MLflow's run endpoints on the registry's runs: create, get, update (end or rename), delete,
//! and search through the registry's search with the translated filter.
use super::experiments::{by_id, DEFAULT_EXPERIMENT};
use super::{
    filter, run_id_hex, Answer, Body, KeyValue, MlflowError, Page, Params, RunRef, Writer,
};
use crate::http::AppState;
use crate::json_float;
use crate::tracking::{MetricPoint, Run, RunOrigin, RunSearch, RunStatus, MAX_SEARCH_RESULTS};
use crate::{now_ms, Registry};
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;

/// The tags through which MLflow's client records who ran what.
const USER_TAG: &str = "mlflow.user";
const RUN_NAME_TAG: &str = "mlflow.runName";
const GIT_COMMIT_TAG: &str = "mlflow.source.git.commit";

/// How many names `create` tries when the one asked for is taken (`name`, `name-2`, ...):
/// MLflow's run names need not be unique, the registry's are within an experiment.
const NAME_TRIES: usize = 100;

/// A metric point in MLflow's form.
pub(super) fn metric_json(key: &str, p: &MetricPoint) -> Value {
    json!({
        "key": key,
        "value": json_float::to_value(p.value),
        "timestamp": p.logged_at,
        "step": p.step,
    })
}

/// A run's `info` in MLflow's form. albef keeps no artifacts, so `artifact_uri` is empty.
fn info_json(run: &Run, experiment_id: i64, user: &str) -> Value {
    let id = run_id_hex(run.id);
    let mut info = json!({
        "run_id": id,
        "run_uuid": id,
        "run_name": run.name,
        "experiment_id": experiment_id.to_string(),
        "user_id": user,
        "status": run.status.as_str(),
        "start_time": run.start_time,
        "artifact_uri": "",
        "lifecycle_stage": "active",
    });
    if let Some(end) = run.end_time {
        info["end_time"] = json!(end);
    }
    info
}

/// A run in MLflow's form: its info, params, tags and the latest point of each metric.
async fn run_json(
    reg: &Registry,
    id: i64,
    experiments: &HashMap<String, i64>,
) -> Result<Value, MlflowError> {
    let d = reg.run_detail(id).await?;
    let latest = reg.latest_points(id).await?;
    let pairs = |kv: &[(String, String)]| -> Vec<Value> {
        kv.iter()
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect()
    };
    let user = d
        .tags
        .iter()
        .find(|(k, _)| k == USER_TAG)
        .map_or("", |(_, v)| v.as_str());
    let experiment_id = experiments
        .get(&d.run.experiment)
        .copied()
        .unwrap_or_default();
    Ok(json!({
        "info": info_json(&d.run, experiment_id, user),
        "data": {
            "metrics": latest.iter().map(|(k, p)| metric_json(k, p)).collect::<Vec<_>>(),
            "params": pairs(&d.params),
            "tags": pairs(&d.tags),
        },
        "inputs": {},
    }))
}

/// Experiment ids by name, for the `experiment_id` of runs.
async fn experiment_ids(reg: &Registry) -> Result<HashMap<String, i64>, MlflowError> {
    Ok(reg
        .experiments()
        .await?
        .into_iter()
        .map(|e| (e.name, e.id))
        .collect())
}

#[derive(Deserialize)]
pub(super) struct Create {
    experiment_id: Option<String>,
    user_id: Option<String>,
    start_time: Option<i64>,
    #[serde(default)]
    tags: Vec<KeyValue>,
    run_name: Option<String>,
}

/// `POST runs/create` (token): a RUNNING run with the client's start time and tags.
pub(super) async fn create(State(s): State<AppState>, _: Writer, Body(b): Body<Create>) -> Answer {
    let experiment = match b
        .experiment_id
        .as_deref()
        .filter(|e| !e.is_empty() && *e != "0")
    {
        Some(id) => by_id(&s.reg, id).await?.name,
        None => DEFAULT_EXPERIMENT.to_string(),
    };
    let mut tags: Vec<(String, String)> = b.tags.iter().map(KeyValue::pair).collect();
    for (key, _) in &tags {
        crate::check_key("tag", key)?;
    }
    let tag = |key: &str| {
        b.tags
            .iter()
            .find(|t| t.key == key)
            .map(|t| t.value.clone())
    };
    let start_time = b.start_time.filter(|&t| t > 0).unwrap_or_else(now_ms);
    let wanted = b
        .run_name
        .clone()
        .filter(|n| !n.is_empty())
        .or_else(|| tag(RUN_NAME_TAG))
        .unwrap_or_else(|| format!("run-{start_time}"));
    let origin = RunOrigin {
        start_time: Some(start_time),
        host: Some("mlflow client".into()),
        code_version: Some(tag(GIT_COMMIT_TAG).unwrap_or_else(|| "unknown (mlflow client)".into())),
    };
    let (id, name) = create_named(&s.reg, &experiment, &wanted, &origin).await?;
    tags.retain(|(k, _)| k != RUN_NAME_TAG);
    tags.push((RUN_NAME_TAG.into(), name));
    if let Some(user) = b
        .user_id
        .clone()
        .filter(|u| !u.is_empty() && tag(USER_TAG).is_none())
    {
        tags.push((USER_TAG.into(), user));
    }
    s.reg.set_tags(id, &tags).await?;
    let run = run_json(&s.reg, id, &experiment_ids(&s.reg).await?).await?;
    Ok(Json(json!({"run": run})))
}

/// Creates the run under `wanted`, or under `wanted-2`, `wanted-3`... when that name is taken.
async fn create_named(
    reg: &Registry,
    experiment: &str,
    wanted: &str,
    origin: &RunOrigin,
) -> Result<(i64, String), MlflowError> {
    for n in 1..=NAME_TRIES {
        let name = if n == 1 {
            wanted.to_string()
        } else {
            format!("{wanted}-{n}")
        };
        match reg
            .create_run_from(experiment, &name, &json!({}), origin)
            .await
        {
            Ok(id) => return Ok((id, name)),
            Err(e) if e.to_string().contains("already exists in experiment") => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(MlflowError::invalid(format!(
        "experiment {experiment:?} already has runs named {wanted:?} and {wanted:?}-2 to -{NAME_TRIES}; \
         choose another run name"
    )))
}

/// `GET runs/get?run_id=ID`.
pub(super) async fn get(State(s): State<AppState>, Params(q): Params<RunRef>) -> Answer {
    let run = run_json(&s.reg, q.id()?, &experiment_ids(&s.reg).await?).await?;
    Ok(Json(json!({"run": run})))
}

#[derive(Deserialize)]
pub(super) struct Update {
    #[serde(flatten)]
    run: RunRef,
    status: Option<String>,
    end_time: Option<i64>,
    run_name: Option<String>,
}

/// `POST runs/update` (token): renames a run and ends it. albef ends a run once and does not
/// reopen it, so RUNNING is accepted only while the run runs.
pub(super) async fn update(State(s): State<AppState>, _: Writer, Body(b): Body<Update>) -> Answer {
    let id = b.run.id()?;
    let current = s.reg.run(id).await?;
    if let Some(name) = b.run_name.filter(|n| !n.is_empty() && *n != current.name) {
        s.reg.rename_run(id, &name).await?;
        s.reg.set_tags(id, &[(RUN_NAME_TAG.into(), name)]).await?;
    }
    if let Some(status) = b.status.filter(|st| st != current.status.as_str()) {
        let status: RunStatus = status.parse().map_err(|_| {
            MlflowError::invalid(format!(
                "status {status:?}: albef runs are RUNNING, FINISHED, FAILED or KILLED"
            ))
        })?;
        if status == RunStatus::Running {
            return Err(MlflowError::invalid(format!(
                "run {id} is {}; albef does not reopen a run: start a new one",
                current.status
            )));
        }
        let end = b.end_time.filter(|&t| t > 0).unwrap_or_else(now_ms);
        s.reg.finish_run_at(id, status, end).await?;
    }
    let run = run_json(&s.reg, id, &experiment_ids(&s.reg).await?).await?;
    Ok(Json(json!({"run_info": run["info"]})))
}

/// `POST runs/delete` (token): deletes the run for good (MLflow would keep it, marked deleted).
pub(super) async fn delete(State(s): State<AppState>, _: Writer, Body(b): Body<RunRef>) -> Answer {
    s.reg.delete_run(b.id()?).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub(super) struct Search {
    #[serde(default)]
    experiment_ids: Vec<String>,
    filter: Option<String>,
    run_view_type: Option<String>,
    max_results: Option<i64>,
    #[serde(default)]
    order_by: Vec<String>,
    page_token: Option<String>,
}

/// `POST runs/search`: the registry's search with the translated filter and order, restricted
/// to the experiments asked for, a page at a time.
pub(super) async fn search(State(s): State<AppState>, Body(b): Body<Search>) -> Answer {
    let page = Page::of(
        b.max_results,
        b.page_token.as_deref(),
        1000,
        MAX_SEARCH_RESULTS as usize,
    )?;
    if b.run_view_type.as_deref() == Some("DELETED_ONLY") {
        return Ok(Json(json!({"runs": []})));
    }
    let mut conditions = Vec::new();
    let mut names = Vec::new();
    for id in &b.experiment_ids {
        match by_id(&s.reg, id).await {
            Ok(e) => names.push(format!("'{}'", e.name.replace('\'', "''"))),
            Err(e) if e.code == "RESOURCE_DOES_NOT_EXIST" => {}
            Err(e) => return Err(e),
        }
    }
    if !b.experiment_ids.is_empty() {
        if names.is_empty() {
            return Ok(Json(json!({"runs": []})));
        }
        conditions.push(format!("experiment IN ({})", names.join(", ")));
    }
    if let Some(f) = b.filter.as_deref().filter(|f| !f.trim().is_empty()) {
        conditions.push(format!("({})", filter::filter(f)?));
    }
    let search = RunSearch {
        experiment: None,
        filter: (!conditions.is_empty()).then(|| conditions.join(" AND ")),
        order_by: Some(filter::order_by(&b.order_by)?).filter(|o| !o.is_empty()),
        limit: Some((page.offset + page.size + 1) as i64),
    };
    if search.limit > Some(MAX_SEARCH_RESULTS) {
        return Err(MlflowError::invalid(format!(
            "page_token and max_results reach past the {MAX_SEARCH_RESULTS} runs one search \
             answers; narrow the filter"
        )));
    }
    let hits = s.reg.search_runs(&search).await.map_err(|e| {
        e.context(format!(
            "searching runs with the registry filter {:?}",
            search.filter
        ))
    })?;
    let (hits, token) = page.cut(hits);
    let experiments = experiment_ids(&s.reg).await?;
    let mut runs = Vec::with_capacity(hits.len());
    for h in &hits {
        runs.push(run_json(&s.reg, h.run.id, &experiments).await?);
    }
    Ok(Json(super::with_token(json!({"runs": runs}), token)))
}
