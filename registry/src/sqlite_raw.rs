//! One prepared SQLite statement on a connection's own handle, for the metric writer's bulk
//! insert. Through sqlx every value of a row is boxed into an argument list and the statement is
//! stepped on sqlx's worker thread; stepping it here with values bound in place is about three
//! times faster (`scripts/bench-registry`). The handle stays locked, and the caller's
//! transaction open, for as long as the [`Statement`] lives.
use anyhow::{bail, Result};
use libsqlite3_sys as ffi;
use sqlx::sqlite::LockedSqliteHandle;
use std::ffi::{c_int, CStr};
use std::ptr::{self, NonNull};

/// A prepared statement, finalized on drop. It borrows the locked handle, so that it cannot
/// outlive the lock.
pub struct Statement<'h> {
    db: NonNull<ffi::sqlite3>,
    stmt: NonNull<ffi::sqlite3_stmt>,
    sql: &'static str,
    _handle: std::marker::PhantomData<&'h mut ()>,
}

impl<'h> Statement<'h> {
    pub fn prepare(handle: &'h mut LockedSqliteHandle<'_>, sql: &'static str) -> Result<Self> {
        let db = handle.as_raw_handle();
        let mut stmt = ptr::null_mut();
        // SAFETY: `db` is the open connection behind the lock that `handle` holds; the SQL
        // length is passed, so no terminating NUL is needed.
        let rc = unsafe {
            ffi::sqlite3_prepare_v2(
                db.as_ptr(),
                sql.as_ptr().cast(),
                sql.len() as c_int,
                &mut stmt,
                ptr::null_mut(),
            )
        };
        match NonNull::new(stmt) {
            Some(stmt) if rc == ffi::SQLITE_OK => Ok(Statement {
                db,
                stmt,
                sql,
                _handle: std::marker::PhantomData,
            }),
            _ => bail!("preparing {sql:?}: {}", errmsg(db)),
        }
    }

    fn check(&self, rc: c_int, what: &str) -> Result<()> {
        if rc != ffi::SQLITE_OK {
            bail!("{what} for {:?}: {}", self.sql, errmsg(self.db));
        }
        Ok(())
    }

    pub fn bind_i64(&mut self, index: c_int, value: i64) -> Result<()> {
        // SAFETY: a live statement; SQLite checks the index.
        let rc = unsafe { ffi::sqlite3_bind_int64(self.stmt.as_ptr(), index, value) };
        self.check(rc, "binding an integer")
    }

    pub fn bind_f64(&mut self, index: c_int, value: f64) -> Result<()> {
        // SAFETY: as above.
        let rc = unsafe { ffi::sqlite3_bind_double(self.stmt.as_ptr(), index, value) };
        self.check(rc, "binding a real")
    }

    pub fn bind_text(&mut self, index: c_int, value: &str) -> Result<()> {
        // SAFETY: as above; SQLITE_TRANSIENT makes SQLite copy the text before returning.
        let rc = unsafe {
            ffi::sqlite3_bind_text(
                self.stmt.as_ptr(),
                index,
                value.as_ptr().cast(),
                value.len() as c_int,
                ffi::SQLITE_TRANSIENT(),
            )
        };
        self.check(rc, "binding a text")
    }

    /// Runs the statement with the values bound now (a statement that returns no rows), then
    /// resets it for the next values; bindings stay.
    pub fn execute(&mut self) -> Result<()> {
        // SAFETY: a live statement, stepped and reset on the thread that holds the handle lock.
        let rc = unsafe { ffi::sqlite3_step(self.stmt.as_ptr()) };
        // SAFETY: as above; reset's own code repeats the step's error, read below.
        unsafe { ffi::sqlite3_reset(self.stmt.as_ptr()) };
        if rc != ffi::SQLITE_DONE {
            bail!("running {:?}: {}", self.sql, errmsg(self.db));
        }
        Ok(())
    }
}

impl Drop for Statement<'_> {
    fn drop(&mut self) {
        // SAFETY: finalized once, here.
        unsafe { ffi::sqlite3_finalize(self.stmt.as_ptr()) };
    }
}

fn errmsg(db: NonNull<ffi::sqlite3>) -> String {
    // SAFETY: sqlite3_errmsg returns a NUL-terminated string owned by the connection, valid
    // until the next call on it; it is copied at once.
    unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(db.as_ptr())) }
        .to_string_lossy()
        .into_owned()
}
