//! Keyset pagination: lists are ordered newest first by `(created_at, id)`,
//! and the cursor is the last item's key, opaque to clients.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// The largest page a client may ask for.
pub const MAX_LIMIT: i64 = 500;
pub const DEFAULT_LIMIT: i64 = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid cursor")]
pub struct BadCursor;

impl Cursor {
    pub fn encode(&self) -> String {
        let raw = format!("{}:{}", self.created_at.timestamp_micros(), self.id);
        URL_SAFE_NO_PAD.encode(raw)
    }

    pub fn decode(s: &str) -> Result<Cursor, BadCursor> {
        let raw = URL_SAFE_NO_PAD.decode(s).map_err(|_| BadCursor)?;
        let raw = std::str::from_utf8(&raw).map_err(|_| BadCursor)?;
        let (micros, id) = raw.split_once(':').ok_or(BadCursor)?;
        let micros: i64 = micros.parse().map_err(|_| BadCursor)?;
        // Cursors come from rows created by tend: anything outside these
        // years is forged, and PostgreSQL would refuse some of it.
        if !(0..=253_402_300_799_000_000).contains(&micros) {
            return Err(BadCursor);
        }
        Ok(Cursor {
            created_at: DateTime::from_timestamp_micros(micros).ok_or(BadCursor)?,
            id: id.parse().map_err(|_| BadCursor)?,
        })
    }
}

/// One page of a list, and the cursor of the next page if there is one.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from `limit + 1` fetched rows: the extra row only tells
    /// that another page exists.
    pub fn from_rows(mut rows: Vec<T>, limit: i64, key: impl Fn(&T) -> Cursor) -> Page<T> {
        let more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let next_cursor = if more {
            rows.last().map(|r| key(r).encode())
        } else {
            None
        };
        Page {
            items: rows,
            next_cursor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let c = Cursor {
            created_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            id: Uuid::new_v4(),
        };
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        assert!(Cursor::decode("not a cursor").is_err());
        assert!(Cursor::decode(&URL_SAFE_NO_PAD.encode("12:nope")).is_err());
        let ancient = format!("-210000000000000000:{}", Uuid::nil());
        assert!(Cursor::decode(&URL_SAFE_NO_PAD.encode(ancient)).is_err());
    }

    #[test]
    fn a_full_page_points_to_the_next_one() {
        let key = |n: &i64| Cursor {
            created_at: DateTime::from_timestamp_micros(*n).unwrap(),
            id: Uuid::nil(),
        };
        let p = Page::from_rows(vec![5, 4, 3], 2, key);
        assert_eq!(p.items, vec![5, 4]);
        assert_eq!(Cursor::decode(&p.next_cursor.unwrap()).unwrap(), key(&4));
        assert!(Page::from_rows(vec![5, 4], 2, key).next_cursor.is_none());
    }
}
