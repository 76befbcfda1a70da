//! MLflow's search strings in the registry's filter language, so that runs/search goes through
//! the registry's one search (parser, SQL, limits). MLflow's grammar (`metrics.loss < 2 and
//! params.lr = '0.001' and attributes.status = 'FINISHED'`, `order_by` terms such as
//! `metrics.acc DESC`) is nearly a subset of the registry's: both are lexed by the registry's
//! lexer, and only what differs is rewritten token by token:
//!
//! - `params`/`parameters`/`parameter`, `tags`/`tag`, `metrics`/`metric` keep their meaning (a
//!   metric compares its last value, as in MLflow);
//! - `attributes.run_id` compares run ids, whose 32-hex-digit strings become the registry's
//!   numbers; `run_name`, `status`, `start_time` (and `created`), `end_time` map to the
//!   registry's attributes; `user_id` reads the `mlflow.user` tag, which MLflow's client sets;
//! - a double-quoted value is a string, as MLflow reads it (the registry reads it as a name);
//! - other attributes (`artifact_uri`, `lifecycle_stage`) and `datasets.*` are refused: the
//!   registry does not keep them.
use super::{parse_run_id, MlflowError};
use crate::query::lexer::{lex, Tok, Token};

/// The registry filter for an MLflow filter string.
pub(super) fn filter(mlflow: &str) -> Result<String, MlflowError> {
    translate(mlflow, "filter")
}

