//! Sorting a database error by what to do about it: retry, answer 503, or treat it as a fault.
//! Part of the errors' room, below `crate::db`: a `DbErr` becomes a `DomainError` here, and
//! `db` (which retries and answers by these sorts) only looks down at it.

use sea_orm::{DbErr, RuntimeErr, sqlx};

fn database_error(err: &DbErr) -> Option<&(dyn sqlx::error::DatabaseError + 'static)> {
    match err {
        DbErr::Exec(RuntimeErr::SqlxError(e))
        | DbErr::Query(RuntimeErr::SqlxError(e))
        | DbErr::Conn(RuntimeErr::SqlxError(e)) => match &**e {
            sqlx::Error::Database(db) => Some(&**db),
            _ => None,
        },
        _ => None,
    }
}

/// How a database failure is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbFailure {
    /// Lost to a concurrent transaction: worth another try.
    Busy,
    /// The database cannot serve now: 503, and service resumes when it can.
    Unavailable,
    /// Anything else: a fault of this service (a bad statement, a broken constraint).
    Other,
}

/// Sorts a database error by what to do about it. MySQL/MariaDB error numbers:
/// - busy: 1205 lock wait timeout, 1213 deadlock or Galera certification conflict (also at
///   COMMIT), 1020 record changed since last read; SQLite busy and locked;
/// - unavailable: 1047 (Galera node not in the primary component: "WSREP has not yet prepared
///   node for application use"), 1053 server shutdown, 1180 error during COMMIT, 1290 read-only,
///   1927 connection killed, 2006 gone away, 2013 lost, 4031 disconnected for inactivity; and
///   every failure to reach the server or get a pooled connection.
pub fn classify(err: &DbErr) -> DbFailure {
    match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => return DbFailure::Unavailable,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            match &**e {
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_) => return DbFailure::Unavailable,
                _ => {}
            }
        }
        _ => {}
    }
    let Some(db) = database_error(err) else {
        return DbFailure::Other;
    };
    if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        return match my.number() {
            1020 | 1205 | 1213 => DbFailure::Busy,
            1047 | 1053 | 1180 | 1290 | 1927 | 2006 | 2013 | 4031 => DbFailure::Unavailable,
            _ => DbFailure::Other,
        };
    }
    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some()
        // Primary result codes SQLITE_BUSY (5) and SQLITE_LOCKED (6), with extended variants.
        && db
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| matches!(c & 0xff, 5 | 6))
    {
        return DbFailure::Busy;
    }
    DbFailure::Other
}

/// The connection itself broke (as opposed to the server refusing to serve): I/O errors, and
/// MySQL's 1927 killed, 2006 gone away, 2013 lost, 4031 disconnected for inactivity.
pub(crate) fn connection_lost(err: &DbErr) -> bool {
    let sqlx_err = match err {
        DbErr::Exec(RuntimeErr::SqlxError(e))
        | DbErr::Query(RuntimeErr::SqlxError(e))
        | DbErr::Conn(RuntimeErr::SqlxError(e)) => e,
        _ => return false,
    };
    match &**sqlx_err {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .is_some_and(|my| matches!(my.number(), 1927 | 2006 | 2013 | 4031)),
        _ => false,
    }
}
