//! The score histograms in a dataset version's statistics, found by their shape, for the
//! dashboards' dataset page (the filter stage writes them).
use serde::Serialize;
use serde_json::Value;

/// A score histogram found in a dataset version's statistics (the filter stage writes them).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Histogram {
    /// Where it was found, as a dotted path (`scores.itm`).
    pub name: String,
    /// `counts.len() + 1` bin edges.
    pub edges: Vec<f64>,
    pub counts: Vec<f64>,
}

/// Every histogram in a statistics document: any object with a numeric `counts` array and
/// either `edges` (one more than the counts) or `min` and `max` (equal-width bins). It is named
/// by its own `name` or `score` string (`albef filter` writes a list of `{score, edges,
/// counts}`), else by its path in the document.
pub fn histograms(stats: &Value) -> Vec<Histogram> {
    let mut out = Vec::new();
    collect_histograms(stats, "", &mut out);
    out
}

fn numbers(v: Option<&Value>) -> Option<Vec<f64>> {
    v?.as_array()?.iter().map(Value::as_f64).collect()
}

fn collect_histograms(v: &Value, path: &str, out: &mut Vec<Histogram>) {
    match v {
        Value::Object(map) => {
            if let Some(counts) = numbers(map.get("counts")).filter(|c| !c.is_empty()) {
                let edges = numbers(map.get("edges")).or_else(|| {
                    let lo = map.get("min")?.as_f64()?;
                    let hi = map.get("max")?.as_f64()?;
                    let n = counts.len();
                    Some(
                        (0..=n)
                            .map(|i| lo + (hi - lo) * i as f64 / n as f64)
                            .collect(),
                    )
                });
                if let Some(edges) = edges.filter(|e| e.len() == counts.len() + 1) {
                    let own = ["name", "score"].iter().find_map(|k| map.get(*k)?.as_str());
                    out.push(Histogram {
                        name: own.unwrap_or(path).to_string(),
                        edges,
                        counts,
                    });
                    return;
                }
            }
            // In key order, whatever order the JSON map keeps (serde_json's `preserve_order`,
            // which a dependency may switch on, keeps insertion order).
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            for (k, child) in entries {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                collect_histograms(child, &p, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                collect_histograms(child, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_histograms_by_shape() {
        let stats = serde_json::json!({
            "rows": 10,
            "scores": {
                "itm": {"edges": [0.0, 0.5, 1.0], "counts": [3, 7]},
                "itc": {"min": 0.0, "max": 1.0, "counts": [1, 2, 3, 4]},
                "bad": {"edges": [0.0, 1.0], "counts": [1, 2]}
            }
        });
        let h = histograms(&stats);
        let names: Vec<&str> = h.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["scores.itc", "scores.itm"]);
        assert_eq!(h[0].edges, [0.0, 0.25, 0.5, 0.75, 1.0]);
        assert_eq!(h[1].counts, [3.0, 7.0]);
    }

    #[test]
    fn a_histogram_is_named_by_its_own_score_field() {
        let stats = serde_json::json!({
            "histograms": [
                {"score": "score", "edges": [0.0, 0.5, 1.0], "counts": [3, 7]},
                {"score": "i2t", "edges": [0.0, 0.5, 1.0], "counts": [9, 1]},
                {"edges": [0.0, 1.0], "counts": [4]}
            ]
        });
        let names: Vec<String> = histograms(&stats).into_iter().map(|h| h.name).collect();
        assert_eq!(names, ["score", "i2t", "histograms[2]"]);
    }
}
