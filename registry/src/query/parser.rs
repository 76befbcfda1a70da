//! The recursive-descent parser: tokens -> [`Expr`] / [`OrderTerm`]s, checking types as it goes
//! (numbers for metrics and numeric attributes, strings for params, tags and text attributes).
use super::lexer::{lex, Tok, Token};
use super::{Agg, Attr, Expr, Field, Literal, Op, OrderTerm, QueryError};

/// The bounds of one filter or order-by, the same on every backend: the parser recurses once per
/// parenthesis (an unbounded depth overflows the stack of a server's worker), and every
/// comparison and order term costs the database a join or a sub-query.
pub const MAX_INPUT_BYTES: usize = 8192;
pub const MAX_DEPTH: usize = 32;
pub const MAX_COMPARISONS: usize = 100;
pub const MAX_IN_VALUES: usize = 1000;
pub const MAX_ORDER_TERMS: usize = 8;

/// Parses a filter expression.
pub fn parse_filter(input: &str) -> Result<Expr, QueryError> {
    let mut p = FieldParser::new(input)?;
    if p.at_end() {
        return Err(p.error_here("the filter is empty".into()));
    }
    let expr = p.or()?;
    p.expect_end("AND, OR or the end")?;
    Ok(expr)
}

/// Parses `--order-by`: `field [ASC|DESC], ...`.
pub fn parse_order_by(input: &str) -> Result<Vec<OrderTerm>, QueryError> {
    let run = || {
        let mut p = FieldParser::new(input)?;
        let mut terms = Vec::new();
        loop {
            let field = p.field()?;
            let descending = if p.keyword("DESC") {
                true
            } else {
                p.keyword("ASC");
                false
            };
            terms.push(OrderTerm { field, descending });
            if terms.len() > MAX_ORDER_TERMS {
                return Err(p.error_here(format!("more than {MAX_ORDER_TERMS} order terms")));
            }
            if !p.eat(&Tok::Comma) {
                break;
            }
        }
        p.expect_end("ASC, DESC, ',' or the end")?;
        Ok(terms)
    };
    run().map_err(|e: QueryError| e.of("order-by"))
}

/// A cursor over the tokens of one input; also used to parse promotion gates.
pub struct FieldParser<'a> {
    input: &'a str,
    tokens: Vec<Token>,
    pos: usize,
    /// Parentheses open around the cursor, and comparisons read so far.
    depth: usize,
    comparisons: usize,
}

impl<'a> FieldParser<'a> {
    /// Lexes `input`; longer than [`MAX_INPUT_BYTES`] is an error at the first column past it.
    pub fn new(input: &'a str) -> Result<Self, QueryError> {
        if input.len() > MAX_INPUT_BYTES {
            let cut = (0..=MAX_INPUT_BYTES)
                .rev()
                .find(|&i| input.is_char_boundary(i))
                .unwrap_or(0);
            let column = input[..cut].chars().count() + 1;
            let message = format!("longer than {MAX_INPUT_BYTES} bytes");
            return Err(QueryError::new(input, column, message));
        }
        Ok(Self {
            input,
            tokens: lex(input)?,
            pos: 0,
            depth: 0,
            comparisons: 0,
        })
    }

    pub fn peek(&self) -> &Token {
        &self.tokens[self.pos]
    }

    pub fn advance(&mut self) -> Token {
        let t = self.tokens[self.pos].clone();
        if t.tok != Tok::End {
            self.pos += 1;
        }
        t
    }

    pub fn at_end(&self) -> bool {
        self.peek().tok == Tok::End
    }

