//! [`EventId`]: a persisted event ID, in place when short.

use std::{
    borrow::Borrow,
    cmp::Ordering,
    fmt,
    hash::{Hash, Hasher},
    ops::Deref,
    sync::Arc,
};

/// Bytes held in place: 38 make the type 40 bytes, and cover UUIDs with their dashes.
const INLINE: usize = 38;

/// An event ID as the persistence worker hands it to a store, and a store returns it.
///
/// IDs of up to 38 bytes (counters, timestamps, ULIDs, UUIDs) are held in place, longer ones in
/// a shared `Arc<str>`. At low rates every event is its own store write: in place, building an
/// update allocates nothing and dropping it frees nothing, and a clone never allocates.
///
/// Equality, ordering and hashing are those of the text, however it is held. It dereferences
/// to `str` as `Arc<str>` does (`Option<EventId>::as_deref` gives an `Option<&str>`); for an ID
/// held in place that checks its UTF-8 (38 bytes at most), which
/// [`as_bytes`](Self::as_bytes) does not need.
///
/// ```
/// use tower_sse_tracking::store::EventId;
///
/// let id = EventId::new("42-1764620000000000");
/// assert_eq!(id.as_str(), "42-1764620000000000");
/// assert_eq!(id.as_bytes(), b"42-1764620000000000");
/// assert_eq!(id, EventId::from(String::from("42-1764620000000000")));
/// assert_eq!(EventId::new(&"x".repeat(100)).len(), 100);
/// ```
#[derive(Clone)]
pub struct EventId(Repr);

#[derive(Clone)]
enum Repr {
    /// Always valid UTF-8: built from a `&str` only.
    Inline {
        len: u8,
        bytes: [u8; INLINE],
    },
    Shared(Arc<str>),
}

impl EventId {
    /// The ID `id`: in place if it fits, else in a new `Arc<str>`.
    pub fn new(id: &str) -> Self {
        match inline(id.as_bytes()) {
            Some(repr) => Self(repr),
            None => Self(Repr::Shared(Arc::from(id))),
        }
    }

    /// The ID's bytes, without a check: what a store that keeps bytes writes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Repr::Shared(id) => id.as_bytes(),
        }
    }

    /// The ID as text. An ID held in place is checked as UTF-8 on each call (it always is: an
    /// `EventId` is only built from text), in O(length); [`as_bytes`](Self::as_bytes) is free.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline { len, bytes } => std::str::from_utf8(&bytes[..usize::from(*len)])
                .expect("an EventId held in place is built from a &str"),
            Repr::Shared(id) => id,
        }
    }

    /// The ID's length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether the ID is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.as_bytes().is_empty()
    }
}

impl EventId {
    /// The ID whose bytes are `a` then `b` (an ID kept in two parts of a ring), invalid UTF-8
    /// replaced as by [`String::from_utf8_lossy`]. Up to 38 bytes, no allocation.
    pub(crate) fn from_utf8_lossy_parts(a: &[u8], b: &[u8]) -> Self {
        let n = a.len() + b.len();
        if n <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..a.len()].copy_from_slice(a);
            bytes[a.len()..n].copy_from_slice(b);
            if std::str::from_utf8(&bytes[..n]).is_ok() {
                return Self(Repr::Inline {
                    len: n as u8,
                    bytes,
                });
            }
        }
        Self::new(&String::from_utf8_lossy(&[a, b].concat()))
    }

    /// The first `len` bytes of an [`IdBuf`](crate::id_buf::IdBuf)'s inline array, which the
    /// caller found to be ASCII: the whole array is copied at once (a fixed size, so no call to
    /// `memcpy`), without a UTF-8 check.
    #[inline]
    pub(crate) fn from_ascii_block(len: u8, block: &[u8; crate::id_buf::INLINE]) -> Self {
        const { assert!(crate::id_buf::INLINE <= INLINE) };
        debug_assert!(block[..usize::from(len)].is_ascii());
        let mut bytes = [0; INLINE];
        bytes[..crate::id_buf::INLINE].copy_from_slice(block);
        Self(Repr::Inline { len, bytes })
    }
}

/// `bytes` in place, if they fit. Callers pass the bytes of a `&str`.
#[inline]
fn inline(bytes: &[u8]) -> Option<Repr> {
    let n = bytes.len();
    if n > INLINE {
        return None;
    }
    let mut held = [0; INLINE];
    held[..n].copy_from_slice(bytes);
    Some(Repr::Inline {
        len: n as u8,
        bytes: held,
    })
}

impl From<&str> for EventId {
    fn from(id: &str) -> Self {
        Self::new(id)
    }
}

impl From<String> for EventId {
    fn from(id: String) -> Self {
        Self::new(&id)
    }
}

impl From<Arc<str>> for EventId {
    /// A short ID is copied in place; a long one keeps the `Arc`.
    fn from(id: Arc<str>) -> Self {
        match inline(id.as_bytes()) {
            Some(repr) => Self(repr),
            None => Self(Repr::Shared(id)),
        }
    }
}

