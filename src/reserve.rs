//! Per-connection state allocated in batches.
//!
//! A tracked stream's state and its session's slot are allocated while the connection is being
//! set up, between the server's own per-connection buffers. Under glibc's allocator, memory
//! allocated one piece at a time at that moment stays resident at about twice its size once
//! many connections arrive at once: the small pieces pin the pages around them when the setup
//! buffers are freed. Pieces allocated a batch at a time lie next to each other and cost about
//! their size (`examples/e2e.rs` at 5,000 connections opened at once, 1 KiB held per connection
//! by the bare server: +2.0 KB of resident memory per connection allocated one by one, +1.1 KB
//! allocated 64 at a time).
//!
//! Each thread keeps its own reserves, so taking from them needs no lock; a reserve holds at
//! most [`BATCH`] - 1 unused allocations (under 10 KiB per reserve and thread), and is refilled
//! a batch at a time when empty. One thing is recycled: the slot a registry at its cap forgets
//! to admit a new session ([`recycle`]), which the new session's slot then reuses. Everything
//! else no longer used is freed as usual.

use std::{cell::RefCell, mem::MaybeUninit, sync::Arc, thread::LocalKey};

use crate::{SessionId, StreamKey, body::StreamState, slot::Slot};

/// Allocations made at once when a thread's reserve is empty.
pub(crate) const BATCH: usize = 32;

thread_local! {
    // Boxes, not values: each is an allocation of its own, handed out whole.
    #[allow(clippy::vec_box)]
    static STATES: RefCell<Vec<Box<MaybeUninit<StreamState>>>> = const { RefCell::new(Vec::new()) };
    static SLOTS: RefCell<Vec<Arc<Slot>>> = const { RefCell::new(Vec::new()) };
}

/// An allocation from this thread's `reserve`, refilled with `make` a batch at a time; `None`
/// while the thread is being torn down.
fn take<T: 'static>(
    reserve: &'static LocalKey<RefCell<Vec<T>>>,
    mut make: impl FnMut() -> T,
) -> Option<T> {
    reserve
        .try_with(|reserve| {
            let mut reserve = reserve.borrow_mut();
            if reserve.is_empty() {
                reserve.reserve_exact(BATCH);
                reserve.extend((0..BATCH).map(|_| make()));
            }
            reserve.pop()
        })
        .ok()
        .flatten()
}

/// `state`, boxed in an allocation from this thread's reserve.
pub(crate) fn boxed(state: StreamState) -> Box<StreamState> {
    match take(&STATES, Box::new_uninit) {
        Some(spare) => Box::write(spare, state),
        None => Box::new(state),
    }
}

/// A slot that holds nothing: what the reserve keeps until one is filled in place.
fn blank() -> Slot {
    Slot::new(SessionId::blank(), StreamKey::whole_session(), 0, 0, 0)
}

/// `slot`, in an `Arc` from this thread's reserve.
pub(crate) fn shared(slot: Slot) -> Arc<Slot> {
    // The reserve's slots are blanks no one else holds: each is filled in place.
    match take(&SLOTS, || Arc::new(blank())) {
        Some(mut spare) => match Arc::get_mut(&mut spare) {
            Some(place) => {
                *place = slot;
                spare
            }
            None => Arc::new(slot),
        },
        None => Arc::new(slot),
    }
}

/// Puts `slot`, if no one else holds it, back into this thread's reserve as a blank (its keys
/// released), when the reserve has room; otherwise drops it as usual.
///
/// For a registry at its cap, which forgets one session for each one it admits: the next slot
/// is then the forgotten one, with no free and no allocation. Freeing it cost more than the
/// rest of an admission: the forgotten session is the one idle longest, its slot among the
/// coldest memory of the process, and glibc merges a freed chunk of that size with its
/// neighbours, reading their headers too.
pub(crate) fn recycle(mut slot: Arc<Slot>) {
    let Some(place) = Arc::get_mut(&mut slot) else {
        return;
    };
    *place = blank();
    let _ = SLOTS.try_with(|reserve| {
        let mut reserve = reserve.borrow_mut();
        if reserve.len() < BATCH - 1 {
            reserve.push(slot);
        }
    });
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    thread_local! {
        #[allow(clippy::vec_box)]
        static NUMBERS: RefCell<Vec<Box<u64>>> = const { RefCell::new(Vec::new()) };
    }

    #[test]
    fn a_reserve_is_refilled_a_batch_at_a_time_and_holds_less_than_a_batch() {
        let made = Cell::new(0);
        let make = || {
            made.set(made.get() + 1);
            Box::new(7)
        };
        assert_eq!(*take(&NUMBERS, make).unwrap(), 7);
        assert_eq!(made.get(), BATCH);
        assert_eq!(NUMBERS.with_borrow(Vec::len), BATCH - 1);
        for _ in 1..BATCH {
            take(&NUMBERS, make).unwrap();
        }
        assert_eq!(made.get(), BATCH);
        assert_eq!(NUMBERS.with_borrow(Vec::len), 0);
        take(&NUMBERS, make).unwrap();
        assert_eq!(made.get(), 2 * BATCH);
        assert_eq!(NUMBERS.with_borrow(Vec::len), BATCH - 1);
    }

    #[test]
    fn a_slot_from_the_reserve_is_the_one_given_and_held_once() {
        // A thread of its own: the reserve starts empty.
        std::thread::spawn(|| {
            let session = SessionId::new("s1").unwrap();
            let stream = StreamKey::new("/events").unwrap();
            let slot = shared(Slot::new(session.clone(), stream.clone(), 3, 9, 64));
            assert_eq!(Arc::strong_count(&slot), 1);
            assert_eq!(slot.session(), &session);
            assert_eq!(slot.stream(), &stream);
            assert_eq!((slot.shard(), slot.node()), (3, 9));
            assert_eq!(SLOTS.with_borrow(Vec::len), BATCH - 1);
            // The blanks hold no key of a session.
            assert!(
                SLOTS.with_borrow(|spare| spare.iter().all(|s| s.session().as_str().is_empty()))
            );
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_recycled_slot_is_the_next_one_given_and_the_reserve_stays_bounded() {
        std::thread::spawn(|| {
            let slot = |key: &str| {
                Slot::new(
                    SessionId::new(key).unwrap(),
                    StreamKey::new("/events").unwrap(),
                    0,
                    0,
                    64,
                )
            };
            let first = shared(slot("s1"));
            let second = shared(slot("s2"));
            assert_eq!(SLOTS.with_borrow(Vec::len), BATCH - 2);

            // Held elsewhere: not recycled.
            let held = second.clone();
            recycle(second);
            assert_eq!(SLOTS.with_borrow(Vec::len), BATCH - 2);

            // Held by the caller alone: back in the reserve, blank, and given out next.
            let at = Arc::as_ptr(&first);
            recycle(first);
            assert_eq!(SLOTS.with_borrow(Vec::len), BATCH - 1);
            assert!(SLOTS.with_borrow(|spare| spare.last().unwrap().session().as_str().is_empty()));
            let third = shared(slot("s3"));
            assert_eq!(Arc::as_ptr(&third), at);
            assert_eq!(third.session().as_str(), "s3");

            // Back in while there is room; then the reserve is full, and a slot recycled (`held`,
            // its only holder now) is freed as usual.
            recycle(third);
            assert_eq!(SLOTS.with_borrow(Vec::len), BATCH - 1);
            assert_eq!(Arc::strong_count(&held), 1);
            recycle(held);
            assert_eq!(SLOTS.with_borrow(Vec::len), BATCH - 1);
        })
        .join()
        .unwrap();
    }
}
