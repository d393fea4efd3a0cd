//! Shaping a commit into statements, the same for both backends: drop state
//! rows that a later row for the same address overrides, and cut each table's
//! rows into chunks that keep one statement under the server's limits.
//!
//! Every chunk holds a power of two of rows. Both backends keep prepared
//! statements in a cache keyed by the SQL text, and a multi-row upsert's text
//! depends on its row count: with arbitrary counts the cache would fill with
//! up to its capacity of near-512-row statements (MySQL keeps the metadata of
//! every placeholder, about 1.3 MB for 32 of them), where powers of two bound
//! the shapes to ten per table.

use super::{PresenceRow, StateRow};
use std::collections::HashSet;

/// Rows in one multi-row upsert. Far below both placeholder limits (MySQL
/// 65,535 per statement; SQLite 32,766 by default) at 5 columns, and large
/// enough that a 512-row batch is one statement per table.
pub const STATEMENT_ROWS_MAX: usize = 512;
const _: () = assert!(STATEMENT_ROWS_MAX.is_power_of_two());

/// Longest peer address kept, in characters (`VARCHAR(255)` in MySQL). A
/// socket address is at most 47 (`[v6%scope]:port`); anything longer is cut.
pub const PEER_CHARS_MAX: usize = 255;

/// Bytes a row adds to a statement besides its blob or peer: the address,
/// the integers and the protocol's per-value framing, rounded up.
const ROW_OVERHEAD_BYTES: usize = 64;

/// The state rows to write: for each address only its last row in `states`,
/// in the order those last rows appear. Writing the earlier ones would be
/// undone within the same transaction, and they can be megabytes each.
pub(crate) fn last_state_per_address(states: &[StateRow]) -> Vec<&StateRow> {
    let mut seen = HashSet::with_capacity(states.len());
    let mut kept: Vec<&StateRow> = states
        .iter()
        .rev()
        .filter(|row| seen.insert(row.addr))
        .collect();
    kept.reverse();
    kept
}

/// Statement size of a state row, for [`chunks`].
pub(crate) fn state_row_bytes(row: &&StateRow) -> usize {
    ROW_OVERHEAD_BYTES + row.blob.len()
}

/// Statement size of a presence row, for [`chunks`].
pub(crate) fn presence_row_bytes(row: &PresenceRow) -> usize {
    ROW_OVERHEAD_BYTES + row.peer.as_ref().map_or(0, String::len)
}

/// The row counts that `n` rows are cut into: the powers of two of `n`'s
/// binary form, largest first (300 -> 256, 32, 8, 4). No count exceeds
/// `rows_max` when `n` does not.
pub(crate) fn power_of_two_counts(mut n: usize) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        (n > 0).then(|| {
            let count = 1 << (usize::BITS - 1 - n.leading_zeros());
            n -= count;
            count
        })
    })
}

/// `rows` cut, in order, into consecutive chunks of at most `rows_max` rows
/// whose `row_bytes` add up to at most `bytes_max`, each chunk's row count a
/// power of two (see the module note). A single row larger than `bytes_max`
/// still gets a chunk of its own (the server then decides).
pub(crate) fn chunks<'a, T>(
    rows: &'a [T],
    rows_max: usize,
    bytes_max: usize,
    row_bytes: fn(&T) -> usize,
) -> Vec<&'a [T]> {
    assert!(rows_max > 0, "a chunk must hold at least one row");
    let mut out = Vec::with_capacity(rows.len() / rows_max + 1);
    let mut push = |chunk: &'a [T]| {
        let mut rest = chunk;
        for count in power_of_two_counts(chunk.len()) {
            let (piece, tail) = rest.split_at(count);
            out.push(piece);
            rest = tail;
        }
    };
    let mut start = 0;
    let mut bytes = 0usize;
    for (i, row) in rows.iter().enumerate() {
        let size = row_bytes(row);
        let count = i - start;
        if count > 0 && (count == rows_max || bytes.saturating_add(size) > bytes_max) {
            push(&rows[start..i]);
            start = i;
            bytes = 0;
        }
        bytes = bytes.saturating_add(size);
    }
    if start < rows.len() {
        push(&rows[start..]);
    }
    out
}

