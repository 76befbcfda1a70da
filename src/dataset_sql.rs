//! Questions over a dataset version's shards, answered by polars: `albef datasets query` runs
//! SQL against the table `pairs`, `albef datasets stats` runs a fixed set of such queries, and
//! the dashboard's dataset page shows their per-host table (`src/cmd/serve.rs`). The shards
//! are scanned lazily, so a query reads only the columns it names; the pictures (`jpg`) are not
//! in the table. img2dataset's shards read in albef's terms (`failed_to_resize` is
//! `failed_to_decode`; dataset/src/img2dataset.rs lists the differences), and one column is
//! added: `host`, the lower-case host name of `url`.
use crate::output::Table;
use albef_dataset::{JPG, STATUS, URL};
use albef_registry::json_float;
use anyhow::{Context, Result};
use polars::prelude::{
    col, lit, when, AnyValue, DataFrame, Expr, LazyFrame, PlRefPath, ScanArgsParquet,
};
use polars::sql::SQLContext;
use serde_json::{json, Value};
use std::path::PathBuf;

/// The table name queries use.
pub const TABLE: &str = "pairs";

/// The scheme, optional user info, then the host (a bracketed IPv6 address or a name).
const HOST_PATTERN: &str = r"^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?(\[[^\]]*\]|[^:/?#]*)";

/// The version's shards as one lazy table: every column but `jpg`, statuses in albef's terms,
/// and `host`.
pub fn frame(shards: &[PathBuf]) -> Result<LazyFrame> {
    let paths: Vec<PlRefPath> = shards
        .iter()
        .map(|p| PlRefPath::new(p.to_string_lossy().into_owned()))
        .collect();
    let args = ScanArgsParquet {
        allow_missing_columns: true,
        ..Default::default()
    };
    let mut lf = LazyFrame::scan_parquet_files(paths.into(), args)
        .context("cannot scan the version's shards")?;
    let schema = lf
        .collect_schema()
        .context("cannot read the schema of the version's shards")?;
    let mut columns: Vec<Expr> = Vec::new();
    for name in schema.iter_names() {
        columns.push(match name.as_str() {
            JPG => continue,
            STATUS => when(col(STATUS).eq(lit("failed_to_resize")))
                .then(lit("failed_to_decode"))
                .otherwise(col(STATUS))
                .alias(STATUS),
            _ => col(name.clone()),
        });
    }
    if schema.contains(URL) {
        let host = col(URL).str().extract(lit(HOST_PATTERN), 1);
        columns.push(host.str().to_lowercase().alias("host"));
    }
    Ok(lf.select(columns))
}

/// Runs `sql` over the shards (the table `pairs`).
pub fn query(shards: &[PathBuf], sql: &str) -> Result<DataFrame> {
    let mut ctx = SQLContext::new();
    ctx.register(TABLE, frame(shards)?);
    let plan = ctx
        .execute(sql)
        .with_context(|| format!("cannot run {sql:?} (the table is `{TABLE}`)"))?;
    plan.collect()
        .with_context(|| format!("cannot answer {sql:?}"))
}

/// One section of `datasets stats`: its name and its SQL.
pub struct Question {
    pub name: &'static str,
    pub sql: String,
}

/// The rows by host: how many, how many succeeded, how many failed to download or decode
/// (the 50 largest hosts). The dashboard's dataset page shows it.
pub fn hosts_sql() -> String {
    format!(
        "SELECT host, COUNT(*) AS rows, \
         SUM(CASE WHEN status = 'success' THEN 1 ELSE 0 END) AS successes, \
         SUM(CASE WHEN status IN ('failed_to_download', 'failed_to_decode') THEN 1 ELSE 0 END) AS failures \
         FROM {TABLE} GROUP BY host ORDER BY rows DESC, host LIMIT 50"
    )
}

/// min, 5th percentile, median, 95th percentile, max and mean of `expr` over the rows that
/// satisfy `filter`.
fn distribution(expr: &str, filter: &str) -> String {
    format!(
        "SELECT MIN({expr}) AS min, QUANTILE_CONT({expr}, 0.05) AS p5, MEDIAN({expr}) AS p50, \
         QUANTILE_CONT({expr}, 0.95) AS p95, MAX({expr}) AS max, AVG({expr}) AS mean \
         FROM {TABLE} WHERE {filter}"
    )
}

/// The questions `datasets stats` asks; the score one only of a version that has a `score`
/// column (made by `albef filter`).
pub fn stats_questions(has_score: bool) -> Vec<Question> {
    let mut questions = vec![
        Question {
            name: "rows by status",
            sql: format!(
                "SELECT status, COUNT(*) AS rows FROM {TABLE} GROUP BY status ORDER BY rows DESC, status"
            ),
        },
        Question {
            name: "errors (the 20 most frequent messages)",
            sql: format!(
                "SELECT status, error_message, COUNT(*) AS rows FROM {TABLE} \
                 WHERE error_message IS NOT NULL GROUP BY status, error_message \
                 ORDER BY rows DESC, error_message LIMIT 20"
            ),
        },
        Question {
            name: "rows by host",
            sql: hosts_sql(),
        },
        Question {
            name: "caption length (characters)",
            sql: distribution("LENGTH(caption)", "caption IS NOT NULL"),
        },
        Question {
            name: "picture width (success rows)",
            sql: distribution("width", "status = 'success'"),
        },
        Question {
            name: "picture height (success rows)",
            sql: distribution("height", "status = 'success'"),
        },
    ];
    if has_score {
        questions.push(Question {
            name: "filter score by host",
            sql: format!(
                "SELECT host, COUNT(score) AS scored, QUANTILE_CONT(score, 0.1) AS p10, \
                 MEDIAN(score) AS p50, QUANTILE_CONT(score, 0.9) AS p90 FROM {TABLE} \
                 WHERE score IS NOT NULL GROUP BY host ORDER BY scored DESC, host LIMIT 50"
            ),
        });
    }
    questions
}

/// Whether the shards have the filter's `score` column.
pub fn has_score(shards: &[PathBuf]) -> Result<bool> {
    Ok(frame(shards)?.collect_schema()?.contains("score"))
}

/// A frame as a table of typed cells (numbers stay numbers in JSON).
pub fn table(df: &DataFrame) -> Result<Table> {
    let columns = df.columns();
    let mut t = Table::new(columns.iter().map(|c| c.name().to_string()));
    for i in 0..df.height() {
        let row = columns
            .iter()
            .map(|c| Ok(cell(c.get(i)?)))
            .collect::<Result<Vec<_>>>()?;
        t.push(row);
    }
    Ok(t)
}

fn cell(v: AnyValue) -> Value {
    match v {
        AnyValue::Null => Value::Null,
        AnyValue::Boolean(b) => json!(b),
        AnyValue::String(s) => json!(s),
        AnyValue::StringOwned(s) => json!(s.as_str()),
        AnyValue::Int8(n) => json!(n),
        AnyValue::Int16(n) => json!(n),
        AnyValue::Int32(n) => json!(n),
        AnyValue::Int64(n) => json!(n),
        AnyValue::UInt8(n) => json!(n),
        AnyValue::UInt16(n) => json!(n),
        AnyValue::UInt32(n) => json!(n),
        AnyValue::UInt64(n) => json!(n),
        AnyValue::Float32(f) => json_float::to_value(f64::from(f)),
        AnyValue::Float64(f) => json_float::to_value(f),
        other => json!(other.to_string()),
    }
}
