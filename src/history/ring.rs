//! [`ByteRing`]: the bytes of a stream's history in one growable ring buffer, addressed by
//! logical offsets that only grow. Appending copies into the ring (no allocation once it has
//! grown to its working size); evicting moves the start; reading copies a range out.

/// A ring of bytes addressed by logical offsets: the byte at logical offset `o` (for
/// `start() <= o < end()`) is kept until the front moves past it. Its capacity is a power of
/// two (or zero), so that wrapping is a mask.
#[derive(Debug, Default)]
pub(crate) struct ByteRing {
    /// The byte at logical offset `o` sits at `o & (buf.len() - 1)`.
    buf: Box<[u8]>,
    /// Logical offset of the first byte kept.
    start: u64,
    /// Logical offset just past the last byte kept.
    end: u64,
}

impl ByteRing {
    pub(crate) fn start(&self) -> u64 {
        self.start
    }

    pub(crate) fn end(&self) -> u64 {
        self.end
    }

    pub(crate) fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    /// Bytes allocated.
    pub(crate) fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Room left without growing.
    pub(crate) fn spare(&self) -> usize {
        self.buf.len() - self.len()
    }

    /// Index in `buf` of logical offset `offset` (the buffer is not empty).
    #[inline]
    fn index(&self, offset: u64) -> usize {
        offset as usize & (self.buf.len() - 1)
    }

    /// Reallocates to `capacity` bytes (at least `len`; rounded up to a power of two), keeping
    /// the contents.
    pub(crate) fn resize(&mut self, capacity: usize) {
        debug_assert!(capacity >= self.len());
        let capacity = if capacity == 0 {
            0
        } else {
            capacity.next_power_of_two()
        };
        let old = std::mem::replace(&mut self.buf, vec![0; capacity].into_boxed_slice());
        let (start, end) = (self.start, self.end);
        self.end = start;
        if !old.is_empty() && start < end {
            let mask = old.len() - 1;
            let (from, to) = (start as usize & mask, end as usize & mask);
            if from < to {
                self.push(&old[from..to]);
            } else {
                self.push(&old[from..]);
                self.push(&old[..to]);
            }
        }
        self.end = end;
    }

