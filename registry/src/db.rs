//! One query API over two backends. Postgres and SQLite both accept `$1`-style parameters and
//! `INSERT ... ON CONFLICT ... RETURNING`, so most statements are written once; [`Q`] carries a
//! query built for whichever pool the registry holds, and [`Row`] reads a column from either.
//! Where the dialects differ (locking, array binds, `GREATEST`), callers branch on [`Dialect`].
use anyhow::{Context, Result};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::query::Query;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{
    ConnectOptions as _, Connection as _, Executor as _, Postgres, Row as _, Sqlite, Transaction,
};
use std::borrow::Cow;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

/// The connection pool of one backend.
#[derive(Clone, Debug)]
pub enum Db {
    Pg(PgPool),
    Sqlite(SqlitePool),
}

/// Which SQL dialect a statement must be written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Sqlite,
}

/// A value that both backends can bind.
pub trait Bind<'q>:
    'q
    + Send
    + sqlx::Encode<'q, Postgres>
    + sqlx::Type<Postgres>
    + sqlx::Encode<'q, Sqlite>
    + sqlx::Type<Sqlite>
{
}
impl<'q, T> Bind<'q> for T where
    T: 'q
        + Send
        + sqlx::Encode<'q, Postgres>
        + sqlx::Type<Postgres>
        + sqlx::Encode<'q, Sqlite>
        + sqlx::Type<Sqlite>
{
}

/// A value that both backends can decode.
pub trait Decode:
    for<'r> sqlx::Decode<'r, Postgres>
    + sqlx::Type<Postgres>
    + for<'r> sqlx::Decode<'r, Sqlite>
    + sqlx::Type<Sqlite>
{
}
impl<T> Decode for T where
    T: for<'r> sqlx::Decode<'r, Postgres>
        + sqlx::Type<Postgres>
        + for<'r> sqlx::Decode<'r, Sqlite>
        + sqlx::Type<Sqlite>
{
}

/// How long one registry statement may run on Postgres before the server cancels it, unless the
/// caller sets another bound ([`crate::Registry::connect_with`]).
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long opening the first Postgres connection may take (an address that drops packets).
const PG_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Db {
    /// Connects to `postgres://...` or `sqlite://PATH` and runs the migrations of that dialect.
    /// On Postgres every statement of the pool is bounded by `statement_timeout`.
    pub async fn connect(url: &str, statement_timeout: Duration) -> Result<Db> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Db::Pg(connect_pg(url, statement_timeout).await?))
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            Ok(Db::Sqlite(connect_sqlite(url, Path::new(path)).await?))
        } else {
            anyhow::bail!(
                "unsupported registry URL {url:?}: expected sqlite://PATH or postgres://USER@HOST/DB"
            )
        }
    }

    pub fn dialect(&self) -> Dialect {
        match self {
            Db::Pg(_) => Dialect::Postgres,
            Db::Sqlite(_) => Dialect::Sqlite,
        }
    }

    /// A statement written once for both dialects.
    pub fn q(&self, sql: &'static str) -> Q<'static> {
        match self {
            Db::Pg(_) => Q::Pg(sqlx::query(sql)),
            Db::Sqlite(_) => Q::Sqlite(sqlx::query(sql)),
        }
    }

    /// A statement whose text was built at run time (filters and orderings); user values
    /// are still bound, never part of the text.
    pub fn q_str<'a>(&self, sql: &'a str) -> Q<'a> {
        match self {
            Db::Pg(_) => Q::Pg(sqlx::query(sql)),
            Db::Sqlite(_) => Q::Sqlite(sqlx::query(sql)),
        }
    }

    /// The database's clock in milliseconds since the epoch (see [`clock_sql`]).
    pub async fn clock_ms(&self) -> Result<i64> {
        let sql = clock_sql(self.dialect());
        clock_of(match self {
            Db::Pg(p) => sqlx::query(sql).fetch_one(p).await.map(Row::Pg),
            Db::Sqlite(p) => sqlx::query(sql).fetch_one(p).await.map(Row::Sqlite),
        })
    }

    /// A write transaction. On SQLite it takes the write lock up front (`BEGIN IMMEDIATE`) so
    /// that a transaction which reads before it writes cannot fail on a lock upgrade.
    pub async fn begin(&self) -> Result<Tx> {
        Ok(match self {
            Db::Pg(p) => Tx::Pg(p.begin().await.context("starting a registry transaction")?),
            Db::Sqlite(p) => Tx::Sqlite(
                p.begin_with("BEGIN IMMEDIATE")
                    .await
                    .context("starting a registry transaction")?,
            ),
        })
    }
}

