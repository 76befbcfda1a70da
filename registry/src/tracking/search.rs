//! `runs search`: the filter language applied to the registry, shared by the CLI, the web API and
//! the benchmark so that all three measure and run the same path.
use super::runs::{run_from_row, Run, RUN_COLUMNS};
use crate::db::{Dialect, MetricValue};
use crate::json_float;
use crate::query::sql::{order_sql, where_sql, Param, SqlParams};
use crate::query::{parse_filter, parse_order_by, Field};
use crate::Registry;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

/// The most runs one search returns.
pub const MAX_SEARCH_RESULTS: i64 = 50_000;

/// A search: all parts optional; by default the newest runs first.
#[derive(Clone, Debug, Default)]
pub struct RunSearch {
    pub experiment: Option<String>,
    pub filter: Option<String>,
    pub order_by: Option<String>,
    /// Default 1000, at most 50,000.
    pub limit: Option<i64>,
}

/// A run found by a search, with the values it was ordered by.
#[derive(Clone, Debug, Serialize)]
pub struct SearchHit {
    pub run: Run,
    /// (order-by term as written canonically, its value for this run or null).
    pub values: Vec<(String, Value)>,
}

impl Registry {
    pub async fn search_runs(&self, search: &RunSearch) -> Result<Vec<SearchHit>> {
        let limit = search.limit.unwrap_or(1000);
        if !(1..=MAX_SEARCH_RESULTS).contains(&limit) {
            bail!("limit {limit} is out of range: expected 1 to {MAX_SEARCH_RESULTS}");
        }
        let filter = match search.filter.as_deref().filter(|f| !f.trim().is_empty()) {
            Some(f) => Some(parse_filter(f)?),
            None => None,
        };
        let terms = match search.order_by.as_deref().filter(|o| !o.trim().is_empty()) {
            Some(o) => parse_order_by(o)?,
            None => Vec::new(),
        };
        let mut params = SqlParams::default();
        let order = order_sql(&terms, &mut params);
        let mut conditions = Vec::new();
        if let Some(expr) = &filter {
            conditions.push(where_sql(expr, &mut params, self.db.dialect()));
        }
        if let Some(experiment) = &search.experiment {
            let exists = self
                .db
                .q("SELECT id FROM experiments WHERE name = $1")
                .bind(experiment.clone())
                .fetch_optional(&self.db)
                .await?;
            if exists.is_none() {
                bail!("no experiment named {experiment:?}");
            }
            conditions.push(format!(
                "e.name = {}",
                params.push(Param::Text(experiment.clone()))
            ));
        }
        let condition = if conditions.is_empty() {
            "TRUE".to_string()
        } else {
            conditions.join(" AND ")
        };
        let limit_param = params.push(Param::Int(limit));
        let from = "FROM runs r JOIN experiments e ON e.id = r.experiment_id";
        let columns = format!("{RUN_COLUMNS}{}", order.columns);
        let sql = match &order.split {
            None => format!(
                "SELECT {columns} {from}{} WHERE {condition} ORDER BY {} LIMIT {limit_param}",
                order.joins, order.order
            ),
            // The runs with the first term's row, driven by its table (CROSS JOIN keeps that
            // table the outer loop on SQLite, whose planner also needs to be told the index; to
            // Postgres it is a plain join), then the runs without it, read only when the first
            // part is short: the count is a constant condition, checked before the tail's scan
            // begins (inside the tail, so that SQLite checks it before sorting). One statement,
            // so one snapshot.
            Some(split) => format!(
                "WITH head AS (SELECT {columns} FROM {} j0{} \
                 CROSS JOIN runs r CROSS JOIN experiments e{} \
                 WHERE j0.key = {} AND r.id = j0.run_id AND e.id = r.experiment_id \
                 AND ({condition}) ORDER BY {} LIMIT {limit_param}) \
                 SELECT * FROM head UNION ALL \
                 SELECT * FROM (SELECT {columns} {from}{} WHERE ({condition}) AND {} \
                 AND (SELECT count(*) FROM head) < {limit_param} \
                 ORDER BY {} LIMIT {limit_param}) tail \
                 ORDER BY {} LIMIT {limit_param}",
                split.table,
                match self.db.dialect() {
                    Dialect::Sqlite => format!(" INDEXED BY {}", split.index),
                    Dialect::Postgres => String::new(),
                },
                split.other_joins,
                split.key,
                split.order,
                order.joins,
                split.missing,
                order.order,
                split.outer
            ),
        };
        let mut q = self.db.q_str(&sql);
        for p in params.values {
            q = match p {
                Param::Int(i) => q.bind(i),
                Param::Float(f) => q.bind(f),
                Param::Text(s) => q.bind(s),
            };
        }
        let rows = q.fetch_all(&self.db).await.context("searching runs")?;
        rows.iter()
            .map(|row| {
                let run = run_from_row(row)?;
                let values = terms
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        let col = format!("o{i}");
                        let v = match &t.field {
                            Field::Metric { .. } => row
                                .get::<Option<MetricValue>>(&col)?
                                .map_or(Value::Null, |v| json_float::to_value(v.0)),
                            f if f.is_numeric() => Value::from(row.get::<Option<i64>>(&col)?),
                            _ => Value::from(row.get::<Option<String>>(&col)?),
                        };
                        Ok((t.field.to_string(), v))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(SearchHit { run, values })
            })
            .collect()
    }
}
