//! The shard schema: the fixed column names in file order, the row [`Status`], one output
//! [`Row`], and the Arrow schema of a shard. The columns and what each holds are listed in
//! `docs/architecture.md` (The shard format); they match img2dataset's parquet output where the
//! two overlap.
use anyhow::{Context, Result};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use std::sync::Arc;

pub const KEY: &str = "key";
pub const URL: &str = "url";
pub const CAPTION: &str = "caption";
pub const TEXT: &str = "text";
pub const STATUS: &str = "status";
pub const ERROR_MESSAGE: &str = "error_message";
pub const HTTP_STATUS: &str = "http_status";
pub const WIDTH: &str = "width";
pub const HEIGHT: &str = "height";
pub const ORIGINAL_WIDTH: &str = "original_width";
pub const ORIGINAL_HEIGHT: &str = "original_height";
pub const SHA256: &str = "sha256";
pub const PHASH: &str = "phash";
pub const DUP_OF: &str = "dup_of";
pub const JPG: &str = "jpg";
pub const FETCHED_AT: &str = "fetched_at";

/// The filter stage's ranking score (f32, null where a row was not scored), which
/// score-weighted training reads; the filter adds it after the fixed columns.
pub const SCORE: &str = "score";

/// The fixed columns, in file order; kept input columns follow them.
pub const COLUMNS: [&str; 16] = [
    KEY,
    URL,
    CAPTION,
    TEXT,
    STATUS,
    ERROR_MESSAGE,
    HTTP_STATUS,
    WIDTH,
    HEIGHT,
    ORIGINAL_WIDTH,
    ORIGINAL_HEIGHT,
    SHA256,
    PHASH,
    DUP_OF,
    JPG,
    FETCHED_AT,
];

/// What happened to an input row. Readers train on `Success` rows only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    Success,
    FailedToDownload,
    FailedToDecode,
    FilteredOut,
    Duplicate,
    OptedOut,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Success,
        Status::FailedToDownload,
        Status::FailedToDecode,
        Status::FilteredOut,
        Status::Duplicate,
        Status::OptedOut,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Success => "success",
            Status::FailedToDownload => "failed_to_download",
            Status::FailedToDecode => "failed_to_decode",
            Status::FilteredOut => "filtered_out",
            Status::Duplicate => "duplicate",
            Status::OptedOut => "opted_out",
        }
    }

    pub fn parse(s: &str) -> Result<Status> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .with_context(|| format!("unknown row status {s:?}"))
    }
}

/// One output row. `extra` holds the kept input columns, in the order of the schema.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Row {
    pub key: String,
    pub url: String,
    pub caption: Option<String>,
    pub text: String,
    pub status: Option<Status>,
    pub error_message: Option<String>,
    pub http_status: Option<i32>,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub original_width: Option<i32>,
    pub original_height: Option<i32>,
    pub sha256: Option<String>,
    pub phash: Option<u64>,
    pub dup_of: Option<String>,
    pub jpg: Option<Vec<u8>>,
    /// Microseconds since the Unix epoch.
    pub fetched_at: Option<i64>,
    pub extra: Vec<Option<String>>,
}

/// The Arrow schema of a shard whose kept input columns are `extra` (all strings).
pub fn schema(extra: &[String]) -> SchemaRef {
    let s = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    let i = |name: &str| Field::new(name, DataType::Int32, true);
    let mut fields = vec![
        s(KEY, false),
        s(URL, false),
        s(CAPTION, true),
        s(TEXT, false),
        s(STATUS, false),
        s(ERROR_MESSAGE, true),
        i(HTTP_STATUS),
        i(WIDTH),
        i(HEIGHT),
        i(ORIGINAL_WIDTH),
        i(ORIGINAL_HEIGHT),
        s(SHA256, true),
        Field::new(PHASH, DataType::UInt64, true),
        s(DUP_OF, true),
        Field::new(JPG, DataType::Binary, true),
        Field::new(
            FETCHED_AT,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
    ];
    fields.extend(extra.iter().map(|name| s(name, true)));
    Arc::new(Schema::new(fields))
}