/// Opens the Postgres pool. The migrations run first on a connection of their own, without the
/// statement bound (an index build on a large registry may take longer); that connection also
/// reports a wrong address at once ("connection refused"), where a pool would retry until its
/// acquire timeout. Each pooled connection then runs `SET statement_timeout` (a statement rather
/// than a startup parameter, which poolers such as PgBouncer refuse).
async fn connect_pg(url: &str, statement_timeout: Duration) -> Result<PgPool> {
    let options = PgConnectOptions::from_str(url)
        .with_context(|| format!("invalid registry URL {}", redact(url)))?;
    let place = format!(
        "the registry's Postgres at {}:{} ({})",
        options.get_host(),
        options.get_port(),
        redact(url)
    );
    let mut conn = tokio::time::timeout(PG_CONNECT_TIMEOUT, options.connect())
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "cannot connect to {place}: no answer within {} s; check the host, port and firewall",
                PG_CONNECT_TIMEOUT.as_secs()
            )
        })?
        .with_context(|| {
            format!("cannot connect to {place}; check that the server runs and the URL is right")
        })?;
    migrator(Dialect::Postgres)
        .run_direct(&mut conn)
        .await
        .with_context(|| format!("migrating {place}"))?;
    conn.close().await.ok();
    let set_timeout = format!("SET statement_timeout = {}", statement_timeout.as_millis());
    Ok(PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(30))
        .after_connect(move |conn, _| {
            let set_timeout = set_timeout.clone();
            Box::pin(async move { conn.execute(set_timeout.as_str()).await.map(|_| ()) })
        })
        .connect_lazy_with(options))
}

/// Opens the SQLite pool (the file and its folder are created) and migrates it inside one
/// `BEGIN IMMEDIATE` transaction: that takes the write lock before the migrator reads which
/// migrations ran, so processes that open a fresh file at once migrate it one after the other
/// (the others wait up to the busy timeout, then find it done).
async fn connect_sqlite(url: &str, path: &Path) -> Result<SqlitePool> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "cannot create the folder {} for registry {url}",
                dir.display()
            )
        })?;
    }
    let options = SqliteConnectOptions::from_str(url)
        .with_context(|| format!("invalid registry URL {url}"))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(SQLITE_BUSY_TIMEOUT)
        .foreign_keys(true);
    let pool = open_sqlite_pool(options)
        .await
        .with_context(|| format!("cannot open the registry at {url}"))?;
    let migrate = async {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        migrator(Dialect::Sqlite).run_direct(&mut *tx).await?;
        tx.commit().await?;
        anyhow::Ok(())
    };
    migrate
        .await
        .with_context(|| format!("migrating the registry at {url}"))?;
    Ok(pool)
}

