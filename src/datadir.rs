//! Who owns what in `DATA_DIR`: each process that keeps an outbox there holds an exclusive lock on
//! its slot, so that two processes can never overwrite or clear each other's pending event.
//!
//! The daemon's slot is `DATA_DIR/outbox`; a `backfill` has a slot of its own,
//! `DATA_DIR/backfill/outbox`, so it can run beside a daemon on the same `DATA_DIR`. The lock is
//! an advisory `flock` on the slot's `lock` file, which also holds the owner's pid for the error a
//! second process prints. The kernel drops the lock when its holder exits, however it exits, so a
//! crash never leaves a stale lock behind.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The kinds of process that keep an outbox in `DATA_DIR`, each in a slot of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// The daemon's producer role.
    Daemon,
    /// `nasa-ingest backfill`.
    Backfill,
}

impl Owner {
    /// The owner's slot: its outbox and lock file live there.
    pub fn dir(self, data_dir: &Path) -> PathBuf {
        match self {
            Owner::Daemon => data_dir.join("outbox"),
            Owner::Backfill => data_dir.join("backfill").join("outbox"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Owner::Daemon => "nasa-ingest daemon with the producer role",
            Owner::Backfill => "nasa-ingest backfill",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("DATA_DIR {data_dir} is in use by another {owner} (pid {pid}); stop that process or give this one a DATA_DIR of its own")]
    Held { data_dir: PathBuf, owner: &'static str, pid: String },
    #[error("cannot lock {path}: {source}; check that DATA_DIR exists and is writable by this user")]
    Io { path: PathBuf, source: std::io::Error },
}

/// An exclusive hold on one slot of `DATA_DIR`, released when dropped (or when the process ends).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Takes the daemon's slot of `data_dir`.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, DataDirError> {
        Self::acquire_for(data_dir, Owner::Daemon)
    }

    /// Takes `owner`'s slot of `data_dir`, creating it; fails at once if another process holds it.
    pub fn acquire_for(data_dir: &Path, owner: Owner) -> Result<DataDirLock, DataDirError> {
        let dir = owner.dir(data_dir);
        let path = dir.join("lock");
        let io = |source| DataDirError::Io { path: path.clone(), source };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let mut file = open_lock_file(&path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = Some(pid.trim().to_owned()).filter(|p| !p.is_empty()).unwrap_or_else(|| "unknown".into());
                return Err(DataDirError::Held { data_dir: data_dir.to_owned(), owner: owner.name(), pid });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        // Best effort: on a full or read-only DATA_DIR the lock still holds, only the pid is missing
        // from a second process's error. The producer treats such a disk as a passing fault.
        let _ = std::fs::write(&path, format!("{}\n", std::process::id()));
        Ok(DataDirLock { _file: file })
    }
}

/// The lock file, created if missing, opened read-only: flock needs no write access, and a file
/// held open for writing keeps its filesystem from being remounted read-only ("mount point is
/// busy") for as long as the daemon runs. The pid is written through a handle closed at once.
fn open_lock_file(path: &Path) -> std::io::Result<File> {
    if let Err(e) = OpenOptions::new().append(true).create(true).open(path) {
        // A read-only DATA_DIR where the file is there already still locks.
        if !path.exists() {
            return Err(e);
        }
    }
    File::open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        // flock locks belong to an open file: a second open, even in this process, is refused.
        let err = DataDirLock::acquire(dir.path()).unwrap_err();
        let DataDirError::Held { pid, data_dir, .. } = &err else { panic!("{err}") };
        assert_eq!(pid, &std::process::id().to_string());
        assert_eq!(data_dir, dir.path());
        assert!(err.to_string().contains("DATA_DIR"), "{err}");
        drop(first);
        DataDirLock::acquire(dir.path()).expect("free again once the holder is gone");
    }

    #[test]
    fn the_lock_holds_no_file_open_for_writing() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let lock = DataDirLock::acquire(dir.path()).unwrap();
        let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", lock._file.as_raw_fd())).unwrap();
        let flags = fdinfo.lines().find_map(|l| l.strip_prefix("flags:")).map(|f| i32::from_str_radix(f.trim(), 8).unwrap()).unwrap();
        assert_eq!(flags & libc::O_ACCMODE, libc::O_RDONLY, "the lock's file is read-only, so DATA_DIR can be remounted read-only");
        let pid = std::fs::read_to_string(dir.path().join("outbox/lock")).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string(), "the holder's pid is written still");
    }

    #[test]
    fn backfill_has_a_slot_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let _daemon = DataDirLock::acquire(dir.path()).unwrap();
        let _backfill = DataDirLock::acquire_for(dir.path(), Owner::Backfill).expect("beside the daemon");
        assert!(matches!(DataDirLock::acquire_for(dir.path(), Owner::Backfill), Err(DataDirError::Held { .. })));
    }

    #[test]
    fn an_unwritable_data_dir_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"").unwrap();
        let err = DataDirLock::acquire(&file).unwrap_err();
        assert!(matches!(err, DataDirError::Io { .. }), "{err}");
        assert!(err.to_string().contains("DATA_DIR"), "{err}");
    }
}