/// `peer` cut to [`PEER_CHARS_MAX`] characters.
pub(crate) fn bounded_peer(peer: Option<&str>) -> Option<&str> {
    peer.map(|p| match p.char_indices().nth(PEER_CHARS_MAX) {
        Some((cut, _)) => &p[..cut],
        None => p,
    })
}

/// `n` groups of `columns` placeholders: `(?,?,?),(?,?,?)`.
pub(crate) fn placeholders(n: usize, columns: usize) -> String {
    let group = format!("({})", vec!["?"; columns].join(","));
    vec![group; n].join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn state(addr: Uuid, blob: &[u8]) -> StateRow {
        StateRow {
            addr,
            blob: blob.into(),
            updated_at_us: 1,
        }
    }

    #[test]
    fn last_row_per_address_wins_in_order() {
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let rows = [
            state(a, b"a1"),
            state(b, b"b1"),
            state(a, b"a2"),
            state(c, b"c1"),
            state(b, b"b2"),
        ];
        let kept: Vec<&[u8]> = last_state_per_address(&rows)
            .iter()
            .map(|r| &r.blob[..])
            .collect();
        assert_eq!(kept, [&b"a2"[..], b"c1", b"b2"]);
        assert!(last_state_per_address(&[]).is_empty());
    }

    fn sizes(chunks: &[&[usize]]) -> Vec<usize> {
        chunks.iter().map(|c| c.len()).collect()
    }

    #[test]
    fn chunks_by_rows() {
        let rows = vec![1usize; 1_100];
        let c = chunks(&rows, 512, usize::MAX, |r| *r);
        assert_eq!(sizes(&c), [512, 512, 64, 8, 4]);
        assert_eq!(c.concat(), rows);
        assert!(chunks(&rows[..0], 512, usize::MAX, |r| *r).is_empty());
    }

    #[test]
    fn chunks_by_bytes_keep_order_and_oversized_rows_alone() {
        let rows = [10usize, 10, 10, 100, 10, 5, 5];
        let c = chunks(&rows, 512, 25, |r| *r);
        assert_eq!(c, [&[10, 10][..], &[10], &[100], &[10, 5], &[5]]);
        let flat: Vec<usize> = c.concat();
        assert_eq!(flat, rows);
    }

    #[test]
    fn counts_are_the_binary_form_largest_first() {
        assert_eq!(power_of_two_counts(0).count(), 0);
        assert_eq!(power_of_two_counts(1).collect::<Vec<_>>(), [1]);
        assert_eq!(
            power_of_two_counts(300).collect::<Vec<_>>(),
            [256, 32, 8, 4]
        );
        assert_eq!(power_of_two_counts(511).sum::<usize>(), 511);
        assert_eq!(power_of_two_counts(512).collect::<Vec<_>>(), [512]);
        // Every chunk length of any batch is one of the 10 shapes.
        for n in 0..2_000 {
            let rows = vec![1usize; n];
            for c in chunks(&rows, STATEMENT_ROWS_MAX, usize::MAX, |r| *r) {
                assert!(c.len().is_power_of_two() && c.len() <= STATEMENT_ROWS_MAX);
            }
        }
    }

    #[test]
    fn peers_are_cut_on_a_character_boundary() {
        assert_eq!(bounded_peer(None), None);
        assert_eq!(bounded_peer(Some("127.0.0.1:7")), Some("127.0.0.1:7"));
        let long = "é".repeat(PEER_CHARS_MAX + 3);
        let cut = bounded_peer(Some(&long)).unwrap();
        assert_eq!(cut.chars().count(), PEER_CHARS_MAX);
    }

    #[test]
    fn placeholder_groups() {
        assert_eq!(placeholders(1, 3), "(?,?,?)");
        assert_eq!(placeholders(2, 2), "(?,?),(?,?)");
    }
}
