//! [`ByteRing`]: the bytes of a stream's history in one growable ring buffer, addressed by
//! logical offsets that only grow. Appending copies into the ring (no allocation once it has
//! grown to its working size); evicting moves the start; reading copies a range out.

/// A ring of bytes addressed by logical offsets: the byte at logical offset `o` (for
/// `start() <= o < end()`) is kept until the front moves past it. Its capacity is a power of
/// two (or zero), so that wrapping is a mask.
#[derive(Debug, Default)]
pub(crate) struct ByteRing {
    buf: Box<[u8]>,
    /// Index in `buf` of the byte at logical offset `start`.
    head: usize,
    len: usize,
    /// Logical offset of the first byte kept.
    start: u64,
}

impl ByteRing {
    pub(crate) fn start(&self) -> u64 {
        self.start
    }

    pub(crate) fn end(&self) -> u64 {
        self.start + self.len as u64
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Bytes allocated.
    pub(crate) fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Room left without growing.
    pub(crate) fn spare(&self) -> usize {
        self.buf.len() - self.len
    }

    /// Reallocates to `capacity` bytes (at least `len`; rounded up to a power of two), keeping
    /// the contents.
    pub(crate) fn resize(&mut self, capacity: usize) {
        debug_assert!(capacity >= self.len);
        let capacity = if capacity == 0 {
            0
        } else {
            capacity.next_power_of_two()
        };
        let mut buf = vec![0; capacity].into_boxed_slice();
        let (a, b) = self.slices(self.start, self.end());
        buf[..a.len()].copy_from_slice(a);
        buf[a.len()..a.len() + b.len()].copy_from_slice(b);
        self.buf = buf;
        self.head = 0;
    }

    /// Appends `bytes`; the caller made room first (`spare() >= bytes.len()`).
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        debug_assert!(self.spare() >= bytes.len());
        let cap = self.buf.len();
        if cap == 0 {
            return;
        }
        let tail = (self.head + self.len) & (cap - 1);
        let first = bytes.len().min(cap - tail);
        self.buf[tail..tail + first].copy_from_slice(&bytes[..first]);
        self.buf[..bytes.len() - first].copy_from_slice(&bytes[first..]);
        self.len += bytes.len();
    }

    /// Drops the bytes before logical offset `to`.
    pub(crate) fn pop_to(&mut self, to: u64) {
        let n = usize::try_from(to.saturating_sub(self.start))
            .unwrap_or(usize::MAX)
            .min(self.len);
        if self.buf.is_empty() {
            return;
        }
        self.head = (self.head + n) & (self.buf.len() - 1);
        self.len -= n;
        self.start += n as u64;
    }

    /// Drops the bytes from logical offset `from` on (uncommitted bytes given up).
    pub(crate) fn truncate(&mut self, from: u64) {
        let keep = usize::try_from(from.saturating_sub(self.start)).unwrap_or(usize::MAX);
        self.len = self.len.min(keep);
    }

    /// The bytes from `from` to `to` (logical offsets within the ring), as at most two slices.
    pub(crate) fn slices(&self, from: u64, to: u64) -> (&[u8], &[u8]) {
        debug_assert!(self.start <= from && from <= to && to <= self.end());
        let cap = self.buf.len();
        if cap == 0 || from == to {
            return (&[], &[]);
        }
        let offset = (from - self.start) as usize;
        let n = (to - from) as usize;
        let begin = (self.head + offset) & (cap - 1);
        if begin + n <= cap {
            (&self.buf[begin..begin + n], &[])
        } else {
            (&self.buf[begin..], &self.buf[..n - (cap - begin)])
        }
    }

    /// Whether the bytes from `from` to `to` equal `other`.
    pub(crate) fn equals(&self, from: u64, to: u64, other: &[u8]) -> bool {
        let (a, b) = self.slices(from, to);
        a.len() + b.len() == other.len() && other.starts_with(a) && &other[a.len()..] == b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(ring: &ByteRing, from: u64, to: u64) -> Vec<u8> {
        let (a, b) = ring.slices(from, to);
        [a, b].concat()
    }

    #[test]
    fn wraps_around_and_keeps_logical_offsets() {
        let mut ring = ByteRing::default();
        ring.resize(8);
        ring.push(b"abcdef");
        ring.pop_to(4);
        ring.push(b"ghij"); // wraps
        assert_eq!((ring.start(), ring.end(), ring.len()), (4, 10, 6));
        assert_eq!(read(&ring, 4, 10), b"efghij");
        assert_eq!(read(&ring, 7, 9), b"hi");
        assert!(ring.equals(6, 10, b"ghij"));
        assert!(!ring.equals(6, 10, b"ghiX"));
        ring.resize(16); // unwraps
        ring.push(b"klmnop");
        assert_eq!(read(&ring, 4, 16), b"efghijklmnop");
        ring.truncate(12);
        assert_eq!(ring.end(), 12);
        assert_eq!(ring.capacity(), 16);
    }
}