/// The registry's `order_by` for MLflow's order terms, joined by commas.
pub(super) fn order_by(terms: &[String]) -> Result<String, MlflowError> {
    let terms = terms
        .iter()
        .map(|t| translate(t, "order_by term"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(terms.join(", "))
}

fn translate(mlflow: &str, what: &str) -> Result<String, MlflowError> {
    let tokens = lex(mlflow).map_err(|e| {
        MlflowError::invalid(format!(
            "{what} {mlflow:?}: {} at column {}",
            e.message, e.column
        ))
    })?;
    let out = rewrite(&tokens)
        .map_err(|why| MlflowError::invalid(format!("{what} {mlflow:?}: {why}")))?;
    Ok(render(&out))
}

/// The registry's tokens for MLflow's.
fn rewrite(tokens: &[Token]) -> Result<Vec<Tok>, String> {
    let mut out: Vec<Tok> = Vec::with_capacity(tokens.len());
    // Inside a comparison on run ids, whose string values are run ids.
    let mut run_ids = false;
    let mut i = 0;
    while i < tokens.len() {
        let after_dot = out.last() == Some(&Tok::Dot);
        let next_is_dot = tokens.get(i + 1).map(|t| &t.tok) == Some(&Tok::Dot);
        match &tokens[i].tok {
            Tok::Word(w) if is_one_of(w, &["AND", "OR"]) => {
                run_ids = false;
                out.push(tokens[i].tok.clone());
            }
            Tok::Word(w) if !after_dot && next_is_dot && is_one_of(w, ATTRIBUTE_PREFIXES) => {
                let name = match tokens.get(i + 2).map(|t| &t.tok) {
                    Some(Tok::Word(n) | Tok::Quoted(n)) => n.clone(),
                    _ => return Err(format!("expected an attribute name after '{w}.'")),
                };
                run_ids = attribute(&name, &mut out)?;
                i += 2;
            }
            Tok::Word(w) if !after_dot && next_is_dot => out.push(Tok::Word(entity(w)?)),
            Tok::Word(w) if !after_dot && is_one_of(w, &["run_id", "user_id", "created"]) => {
                run_ids = attribute(w, &mut out)?;
            }
            Tok::Str(s) if run_ids => {
                let id = parse_run_id(s).map_err(|e| e.message)?;
                out.push(Tok::Num(id as f64, id.to_string()));
            }
            Tok::Quoted(q) if !after_dot => out.push(Tok::Str(q.clone())),
            Tok::End => {}
            other => out.push(other.clone()),
        }
        i += 1;
    }
    Ok(out)
}

const ATTRIBUTE_PREFIXES: &[&str] = &["attributes", "attribute", "attr"];

fn is_one_of(word: &str, words: &[&str]) -> bool {
    words.iter().any(|w| w.eq_ignore_ascii_case(word))
}

/// The registry's prefix for MLflow's `metrics.`, `params.`, `tags.` (and their other
/// spellings).
fn entity(word: &str) -> Result<String, String> {
    let prefix = match word.to_ascii_lowercase().as_str() {
        "metrics" | "metric" => "metrics",
        "params" | "param" | "parameters" | "parameter" => "params",
        "tags" | "tag" => "tags",
        "datasets" | "dataset" => {
            return Err("albef keeps no run inputs, so datasets.* cannot be searched".into())
        }
        other => {
            return Err(format!(
                "unknown field prefix '{other}.': expected metrics., params., tags. or attributes."
            ))
        }
    };
    Ok(prefix.into())
}

/// Pushes the registry's field for an MLflow attribute; true for `run_id`, whose values are run
/// ids.
fn attribute(name: &str, out: &mut Vec<Tok>) -> Result<bool, String> {
    let field = match name.to_ascii_lowercase().as_str() {
        "run_id" => "id",
        "run_name" => "name",
        "status" => "status",
        "start_time" | "created" => "start_time",
        "end_time" => "end_time",
        "user_id" => {
            out.extend([
                Tok::Word("tags".into()),
                Tok::Dot,
                Tok::Quoted("mlflow.user".into()),
            ]);
            return Ok(false);
        }
        other => {
            return Err(format!(
                "attributes.{other} is not kept by albef; searchable attributes are run_id, \
                 run_name, status, start_time, end_time and user_id"
            ))
        }
    };
    out.push(Tok::Word(field.into()));
    Ok(field == "id")
}

/// The registry's text for tokens: names quoted in backticks, strings in single quotes, a space
/// between tokens except around dots and inside parentheses.
fn render(tokens: &[Tok]) -> String {
    let mut text = String::new();
    for (i, tok) in tokens.iter().enumerate() {
        let glued = i == 0
            || matches!(tok, Tok::Dot | Tok::Comma | Tok::RParen)
            || matches!(tokens[i - 1], Tok::Dot | Tok::LParen);
        if !glued {
            text.push(' ');
        }
        match tok {
            Tok::Word(w) => text.push_str(w),
            Tok::Quoted(q) => text.push_str(&format!("`{}`", q.replace('`', "``"))),
            Tok::Str(s) => text.push_str(&format!("'{}'", s.replace('\'', "''"))),
            Tok::Num(_, written) => text.push_str(written),
            Tok::Op(op) => text.push_str(op),
            Tok::Dot => text.push('.'),
            Tok::Comma => text.push(','),
            Tok::LParen => text.push('('),
            Tok::RParen => text.push(')'),
            Tok::End => {}
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::{parse_filter, parse_order_by};

    fn ok(mlflow: &str) -> String {
        let text = filter(mlflow).unwrap_or_else(|e| panic!("{mlflow}: {}", e.message));
        parse_filter(&text).unwrap_or_else(|e| panic!("{mlflow} -> {text}: {e}"));
        text
    }

    #[test]
    fn the_usual_filters_translate() {
        assert_eq!(
            ok("metrics.x > 0.5 and params.lr = '1e-3' and tags.t = 'v' and attributes.status = 'FINISHED'"),
            "metrics.x > 0.5 and params.lr = '1e-3' and tags.t = 'v' and status = 'FINISHED'"
        );
        assert_eq!(
            ok("tags.`mlflow.source.type` = \"LOCAL\" and parameter.\"a b\" != 'it''s'"),
            "tags.`mlflow.source.type` = 'LOCAL' and params.`a b` != 'it''s'"
        );
        assert_eq!(
            ok("attribute.run_name ILIKE '%base%'"),
            "name ILIKE '%base%'"
        );
        assert_eq!(
            ok("attributes.user_id = 'ada'"),
            "tags.`mlflow.user` = 'ada'"
        );
        assert_eq!(
            ok("attributes.created >= 1700000000000"),
            "start_time >= 1700000000000"
        );
    }

    #[test]
    fn run_ids_become_numbers() {
        let a = super::super::run_id_hex(3);
        let b = super::super::run_id_hex(12);
        assert_eq!(
            ok(&format!(
                "attributes.run_id IN ('{a}', '{b}') and metrics.run_id = 1"
            )),
            "id IN (3, 12) and metrics.run_id = 1"
        );
        assert_eq!(ok(&format!("run_id = '{a}'")), "id = 3");
        let e = filter("attributes.run_id = 'abc'").unwrap_err();
        assert!(e.message.contains("not an albef run id"), "{}", e.message);
    }

    #[test]
    fn what_albef_does_not_keep_is_refused() {
        for (input, says) in [
            (
                "attributes.artifact_uri = 'x'",
                "attributes.artifact_uri is not kept",
            ),
            ("datasets.name = 'x'", "no run inputs"),
            ("things.x = 1", "unknown field prefix 'things.'"),
            ("metrics.x ~ 1", "unexpected character"),
        ] {
            let e = filter(input).unwrap_err();
            assert_eq!(e.code, "INVALID_PARAMETER_VALUE");
            assert!(e.message.contains(says), "{input}: {}", e.message);
        }
    }

    #[test]
    fn order_terms_translate() {
        let terms = [
            "metrics.`val loss` DESC",
            "attributes.start_time",
            "params.lr ASC",
        ]
        .map(String::from);
        let text = order_by(&terms).unwrap();
        assert_eq!(text, "metrics.`val loss` DESC, start_time, params.lr ASC");
        assert_eq!(parse_order_by(&text).unwrap().len(), 3);
    }
}
