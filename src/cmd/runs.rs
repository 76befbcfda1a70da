//! `albef runs`: experiment tracking from the command line. Listing, showing, comparing and
//! searching runs (the filter language lives in albef-registry), and logging from scripts in
//! other languages (`create`, `log`, `finish`).
use super::Context;
use crate::output::{print_json, time_cell, Format, Table};
use albef_registry::{Registry, Run, RunSearch, RunStatus};
use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

#[derive(Args)]
pub struct RunsArgs {
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table, global = true)]
    format: Format,
    #[command(subcommand)]
    command: RunsCommand,
}

#[derive(Subcommand)]
enum RunsCommand {
    /// List runs, newest first
    List {
        /// Only the runs of this experiment
        #[arg(long)]
        experiment: Option<String>,
    },
    /// One run: attributes, params, tags and metric summaries
    Show {
        /// Run id
        run: i64,
        /// Every point of every metric too (step, value, logged_at); values exact in JSON, NaN
        /// and infinities as "NaN", "Infinity", "-Infinity"
        #[arg(long)]
        history: bool,
    },
    /// Runs side by side: params (differences marked with *) and metric summaries
    Compare {
        /// Two or more run ids
        #[arg(required = true, num_args = 2..)]
        runs: Vec<i64>,
    },
    /// Draw a metric of one or more runs against step into an SVG or PNG file
    Plot(super::plot::PlotArgs),
    /// Find runs with the filter language, e.g. "min(metrics.loss) < 2 OR params.lr IN ('0.5')"
    Search {
        /// Only the runs of this experiment
        #[arg(long)]
        experiment: Option<String>,
        /// Filter: metrics.X, min(metrics.X), max(metrics.X), params.X, tags.X, status, name,
        /// experiment, start_time, id; = != < <= > >= LIKE IN NOT IN AND OR ( )
        #[arg(long)]
        filter: String,
        /// Ordering, e.g. "min(metrics.loss) ASC, start_time DESC" [default: newest first]
        #[arg(long)]
        order_by: Option<String>,
        /// At most this many runs (1 to 50000)
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Start a run (for scripts); `--format json` prints {"id": ...}
    Create {
        /// Experiment (created when new)
        #[arg(long)]
        experiment: String,
        /// Run name, unique within the experiment
        #[arg(long)]
        name: String,
        /// A param KEY=VALUE (repeatable)
        #[arg(long = "param", value_parser = parse_pair)]
        params: Vec<(String, String)>,
        /// A tag KEY=VALUE (repeatable)
        #[arg(long = "tag", value_parser = parse_pair)]
        tags: Vec<(String, String)>,
        /// The run's config as a JSON document
        #[arg(long, default_value = "{}")]
        config: String,
    },
    /// Log metric points to a run
    Log {
        /// Run id
        run: i64,
        /// A metric KEY=NUMBER (repeatable)
        #[arg(long = "metric", required = true, value_parser = parse_metric)]
        metrics: Vec<(String, f64)>,
        /// The step of these points
        #[arg(long, default_value_t = 0)]
        step: i64,
    },
    /// End a run
    Finish {
        /// Run id
        run: i64,
        /// FINISHED, FAILED or KILLED
        #[arg(long, default_value_t = RunStatus::Finished)]
        status: RunStatus,
    },
}

/// `KEY=VALUE` with a non-empty key.
pub(super) fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// `KEY=NUMBER`; NaN and infinities are refused later with the metric's name.
pub(super) fn parse_metric(s: &str) -> Result<(String, f64), String> {
    let (k, v) = parse_pair(s)?;
    let n: f64 = v
        .trim()
        .parse()
        .map_err(|_| format!("metric {k}: {v:?} is not a number"))?;
    Ok((k, n))
}

fn run_table(extra: &[String]) -> Table {
    let mut headers: Vec<String> = [
        "id",
        "experiment",
        "name",
        "status",
        "start_time",
        "end_time",
    ]
    .map(String::from)
    .to_vec();
    headers.extend(extra.iter().cloned());
    Table::new(headers)
}

fn run_row(r: &Run) -> Vec<Value> {
    vec![
        json!(r.id),
        json!(r.experiment),
        json!(r.name),
        json!(r.status.as_str()),
        time_cell(Some(r.start_time)),
        time_cell(r.end_time),
    ]
}

impl RunsArgs {
    pub async fn run(self, ctx: Context) -> Result<()> {
        let reg = Registry::connect(&ctx.registry_url).await?;
        let format = self.format;
        match self.command {
            RunsCommand::Plot(args) => args.run(&reg).await,
            RunsCommand::List { experiment } => {
                let runs = reg.runs(experiment.as_deref()).await?;
                let mut t = run_table(&[]);
                for r in &runs {
                    t.push(run_row(r));
                }
                t.print(format)
            }
            RunsCommand::Show { run, history } => show(&reg, run, history, format).await,
            RunsCommand::Compare { runs } => compare(&reg, &runs, format).await,
            RunsCommand::Search {
                experiment,
                filter,
                order_by,
                limit,
            } => {
                let query = RunSearch {
                    experiment,
                    filter: Some(filter),
                    order_by,
                    limit: Some(limit),
                };
                search(&reg, query, format).await
            }
            RunsCommand::Create {
                experiment,
                name,
                params,
                tags,
                config,
            } => {
                let config: Value = serde_json::from_str(&config)
                    .with_context(|| format!("--config {config:?} is not valid JSON"))?;
                let id = reg.create_run(&experiment, &name, &config).await?;
                if !params.is_empty() {
                    reg.log_params(id, &params).await?;
                }
                if !tags.is_empty() {
                    reg.set_tags(id, &tags).await?;
                }
                print_id(id, format)
            }
            RunsCommand::Log { run, metrics, step } => log(&reg, run, &metrics, step).await,
            RunsCommand::Finish { run, status } => reg.finish_run(run, status).await,
        }
    }
}

/// `albef runs show RUN [--history]`: every field, param, tag and metric summary of a run, and
/// with `history` every metric point.
async fn show(reg: &Registry, run: i64, history: bool, format: Format) -> Result<()> {
    let d = reg.run_detail(run).await?;
    let mut histories = Vec::new();
    if history {
        for m in &d.metrics {
            histories.push((m.key.clone(), reg.metric_history(run, &m.key).await?));
        }
    }
    if format == Format::Json {
        let mut out = serde_json::to_value(&d)?;
        if history {
            let list: Vec<Value> = histories
                .iter()
                .map(|(key, points)| json!({"key": key, "points": points}))
                .collect();
            out["history"] = Value::Array(list);
        }
        return print_json(&out);
    }
    let r = &d.run;
    let mut t = Table::new(["field", "value"]);
    let attrs = [
        ("id", json!(r.id)),
        ("experiment", json!(r.experiment)),
        ("name", json!(r.name)),
        ("status", json!(r.status.as_str())),
        ("start_time", time_cell(Some(r.start_time))),
        ("end_time", time_cell(r.end_time)),
        ("host", json!(r.host)),
        ("code_version", json!(r.code_version)),
        ("dataset_version_id", json!(r.dataset_version_id)),
        ("config", json!(r.config.to_string())),
    ];
    for (k, v) in attrs {
        t.push(vec![json!(k), v]);
    }
    for (k, v) in &d.params {
        t.push(vec![json!(format!("params.{k}")), json!(v)]);
    }
    for (k, v) in &d.tags {
        t.push(vec![json!(format!("tags.{k}")), json!(v)]);
    }
    for m in &d.metrics {
        t.push(vec![
            json!(format!("metrics.{}", m.key)),
            json!(format!(
                "last {} (step {}), min {}, max {}, {} points",
                m.last, m.last_step, m.min, m.max, m.count
            )),
        ]);
    }
    for (key, points) in &histories {
        for p in points {
            t.push(vec![
                json!(format!("metrics.{key}[{}]", p.step)),
                json!(format!("{:?} (logged at {} ms)", p.value, p.logged_at)),
            ]);
        }
    }
    t.print(format)
}

/// `albef runs compare RUN...`: params and metric summaries side by side, differences marked.
async fn compare(reg: &Registry, runs: &[i64], format: Format) -> Result<()> {
    let c = reg.compare_runs(runs).await?;
    if format == Format::Json {
        return print_json(&serde_json::to_value(&c)?);
    }
    let mut headers = vec!["key".to_string(), "differs".to_string()];
    headers.extend(c.runs.iter().map(|r| format!("{} ({})", r.id, r.name)));
    let mut t = Table::new(headers);
    for p in &c.params {
        let mut row = vec![
            json!(format!("params.{}", p.key)),
            json!(if p.differs { "*" } else { "" }),
        ];
        row.extend(p.values.iter().map(|v| json!(v)));
        t.push(row);
    }
    for m in &c.metrics {
        for (what, pick) in [
            (
                "last",
                (|s: &albef_registry::MetricSummary| s.last) as fn(&_) -> f64,
            ),
            ("min", |s| s.min),
            ("max", |s| s.max),
        ] {
            let values: Vec<Option<f64>> =
                m.summaries.iter().map(|s| s.as_ref().map(pick)).collect();
            let differs = values.iter().any(|v| v != &values[0]);
            let mut row = vec![
                json!(format!("{what}(metrics.{})", m.key)),
                json!(if differs { "*" } else { "" }),
            ];
            row.extend(values.iter().map(|v| json!(v)));
            t.push(row);
        }
    }
    t.print(format)
}

/// `albef runs search`: the runs a filter expression selects, with the values it ordered by.
async fn search(reg: &Registry, query: RunSearch, format: Format) -> Result<()> {
    let hits = reg.search_runs(&query).await?;
    let extra: Vec<String> = hits
        .first()
        .map(|h| h.values.iter().map(|(k, _)| k.clone()).collect())
        .unwrap_or_default();
    let mut t = run_table(&extra);
    for h in &hits {
        let mut row = run_row(&h.run);
        row.extend(h.values.iter().map(|(_, v)| v.clone()));
        t.push(row);
    }
    t.print(format)
}

/// `albef runs log RUN KEY=VALUE...`: metric points at one step; a bad value writes nothing.
async fn log(reg: &Registry, run: i64, metrics: &[(String, f64)], step: i64) -> Result<()> {
    reg.run(run).await?;
    // Check every value first, so that a bad one writes nothing.
    if let Some((k, v)) = metrics.iter().find(|(_, v)| !v.is_finite()) {
        anyhow::bail!("metric {k:?} of run {run}: value {v} is not a finite number");
    }
    let w = reg.metric_writer(run);
    for (k, v) in metrics {
        w.log(k, step, *v)?;
    }
    w.finish().await
}

/// The answer of a command that creates something: `{"id": N}` in JSON, the id otherwise.
pub(super) fn print_id(id: i64, format: Format) -> Result<()> {
    match format {
        Format::Json => print_json(&json!({ "id": id })),
        Format::Table | Format::Csv => {
            let mut t = Table::new(["id"]);
            t.push(vec![json!(id)]);
            t.print(format)
        }
    }
}
