//! [`IdBuf`]: the bytes of an event ID, in place when short.

use crate::store::{EventId, LastEventId};

/// Bytes kept in place; longer IDs go to the heap.
pub(crate) const INLINE: usize = 30;

/// The bytes of an event ID: up to 30 in place (most IDs: counters, UUIDs without dashes,
/// timestamps), longer ones in a heap buffer that is then kept for reuse.
///
/// Every tracked stream holds two (its parser's newest ID and the one before), and every slot
/// one: in place, recording an ID touches no memory beyond the structure that holds it, and an
/// idle connection holds no allocation for them.
#[derive(Clone)]
pub(crate) enum IdBuf {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Vec<u8>),
}

impl Default for IdBuf {
    fn default() -> Self {
        Self::Inline {
            len: 0,
            bytes: [0; INLINE],
        }
    }
}

/// Room for an inline ID copied to an 8-byte aligned start (see [`IdBuf::with_str`]).
#[repr(align(8))]
struct Aligned([u8; INLINE]);

impl IdBuf {
    /// Calls `f` with the bytes as text, invalid UTF-8 replaced as by
    /// [`String::from_utf8_lossy`].
    ///
    /// An inline ID is first copied to an aligned buffer: [`std::str::from_utf8`] checks ASCII
    /// a word at a time only from an aligned start, and byte by byte before it. For the
    /// worker's snapshot of a 19-byte ID, callgrind counted 192 instructions with
    /// `from_utf8_lossy` (always byte by byte) and 170 with `from_utf8` in place, against 61
    /// plus the copy from the aligned buffer. Only invalid bytes take `from_utf8_lossy`.
    #[inline]
    pub(crate) fn with_str<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        let mut aligned = Aligned([0; INLINE]);
        let bytes = match self {
            Self::Inline { len, bytes } => {
                let n = usize::from(*len);
                aligned.0[..n].copy_from_slice(&bytes[..n]);
                &aligned.0[..n]
            }
            Self::Heap(vec) => vec.as_slice(),
        };
        match std::str::from_utf8(bytes) {
            Ok(text) => f(text),
            Err(_) => f(&String::from_utf8_lossy(bytes)),
        }
    }

    /// The ID as a store receives it (`Cleared` when empty). An inline ASCII ID (most IDs) is
    /// copied as it lies, its whole array at once: ASCII is UTF-8, so it needs no UTF-8 check
    /// and no copy to an aligned buffer first. Others go through [`with_str`](Self::with_str).
    /// For the worker's snapshot of a 19-byte ID, callgrind counted about 100 instructions less
    /// than through `with_str`.
    #[inline]
    pub(crate) fn to_last_event_id(&self) -> LastEventId {
        if let Self::Inline { len, bytes } = self
            && bytes[..usize::from(*len)].is_ascii()
        {
            return match len {
                0 => LastEventId::Cleared,
                _ => LastEventId::Set(EventId::from_ascii_block(*len, bytes)),
            };
        }
        self.with_str(|id| LastEventId::from(id))
    }

    /// The bytes.
    #[inline]
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Self::Heap(vec) => vec,
        }
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    /// Empties the buffer (a heap buffer keeps its capacity).
    #[inline]
    pub(crate) fn clear(&mut self) {
        match self {
            Self::Inline { len, .. } => *len = 0,
            Self::Heap(vec) => vec.clear(),
        }
    }

    /// Replaces the bytes with `value`.
    #[inline(always)]
    pub(crate) fn set(&mut self, value: &[u8]) {
        match self {
            Self::Heap(vec) => {
                vec.clear();
                vec.extend_from_slice(value);
            }
            Self::Inline { len, bytes } if value.len() <= INLINE => {
                copy_short(&mut bytes[..value.len()], value);
                *len = value.len() as u8;
            }
            Self::Inline { .. } => *self = Self::Heap(value.to_vec()),
        }
    }

    /// Whether the bytes are `value`; inline for IDs of up to 32 bytes (a call to `memcmp` cost
    /// more than the compare).
    #[inline(always)]
    pub(crate) fn holds(&self, value: &[u8]) -> bool {
        let held = self.as_slice();
        let n = held.len();
        if n != value.len() {
            return false;
        }
        // Two loads each, overlapping when shorter than twice their width.
        match n {
            0 => true,
            1..4 => {
                held[0] == value[0] && held[n / 2] == value[n / 2] && held[n - 1] == value[n - 1]
            }
            4..8 => half(held, 0) == half(value, 0) && half(held, n - 4) == half(value, n - 4),
            8..=16 => word(held, 0) == word(value, 0) && word(held, n - 8) == word(value, n - 8),
            17..=32 => wide(held, 0) == wide(value, 0) && wide(held, n - 16) == wide(value, n - 16),
            _ => held == value,
        }
    }

    /// The length and the bytes to read it from in place: an inline buffer's whole array, not
    /// sliced to its length (that slice's bounds check would stay on the compare paths).
    #[inline(always)]
    fn in_place(&self) -> (usize, &[u8]) {
        match self {
            Self::Inline { len, bytes } => (usize::from(*len), bytes),
            Self::Heap(held) => (held.len(), held),
        }
    }

    /// [`holds`](Self::holds) for a `value` of 8 to 16 bytes whose first and last eight bytes
    /// the caller has read already (`first`, `last`).
    #[inline(always)]
    pub(crate) fn holds_words(&self, value: &[u8], first: u64, last: u64) -> bool {
        let n = value.len();
        debug_assert!((8..=16).contains(&n));
        let (len, held) = self.in_place();
        len == n && word(held, 0) == first && word(held, n - 8) == last
    }

    /// [`set`](Self::set) for a `value` of 8 to 16 bytes whose first and last eight bytes the
    /// caller has read already (`first`, `last`).
    #[inline(always)]
    pub(crate) fn set_words(&mut self, value: &[u8], first: u64, last: u64) {
        let n = value.len();
        debug_assert!((8..=16).contains(&n));
        match self {
            Self::Inline { len, bytes } => {
                bytes[..8].copy_from_slice(&first.to_ne_bytes());
                bytes[n - 8..n].copy_from_slice(&last.to_ne_bytes());
                *len = n as u8;
            }
            Self::Heap(_) => self.set(value),
        }
    }

    /// [`holds`](Self::holds) for a `value` of 17 to 32 bytes whose first and last sixteen
    /// bytes the caller has read already (`first`, `last`).
    #[inline(always)]
    pub(crate) fn holds_wide(&self, value: &[u8], first: u128, last: u128) -> bool {
        let n = value.len();
        debug_assert!((17..=32).contains(&n));
        let (len, held) = self.in_place();
        len == n && wide(held, 0) == first && wide(held, n - 16) == last
    }

    /// [`set`](Self::set) for a `value` of 17 to 32 bytes whose first and last sixteen bytes
    /// the caller has read already (`first`, `last`).
    #[inline(always)]
    pub(crate) fn set_wide(&mut self, value: &[u8], first: u128, last: u128) {
        let n = value.len();
        debug_assert!((17..=32).contains(&n));
        match self {
            Self::Inline { len, bytes } if n <= INLINE => {
                bytes[..16].copy_from_slice(&first.to_ne_bytes());
                bytes[n - 16..n].copy_from_slice(&last.to_ne_bytes());
                *len = n as u8;
            }
            _ => self.set(value),
        }
    }

    /// [`holds`](Self::holds) for a `value` of 33 to 48 bytes (UUIDs) whose 16-byte thirds the
    /// caller has read already (at 0, 16 and `value.len() - 16`).
    #[inline(always)]
    pub(crate) fn holds_thirds(&self, value: &[u8], thirds: [u128; 3]) -> bool {
        let n = value.len();
        debug_assert!((33..=48).contains(&n));
        match self {
            Self::Inline { .. } => false, // Too long to be inline.
            Self::Heap(held) => {
                held.len() == n
                    && wide(held, 0) == thirds[0]
                    && wide(held, 16) == thirds[1]
                    && wide(held, n - 16) == thirds[2]
            }
        }
    }

    /// [`set`](Self::set) for a `value` of 33 to 48 bytes whose 16-byte thirds the caller has
    /// read already: written in place over a heap buffer of the same length (the usual case:
    /// a stream's IDs have one length), else by `set`.
    #[inline(always)]
    pub(crate) fn set_thirds(&mut self, value: &[u8], thirds: [u128; 3]) {
        let n = value.len();
        debug_assert!((33..=48).contains(&n));
        match self {
            Self::Heap(held) if held.len() == n => {
                held[..16].copy_from_slice(&thirds[0].to_ne_bytes());
                held[16..32].copy_from_slice(&thirds[1].to_ne_bytes());
                held[n - 16..].copy_from_slice(&thirds[2].to_ne_bytes());
            }
            _ => self.set(value),
        }
    }

    /// Heap bytes held (for memory accounting in tests).
    #[cfg(test)]
    pub(crate) fn heap_capacity(&self) -> usize {
        match self {
            Self::Inline { .. } => 0,
            Self::Heap(vec) => vec.capacity(),
        }
    }
}

