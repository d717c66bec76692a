//! `palaver export` and `palaver import` (the format: `storage::export`). An export of a stopped
//! data directory reads its database; with a server running, the server first writes a backup
//! into the data directory through the admin socket, the export reads that, and removes it.
//! Both show a progress bar on a terminal (standard error) and nothing when it is not one.

use std::fs::File;
use std::io::{BufReader, BufWriter, IsTerminal};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};

use super::protocol::{Reply, Request};
use super::socket::{self, CallError};
use crate::config::Config;
use crate::storage::DB_FILE;
use crate::storage::export::{self, TransferSummary};

/// The database an export reads: the data directory's, or a backup the server wrote for it
/// (removed when dropped).
struct Source {
    path: PathBuf,
    temporary: bool,
}

impl Drop for Source {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

pub async fn export(
    config: &Config,
    out: Option<&Path>,
    include_secrets: bool,
) -> Result<TransferSummary, String> {
    let source = source(config).await?;
    let db = export::open_for_export(&source.path).map_err(|error| match error {
        export::TransferError::Store(store) if store.is_in_use() => format!(
            "the database in {} is held by another process, but no server answers on its admin socket: try again in a moment",
            config.data_dir.display()
        ),
        other => other.to_string(),
    })?;
    let total = export::rows_to_export(&db).map_err(|e| e.to_string())?;
    let bar = progress(total, "{bar:40} {pos}/{len} rows, {elapsed}");
    let mut report = |rows| bar.set_position(rows);
    let summary = match out {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let mut writer = BufWriter::new(file);
            let summary = export::export(&db, &mut writer, include_secrets, &mut report);
            let file = writer.into_inner().map_err(|e| e.to_string())?;
            file.sync_all()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            summary
        }
        None => {
            let mut writer = BufWriter::new(std::io::stdout().lock());
            export::export(&db, &mut writer, include_secrets, &mut report)
        }
    }
    .map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    Ok(summary)
}

/// The data directory's database, or (with a server running) a backup of it.
async fn source(config: &Config) -> Result<Source, String> {
    let dir = std::path::absolute(&config.data_dir)
        .map_err(|e| format!("{}: {e}", config.data_dir.display()))?;
    let snapshot = dir.join(format!("export-{}.redb", std::process::id()));
    let request = Request::Backup {
        path: snapshot.clone(),
    };
    match socket::call(&socket::path(&dir), &request).await {
        Ok(Reply::Ok(_)) => Ok(Source {
            path: snapshot,
            temporary: true,
        }),
        Ok(Reply::Error(message)) => Err(message),
        Err(CallError::Failed(message)) => Err(message),
        Err(CallError::NoServer) => Ok(Source {
            path: dir.join(DB_FILE),
            temporary: false,
        }),
    }
}

pub fn import(config: &Config, file: &Path) -> Result<TransferSummary, String> {
    let named = |e: std::io::Error| format!("{}: {e}", file.display());
    let summary = if file == Path::new("-") {
        let bar = progress(0, "{bytes} read, {elapsed}");
        let mut input = std::io::stdin().lock();
        let summary = export::import(&mut input, &config.data_dir, &mut |bytes| {
            bar.set_position(bytes)
        });
        bar.finish_and_clear();
        summary
    } else {
        let opened = File::open(file).map_err(named)?;
        let size = opened.metadata().map_err(named)?.len();
        let bar = progress(size, "{bar:40} {bytes}/{total_bytes}, {elapsed}");
        let mut input = BufReader::new(opened);
        let summary = export::import(&mut input, &config.data_dir, &mut |bytes| {
            bar.set_position(bytes)
        });
        bar.finish_and_clear();
        summary
    };
    summary.map_err(|e| e.to_string())
}

/// A progress bar on standard error when it is a terminal; a hidden one otherwise.
fn progress(total: u64, template: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}
