//! The paging cursor of `GET /api/v1/exchanges`: where a page ended (the
//! ledger key after partner and partner key), sealed so that a client can
//! neither read it nor make or alter one.
//!
//! What must stay true: a cursor opens only with the key it was sealed
//! with and only for the partner and partner key it was given for; anything
//! else (edited, truncated, hand-made, another partner's) is `None`, which
//! the API answers 400. The key lives in the database (migration 15) and is
//! read once at start: paging costs no extra query.
//!
//! The seal is deterministic authenticated encryption in the SIV manner,
//! from HMAC-SHA-256 alone: `tag = HMAC(key, "mac" ‖ scope ‖ position)`,
//! truncated to 16 bytes; `body = position ⊕ HMAC(key, "enc" ‖ tag)`. The
//! cursor is base64url of `body ‖ tag`.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The ledger key a page ended on: file id, member, miles, dup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position(pub i64, pub i64, pub i64, pub i64);

impl Position {
    /// Before every row.
    pub const START: Position = Position(-1, -1, -1, -1);

    fn to_bytes(self) -> [u8; 32] {
        let mut b = [0u8; 32];
        for (i, v) in [self.0, self.1, self.2, self.3].into_iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_be_bytes());
        }
        b
    }

    fn from_bytes(b: &[u8; 32]) -> Position {
        let v = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i * 8..i * 8 + 8]);
            i64::from_be_bytes(x)
        };
        Position(v(0), v(1), v(2), v(3))
    }
}

const TAG: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    #[error("reading the API cursor key (table api_cursor_key): {0}")]
    Load(#[from] rusqlite::Error),
    #[error(
        "the API cursor key in the database is not 32 bytes: restore the database from a backup"
    )]
    BadKey,
}

/// The sealing key, as read from the database.
pub struct CursorKey([u8; 32]);

impl CursorKey {
    /// The key of the database `conn` (migrated).
    pub fn load(conn: &rusqlite::Connection) -> Result<CursorKey, CursorError> {
        let key: Vec<u8> =
            conn.query_row("SELECT key FROM api_cursor_key WHERE id = 1", [], |r| {
                r.get(0)
            })?;
        Ok(CursorKey(key.try_into().map_err(|_| CursorError::BadKey)?))
    }

    fn mac(&self) -> HmacSha256 {
        // Any key length is accepted by HMAC.
        HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key")
    }

    fn tag(&self, partner: &str, partner_key: &str, plain: &[u8; 32]) -> HmacSha256 {
        let mut m = self.mac();
        m.update(b"mac\0");
        // Lengths first: ("ab", "c") and ("a", "bc") are different scopes.
        m.update(&(partner.len() as u64).to_be_bytes());
        m.update(partner.as_bytes());
        m.update(&(partner_key.len() as u64).to_be_bytes());
        m.update(partner_key.as_bytes());
        m.update(plain);
        m
    }

    fn stream(&self, tag: &[u8]) -> [u8; 32] {
        let mut m = self.mac();
        m.update(b"enc\0");
        m.update(tag);
        m.finalize().into_bytes().into()
    }

    /// The cursor for the page after `pos` of `partner`'s `partner_key`.
    pub fn seal(&self, partner: &str, partner_key: &str, pos: Position) -> String {
        let plain = pos.to_bytes();
        let tag = self
            .tag(partner, partner_key, &plain)
            .finalize()
            .into_bytes();
        let tag = &tag[..TAG];
        let stream = self.stream(tag);
        let mut out = Vec::with_capacity(32 + TAG);
        out.extend(plain.iter().zip(stream).map(|(p, s)| p ^ s));
        out.extend_from_slice(tag);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out)
    }

    /// The position in `cursor`, if this key sealed it for this scope.
    pub fn open(&self, partner: &str, partner_key: &str, cursor: &str) -> Option<Position> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(cursor)
            .ok()?;
        if raw.len() != 32 + TAG {
            return None;
        }
        let (body, tag) = raw.split_at(32);
        let stream = self.stream(tag);
        let mut plain = [0u8; 32];
        for (i, (b, s)) in body.iter().zip(stream).enumerate() {
            plain[i] = b ^ s;
        }
        // Constant-time comparison of the (truncated) tag.
        self.tag(partner, partner_key, &plain)
            .verify_truncated_left(tag)
            .ok()?;
        Some(Position::from_bytes(&plain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_opens_only_unaltered_in_its_scope() {
        let (_d, c) = crate::db::temp_db();
        let k = CursorKey::load(&c).unwrap();
        let pos = Position(0, 12345, 120, 7);
        let s = k.seal("shop", "K-1", pos);
        assert_eq!(k.open("shop", "K-1", &s), Some(pos));
        // Opaque: not base64 of JSON, and the member id is not in it.
        assert!(!s.contains("12345"));
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&s)
            .unwrap();
        assert!(!raw.windows(8).any(|w| w == 12345i64.to_be_bytes()));
        // Another scope, any flipped bit, a truncated or extended cursor.
        assert_eq!(k.open("other", "K-1", &s), None);
        assert_eq!(k.open("shop", "K-2", &s), None);
        assert_eq!(k.open("sho", "pK-1", &s), None);
        for i in 0..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 1;
            let bad = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bad);
            assert_eq!(k.open("shop", "K-1", &bad), None, "byte {i}");
        }
        assert_eq!(k.open("shop", "K-1", &s[..s.len() - 2]), None);
        assert_eq!(k.open("shop", "K-1", &format!("{s}AA")), None);
        assert_eq!(k.open("shop", "K-1", "not base64!"), None);
        // The old hand-makeable form is refused.
        assert_eq!(k.open("shop", "K-1", "Wy0xLC0xLC0xLC0xXQ"), None);
        // Another database's key opens nothing of this one.
        let (_d2, c2) = crate::db::temp_db();
        assert_eq!(CursorKey::load(&c2).unwrap().open("shop", "K-1", &s), None);
    }
}