/// `to.copy_from_slice(from)` (same lengths), inline for up to 32 bytes: a call to `memcpy`
/// cost more than the copy.
#[inline(always)]
fn copy_short(to: &mut [u8], from: &[u8]) {
    let n = from.len();
    match n {
        0 => {}
        1..4 => to.copy_from_slice(from),
        4..8 => {
            to[..4].copy_from_slice(&half(from, 0).to_ne_bytes());
            to[n - 4..].copy_from_slice(&half(from, n - 4).to_ne_bytes());
        }
        8..=16 => {
            to[..8].copy_from_slice(&word(from, 0).to_ne_bytes());
            to[n - 8..].copy_from_slice(&word(from, n - 8).to_ne_bytes());
        }
        17..=32 => {
            to[..16].copy_from_slice(&wide(from, 0).to_ne_bytes());
            to[n - 16..].copy_from_slice(&wide(from, n - 16).to_ne_bytes());
        }
        _ => to.copy_from_slice(from),
    }
}

/// The eight bytes at `at` (0 past the end: callers stay in bounds).
#[inline(always)]
pub(crate) fn word(s: &[u8], at: usize) -> u64 {
    s.get(at..at + 8)
        .and_then(|w| w.try_into().ok())
        .map_or(0, u64::from_ne_bytes)
}

