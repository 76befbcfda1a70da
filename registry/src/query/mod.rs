//! The query language of the registry: the `--filter` and `--order-by` expressions of `albef runs
//! search` (and `GET /api/runs`), whose fields also make up promotion gates. A hand-written lexer
//! and recursive-descent parser produce an AST, which [`sql`] turns into a WHERE clause whose user
//! values are all bound parameters. It knows the runs schema only as SQL text and depends on no
//! other area ([`crate::tracking`] runs the searches, [`crate::models`] the gates). Grammar
//! (keywords are case-insensitive):
//!
//! ```text
//! filter   := or
//! or       := and ("OR" and)*
//! and      := unary ("AND" unary)*
//! unary    := "(" or ")" | cmp
//! cmp      := field op value | field ["NOT"] "IN" "(" value ("," value)* ")"
//!           | field ["NOT"] ("LIKE" | "ILIKE") string
//! field    := ("min" | "max") "(" "metrics" "." name ")" | ("metrics" | "params" | "tags") "." name
//!           | ["attributes" "."] ("status" | "name" | "experiment" | "start_time" | "end_time" | "id")
//! name     := word ("." word)* | `quoted` | "quoted"
//! op       := "=" | "!=" | "<>" | "<" | "<=" | ">" | ">="
//! order_by := field ["ASC" | "DESC"] ("," field ["ASC" | "DESC"])*
//! ```
//!
//! Metrics compare as numbers (by default the last value; `min(...)`/`max(...)` over the whole
//! history), params and tags as strings. A run without the named metric, param or tag does not
//! match any comparison on it.
#[cfg(test)]
mod fuzz;
pub mod lexer;
mod parser;
pub mod sql;

pub use parser::{parse_filter, parse_order_by, FieldParser};
use std::fmt;

/// Which value of a metric a filter reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Agg {
    Last,
    Min,
    Max,
}

/// A run attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attr {
    Id,
    Name,
    Status,
    Experiment,
    StartTime,
    EndTime,
}

impl Attr {
    pub fn is_numeric(self) -> bool {
        matches!(self, Attr::Id | Attr::StartTime | Attr::EndTime)
    }
}

/// What a comparison reads.
#[derive(Clone, Debug, PartialEq)]
pub enum Field {
    Metric { key: String, agg: Agg },
    Param(String),
    Tag(String),
    Attr(Attr),
}

impl Field {
    pub fn is_numeric(&self) -> bool {
        match self {
            Field::Metric { .. } => true,
            Field::Param(_) | Field::Tag(_) => false,
            Field::Attr(a) => a.is_numeric(),
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Metric {
                key,
                agg: Agg::Last,
            } => write!(f, "metrics.{key}"),
            Field::Metric { key, agg: Agg::Min } => write!(f, "min(metrics.{key})"),
            Field::Metric { key, agg: Agg::Max } => write!(f, "max(metrics.{key})"),
            Field::Param(k) => write!(f, "params.{k}"),
            Field::Tag(k) => write!(f, "tags.{k}"),
            Field::Attr(a) => f.write_str(match a {
                Attr::Id => "id",
                Attr::Name => "name",
                Attr::Status => "status",
                Attr::Experiment => "experiment",
                Attr::StartTime => "start_time",
                Attr::EndTime => "end_time",
            }),
        }
    }
}

/// A constant in a filter, already checked against the field's type.
#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    Num(f64),
    Str(String),
}

/// The comparison operators; `Like` and `ILike` (case-insensitive) are only for string fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Like,
    NotLike,
    ILike,
    NotILike,
}

impl Op {
    pub fn sql(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "<>",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Like => "LIKE",
            Op::NotLike => "NOT LIKE",
            Op::ILike => "ILIKE",
            Op::NotILike => "NOT ILIKE",
        }
    }

    /// Applies a numeric comparison (the LIKE family never holds on numbers).
    pub fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Op::Eq => a == b,
            Op::Ne => a != b,
            Op::Lt => a < b,
            Op::Le => a <= b,
            Op::Gt => a > b,
            Op::Ge => a >= b,
            Op::Like | Op::NotLike | Op::ILike | Op::NotILike => false,
        }
    }
}

/// A parsed filter.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Cmp {
        field: Field,
        op: Op,
        value: Literal,
    },
    In {
        field: Field,
        negated: bool,
        values: Vec<Literal>,
    },
}

/// One `--order-by` term.
#[derive(Clone, Debug, PartialEq)]
pub struct OrderTerm {
    pub field: Field,
    pub descending: bool,
}

/// A syntax or type error, with the column it points at; `Display` shows the input and a caret.
#[derive(Clone, Debug, PartialEq)]
pub struct QueryError {
    /// What was being parsed: "filter", "order-by" or "gate".
    pub what: &'static str,
    pub input: String,
    /// 1-based character column.
    pub column: usize,
    pub message: String,
}

impl QueryError {
    pub fn new(input: &str, column: usize, message: String) -> Self {
        Self {
            what: "filter",
            input: input.to_string(),
            column,
            message,
        }
    }
}

impl QueryError {
    /// Names what was being parsed in the message.
    pub fn of(mut self, what: &'static str) -> Self {
        self.what = what;
        self
    }
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} at column {}\n  {}\n  {}^",
            self.what,
            self.message,
            self.column,
            self.input,
            " ".repeat(self.column.saturating_sub(1))
        )
    }
}

impl std::error::Error for QueryError {}
