//! Dead letters: the events the consumer gives up on, on the topic `KAFKA_TOPIC.dlq`. This module
//! is their one home:
//!
//! - [`reason`]: why an event is dead-lettered: [`reason::Permanent`], the failure, and
//!   [`reason::Reason`], the one list of reasons, each with what it means and what to do.
//! - [`record`]: the dead letter itself and its headers, written by the consumer's pipeline
//!   ([`record::dead_letter_of`]) and read by everything below ([`DeadLetter`]).
//! - `read`: reading ranges of the dead-letter and events topics.
//! - `list`: `nasa-ingest dlq list`, every dead letter (time, nasa_id, reason, error, where it came
//!   from, whether it was replayed), then the count of each reason.
//! - `replay`: `nasa-ingest dlq replay` ([`replay()`], also called from Rust), which sends dead
//!   letters back to the events topic, at most `--max-replays` times each.
//! - `watch`: [`DlqWatch`], the daemon's view for the status page, read from the topic itself.
//! - `command`: [`run`], the `dlq` command's glue.
//! - [`docs`]: the table of reasons in docs/dead-letters.md.
//!
//! Whether a dead letter was replayed is read from the events topic itself (a message there whose
//! `replayed_from` names it), not from a file or the group alone: that holds across filters,
//! across runs, and after a crash between an acknowledgement and the commit that follows it.
//!
//! Code outside imports the reasons and the record from their files (`dlq::reason::Permanent`,
//! `dlq::record::...`): the failure is raised by modules this one reads from (`event`), and a
//! path through this file would make a cycle of them.

mod command;
pub mod docs;
mod error;
mod list;
mod read;
pub mod reason;
pub mod record;
mod replay;
mod watch;

pub use command::run;
pub use error::DlqError;
pub use list::{list, ListSettings, Listing};
pub use record::DeadLetter;
pub use replay::{default_replay_group, replay, ReplaySettings, ReplaySummary};
pub use watch::{Brief, DlqPanel, DlqWatch, PANEL_LAST};