/// The sixteen bytes at `at` (0 past the end: callers stay in bounds).
#[inline(always)]
pub(crate) fn wide(s: &[u8], at: usize) -> u128 {
    s.get(at..at + 16)
        .and_then(|w| w.try_into().ok())
        .map_or(0, u128::from_ne_bytes)
}

/// The four bytes at `at`.
#[inline(always)]
fn half(s: &[u8], at: usize) -> u32 {
    s.get(at..at + 4)
        .and_then(|w| w.try_into().ok())
        .map_or(0, u32::from_ne_bytes)
}

impl PartialEq for IdBuf {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl PartialEq<[u8]> for IdBuf {
    #[inline]
    fn eq(&self, other: &[u8]) -> bool {
        self.as_slice() == other
    }
}

impl std::fmt::Debug for IdBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_stay_in_place_long_ones_move_to_the_heap_and_back_is_reused() {
        let mut id = IdBuf::default();
        assert!(id.is_empty());
        for n in [0, 1, 8, 29, 30] {
            let value = vec![b'x'; n];
            id.set(&value);
            assert_eq!(id.as_slice(), &value[..]);
            assert_eq!(id.heap_capacity(), 0, "{n} bytes in place");
        }
        id.set(&[b'y'; 31]);
        assert_eq!(id.as_slice(), &[b'y'; 31][..]);
        let capacity = id.heap_capacity();
        assert!(capacity >= 31);
        id.set(b"7");
        assert_eq!(id.as_slice(), b"7");
        assert_eq!(id.heap_capacity(), capacity, "the heap buffer is kept");
        id.clear();
        assert!(id.is_empty());
        assert_eq!(IdBuf::default(), IdBuf::default());
        let mut other = IdBuf::default();
        other.set(b"7");
        id.set(b"7");
        assert!(id == other && id == *b"7".as_slice());
        assert!(std::mem::size_of::<IdBuf>() <= 32);
    }

    #[test]
    fn short_copies_and_compares_agree_with_the_slices() {
        let values: Vec<Vec<u8>> = (0..=34)
            .flat_map(|n| {
                let base: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
                let mut out = vec![base.clone()];
                for at in 0..n {
                    let mut changed = base.clone();
                    changed[at] ^= 1;
                    out.push(changed);
                }
                out
            })
            .collect();
        let mut id = IdBuf::default();
        for a in &values {
            id.set(a);
            assert_eq!(id.as_slice(), &a[..]);
            for b in &values {
                assert_eq!(id.holds(b), a == b, "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn with_str_reads_the_bytes_as_from_utf8_lossy_does() {
        let mut values: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"42".to_vec(),
            b"19-1764579600123456".to_vec(),
            "caf\u{e9}-\u{1f600}".as_bytes().to_vec(),
            b"bad \xff\xfe byte".to_vec(),
            b"cut \xe2\x82".to_vec(),
        ];
        // Every length inline and on the heap, with a multi-byte character and an invalid
        // byte at each position.
        for n in 0..=40 {
            let base: Vec<u8> = (0..n).map(|i| b'0' + (i % 10) as u8).collect();
            values.push(base.clone());
            for at in 0..n {
                let mut invalid = base.clone();
                invalid[at] = 0x80;
                values.push(invalid);
                let mut wide = base[..at].to_vec();
                wide.extend_from_slice("\u{e9}".as_bytes());
                wide.extend_from_slice(&base[at..]);
                values.push(wide);
            }
        }
        let mut id = IdBuf::default();
        for value in &values {
            id.set(value);
            let text = id.with_str(str::to_owned);
            assert_eq!(text, String::from_utf8_lossy(value), "{value:?}");
        }
    }

    #[test]
    fn to_last_event_id_is_the_lossy_text_as_a_last_event_id() {
        let mut values: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"42".to_vec(),
            b"19-1764579600123456".to_vec(),
            "caf\u{e9}".as_bytes().to_vec(),
            b"bad \xff byte".to_vec(),
        ];
        for n in 0..=40 {
            let run: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
            // Non-ASCII at the last place: an inline ID is checked up to its length.
            let mut wide = run.clone();
            wide.extend_from_slice("\u{e9}".as_bytes());
            values.push(run);
            values.push(wide);
        }
        // Each after each other one, in the same buffer: a short ASCII ID after a longer
        // non-ASCII one leaves that one's bytes past its length, which must not count.
        let mut id = IdBuf::default();
        for first in &values {
            for value in &values {
                id.set(first);
                id.set(value);
                let expected = LastEventId::from(String::from_utf8_lossy(value).as_ref());
                let got = id.to_last_event_id();
                assert_eq!(got, expected, "{first:?} then {value:?}");
                assert_eq!(got.as_str(), expected.as_str());
            }
        }
    }
}
