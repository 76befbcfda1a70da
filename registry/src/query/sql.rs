//! Filter AST -> SQL over `runs r JOIN experiments e`. The text produced holds only column
//! names, operators and `$N` placeholders; every constant and every metric, param or tag name
//! from the user goes into [`SqlParams`] and is bound. Metric, param and tag comparisons are
//! `EXISTS` subqueries, which both planners turn into (semi-)joins on the indexed tables.
//!
//! `LIKE` is case-sensitive on both backends, with `%` (any run of characters), `_` (one
//! character) and `\` (takes the next character literally). Postgres's `LIKE` reads patterns
//! so; SQLite's folds ASCII case, so there the pattern is translated to a `GLOB` pattern, which
//! is case-sensitive. `ILIKE` folds case: Postgres's `ILIKE`, and on SQLite its `LIKE` with `\`
//! as the escape, which folds ASCII letters only.
use super::{Agg, Attr, Expr, Field, Literal, Op, OrderTerm};
use crate::db::Dialect;

/// A bound value.
#[derive(Clone, Debug, PartialEq)]
pub enum Param {
    Int(i64),
    Float(f64),
    Text(String),
}

/// The values bound so far; `$N` is the N-th.
#[derive(Debug, Default)]
pub struct SqlParams {
    pub values: Vec<Param>,
}

impl SqlParams {
    /// Adds a value and returns its placeholder.
    pub fn push(&mut self, p: Param) -> String {
        self.values.push(p);
        format!("${}", self.values.len())
    }

    fn literal(&mut self, field: &Field, lit: &Literal) -> String {
        let p = match lit {
            Literal::Str(s) => Param::Text(s.clone()),
            Literal::Num(n) if integral(field) && n.fract() == 0.0 && n.abs() < 9.0e15 => {
                Param::Int(*n as i64)
            }
            Literal::Num(n) => Param::Float(*n),
        };
        self.push(p)
    }
}

/// Attributes stored as integers bind integers, so that their indexes apply.
fn integral(field: &Field) -> bool {
    matches!(field, Field::Attr(a) if a.is_numeric())
}

fn metric_column(agg: Agg) -> &'static str {
    match agg {
        Agg::Last => "last_value",
        Agg::Min => "min_value",
        Agg::Max => "max_value",
    }
}

/// The index on (key, column) of a metric summary column (migrations 0001 and 0003/0004).
fn metric_index(agg: Agg) -> &'static str {
    match agg {
        Agg::Last => "metric_summaries_key_last",
        Agg::Min => "metric_summaries_key_min",
        Agg::Max => "metric_summaries_key_max",
    }
}

fn attr_column(a: Attr) -> &'static str {
    match a {
        Attr::Id => "r.id",
        Attr::Name => "r.name",
        Attr::Status => "r.status",
        Attr::Experiment => "e.name",
        Attr::StartTime => "r.start_time",
        Attr::EndTime => "r.end_time",
    }
}

/// Wraps `test` (a condition on column `col` of the field's row) in the field's lookup.
fn on_field(
    field: &Field,
    params: &mut SqlParams,
    test: impl FnOnce(&str, &mut SqlParams) -> String,
) -> String {
    let (table, key, col) = match field {
        Field::Attr(a) => return test(attr_column(*a), params),
        Field::Metric { key, agg } => (
            "metric_summaries",
            key,
            format!("x.{}", metric_column(*agg)),
        ),
        Field::Param(key) => ("params", key, "x.value".to_string()),
        Field::Tag(key) => ("tags", key, "x.value".to_string()),
    };
    let key = params.push(Param::Text(key.clone()));
    let cond = test(&col, params);
    format!("EXISTS (SELECT 1 FROM {table} x WHERE x.run_id = r.id AND x.key = {key} AND {cond})")
}

