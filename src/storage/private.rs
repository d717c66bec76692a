//! The data directory and the database file are private to palaver's user.
//!
//! The database holds every account's password hash, every message and (unless the operator
//! gives one) the token secret, so anyone who can read the file can forge tokens. The directory
//! is created 0700 and the file 0600; a directory or file found with group or other permission
//! bits (made by an older build, or by hand) is tightened at start, with a warning naming it and
//! the mode it had.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The data directory's mode when palaver creates it.
pub const DIR_MODE: u32 = 0o700;
/// The database file's mode when palaver creates it.
pub const FILE_MODE: u32 = 0o600;
/// Permission bits for anyone but the owner: none may be set.
const GROUP_AND_OTHER: u32 = 0o077;

/// Creates `dir` (and missing parents) 0700, or tightens an existing one.
pub fn create_dir(dir: &Path) -> std::io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    tighten(dir)
}

/// Opens (creating 0600) the file at `path` for reading and writing, tightening an existing one.
pub fn open_file(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(path)?;
    tighten(path)?;
    Ok(file)
}

/// Removes the group and other permission bits of `path`, warning when there were any.
fn tighten(path: &Path) -> std::io::Result<()> {
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o7777;
    if mode & GROUP_AND_OTHER == 0 {
        return Ok(());
    }
    let tightened = mode & !GROUP_AND_OTHER;
    std::fs::set_permissions(path, Permissions::from_mode(tightened))?;
    tracing::warn!(
        path = %path.display(),
        old_mode = format!("{mode:04o}"),
        new_mode = format!("{tightened:04o}"),
        "data directory entry was readable by others; tightened its permissions"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn new_directory_and_file_are_private() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        create_dir(&dir).unwrap();
        let file = dir.join("palaver.redb");
        open_file(&file).unwrap();
        assert_eq!(mode_of(&dir), 0o700);
        assert_eq!(mode_of(&file), 0o600);
    }

    #[test]
    fn existing_open_ones_are_tightened() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        let file = dir.join("palaver.redb");
        std::fs::write(&file, b"").unwrap();
        std::fs::set_permissions(&file, Permissions::from_mode(0o644)).unwrap();
        create_dir(&dir).unwrap();
        open_file(&file).unwrap();
        assert_eq!(mode_of(&dir), 0o700);
        assert_eq!(mode_of(&file), 0o600);
    }

    #[test]
    fn private_ones_are_left_as_they_are() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, Permissions::from_mode(0o500)).unwrap();
        create_dir(&dir).unwrap();
        assert_eq!(mode_of(&dir), 0o500);
        std::fs::set_permissions(&dir, Permissions::from_mode(0o700)).unwrap();
    }
}
