//! The per-file digest of ledger rows, stored on the file row when it is
//! credited (`files.ledger_digest`) and recomputed by `verify`.
//!
//! What must stay true: the digest of a set of rows does not depend on the
//! order they are added in (the credit inserts each batch in key order,
//! `verify` scans the whole ledger in key order), and every column of a
//! ledger row goes into it, so changing any one of them (or adding or
//! removing a row) changes the digest. It is the sum, modulo 2^128, of the
//! first 128 bits of SHA-256 over each row's canonical encoding (a multiset
//! hash): it catches edits made outside milebatch, not a forger who can also
//! recompute and rewrite the digest.

use sha2::{Digest as _, Sha256};

/// One ledger row, as hashed.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    pub partner: &'a str,
    pub partner_key: &'a str,
    pub file_id: i64,
    pub member: i64,
    pub miles: i64,
    pub dup: i64,
    pub line: i64,
    pub credited_at: i64,
}

/// A running digest over a multiset of ledger rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LedgerDigest(u128);

impl LedgerDigest {
    pub fn add(&mut self, row: &Row<'_>) {
        let mut h = Sha256::new();
        // Lengths first, so that no two different rows encode alike.
        h.update((row.partner.len() as u64).to_le_bytes());
        h.update(row.partner.as_bytes());
        h.update((row.partner_key.len() as u64).to_le_bytes());
        h.update(row.partner_key.as_bytes());
        for n in [
            row.file_id,
            row.member,
            row.miles,
            row.dup,
            row.line,
            row.credited_at,
        ] {
            h.update(n.to_le_bytes());
        }
        let out = h.finalize();
        let mut first = [0u8; 16];
        first.copy_from_slice(&out[..16]);
        self.0 = self.0.wrapping_add(u128::from_le_bytes(first));
    }

    /// Take back a row [`Self::add`]ed before (a row judged only after it
    /// was counted: PostgreSQL's set-based credit).
    pub fn remove(&mut self, row: &Row<'_>) {
        let mut one = LedgerDigest::default();
        one.add(row);
        self.0 = self.0.wrapping_sub(one.0);
    }

    /// 32 lowercase hex digits, as stored.
    pub fn to_hex(self) -> String {
        format!("{:032x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(line: i64, miles: i64) -> Row<'static> {
        Row {
            partner: "shop",
            partner_key: "K1",
            file_id: 3,
            member: 7,
            miles,
            dup: 0,
            line,
            credited_at: 1_700_000_000,
        }
    }

    #[test]
    fn order_does_not_matter_and_every_column_counts() {
        let (a, b) = (row(2, 100), row(3, 50));
        let mut x = LedgerDigest::default();
        x.add(&a);
        x.add(&b);
        let mut y = LedgerDigest::default();
        y.add(&b);
        y.add(&a);
        assert_eq!(x, y);
        assert_eq!(x.to_hex().len(), 32);
        let changed = [
            Row {
                partner: "shoq",
                ..a
            },
            Row {
                partner_key: "K2",
                ..a
            },
            Row { file_id: 4, ..a },
            Row { member: 8, ..a },
            Row { miles: 101, ..a },
            Row { dup: 2, ..a },
            Row { line: 9, ..a },
            Row {
                credited_at: 1,
                ..a
            },
        ];
        for c in changed {
            let mut z = LedgerDigest::default();
            z.add(&c);
            z.add(&b);
            assert_ne!(z, x, "{c:?}");
        }
        // A row removed, or one added twice.
        let mut only_b = LedgerDigest::default();
        only_b.add(&b);
        assert_ne!(only_b, x);
        let mut twice = x;
        twice.add(&a);
        assert_ne!(twice, x);
    }

    #[test]
    fn the_encoding_is_stable() {
        // Stored digests must keep verifying after an upgrade.
        let mut d = LedgerDigest::default();
        d.add(&row(2, 100));
        assert_eq!(d.to_hex(), PINNED);
    }

    // Computed independently: Python's hashlib over the same encoding.
    const PINNED: &str = "885ab10bee2ea6c32f6f2c0184308f3f";
}
