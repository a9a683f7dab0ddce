//! The producer's outbox: the one pending event, on disk, so that it survives a crash.
//!
//! An event is written (and fsync'd) before it is published and removed once the broker has
//! acknowledged it. At start, a pending event is published before anything new is fetched.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::event::ImageEvent;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("cannot write the outbox at {path}: {source}; check that DATA_DIR is writable")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the pending event at {path} is unreadable ({reason}); it was moved to {moved_to} for a person to inspect")]
    Corrupt { path: PathBuf, reason: String, moved_to: PathBuf },
}

#[derive(Clone, Debug)]
pub struct Outbox {
    dir: PathBuf,
}

impl Outbox {
    pub fn open(data_dir: &Path) -> Result<Outbox, OutboxError> {
        let dir = data_dir.join("outbox");
        fs::create_dir_all(&dir).map_err(|source| OutboxError::Io { path: dir.clone(), source })?;
        Ok(Outbox { dir })
    }

    fn pending_path(&self) -> PathBuf {
        self.dir.join("pending.json")
    }

    /// The pending event, if any. An unreadable file is moved aside (never deleted) and reported.
    pub fn pending(&self) -> Result<Option<ImageEvent>, OutboxError> {
        let path = self.pending_path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(OutboxError::Io { path, source }),
        };
        serde_json::from_slice(&bytes).map(Some).or_else(|e| {
            let moved_to = self.dir.join(format!("corrupt-{}.json", chrono::Utc::now().format("%Y%m%dT%H%M%S%.3f")));
            fs::rename(&path, &moved_to).map_err(|source| OutboxError::Io { path: path.clone(), source })?;
            Err(OutboxError::Corrupt { path, reason: e.to_string(), moved_to })
        })
    }

    /// Stores `event` as the pending one, durably: write a temp file, fsync, rename, fsync the dir.
    pub fn put(&self, event: &ImageEvent) -> Result<(), OutboxError> {
        let tmp = self.dir.join("pending.json.tmp");
        let io = |source| OutboxError::Io { path: tmp.clone(), source };
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(&serde_json::to_vec(event).expect("events always serialize")).map_err(io)?;
        f.sync_all().map_err(io)?;
        fs::rename(&tmp, self.pending_path()).map_err(io)?;
        self.sync_dir()
    }

    /// Forgets the pending event once the broker has it.
    pub fn clear(&self) -> Result<(), OutboxError> {
        match fs::remove_file(self.pending_path()) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(OutboxError::Io { path: self.pending_path(), source }),
        }
    }

    fn sync_dir(&self) -> Result<(), OutboxError> {
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|source| OutboxError::Io { path: self.dir.clone(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nasa::FoundImage;

    fn event() -> ImageEvent {
        let found = FoundImage {
            nasa_id: "as11-40-5874".into(),
            image_url: "https://images-assets.nasa.gov/a.jpg".into(),
            title: None,
            center: None,
            date_created: None,
        };
        ImageEvent::new(found, "moon")
    }

    #[test]
    fn pending_event_survives_reopening_and_clears() {
        let dir = tempfile::tempdir().unwrap();
        let e = event();
        Outbox::open(dir.path()).unwrap().put(&e).unwrap();
        let reopened = Outbox::open(dir.path()).unwrap();
        assert_eq!(reopened.pending().unwrap(), Some(e));
        reopened.clear().unwrap();
        assert_eq!(reopened.pending().unwrap(), None);
    }

    #[test]
    fn corrupt_file_is_moved_aside_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        fs::write(dir.path().join("outbox/pending.json"), b"{half").unwrap();
        let err = outbox.pending().unwrap_err();
        let OutboxError::Corrupt { moved_to, .. } = err else { panic!("{err}") };
        assert_eq!(fs::read(moved_to).unwrap(), b"{half");
        assert_eq!(outbox.pending().unwrap(), None);
    }
}