/// Opens the pool, retrying while the file is busy. A connection's first statement turns a fresh
/// file to WAL, which needs the exclusive lock; SQLite answers `SQLITE_BUSY` at once, without the
/// busy handler, when another process converting the same file at that moment holds a lock that
/// this one would otherwise wait on forever. Such a refusal is retried for the busy timeout.
async fn open_sqlite_pool(options: SqliteConnectOptions) -> Result<SqlitePool, sqlx::Error> {
    let deadline = std::time::Instant::now() + SQLITE_BUSY_TIMEOUT;
    let mut pause = Duration::from_millis(5);
    loop {
        let opened = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(SQLITE_BUSY_TIMEOUT)
            .connect_with(options.clone())
            .await;
        match opened {
            Err(e) if is_sqlite_busy(&e) && std::time::Instant::now() < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

/// How long a SQLite statement waits for another process's lock.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether SQLite refused for a lock held elsewhere (`SQLITE_BUSY` or one of its extended codes).
fn is_sqlite_busy(e: &sqlx::Error) -> bool {
    let code = e.as_database_error().and_then(|d| d.code());
    code.and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| c & 0xff == 5)
}

/// The migrations of each dialect, embedded at build time: (version, description, SQL). Keep in
/// step with the files under `migrations/` (a test checks it). Embedded with `include_str!`
/// rather than `sqlx::migrate!` so that the crate does not build sqlx's proc-macro stack.
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "registry",
        include_str!("../../migrations/postgres/0001_registry.sql"),
    ),
    (
        2,
        "scheduler",
        include_str!("../../migrations/postgres/0002_scheduler.sql"),
    ),
    (
        3,
        "summary order indexes",
        include_str!("../../migrations/postgres/0003_summary_order_indexes.sql"),
    ),
    (
        4,
        "schedule time zone",
        include_str!("../../migrations/postgres/0004_schedule_time_zone.sql"),
    ),
    (
        5,
        "alias removal",
        include_str!("../../migrations/postgres/0005_alias_removal.sql"),
    ),
    (
        6,
        "refused promotions",
        include_str!("../../migrations/postgres/0006_refused_promotions.sql"),
    ),
];
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "registry",
        include_str!("../../migrations/sqlite/0001_registry.sql"),
    ),
    (
        2,
        "scheduler",
        include_str!("../../migrations/sqlite/0002_scheduler.sql"),
    ),
    (
        3,
        "metrics without rowid",
        include_str!("../../migrations/sqlite/0003_metrics_without_rowid.sql"),
    ),
    (
        4,
        "summary order indexes",
        include_str!("../../migrations/sqlite/0004_summary_order_indexes.sql"),
    ),
    (
        5,
        "schedule time zone",
        include_str!("../../migrations/sqlite/0005_schedule_time_zone.sql"),
    ),
    (
        6,
        "exact metric values",
        include_str!("../../migrations/sqlite/0006_exact_metric_values.sql"),
    ),
    (
        7,
        "alias removal",
        include_str!("../../migrations/sqlite/0007_alias_removal.sql"),
    ),
    (
        8,
        "refused promotions",
        include_str!("../../migrations/sqlite/0008_refused_promotions.sql"),
    ),
];

fn migrator(dialect: Dialect) -> Migrator {
    let list = match dialect {
        Dialect::Postgres => POSTGRES_MIGRATIONS,
        Dialect::Sqlite => SQLITE_MIGRATIONS,
    };
    Migrator {
        migrations: Cow::Owned(
            list.iter()
                .map(|(version, description, sql)| {
                    Migration::new(
                        *version,
                        Cow::Borrowed(*description),
                        MigrationType::Simple,
                        Cow::Borrowed(*sql),
                        false,
                    )
                })
                .collect(),
        ),
        ..Migrator::DEFAULT
    }
}

/// The statement that reads the database's clock in milliseconds since the epoch, as `now`.
/// Leases, job claims and schedules are judged by it rather than by each worker's own clock, so
/// that workers whose clocks disagree still agree on when a lease runs out. (SQLite is embedded:
/// its clock is the host's.)
fn clock_sql(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Postgres => {
            "SELECT FLOOR(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT AS now"
        }
        Dialect::Sqlite => "SELECT CAST(unixepoch('subsec') * 1000 AS INTEGER) AS now",
    }
}

/// The `now` of a [`clock_sql`] row.
fn clock_of(row: sqlx::Result<Row>) -> Result<i64> {
    Ok(row.context("reading the registry's clock")?.get("now")?)
}