    fn eat(&mut self, tok: &Tok) -> bool {
        if &self.peek().tok == tok {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Consumes a keyword (case-insensitive) if it is next.
    pub fn keyword(&mut self, kw: &str) -> bool {
        match &self.peek().tok {
            Tok::Word(w) if w.eq_ignore_ascii_case(kw) => {
                self.pos += 1;
                true
            }
            _ => false,
        }
    }

    pub fn error_at(&self, col: usize, message: String) -> QueryError {
        QueryError::new(self.input, col, message)
    }

    pub fn error_here(&self, message: String) -> QueryError {
        self.error_at(self.peek().col, message)
    }

    /// Fails unless all input is consumed; `expected` says what could have come instead.
    pub fn expect_end(&self, expected: &str) -> Result<(), QueryError> {
        if self.at_end() {
            Ok(())
        } else {
            Err(self.error_here(format!(
                "unexpected {}: expected {expected}",
                self.peek().tok.describe()
            )))
        }
    }

    fn expect(&mut self, tok: Tok, context: &str) -> Result<(), QueryError> {
        if self.eat(&tok) {
            Ok(())
        } else {
            Err(self.error_here(format!(
                "expected {} {context}, found {}",
                tok.describe(),
                self.peek().tok.describe()
            )))
        }
    }

    fn or(&mut self) -> Result<Expr, QueryError> {
        let mut left = self.and()?;
        while self.keyword("OR") {
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, QueryError> {
        let mut left = self.unary()?;
        while self.keyword("AND") {
            let right = self.unary()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, QueryError> {
        if self.eat(&Tok::LParen) {
            let open = self.tokens[self.pos - 1].col;
            if self.depth == MAX_DEPTH {
                let message = format!("parentheses nested deeper than {MAX_DEPTH}");
                return Err(self.error_at(open, message));
            }
            self.depth += 1;
            let inner = self.or()?;
            self.depth -= 1;
            if !self.eat(&Tok::RParen) {
                return Err(self.error_here(format!(
                    "expected ')' to close the '(' at column {open}, found {}",
                    self.peek().tok.describe()
                )));
            }
            return Ok(inner);
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Expr, QueryError> {
        self.comparisons += 1;
        if self.comparisons > MAX_COMPARISONS {
            let message = format!("more than {MAX_COMPARISONS} comparisons");
            return Err(self.error_here(message));
        }
        let field = self.field()?;
        let op_token = self.peek().clone();
        let negated = self.keyword("NOT");
        if self.keyword("IN") {
            let in_col = self.tokens[self.pos - 1].col;
            self.expect(Tok::LParen, "after IN")?;
            let mut values = vec![self.value(&field, "in the IN list")?];
            while self.eat(&Tok::Comma) {
                if values.len() == MAX_IN_VALUES {
                    let message = format!("more than {MAX_IN_VALUES} values in an IN list");
                    return Err(self.error_here(message));
                }
                values.push(self.value(&field, "after ','")?);
            }
            if !self.eat(&Tok::RParen) {
                return Err(self.error_here(format!(
                    "expected ',' or ')' in the IN list opened at column {in_col}, found {}",
                    self.peek().tok.describe()
                )));
            }
            return Ok(Expr::In {
                field,
                negated,
                values,
            });
        }
        let like = ["LIKE", "ILIKE"].into_iter().find(|kw| self.keyword(kw));
        if let Some(kw) = like {
            if field.is_numeric() {
                return Err(self.error_at(
                    op_token.col,
                    format!("{kw} applies to params, tags and text attributes, not to {field}"),
                ));
            }
            let pattern_col = self.peek().col;
            let value = self.value(&field, &format!("after {kw}"))?;
            if let Literal::Str(p) = &value {
                let trailing = p.chars().rev().take_while(|&c| c == '\\').count();
                if trailing % 2 == 1 {
                    return Err(self.error_at(
                        pattern_col,
                        format!(
                            "the {kw} pattern ends with a lone '\\' (write '\\\\' for a backslash)"
                        ),
                    ));
                }
            }
            let op = match (kw, negated) {
                ("LIKE", false) => Op::Like,
                ("LIKE", true) => Op::NotLike,
                (_, false) => Op::ILike,
                (_, true) => Op::NotILike,
            };
            return Ok(Expr::Cmp { field, op, value });
        }
        if negated {
            return Err(self.error_here(format!(
                "expected IN, LIKE or ILIKE after NOT, found {}",
                self.peek().tok.describe()
            )));
        }
        let op = match op_token.tok {
            Tok::Op(op) => op,
            other => {
                return Err(self.error_at(
                    op_token.col,
                    format!(
                    "expected an operator (= != < <= > >= LIKE ILIKE IN) after {field}, found {}",
                    other.describe()
                ),
                ))
            }
        };
        self.advance();
        let value = self.value(&field, &format!("after '{op}'"))?;
        let op = match op {
            "=" => Op::Eq,
            "!=" => Op::Ne,
            "<" => Op::Lt,
            "<=" => Op::Le,
            ">" => Op::Gt,
            _ => Op::Ge,
        };
        Ok(Expr::Cmp { field, op, value })
    }

    /// A constant of the field's type.
    fn value(&mut self, field: &Field, context: &str) -> Result<Literal, QueryError> {
        let t = self.advance();
        match (&t.tok, field.is_numeric()) {
            (Tok::Num(n, _), true) => Ok(Literal::Num(*n)),
            // Params and tags are strings; a bare number means its text (`params.lr = 0.5`).
            (Tok::Num(_, text), false) => Ok(Literal::Str(text.clone())),
            (Tok::Str(s), false) => Ok(Literal::Str(match field {
                Field::Attr(Attr::Status) => s.to_ascii_uppercase(),
                _ => s.clone(),
            })),
            (Tok::Str(s), true) => Err(self.error_at(
                t.col,
                format!("{field} compares with numbers, not the string '{s}'"),
            )),
            (Tok::End, _) => Err(self.error_at(t.col, format!("expected a value {context}"))),
            (other, _) => Err(self.error_at(
                t.col,
                format!("expected a value {context}, found {}", other.describe()),
            )),
        }
    }

    /// A name after `prefix.`: words joined by dots, or one quoted name.
    fn name(&mut self, prefix: &str) -> Result<String, QueryError> {
        self.expect(Tok::Dot, &format!("after '{prefix}'"))?;
        let t = self.advance();
        match t.tok {
            Tok::Quoted(q) => Ok(q),
            Tok::Word(w) => {
                let mut name = w;
                while self.peek().tok == Tok::Dot
                    && matches!(self.tokens[self.pos + 1].tok, Tok::Word(_))
                {
                    self.pos += 1;
                    if let Tok::Word(w) = self.advance().tok {
                        name.push('.');
                        name.push_str(&w);
                    }
                }
                Ok(name)
            }
            other => Err(self.error_at(
                t.col,
                format!(
                    "expected a name after '{prefix}.', found {}",
                    other.describe()
                ),
            )),
        }
    }

    /// A field: `metrics.X`, `min(metrics.X)`, `params.X`, `tags.X` or an attribute.
    pub fn field(&mut self) -> Result<Field, QueryError> {
        let t = self.advance();
        let word = match &t.tok {
            Tok::Word(w) => w.to_ascii_lowercase(),
            Tok::End => {
                return Err(self.error_at(t.col, "expected a field such as metrics.loss".into()))
            }
            other => {
                return Err(self.error_at(
                    t.col,
                    format!(
                        "expected a field such as metrics.loss, found {}",
                        other.describe()
                    ),
                ))
            }
        };
        match word.as_str() {
            "min" | "max" => {
                self.expect(Tok::LParen, &format!("after '{word}'"))?;
                let inner = self.advance();
                if !matches!(&inner.tok, Tok::Word(w) if w.eq_ignore_ascii_case("metrics")) {
                    return Err(self.error_at(
                        inner.col,
                        format!(
                            "{word}() applies to metrics.NAME, found {}",
                            inner.tok.describe()
                        ),
                    ));
                }
                let key = self.name("metrics")?;
                self.expect(Tok::RParen, &format!("to close {word}("))?;
                let agg = if word == "min" { Agg::Min } else { Agg::Max };
                Ok(Field::Metric { key, agg })
            }
            "metrics" | "metric" => Ok(Field::Metric {
                key: self.name("metrics")?,
                agg: Agg::Last,
            }),
            "params" | "param" => Ok(Field::Param(self.name("params")?)),
            "tags" | "tag" => Ok(Field::Tag(self.name("tags")?)),
            "attributes" | "attribute" | "attr" => {
                let name = self.name("attributes")?;
                attribute(&name).ok_or_else(|| self.unknown_attribute(t.col, &name))
            }
            other => attribute(other).ok_or_else(|| self.unknown_attribute(t.col, other)),
        }
    }

    fn unknown_attribute(&self, col: usize, name: &str) -> QueryError {
        self.error_at(
            col,
            format!(
                "unknown field '{name}': expected metrics.X, min(metrics.X), max(metrics.X), params.X, \
                 tags.X, or one of id, name, status, experiment, start_time, end_time"
            ),
        )
    }
}

fn attribute(name: &str) -> Option<Field> {
    Some(Field::Attr(match name.to_ascii_lowercase().as_str() {
        "id" | "run_id" => Attr::Id,
        "name" | "run_name" => Attr::Name,
        "status" => Attr::Status,
        "experiment" => Attr::Experiment,
        "start_time" => Attr::StartTime,
        "end_time" => Attr::EndTime,
        _ => return None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(input: &str) -> QueryError {
        parse_filter(input).unwrap_err()
    }

    #[test]
    fn the_issue_example_parses() {
        let e = parse_filter("min(metrics.loss) < 2 OR params.lr IN ('0.5')").unwrap();
        assert_eq!(
            e,
            Expr::Or(
                Box::new(Expr::Cmp {
                    field: Field::Metric {
                        key: "loss".into(),
                        agg: Agg::Min
                    },
                    op: Op::Lt,
                    value: Literal::Num(2.0)
                }),
                Box::new(Expr::In {
                    field: Field::Param("lr".into()),
                    negated: false,
                    values: vec![Literal::Str("0.5".into())]
                })
            )
        );
    }

    #[test]
    fn and_binds_tighter_than_or_and_parentheses_override() {
        let flat = parse_filter("id = 1 OR id = 2 AND id = 3").unwrap();
        assert!(matches!(flat, Expr::Or(_, ref r) if matches!(**r, Expr::And(..))));
        let grouped = parse_filter("(id = 1 OR id = 2) AND id = 3").unwrap();
        assert!(matches!(grouped, Expr::And(ref l, _) if matches!(**l, Expr::Or(..))));
    }

    #[test]
    fn quoted_and_dotted_names() {
        let e = parse_filter(
            "metrics.`val loss` > 1 AND params.\"opt.lr\" = '1' AND tags.a.b LIKE 'x%'",
        )
        .unwrap();
        let s = format!("{e:?}");
        assert!(
            s.contains("\"val loss\"") && s.contains("\"opt.lr\"") && s.contains("\"a.b\""),
            "{s}"
        );
    }

    #[test]
    fn missing_value_points_after_the_operator() {
        let e = err("metrics.loss > 1 AND metrics.acc <");
        assert_eq!(e.column, 35);
        assert_eq!(e.message, "expected a value after '<'");
        assert_eq!(
            e.to_string(),
            "filter: expected a value after '<' at column 35\n  metrics.loss > 1 AND metrics.acc <\n                                    ^"
        );
    }

    #[test]
    fn type_errors_point_at_the_value() {
        let e = err("metrics.loss < 'low'");
        assert_eq!(e.column, 16);
        assert!(e.message.contains("compares with numbers"), "{}", e.message);
        let e = err("metrics.loss LIKE 'a%'");
        assert_eq!(e.column, 14);
    }

    #[test]
    fn a_like_pattern_cannot_end_in_a_lone_backslash() {
        let e = err(r"name LIKE 'a\' OR id = 1");
        assert_eq!(e.column, 11);
        assert!(e.message.contains("lone"), "{}", e.message);
        assert!(parse_filter(r"name LIKE 'a\\'").is_ok());
    }

    #[test]
    fn structural_errors() {
        assert_eq!(err("(id = 1").column, 8);
        assert!(err("(id = 1").message.contains("close the '(' at column 1"));
        assert_eq!(err("id = 1 id = 2").column, 8);
        assert_eq!(err("params lr = 1").column, 8);
        assert_eq!(err("colour = 'red'").column, 1);
        assert_eq!(err("min(params.lr) < 1").column, 5);
        assert_eq!(err("params.lr IN ('a' 'b')").column, 19);
        assert_eq!(err("params.lr NOT = 'a'").column, 15);
        assert_eq!(err("").message, "the filter is empty");
        assert_eq!(err("id 5").column, 4);
    }

    #[test]
    fn order_by_terms() {
        let t = parse_order_by("min(metrics.loss) ASC, start_time desc, params.lr").unwrap();
        assert_eq!(t.len(), 3);
        assert!(!t[0].descending && t[1].descending && !t[2].descending);
        let e = parse_order_by("metrics.loss sideways").unwrap_err();
        assert_eq!((e.what, e.column), ("order-by", 14));
    }

    #[test]
    fn limits_are_errors_at_their_column_not_crashes() {
        // 100,000 nested parentheses would overflow the stack without the depth limit.
        for n in [33, 2_000, 100_000] {
            let input = format!("{}id = 1{}", "(".repeat(n), ")".repeat(n));
            let e = parse_filter(&input).unwrap_err();
            if input.len() > MAX_INPUT_BYTES {
                assert_eq!(e.message, "longer than 8192 bytes");
                assert_eq!(e.column, MAX_INPUT_BYTES + 1);
            } else {
                assert_eq!(e.message, "parentheses nested deeper than 32");
                assert_eq!(e.column, 33, "the 33rd '('");
            }
        }
        let deep = format!("{}id = 1{}", "(".repeat(32), ")".repeat(32));
        assert!(parse_filter(&deep).is_ok(), "32 levels are allowed");
        let many = ["id = 1"; 101].join(" AND ");
        let e = parse_filter(&many).unwrap_err();
        assert_eq!(e.message, "more than 100 comparisons");
        assert_eq!(e.column, 100 * "id = 1 AND ".len() + 1);
        assert!(parse_filter(&["id = 1"; 100].join(" AND ")).is_ok());
        let list = (0..1001)
            .map(|i| format!("'{i}'"))
            .collect::<Vec<_>>()
            .join(",");
        let e = parse_filter(&format!("params.a IN ({list})")).unwrap_err();
        assert!(e.message.contains("1000 values"), "{}", e.message);
        let order = ["params.lr"; 9].join(", ");
        let e = parse_order_by(&order).unwrap_err();
        assert_eq!(e.message, "more than 8 order terms");
        assert!(parse_order_by(&["params.lr"; 8].join(", ")).is_ok());
    }

    #[test]
    fn ilike_is_its_own_operator() {
        let e = parse_filter("tags.t NOT ILIKE 'a%' AND name ILIKE 'B_'").unwrap();
        let Expr::And(l, r) = e else { panic!("{e:?}") };
        assert!(matches!(
            *l,
            Expr::Cmp {
                op: Op::NotILike,
                ..
            }
        ));
        assert!(matches!(*r, Expr::Cmp { op: Op::ILike, .. }));
        let e = err("metrics.x ILIKE 'a'");
        assert!(e.message.starts_with("ILIKE applies"), "{}", e.message);
    }

    #[test]
    fn status_literals_are_case_insensitive() {
        let e = parse_filter("status = 'finished'").unwrap();
        assert!(matches!(e, Expr::Cmp { value: Literal::Str(ref s), .. } if s == "FINISHED"));
    }
}