    /// Appends `bytes`; the caller made room first (`spare() >= bytes.len()`).
    #[inline]
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        debug_assert!(self.spare() >= bytes.len());
        let cap = self.buf.len();
        if cap == 0 || bytes.is_empty() {
            return;
        }
        let tail = self.index(self.end);
        if let Some(room) = self.buf.get_mut(tail..tail + bytes.len()) {
            room.copy_from_slice(bytes);
        } else {
            let (first, rest) = bytes.split_at(cap - tail);
            self.buf[tail..].copy_from_slice(first);
            self.buf[..rest.len()].copy_from_slice(rest);
        }
        self.end += bytes.len() as u64;
    }

    /// An empty ring whose logical offsets start at `offset` (tests: offsets near 2^32).
    #[cfg(test)]
    pub(crate) fn start_at(&mut self, offset: u64) {
        debug_assert_eq!(self.len(), 0);
        self.start = offset;
        self.end = offset;
    }

    /// Drops the bytes before logical offset `to`.
    #[inline]
    pub(crate) fn pop_to(&mut self, to: u64) {
        self.start = to.clamp(self.start, self.end);
    }

    /// Drops the bytes from logical offset `from` on (uncommitted bytes given up).
    pub(crate) fn truncate(&mut self, from: u64) {
        self.end = from.clamp(self.start, self.end);
    }

    /// The bytes from `from` to `to` (logical offsets within the ring), as at most two slices.
    pub(crate) fn slices(&self, from: u64, to: u64) -> (&[u8], &[u8]) {
        debug_assert!(self.start <= from && from <= to && to <= self.end);
        if self.buf.is_empty() || from == to {
            return (&[], &[]);
        }
        let n = (to - from) as usize;
        let begin = self.index(from);
        let cap = self.buf.len();
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

/// A ring of records addressed by sequence numbers that only grow: the record of `seq` (for
/// `start() <= seq < end()`) sits at `seq & (capacity - 1)`, so pushing and popping write one
/// counter each. Grows by doubling when full; its capacity is a power of two (or zero).
#[derive(Debug, Default)]
pub(crate) struct SeqRing<T> {
    buf: Box<[T]>,
    start: u64,
    end: u64,
}

impl<T: Copy + Default> SeqRing<T> {
    /// Sequence number of the oldest record.
    pub(crate) fn start(&self) -> u64 {
        self.start
    }

    /// Sequence number the next record gets.
    pub(crate) fn end(&self) -> u64 {
        self.end
    }

    pub(crate) fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Records allocated.
    pub(crate) fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// The `i`th record from the oldest (`i < len()`).
    #[inline]
    pub(crate) fn at(&self, i: usize) -> &T {
        debug_assert!(i < self.len());
        &self.buf[(self.start as usize).wrapping_add(i) & (self.buf.len() - 1)]
    }

    pub(crate) fn back(&self) -> Option<&T> {
        (!self.is_empty()).then(|| self.at(self.len() - 1))
    }

    #[inline]
    pub(crate) fn push_back(&mut self, record: T) {
        if self.len() == self.buf.len() {
            self.resize((self.buf.len() * 2).max(4));
        }
        let mask = self.buf.len() - 1;
        self.buf[self.end as usize & mask] = record;
        self.end += 1;
    }

    #[inline]
    pub(crate) fn pop_front(&mut self) -> Option<T> {
        if self.is_empty() {
            return None;
        }
        let record = self.buf[self.start as usize & (self.buf.len() - 1)];
        self.start += 1;
        Some(record)
    }

    /// The records, oldest first.
    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + ExactSizeIterator {
        (0..self.len()).map(|i| self.at(i))
    }

    /// Frees what the records do not use (down to the power of two that holds them).
    pub(crate) fn shrink_to_fit(&mut self) {
        let fit = if self.is_empty() {
            0
        } else {
            self.len().next_power_of_two()
        };
        if fit < self.buf.len() {
            self.resize(fit);
        }
    }

    /// Drops every record and frees the buffer; sequence numbers go on from where they were.
    pub(crate) fn clear(&mut self) {
        self.buf = Box::default();
        self.start = self.end;
    }

    fn resize(&mut self, capacity: usize) {
        debug_assert!(capacity.is_power_of_two() || capacity == 0);
        debug_assert!(capacity >= self.len());
        let mut buf = vec![T::default(); capacity].into_boxed_slice();
        for seq in self.start..self.end {
            buf[seq as usize & (capacity - 1)] = *self.at((seq - self.start) as usize);
        }
        self.buf = buf;
    }
}

impl<T: Copy + Default> std::ops::Index<usize> for SeqRing<T> {
    type Output = T;

    /// The `i`th record from the oldest.
    fn index(&self, i: usize) -> &T {
        assert!(i < self.len(), "record {i} of {}", self.len());
        self.at(i)
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

    #[test]
    fn records_keep_their_sequence_numbers_through_growth_and_shrinking() {
        let mut ring = SeqRing::<u64>::default();
        for seq in 0..5 {
            ring.push_back(seq * 10);
        }
        assert_eq!(ring.capacity(), 8);
        assert_eq!(ring.pop_front(), Some(0));
        assert_eq!(ring.pop_front(), Some(10));
        for seq in 5..11 {
            ring.push_back(seq * 10); // wraps, then grows
        }
        assert_eq!((ring.start(), ring.end(), ring.len()), (2, 11, 9));
        assert_eq!(ring.capacity(), 16);
        let all: Vec<u64> = ring.iter().copied().collect();
        assert_eq!(all, (2..11).map(|s| s * 10).collect::<Vec<_>>());
        assert_eq!(ring.iter().next_back(), Some(&100));
        assert_eq!((ring[0], *ring.back().unwrap()), (20, 100));
        while ring.len() > 3 {
            ring.pop_front();
        }
        ring.shrink_to_fit();
        assert_eq!(ring.capacity(), 4);
        assert_eq!(ring.iter().copied().collect::<Vec<_>>(), [80, 90, 100]);
        ring.clear();
        assert_eq!((ring.start(), ring.end(), ring.capacity()), (11, 11, 0));
        ring.push_back(110);
        assert_eq!(ring.pop_front(), Some(110));
        assert_eq!(ring.pop_front(), None);
    }
}