/// Hides the password of a Postgres URL in messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// An open transaction on either backend.
pub enum Tx {
    Pg(Transaction<'static, Postgres>),
    Sqlite(Transaction<'static, Sqlite>),
}

impl Tx {
    pub fn dialect(&self) -> Dialect {
        match self {
            Tx::Pg(_) => Dialect::Postgres,
            Tx::Sqlite(_) => Dialect::Sqlite,
        }
    }

    pub fn q(&self, sql: &'static str) -> Q<'static> {
        match self {
            Tx::Pg(_) => Q::Pg(sqlx::query(sql)),
            Tx::Sqlite(_) => Q::Sqlite(sqlx::query(sql)),
        }
    }

    /// The database's clock in milliseconds since the epoch (see [`clock_sql`]).
    pub async fn clock_ms(&mut self) -> Result<i64> {
        let sql = clock_sql(self.dialect());
        clock_of(match self {
            Tx::Pg(t) => sqlx::query(sql).fetch_one(&mut **t).await.map(Row::Pg),
            Tx::Sqlite(t) => sqlx::query(sql).fetch_one(&mut **t).await.map(Row::Sqlite),
        })
    }

    pub async fn commit(self) -> Result<()> {
        match self {
            Tx::Pg(t) => t.commit().await,
            Tx::Sqlite(t) => t.commit().await,
        }
        .context("committing a registry transaction")
    }
}

/// Where a statement runs: on the pool or inside a transaction.
pub enum On<'a> {
    Db(&'a Db),
    Tx(&'a mut Tx),
}

impl<'a> From<&'a Db> for On<'a> {
    fn from(db: &'a Db) -> Self {
        On::Db(db)
    }
}

impl<'a> From<&'a mut Tx> for On<'a> {
    fn from(tx: &'a mut Tx) -> Self {
        On::Tx(tx)
    }
}

/// A statement with its bound values, for one backend.
pub enum Q<'q> {
    Pg(Query<'q, Postgres, PgArguments>),
    Sqlite(Query<'q, Sqlite, SqliteArguments<'q>>),
}

fn mismatch() -> sqlx::Error {
    sqlx::Error::Protocol("a statement was built for the other registry backend".into())
}

impl<'q> Q<'q> {
    pub fn bind<T: Bind<'q>>(self, value: T) -> Self {
        match self {
            Q::Pg(q) => Q::Pg(q.bind(value)),
            Q::Sqlite(q) => Q::Sqlite(q.bind(value)),
        }
    }

    pub async fn fetch_all(self, on: impl Into<On<'_>>) -> sqlx::Result<Vec<Row>> {
        Ok(match (self, on.into()) {
            (Q::Pg(q), On::Db(Db::Pg(p))) => {
                q.fetch_all(p).await?.into_iter().map(Row::Pg).collect()
            }
            (Q::Pg(q), On::Tx(Tx::Pg(t))) => q
                .fetch_all(&mut **t)
                .await?
                .into_iter()
                .map(Row::Pg)
                .collect(),
            (Q::Sqlite(q), On::Db(Db::Sqlite(p))) => {
                q.fetch_all(p).await?.into_iter().map(Row::Sqlite).collect()
            }
            (Q::Sqlite(q), On::Tx(Tx::Sqlite(t))) => q
                .fetch_all(&mut **t)
                .await?
                .into_iter()
                .map(Row::Sqlite)
                .collect(),
            _ => return Err(mismatch()),
        })
    }

    pub async fn fetch_optional(self, on: impl Into<On<'_>>) -> sqlx::Result<Option<Row>> {
        Ok(match (self, on.into()) {
            (Q::Pg(q), On::Db(Db::Pg(p))) => q.fetch_optional(p).await?.map(Row::Pg),
            (Q::Pg(q), On::Tx(Tx::Pg(t))) => q.fetch_optional(&mut **t).await?.map(Row::Pg),
            (Q::Sqlite(q), On::Db(Db::Sqlite(p))) => q.fetch_optional(p).await?.map(Row::Sqlite),
            (Q::Sqlite(q), On::Tx(Tx::Sqlite(t))) => {
                q.fetch_optional(&mut **t).await?.map(Row::Sqlite)
            }
            _ => return Err(mismatch()),
        })
    }

    pub async fn fetch_one(self, on: impl Into<On<'_>>) -> sqlx::Result<Row> {
        self.fetch_optional(on)
            .await?
            .ok_or(sqlx::Error::RowNotFound)
    }

    /// Runs the statement and returns the number of rows it changed.
    pub async fn execute(self, on: impl Into<On<'_>>) -> sqlx::Result<u64> {
        Ok(match (self, on.into()) {
            (Q::Pg(q), On::Db(Db::Pg(p))) => q.execute(p).await?.rows_affected(),
            (Q::Pg(q), On::Tx(Tx::Pg(t))) => q.execute(&mut **t).await?.rows_affected(),
            (Q::Sqlite(q), On::Db(Db::Sqlite(p))) => q.execute(p).await?.rows_affected(),
            (Q::Sqlite(q), On::Tx(Tx::Sqlite(t))) => q.execute(&mut **t).await?.rows_affected(),
            _ => return Err(mismatch()),
        })
    }
}

/// A result row from either backend.
pub enum Row {
    Pg(PgRow),
    Sqlite(SqliteRow),
}

impl Row {
    pub fn get<T: Decode>(&self, column: &str) -> sqlx::Result<T> {
        match self {
            Row::Pg(r) => r.try_get(column),
            Row::Sqlite(r) => r.try_get(column),
        }
    }
}

/// A metric value as either backend stores it, NaN included. Postgres keeps every double as it
/// is. SQLite has no NaN (a bound NaN becomes NULL), so writers bind the value as
/// `coalesce($N, 'NaN')` and SQLite keeps the text 'NaN' in the untyped value columns of
/// migration 0006, where it sorts above every number as NaN does on Postgres; this type reads
/// both forms back as the double.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MetricValue(pub f64);

/// The text that stands for NaN in SQLite's metric value columns.
pub const SQLITE_NAN: &str = "NaN";

impl sqlx::Type<Postgres> for MetricValue {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <f64 as sqlx::Type<Postgres>>::type_info()
    }
}

