//! [`LinkedSlab`]: values in a slab, some of them on one doubly linked list, every operation
//! O(1). The building block of the session registry's idle lists and of `MemoryStore`'s
//! least-recently-written order. Links are indices, so no `unsafe` is needed.

/// No entry.
const NIL: u32 = u32::MAX;

struct Entry<T> {
    /// `None`: a free entry (then `next` links the free list).
    value: Option<T>,
    prev: u32,
    next: u32,
    linked: bool,
}

/// A slab of values addressed by `u32` indices, with an intrusive list through some of them
/// (oldest at the front). Freed indices are reused; the slab never holds more entries than the
/// most values it held at once.
pub(crate) struct LinkedSlab<T> {
    entries: Vec<Entry<T>>,
    free: u32,
    head: u32,
    tail: u32,
    len: usize,
    linked: usize,
}

impl<T> Default for LinkedSlab<T> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            free: NIL,
            head: NIL,
            tail: NIL,
            len: 0,
            linked: 0,
        }
    }
}

impl<T> LinkedSlab<T> {
    /// Values held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }

    /// Values on the list.
    #[cfg(test)]
    fn linked_len(&self) -> usize {
        self.linked
    }

    /// The index the next [`insert`](Self::insert) will return.
    pub(crate) fn vacant_index(&self) -> u32 {
        match self.free {
            NIL => u32::try_from(self.entries.len()).unwrap_or(NIL),
            free => free,
        }
    }

    /// Stores a value (not on the list) and returns its index.
    ///
    /// # Panics
    ///
    /// Panics past `u32::MAX - 1` values (callers bound their size far below).
    pub(crate) fn insert(&mut self, value: T) -> u32 {
        self.len += 1;
        if self.free != NIL {
            let ix = self.free;
            let entry = &mut self.entries[ix as usize];
            self.free = entry.next;
            *entry = Entry {
                value: Some(value),
                prev: NIL,
                next: NIL,
                linked: false,
            };
            return ix;
        }
        let ix = u32::try_from(self.entries.len())
            .ok()
            .filter(|&ix| ix != NIL)
            .expect("LinkedSlab holds fewer than u32::MAX values");
        self.entries.push(Entry {
            value: Some(value),
            prev: NIL,
            next: NIL,
            linked: false,
        });
        ix
    }

    /// Removes the value at `ix` (and takes it off the list).
    pub(crate) fn remove(&mut self, ix: u32) -> Option<T> {
        let entry = self.entries.get_mut(ix as usize)?;
        entry.value.as_ref()?;
        self.unlink(ix);
        let entry = &mut self.entries[ix as usize];
        let value = entry.value.take();
        entry.next = self.free;
        self.free = ix;
        self.len -= 1;
        value
    }

    pub(crate) fn get(&self, ix: u32) -> Option<&T> {
        self.entries.get(ix as usize)?.value.as_ref()
    }

    pub(crate) fn get_mut(&mut self, ix: u32) -> Option<&mut T> {
        self.entries.get_mut(ix as usize)?.value.as_mut()
    }

    pub(crate) fn is_linked(&self, ix: u32) -> bool {
        self.entries.get(ix as usize).is_some_and(|e| e.linked)
    }

    /// Puts the value at `ix` at the back of the list (moving it there if it was on it).
    pub(crate) fn push_back(&mut self, ix: u32) {
        if self.get(ix).is_none() {
            return;
        }
        self.unlink(ix);
        let entry = &mut self.entries[ix as usize];
        entry.prev = self.tail;
        entry.next = NIL;
        entry.linked = true;
        match self.tail {
            NIL => self.head = ix,
            tail => self.entries[tail as usize].next = ix,
        }
        self.tail = ix;
        self.linked += 1;
    }

    /// Takes the value at `ix` off the list (it stays in the slab).
    pub(crate) fn unlink(&mut self, ix: u32) {
        let Some(entry) = self.entries.get_mut(ix as usize) else {
            return;
        };
        if !entry.linked {
            return;
        }
        let (prev, next) = (entry.prev, entry.next);
        entry.linked = false;
        entry.prev = NIL;
        entry.next = NIL;
        match prev {
            NIL => self.head = next,
            prev => self.entries[prev as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            next => self.entries[next as usize].prev = prev,
        }
        self.linked -= 1;
    }

    /// The index at the front of the list (the one linked longest ago).
    pub(crate) fn front(&self) -> Option<u32> {
        (self.head != NIL).then_some(self.head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(slab: &LinkedSlab<&'static str>) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut ix = slab.head;
        while ix != NIL {
            out.push(*slab.get(ix).unwrap());
            ix = slab.entries[ix as usize].next;
        }
        out
    }

    #[test]
    fn list_keeps_link_order_and_moves_in_o1() {
        let mut slab = LinkedSlab::default();
        let a = slab.insert("a");
        let b = slab.insert("b");
        let c = slab.insert("c");
        assert_eq!(
            order(&slab),
            Vec::<&str>::new(),
            "inserted values are not linked"
        );
        for ix in [a, b, c] {
            slab.push_back(ix);
        }
        assert_eq!(order(&slab), ["a", "b", "c"]);
        slab.push_back(a);
        assert_eq!(
            order(&slab),
            ["b", "c", "a"],
            "pushing a linked value moves it"
        );
        slab.unlink(c);
        assert_eq!(order(&slab), ["b", "a"]);
        assert!(!slab.is_linked(c) && slab.is_linked(a));
        assert_eq!(slab.front(), Some(b));
        assert_eq!(slab.linked_len(), 2);
        assert_eq!(slab.len(), 3);
    }

    #[test]
    fn removed_indices_are_reused_and_never_dangle() {
        let mut slab = LinkedSlab::default();
        let a = slab.insert("a");
        let b = slab.insert("b");
        slab.push_back(a);
        slab.push_back(b);
        assert_eq!(slab.remove(a), Some("a"));
        assert_eq!(slab.remove(a), None, "twice");
        assert_eq!(order(&slab), ["b"]);
        let c = slab.insert("c");
        assert_eq!(c, a, "the freed entry is reused");
        assert!(!slab.is_linked(c));
        slab.push_back(c);
        assert_eq!(order(&slab), ["b", "c"]);
        assert_eq!(slab.remove(b), Some("b"));
        assert_eq!(slab.remove(c), Some("c"));
        assert_eq!((slab.len(), slab.linked_len(), slab.front()), (0, 0, None));
        assert_eq!(
            slab.entries.len(),
            2,
            "never grew past the most held at once"
        );
        assert_eq!(slab.get(7), None);
    }
}