/// The WHERE condition for a filter, in `dialect`.
pub fn where_sql(expr: &Expr, params: &mut SqlParams, dialect: Dialect) -> String {
    match expr {
        Expr::And(a, b) => format!(
            "({} AND {})",
            where_sql(a, params, dialect),
            where_sql(b, params, dialect)
        ),
        Expr::Or(a, b) => format!(
            "({} OR {})",
            where_sql(a, params, dialect),
            where_sql(b, params, dialect)
        ),
        Expr::Cmp {
            field,
            op: op @ (Op::Like | Op::NotLike),
            value: Literal::Str(pattern),
        } if dialect == Dialect::Sqlite => on_field(field, params, |col, params| {
            let v = params.push(Param::Text(like_to_glob(pattern)));
            let not = if *op == Op::NotLike { "NOT " } else { "" };
            format!("{col} {not}GLOB {v}")
        }),
        Expr::Cmp {
            field,
            op: op @ (Op::ILike | Op::NotILike),
            value,
        } if dialect == Dialect::Sqlite => on_field(field, params, |col, params| {
            let v = params.literal(field, value);
            let not = if *op == Op::NotILike { "NOT " } else { "" };
            format!("{col} {not}LIKE {v} ESCAPE '\\'")
        }),
        Expr::Cmp { field, op, value } => on_field(field, params, |col, params| {
            let v = params.literal(field, value);
            format!("{col} {} {v}", op.sql())
        }),
        Expr::In {
            field,
            negated,
            values,
        } => on_field(field, params, |col, params| {
            let list: Vec<String> = values.iter().map(|v| params.literal(field, v)).collect();
            let not = if *negated { "NOT " } else { "" };
            format!("{col} {not}IN ({})", list.join(", "))
        }),
    }
}

/// A `LIKE` pattern (`%`, `_`, `\` escapes) as the `GLOB` pattern that matches the same text:
/// `*`, `?` and `[` stand for themselves inside brackets. The parser refuses a pattern that ends
/// in a lone `\`, as Postgres does.
fn like_to_glob(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut escaped = false;
    for c in pattern.chars() {
        match (escaped, c) {
            (false, '\\') => escaped = true,
            (false, '%') => out.push('*'),
            (false, '_') => out.push('?'),
            (_, '*' | '?' | '[') => {
                out.push('[');
                out.push(c);
                out.push(']');
                escaped = false;
            }
            _ => {
                out.push(c);
                escaped = false;
            }
        }
    }
    out
}

/// What ordering adds to the query: joins, selected columns `oN`, and the ORDER BY list.
#[derive(Debug, Default)]
pub struct OrderSql {
    pub joins: String,
    pub columns: String,
    pub order: String,
    /// Set when the first term reads a metric, param or tag; see [`FirstTermSplit`].
    pub split: Option<FirstTermSplit>,
}

/// A search ordered first by a metric, param or tag, split in two so that the index on
/// (key, value) can serve the top N: the runs that have the first term's row, read from that
/// table in index order and joined to their runs (a scan that stops after N rows), then, only when
/// those are fewer than N, the runs without it (ordered by the other terms). With a LEFT JOIN
/// instead, both planners join and sort every run that passes the filter before they can take
/// the first N.
#[derive(Debug, Default)]
pub struct FirstTermSplit {
    /// The first term's table (alias `j0`), the placeholder of its key, and the index on
    /// (key, column) that orders it.
    pub table: &'static str,
    pub key: String,
    pub index: &'static str,
    /// The joins of the other terms.
    pub other_joins: String,
    /// `order` with the first term's NULLS LAST dropped (its column is never NULL there), so
    /// that the index order matches.
    pub order: String,
    /// The condition that keeps the runs without the first term's row.
    pub missing: String,
    /// The ORDER BY of the combined rows, by the selected `oN` and `id`.
    pub outer: String,
}

/// Attributes that are never NULL: ordered without NULLS LAST, which would keep a plain index
/// from serving the order.
fn not_null(a: Attr) -> bool {
    !matches!(a, Attr::EndTime)
}