impl<'r> sqlx::Decode<'r, Postgres> for MetricValue {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        Ok(MetricValue(<f64 as sqlx::Decode<Postgres>>::decode(value)?))
    }
}

impl sqlx::Type<Sqlite> for MetricValue {
    fn type_info() -> sqlx::sqlite::SqliteTypeInfo {
        <f64 as sqlx::Type<Sqlite>>::type_info()
    }

    /// A double, an integer (read as a double) or the text 'NaN'.
    fn compatible(ty: &sqlx::sqlite::SqliteTypeInfo) -> bool {
        <f64 as sqlx::Type<Sqlite>>::compatible(ty)
            || <i64 as sqlx::Type<Sqlite>>::compatible(ty)
            || <&str as sqlx::Type<Sqlite>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, Sqlite> for MetricValue {
    fn decode(value: sqlx::sqlite::SqliteValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        use sqlx::{TypeInfo as _, ValueRef as _};
        if value.type_info().name() != "TEXT" {
            return Ok(MetricValue(<f64 as sqlx::Decode<Sqlite>>::decode(value)?));
        }
        match <&str as sqlx::Decode<Sqlite>>::decode(value)? {
            SQLITE_NAN => Ok(MetricValue(f64::NAN)),
            other => {
                Err(format!("metric value {other:?} is neither a number nor {SQLITE_NAN:?}").into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_migration_file_is_embedded() {
        for (dir, list) in [
            ("postgres", super::POSTGRES_MIGRATIONS),
            ("sqlite", super::SQLITE_MIGRATIONS),
        ] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../migrations")
                .join(dir);
            let mut files: Vec<String> = std::fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|f| f.ends_with(".sql"))
                .collect();
            files.sort();
            assert_eq!(files.len(), list.len(), "{dir}: {files:?}");
            for (file, (version, _, sql)) in files.iter().zip(list) {
                assert!(file.starts_with(&format!("{version:04}_")), "{file}");
                assert_eq!(&std::fs::read_to_string(path.join(file)).unwrap(), sql);
            }
        }
    }

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            super::redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
