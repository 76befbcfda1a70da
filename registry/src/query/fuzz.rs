//! A bounded fuzz test of the filter language, run by `cargo test` (and so by `make test`):
//! arbitrary text, token soup and deep nesting go through the lexer, the parser and the SQL
//! translation of both dialects, which must return a value or an error for every input and never
//! panic or overflow the stack (a server worker would abort the whole process).
use super::sql::{order_sql, where_sql, SqlParams};
use super::{parse_filter, parse_order_by};
use crate::db::Dialect;
use proptest::prelude::*;

/// Everything a filter or an order-by goes through.
fn translate(input: &str) {
    if let Ok(expr) = parse_filter(input) {
        for dialect in [Dialect::Postgres, Dialect::Sqlite] {
            where_sql(&expr, &mut SqlParams::default(), dialect);
        }
    }
    if let Ok(terms) = parse_order_by(input) {
        order_sql(&terms, &mut SqlParams::default());
    }
}

/// Pieces of the language, so that random inputs get past the lexer and deep into the parser.
fn token() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "(",
        ")",
        "AND",
        "OR",
        "NOT",
        "IN",
        "LIKE",
        "=",
        "!=",
        "<",
        ">=",
        ",",
        ".",
        "metrics",
        "params",
        "tags",
        "min",
        "max",
        "name",
        "status",
        "id",
        "start_time",
        "'a%'",
        "'\\'",
        "`q`",
        "\"d\"",
        "1",
        "-2.5e3",
        "1e999",
        "x",
        "ASC",
        "DESC",
        "'",
        "`",
        "\u{e9}",
    ])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

    #[test]
    fn any_text_is_a_value_or_an_error(input in "\\PC{0,200}") {
        translate(&input);
    }

    #[test]
    fn token_soup_is_a_value_or_an_error(tokens in prop::collection::vec(token(), 0..120)) {
        translate(&tokens.join(" "));
    }

    #[test]
    fn deep_nesting_and_not_chains_are_errors_not_crashes(
        depth in 0usize..20_000,
        prefix in prop::sample::select(vec!["(", "NOT ", "NOT (", "(NOT "]),
        inner in prop::sample::select(vec!["id = 1", "name LIKE 'a'", "params.a IN ('x')", ""]),
    ) {
        let input = format!("{}{inner}{}", prefix.repeat(depth), ")".repeat(depth));
        translate(&input);
    }
}
