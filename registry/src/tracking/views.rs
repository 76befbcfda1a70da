//! Read-only queries on runs for the dashboards (`albef serve`, `albef runs plot`): what the web
//! page and the JSON API show that the write side does not already answer, such as the list of
//! metric keys, the summaries of many runs at once, a side-by-side comparison of runs, and metric
//! histories thinned out for drawing.
use super::runs::{summary_from_row, MetricPoint, MetricSummary, Run};
use crate::Registry;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The most runs one comparison takes.
pub const MAX_COMPARED_RUNS: usize = 20;

/// How many run ids one `IN (...)` list binds (well under SQLite's parameter limit).
const IDS_PER_QUERY: usize = 500;

/// Several runs side by side: the union of their params (marked where they differ) and of their
/// metric summaries (`None` where a run lacks the key).
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub runs: Vec<Run>,
    pub params: Vec<ParamRow>,
    pub metrics: Vec<MetricRow>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ParamRow {
    pub key: String,
    /// One value per compared run, in the order of `runs`.
    pub values: Vec<Option<String>>,
    pub differs: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct MetricRow {
    pub key: String,
    pub summaries: Vec<Option<MetricSummary>>,
}

impl Registry {
    /// Every metric key any run has logged, sorted.
    pub async fn metric_keys(&self) -> Result<Vec<String>> {
        let rows = self
            .db
            .q("SELECT DISTINCT key FROM metric_summaries ORDER BY key")
            .fetch_all(&self.db)
            .await
            .context("listing metric keys")?;
        rows.iter().map(|r| Ok(r.get("key")?)).collect()
    }

    /// The metric summaries of many runs at once, by run id.
    pub async fn metric_summaries_of(
        &self,
        ids: &[i64],
    ) -> Result<HashMap<i64, Vec<MetricSummary>>> {
        let mut out: HashMap<i64, Vec<MetricSummary>> = HashMap::new();
        for chunk in ids.chunks(IDS_PER_QUERY) {
            let list: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT run_id, key, last_value, last_step, min_value, max_value, count \
                 FROM metric_summaries WHERE run_id IN ({}) ORDER BY run_id, key",
                list.join(", ")
            );
            let mut q = self.db.q_str(&sql);
            for id in chunk {
                q = q.bind(*id);
            }
            let rows = q
                .fetch_all(&self.db)
                .await
                .context("reading the metric summaries of runs")?;
            for r in &rows {
                out.entry(r.get("run_id")?)
                    .or_default()
                    .push(summary_from_row(r)?);
            }
        }
        Ok(out)
    }

    /// Runs side by side (2 to [`MAX_COMPARED_RUNS`], each once).
    pub async fn compare_runs(&self, ids: &[i64]) -> Result<Comparison> {
        if !(2..=MAX_COMPARED_RUNS).contains(&ids.len()) {
            bail!(
                "compare needs 2 to {MAX_COMPARED_RUNS} runs, got {}",
                ids.len()
            );
        }
        if ids.iter().collect::<BTreeSet<_>>().len() != ids.len() {
            bail!("compare got the same run twice in {ids:?}");
        }
        let mut details = Vec::with_capacity(ids.len());
        for &id in ids {
            details.push(self.run_detail(id).await?);
        }
        let mut params: BTreeMap<&str, Vec<Option<String>>> = BTreeMap::new();
        let mut metrics: BTreeMap<&str, Vec<Option<MetricSummary>>> = BTreeMap::new();
        for (i, d) in details.iter().enumerate() {
            for (k, v) in &d.params {
                params.entry(k).or_insert_with(|| vec![None; ids.len()])[i] = Some(v.clone());
            }
            for m in &d.metrics {
                metrics
                    .entry(&m.key)
                    .or_insert_with(|| vec![None; ids.len()])[i] = Some(m.clone());
            }
        }
        let params = params
            .into_iter()
            .map(|(key, values)| ParamRow {
                key: key.to_string(),
                differs: values.iter().any(|v| v != &values[0]),
                values,
            })
            .collect();
        let metrics = metrics
            .into_iter()
            .map(|(key, summaries)| MetricRow {
                key: key.to_string(),
                summaries,
            })
            .collect();
        Ok(Comparison {
            runs: details.iter().map(|d| d.run.clone()).collect(),
            params,
            metrics,
        })
    }

    /// The history of one metric of a run, thinned to at most `max_points` for drawing.
    pub async fn metric_history_for_plot(
        &self,
        run: i64,
        key: &str,
        max_points: usize,
    ) -> Result<Vec<MetricPoint>> {
        self.run(run).await?;
        Ok(thin(self.metric_history(run, key).await?, max_points))
    }
}

/// Keeps at most `max` points (at least 2), evenly spaced by index, always with the first and
/// the last, so that a long series draws the same shape at a fraction of the cost.
fn thin(points: Vec<MetricPoint>, max: usize) -> Vec<MetricPoint> {
    let max = max.max(2);
    let n = points.len();
    if n <= max {
        return points;
    }
    (0..max).map(|i| points[i * (n - 1) / (max - 1)]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thin_keeps_ends_and_bounds_the_count() {
        let points: Vec<MetricPoint> = (0..1001)
            .map(|s| MetricPoint {
                step: s,
                value: s as f64,
                logged_at: 0,
            })
            .collect();
        let t = thin(points.clone(), 100);
        assert_eq!(t.len(), 100);
        assert_eq!(t[0].step, 0);
        assert_eq!(t[99].step, 1000);
        assert!(t.windows(2).all(|w| w[0].step < w[1].step));
        assert_eq!(thin(points[..50].to_vec(), 100).len(), 50);
    }
}