impl AsRef<str> for EventId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Deref for EventId {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

/// Equality, order and hash agree with the text's, so maps keyed by `EventId` can be read with
/// a `&str`.
impl Borrow<str> for EventId {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for EventId {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for EventId {}

impl PartialEq<str> for EventId {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for EventId {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialOrd for EventId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for EventId {
    /// The order of the text (UTF-8 bytes sort as their characters do).
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl Hash for EventId {
    /// Hashes as its text does (see the `Borrow<str>` implementation).
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::hash_map::DefaultHasher;

    use super::*;

    fn hash_of<T: Hash + ?Sized>(value: &T) -> u64 {
        let mut h = DefaultHasher::new();
        value.hash(&mut h);
        h.finish()
    }

    #[test]
    fn ids_up_to_the_inline_size_are_held_in_place_and_longer_ones_shared() {
        for n in [0, 1, 8, 22, INLINE - 1, INLINE, INLINE + 1, 100] {
            let text: String = ('a'..='z').cycle().take(n).collect();
            let id = EventId::new(&text);
            assert_eq!(
                matches!(id.0, Repr::Inline { .. }),
                n <= INLINE,
                "{n} bytes"
            );
            assert_eq!(id.as_str(), text);
            assert_eq!(id.as_bytes(), text.as_bytes());
            assert_eq!(id.len(), n);
            assert_eq!(id.is_empty(), n == 0);
            assert_eq!(id.to_string(), text);
            assert_eq!(format!("{id:?}"), format!("{text:?}"));
        }
        assert_eq!(std::mem::size_of::<EventId>(), 40);
    }

    #[test]
    fn multibyte_text_survives_in_place_and_shared() {
        for text in ["é", "ids-ü-ß-日本", &"日本語".repeat(10)] {
            let id = EventId::new(text);
            assert_eq!(id.as_str(), text);
            assert_eq!(EventId::from(Arc::<str>::from(text)).as_str(), text);
        }
    }

    #[test]
    fn equality_order_and_hash_follow_the_text_however_it_is_held() {
        // A short ID behind an Arc is copied in place; build a shared one by hand to compare
        // the two forms of one text.
        let shared = EventId(Repr::Shared(Arc::from("7")));
        let inline = EventId::new("7");
        assert_eq!(shared, inline);
        assert_eq!(hash_of(&shared), hash_of(&inline));
        assert_eq!(hash_of(&inline), hash_of("7"));
        assert_eq!(inline, "7");
        assert_eq!(shared.cmp(&inline), Ordering::Equal);
        assert!(
            EventId::new("10") < EventId::new("9"),
            "text order, not numeric"
        );
        assert!(EventId::new("a") < EventId::new(&"b".repeat(50)));
        assert_ne!(EventId::new("a"), EventId::new("a "));
        let map: std::collections::HashMap<EventId, u32> =
            [(EventId::new("7"), 7), (EventId::new(&"8".repeat(50)), 8)].into();
        assert_eq!(map.get("7"), Some(&7));
        assert_eq!(map.get("8".repeat(50).as_str()), Some(&8));
    }

    #[test]
    fn conversions_keep_a_long_arc_and_copy_a_short_one() {
        let long: Arc<str> = Arc::from("x".repeat(INLINE + 1));
        let id = EventId::from(long.clone());
        match &id.0 {
            Repr::Shared(held) => assert!(Arc::ptr_eq(held, &long)),
            Repr::Inline { .. } => panic!("a long ID is shared"),
        }
        assert!(matches!(
            EventId::from(Arc::<str>::from("short")).0,
            Repr::Inline { .. }
        ));
        assert_eq!(EventId::from(String::from("s")), EventId::from("s"));
        let id = Some(EventId::new("7"));
        assert_eq!(id.as_deref(), Some("7"));
    }

    #[test]
    fn an_id_in_two_parts_is_joined_and_read_as_lossy_text() {
        let cases: [(&[u8], &[u8]); 6] = [
            (b"", b""),
            (b"12", b"34"),
            ("caf".as_bytes(), "\u{e9}".as_bytes()),
            // A character cut in two by the ring's end.
            (&"\u{e9}".as_bytes()[..1], &"\u{e9}".as_bytes()[1..]),
            (b"bad \xff", b" byte"),
            (&[b'x'; 30], &[b'y'; 30]),
        ];
        for (a, b) in cases {
            let joined = [a, b].concat();
            let id = EventId::from_utf8_lossy_parts(a, b);
            assert_eq!(id.as_str(), String::from_utf8_lossy(&joined), "{a:?} {b:?}");
            assert_eq!(
                matches!(id.0, Repr::Inline { .. }),
                id.len() <= INLINE,
                "{a:?} {b:?}"
            );
        }
    }
}
