//! The storage layer's one error type.
//!
//! Every storage call answers `Result<_, StoreError>`, typed all the way to the service, which
//! decides what a client is told (a refusal or 503, never "not found"). The variants separate
//! what must stop the process from what must fail only the request that met it: `Io` after a
//! write means the database must be reopened (see `WriterExit::Failed`), while `Corrupt` names one
//! record that does not decode, and only the requests that touch that record fail.

use std::sync::Arc;

use super::records::DecodeError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// redb or the disk failed. After a failed commit nothing more may be written until the
    /// database is reopened.
    #[error("storage I/O: {0}")]
    Io(Arc<redb::Error>),
    /// One record does not decode. Fails the requests that read it and nothing else.
    #[error("corrupt record in table {table} at key {key}: {source}")]
    Corrupt {
        table: &'static str,
        key: String,
        source: DecodeError,
    },
    /// The writer task has stopped (shutting down, or after a failed commit).
    #[error("storage writer stopped")]
    Closed,
    #[error(
        "the data directory was written by a newer palaver (database format {found}; this build reads up to {})",
        super::FORMAT_VERSION
    )]
    NewerFormat { found: u8 },
    #[error("cannot create or sync data directory {path}: {source}")]
    DataDir {
        path: String,
        source: Arc<std::io::Error>,
    },
}

impl StoreError {
    /// A record of `table` at `key` that did not decode.
    pub fn corrupt(
        table: &'static str,
        key: impl std::fmt::Display,
    ) -> impl FnOnce(DecodeError) -> Self {
        move |source| Self::Corrupt {
            table,
            key: key.to_string(),
            source,
        }
    }

    pub(super) fn data_dir(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self {
        move |source| Self::DataDir {
            path: path.display().to_string(),
            source: Arc::new(source),
        }
    }

    /// Whether the database could not be opened because another process holds it.
    pub fn is_in_use(&self) -> bool {
        matches!(self, Self::Io(error) if matches!(**error, redb::Error::DatabaseAlreadyOpen))
    }

    /// Whether this error fails only the request that met it; any other stops the writer.
    pub fn is_per_request(&self) -> bool {
        matches!(self, Self::Corrupt { .. })
    }
}

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        Self::Io(Arc::new(e))
    }
}

macro_rules! from_redb {
    ($($error:ty),*) => {$(
        impl From<$error> for StoreError {
            fn from(e: $error) -> Self {
                Self::Io(Arc::new(e.into()))
            }
        }
    )*};
}

from_redb!(
    redb::StorageError,
    redb::TransactionError,
    redb::TableError,
    redb::CommitError,
    redb::DatabaseError,
    redb::SetDurabilityError
);