pub fn order_sql(terms: &[OrderTerm], params: &mut SqlParams) -> OrderSql {
    let mut out = OrderSql::default();
    let mut joins = Vec::new();
    let mut order = Vec::new();
    let mut outer = Vec::new();
    for (i, term) in terms.iter().enumerate() {
        let alias = format!("o{i}");
        let dir = if term.descending { "DESC" } else { "ASC" };
        let (expr, nulls) = match &term.field {
            Field::Attr(a) => (
                attr_column(*a).to_string(),
                if not_null(*a) { "" } else { " NULLS LAST" },
            ),
            field => {
                let (table, key, col, index) = match field {
                    Field::Metric { key, agg } => (
                        "metric_summaries",
                        key,
                        metric_column(*agg),
                        metric_index(*agg),
                    ),
                    Field::Param(key) => ("params", key, "value", "params_key_value"),
                    Field::Tag(key) => ("tags", key, "value", "tags_key_value"),
                    Field::Attr(_) => unreachable!("handled above"),
                };
                let key = params.push(Param::Text(key.clone()));
                joins.push(format!(
                    "{table} j{i} ON j{i}.run_id = r.id AND j{i}.key = {key}"
                ));
                if i == 0 {
                    out.split = Some(FirstTermSplit {
                        table,
                        key,
                        index,
                        ..Default::default()
                    });
                }
                (format!("j{i}.{col}"), " NULLS LAST")
            }
        };
        out.columns += &format!(", {expr} AS {alias}");
        order.push(format!("{expr} {dir}{nulls}"));
        outer.push(format!("{alias} {dir}{nulls}"));
        if let (0, Some(split)) = (i, &mut out.split) {
            split.order = format!("{expr} {dir}");
            split.missing = "j0.run_id IS NULL".into();
        }
    }
    order.push("r.id DESC".into());
    outer.push("id DESC".into());
    let left =
        |joins: &[String]| -> String { joins.iter().map(|j| format!(" LEFT JOIN {j}")).collect() };
    out.joins = left(&joins);
    if let Some(split) = &mut out.split {
        split.other_joins = left(&joins[1..]);
        split.order = std::iter::once(split.order.as_str())
            .chain(order[1..].iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(", ");
        split.outer = outer.join(", ");
    }
    out.order = order.join(", ");
    out
}

#[cfg(test)]
mod tests {
    use super::super::{parse_filter, parse_order_by};
    use super::*;

    #[test]
    fn user_text_is_only_bound() {
        let input = "params.`x'; DROP TABLE runs; --` = 'a''; DELETE FROM runs' OR name LIKE '%\"'";
        let mut params = SqlParams::default();
        let sql = where_sql(
            &parse_filter(input).unwrap(),
            &mut params,
            Dialect::Postgres,
        );
        assert!(
            !sql.contains("DROP") && !sql.contains("DELETE") && !sql.contains('\''),
            "{sql}"
        );
        assert_eq!(
            params.values,
            vec![
                Param::Text("x'; DROP TABLE runs; --".into()),
                Param::Text("a'; DELETE FROM runs".into()),
                Param::Text("%\"".into())
            ]
        );
    }

    #[test]
    fn the_issue_example() {
        let mut params = SqlParams::default();
        let sql = where_sql(
            &parse_filter("min(metrics.loss) < 2 OR params.lr IN ('0.5', '0.1')").unwrap(),
            &mut params,
            Dialect::Postgres,
        );
        assert_eq!(
            sql,
            "(EXISTS (SELECT 1 FROM metric_summaries x WHERE x.run_id = r.id AND x.key = $1 AND x.min_value < $2) \
             OR EXISTS (SELECT 1 FROM params x WHERE x.run_id = r.id AND x.key = $3 AND x.value IN ($4, $5)))"
        );
        assert_eq!(params.values[1], Param::Float(2.0));
    }

    #[test]
    fn integer_attributes_bind_integers() {
        let mut params = SqlParams::default();
        let sql = where_sql(
            &parse_filter("id >= 3 AND start_time < 1.5").unwrap(),
            &mut params,
            Dialect::Sqlite,
        );
        assert_eq!(sql, "(r.id >= $1 AND r.start_time < $2)");
        assert_eq!(params.values, vec![Param::Int(3), Param::Float(1.5)]);
    }

    #[test]
    fn like_is_glob_on_sqlite() {
        assert_eq!(like_to_glob("a%b_c"), "a*b?c");
        assert_eq!(like_to_glob("*?[x]"), "[*][?][[]x]");
        assert_eq!(like_to_glob(r"100\%\_\\\x"), r"100%_\x");
        let mut params = SqlParams::default();
        let sql = where_sql(
            &parse_filter("name NOT LIKE 'A%' AND tags.t LIKE '_'").unwrap(),
            &mut params,
            Dialect::Sqlite,
        );
        assert_eq!(
            sql,
            "(r.name NOT GLOB $1 AND EXISTS (SELECT 1 FROM tags x WHERE x.run_id = r.id AND x.key = $2 AND x.value GLOB $3))"
        );
        assert_eq!(params.values[0], Param::Text("A*".into()));
    }

    #[test]
    fn ilike_is_like_with_an_escape_on_sqlite() {
        let filter = parse_filter("tags.t ILIKE 'a\\_%'").unwrap();
        let mut params = SqlParams::default();
        let sql = where_sql(&filter, &mut params, Dialect::Sqlite);
        assert!(sql.ends_with("x.value LIKE $2 ESCAPE '\\')"), "{sql}");
        let sql = where_sql(&filter, &mut SqlParams::default(), Dialect::Postgres);
        assert!(sql.ends_with("x.value ILIKE $2)"), "{sql}");
    }

    #[test]
    fn ordering_joins_each_term() {
        let mut params = SqlParams::default();
        let o = order_sql(
            &parse_order_by("min(metrics.loss), status DESC, params.lr").unwrap(),
            &mut params,
        );
        assert_eq!(
            o.joins,
            " LEFT JOIN metric_summaries j0 ON j0.run_id = r.id AND j0.key = $1 \
             LEFT JOIN params j2 ON j2.run_id = r.id AND j2.key = $2"
        );
        assert_eq!(
            o.columns,
            ", j0.min_value AS o0, r.status AS o1, j2.value AS o2"
        );
        // Attributes that are never NULL are ordered without NULLS LAST.
        assert_eq!(
            o.order,
            "j0.min_value ASC NULLS LAST, r.status DESC, j2.value ASC NULLS LAST, r.id DESC"
        );
        let split = o.split.expect("ordered first by a metric");
        assert_eq!(
            (split.table, split.key.as_str(), split.index),
            ("metric_summaries", "$1", "metric_summaries_key_min")
        );
        assert_eq!(
            split.other_joins,
            " LEFT JOIN params j2 ON j2.run_id = r.id AND j2.key = $2"
        );
        assert_eq!(
            split.order,
            "j0.min_value ASC, r.status DESC, j2.value ASC NULLS LAST, r.id DESC"
        );
        assert_eq!(split.missing, "j0.run_id IS NULL");
        assert_eq!(
            split.outer,
            "o0 ASC NULLS LAST, o1 DESC, o2 ASC NULLS LAST, id DESC"
        );
    }

    #[test]
    fn attribute_first_orderings_are_not_split() {
        let mut params = SqlParams::default();
        let o = order_sql(
            &parse_order_by("end_time DESC, max(metrics.acc)").unwrap(),
            &mut params,
        );
        assert!(o.split.is_none());
        assert_eq!(
            o.order,
            "r.end_time DESC NULLS LAST, j1.max_value ASC NULLS LAST, r.id DESC"
        );
    }
}
