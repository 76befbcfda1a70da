//! `--format table|json|csv`: one table type that every listing command prints through, so that
//! people get aligned columns and scripts get JSON (typed values) or CSV.
use clap::ValueEnum;
use serde_json::Value;
use std::io::Write;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
    Csv,
}

/// Rows of typed cells under named columns.
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

impl Table {
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Self {
        Self {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Vec<Value>) {
        debug_assert_eq!(row.len(), self.headers.len());
        self.rows.push(row);
    }

    /// The rows as a JSON array of objects keyed by column name.
    pub fn to_json(&self) -> Value {
        Value::Array(
            self.rows
                .iter()
                .map(|row| {
                    Value::Object(
                        self.headers
                            .iter()
                            .cloned()
                            .zip(row.iter().cloned())
                            .collect(),
                    )
                })
                .collect(),
        )
    }

    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Json => {
                serde_json::to_string_pretty(&self.to_json()).expect("JSON values serialise") + "\n"
            }
            Format::Csv => {
                let mut out = String::new();
                let line = |cells: Vec<String>| {
                    cells
                        .iter()
                        .map(|c| csv_field(c))
                        .collect::<Vec<_>>()
                        .join(",")
                };
                out += &line(self.headers.clone());
                out.push('\n');
                for row in &self.rows {
                    out += &line(row.iter().map(cell_text).collect());
                    out.push('\n');
                }
                out
            }
            Format::Table => {
                let cells: Vec<Vec<String>> = self
                    .rows
                    .iter()
                    .map(|r| r.iter().map(|v| printable(&cell_text(v))).collect())
                    .collect();
                let mut widths: Vec<usize> =
                    self.headers.iter().map(|h| h.chars().count()).collect();
                for row in &cells {
                    for (w, c) in widths.iter_mut().zip(row) {
                        *w = (*w).max(c.chars().count());
                    }
                }
                let line = |cells: &[String]| {
                    let mut s = cells
                        .iter()
                        .zip(&widths)
                        .map(|(c, w)| format!("{c:<w$}"))
                        .collect::<Vec<_>>()
                        .join("  ");
                    s.truncate(s.trim_end().len());
                    s + "\n"
                };
                let mut out = line(&self.headers);
                for row in &cells {
                    out += &line(row);
                }
                out
            }
        }
    }

    pub fn print(&self, format: Format) -> anyhow::Result<()> {
        std::io::stdout().write_all(self.render(format).as_bytes())?;
        Ok(())
    }
}

/// Prints one JSON value on its own line (the `--format json` answer of a command).
pub fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// An epoch-milliseconds time (as the registry stores them) as an RFC 3339 UTC cell,
/// `YYYY-MM-DDTHH:MM:SSZ`: one unambiguous form in tables, CSV and JSON.
pub fn time_cell(ms: Option<i64>) -> Value {
    let Some(ms) = ms else { return Value::Null };
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    Value::String(format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    ))
}

fn cell_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A cell as a terminal shows it safely: control characters (escape sequences that clear the
/// screen or move the cursor, newlines that fake rows) written as Rust escapes (`\u{1b}`, `\n`).
fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_escape_control_characters() {
        let mut t = Table::new(["name"]);
        t.push(vec![json!("run\x1b[2J\nfake  row\u{7}")]);
        let out = t.render(Format::Table);
        assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{out:?}");
        assert_eq!(out.lines().count(), 2, "one header, one row: {out:?}");
        assert!(out.contains("run\\u{1b}[2J\\nfake  row\\u{7}"), "{out:?}");
        // JSON and CSV keep the value itself.
        assert!(t.render(Format::Json).contains("\\u001b"));
    }

    fn sample() -> Table {
        let mut t = Table::new(["id", "name", "loss"]);
        t.push(vec![json!(1), json!("a, \"b\""), json!(0.5)]);
        t.push(vec![json!(22), json!("c"), Value::Null]);
        t
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(time_cell(Some(0)), json!("1970-01-01T00:00:00Z"));
        assert_eq!(
            time_cell(Some(1_709_251_199_999)),
            json!("2024-02-29T23:59:59Z")
        );
        assert_eq!(time_cell(None), Value::Null);
    }

    #[test]
    fn csv_quotes_fields_that_need_it() {
        assert_eq!(
            sample().render(Format::Csv),
            "id,name,loss\n1,\"a, \"\"b\"\"\",0.5\n22,c,\n"
        );
    }

    #[test]
    fn json_keeps_types() {
        let v: Value = serde_json::from_str(&sample().render(Format::Json)).unwrap();
        assert_eq!(v[0]["id"], json!(1));
        assert_eq!(v[0]["loss"], json!(0.5));
        assert_eq!(v[1]["loss"], Value::Null);
    }

    #[test]
    fn table_aligns_columns() {
        let out = sample().render(Format::Table);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "id  name    loss");
        assert_eq!(lines[2], "22  c");
    }
}
