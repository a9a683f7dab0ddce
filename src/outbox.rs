//! The producer's outbox: the one pending event, on disk, so that it survives a crash.
//!
//! An event is written (and fsync'd) before it is published and removed once the broker has
//! acknowledged it. At start, a pending event is published before anything new is fetched.
//! The outbox belongs to one process at a time: opening it takes its slot's lock (`datadir`).
//!
//! `pending.json` is the event's JSON with its trace context beside it (`traceparent` and, when
//! there is one, `tracestate`), so that the event is sent after a crash in the trace it started
//! in. A file written before traces were kept has none: its event is sent in a new trace.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::datadir::{DataDirError, DataDirLock, Owner};
use crate::event::ImageEvent;
use crate::trace::TraceContext;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("cannot write the outbox at {path}: {source}; check that DATA_DIR is writable")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the pending event at {path} is unreadable ({source}); it was moved to {moved_to} for a person to inspect")]
    Corrupt { path: PathBuf, source: serde_json::Error, moved_to: PathBuf },
    #[error("the pending event at {path} is unreadable ({source}); the producer moves it aside when it starts")]
    Unreadable { path: PathBuf, source: serde_json::Error },
    #[error(transparent)]
    Locked(#[from] DataDirError),
}

/// `pending.json`: the event, and its trace context.
#[derive(serde::Serialize, serde::Deserialize)]
struct OnDisk {
    #[serde(flatten)]
    event: ImageEvent,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tracestate: Option<String>,
}

impl OnDisk {
    fn of(event: &ImageEvent) -> OnDisk {
        let trace = &event.trace;
        OnDisk { event: event.clone(), traceparent: Some(trace.traceparent()), tracestate: trace.state.clone() }
    }

    /// The event in the trace written beside it; without one (an older file, or a header that
    /// does not parse) it keeps the new trace it was read with.
    fn into_event(self) -> ImageEvent {
        let written = self.traceparent.and_then(|t| TraceContext::parse(&t, self.tracestate.as_deref()).ok());
        ImageEvent { trace: written.unwrap_or(self.event.trace), ..self.event }
    }
}

#[derive(Clone, Debug)]
pub struct Outbox {
    dir: PathBuf,
    /// Held as long as any clone lives: the outbox is this process's alone.
    _lock: Arc<DataDirLock>,
}

impl Outbox {
    /// Opens the outbox of `owner` in `data_dir`, taking its lock; fails at once if another process has it.
    pub fn open(data_dir: &Path, owner: Owner) -> Result<Outbox, OutboxError> {
        let lock = DataDirLock::acquire_for(data_dir, owner)?;
        Ok(Outbox { dir: owner.dir(data_dir), _lock: Arc::new(lock) })
    }

    fn pending_path(&self) -> PathBuf {
        self.dir.join("pending.json")
    }

    /// The pending event, if any, for the producer that owns the outbox: an unreadable file is
    /// moved aside (never deleted) and reported.
    pub fn pending(&self) -> Result<Option<ImageEvent>, OutboxError> {
        match self.peek() {
            Err(OutboxError::Unreadable { path, source }) => {
                let moved_to = self.dir.join(format!("corrupt-{}.json", chrono::Utc::now().format("%Y%m%dT%H%M%S%.3f")));
                fs::rename(&path, &moved_to).map_err(|source| OutboxError::Io { path: path.clone(), source })?;
                Err(OutboxError::Corrupt { path, source, moved_to })
            }
            other => other,
        }
    }

    /// The pending event, if any, for a reader such as `/status`: never moves or changes anything.
    pub fn peek(&self) -> Result<Option<ImageEvent>, OutboxError> {
        let path = self.pending_path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<OnDisk>(&bytes)
                .map(|on_disk| Some(on_disk.into_event()))
                .map_err(|source| OutboxError::Unreadable { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(OutboxError::Io { path, source }),
        }
    }

    /// Stores `event` as the pending one, durably: write a temp file, fsync, rename, fsync the dir.
    pub fn put(&self, event: &ImageEvent) -> Result<(), OutboxError> {
        let tmp = self.dir.join("pending.json.tmp");
        let io = |source| OutboxError::Io { path: tmp.clone(), source };
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(&serde_json::to_vec(&OnDisk::of(event)).expect("events always serialize")).map_err(io)?;
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
        Outbox::open(dir.path(), Owner::Daemon).unwrap().put(&e).unwrap();
        let reopened = Outbox::open(dir.path(), Owner::Daemon).unwrap();
        assert_eq!(reopened.pending().unwrap(), Some(e));
        reopened.clear().unwrap();
        assert_eq!(reopened.pending().unwrap(), None);
    }

    #[test]
    fn the_pending_event_keeps_its_trace_and_an_older_file_without_one_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), Owner::Daemon).unwrap();
        let mut e = event();
        e.trace.state = Some("rojo=00f067aa0ba902b7".into());
        outbox.put(&e).unwrap();
        let text = fs::read_to_string(dir.path().join("outbox/pending.json")).unwrap();
        assert!(text.contains(&format!("\"traceparent\":\"{}\"", e.trace.traceparent())), "{text}");
        assert_eq!(outbox.pending().unwrap().unwrap().trace, e.trace);
        // As the version before traces wrote it: the event's JSON alone.
        fs::write(dir.path().join("outbox/pending.json"), serde_json::to_vec(&e).unwrap()).unwrap();
        let older = outbox.pending().unwrap().unwrap();
        assert_eq!((older.event_id, &older.nasa_id), (e.event_id, &e.nasa_id));
        assert_ne!(older.trace.trace_id, e.trace.trace_id, "sent in a new trace");
    }

    #[test]
    fn corrupt_file_is_moved_aside_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), Owner::Daemon).unwrap();
        fs::write(dir.path().join("outbox/pending.json"), b"{half").unwrap();
        // A reader sees it is unreadable and leaves it where it is.
        assert!(matches!(outbox.peek(), Err(OutboxError::Unreadable { .. })));
        assert_eq!(fs::read(dir.path().join("outbox/pending.json")).unwrap(), b"{half");
        let err = outbox.pending().unwrap_err();
        let OutboxError::Corrupt { moved_to, .. } = err else { panic!("{err}") };
        assert_eq!(fs::read(moved_to).unwrap(), b"{half");
        assert_eq!(outbox.pending().unwrap(), None);
    }

    #[test]
    fn a_second_process_cannot_open_the_same_outbox_while_backfill_has_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let daemon = Outbox::open(dir.path(), Owner::Daemon).unwrap();
        assert!(matches!(Outbox::open(dir.path(), Owner::Daemon), Err(OutboxError::Locked(DataDirError::Held { .. }))));
        let backfill = Outbox::open(dir.path(), Owner::Backfill).unwrap();
        daemon.put(&event()).unwrap();
        assert_eq!(backfill.peek().unwrap(), None, "the slots do not share a pending event");
        // Clones share the lock: it is released only when the last one goes.
        let clone = daemon.clone();
        drop(daemon);
        assert!(Outbox::open(dir.path(), Owner::Daemon).is_err());
        drop(clone);
        assert!(Outbox::open(dir.path(), Owner::Daemon).is_ok());
    }
}
