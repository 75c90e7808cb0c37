//! [`IdBuf`]: the bytes of an event ID, in place when short.

/// Bytes kept in place; longer IDs go to the heap.
const INLINE: usize = 30;

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

impl IdBuf {
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
    #[inline]
    pub(crate) fn set(&mut self, value: &[u8]) {
        match self {
            Self::Heap(vec) => {
                vec.clear();
                vec.extend_from_slice(value);
            }
            Self::Inline { len, bytes } if value.len() <= INLINE => {
                bytes[..value.len()].copy_from_slice(value);
                *len = value.len() as u8;
            }
            Self::Inline { .. } => *self = Self::Heap(value.to_vec()),
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
}
