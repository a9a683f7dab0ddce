//! The table of dead-letter reasons in docs/dead-letters.md, made from their one list
//! ([`Reason::ALL`], src/dlq/reason.rs): `cargo run --example config-docs -- --write` rewrites it,
//! and `tests/deploy.rs` fails when it differs from what this makes.

use super::reason::Reason;
use crate::generated::Markers;

/// The page that holds the table, from the repository's root.
pub const PAGE: &str = "docs/dead-letters.md";

/// The lines between which [`PAGE`] holds the generated table.
pub const MARKERS: Markers = Markers {
    begin: "<!-- dead-letter-reasons: generated from src/dlq/reason.rs by `cargo run --example config-docs -- --write`; edit there -->",
    end: "<!-- /dead-letter-reasons -->",
};

/// The table, markers included: a row per reason, in the list's order.
pub fn reasons_table() -> String {
    let rows: String = Reason::ALL.iter().map(|r| format!("| `{}` | {} | {} |\n", r.as_str(), r.what_happened(), r.what_to_do())).collect();
    MARKERS.around(&format!("| reason | what happened | what to do |\n|---|---|---|\n{rows}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_a_row_and_splicing_replaces_only_the_table() {
        let table = reasons_table();
        for r in Reason::ALL {
            assert!(table.contains(&format!("| `{}` |", r.as_str())), "{r:?}");
        }
        let page = format!("# Dead letters\n\nintro\n{}\nold\n{}\nafter\n", MARKERS.begin, MARKERS.end);
        let spliced = MARKERS.splice(&page, &table).unwrap();
        assert_eq!(spliced, format!("# Dead letters\n\nintro\n{table}after\n"));
        assert_eq!(MARKERS.part(&spliced), Some(table.as_str()));
    }
}
