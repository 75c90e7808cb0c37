//! Memory per tracked session, measured with a counting global allocator (in its own test
//! binary so that it does not affect other tests).

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicIsize, Ordering},
};

use tower_sse_tracking::{
    DEFAULT_DEDUP_WINDOW, EventTrackingLayer, SessionId,
    store::{SessionRecord, SessionStore, SessionUpdate, StoreFuture},
};

/// Counts the bytes currently allocated (requested sizes).
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; only a counter is updated.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with this layout.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` was allocated by `System` with this layout.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// A store that keeps nothing, so that only the layer's own memory is measured.
struct Discard;

impl SessionStore for Discard {
    fn save_batch<'a>(&'a self, _batch: &'a [SessionUpdate]) -> StoreFuture<'a, ()> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn load<'a>(&'a self, _session: &'a SessionId) -> StoreFuture<'a, Option<SessionRecord>> {
        Box::pin(std::future::ready(Ok(None)))
    }
}

#[test]
fn a_tracked_session_costs_less_than_1_kib() {
    const SESSIONS: usize = 10_000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let layer = EventTrackingLayer::builder().store(Discard).build();
        // Let the worker start (its first tick allocates its buffers).
        layer.flush().await.unwrap();
        let before = live();

        for i in 0..SESSIONS {
            let session = SessionId::new(&format!("session-{i:08}")).unwrap();
            let id = format!("{i:016}"); // a 16-byte event ID
            assert!(layer.worker().record(&session, Some(&id)));
        }
        let report = layer.flush().await.unwrap();
        assert_eq!(report.persisted, SESSIONS);
        assert_eq!(layer.worker().tracked_sessions(), SESSIONS);

        let per_session = (live() - before) as f64 / SESSIONS as f64;
        println!(
            "memory per tracked session (dedup window {DEFAULT_DEDUP_WINDOW}, 16-byte id, \
             16-byte key): {per_session:.0} bytes"
        );
        assert!(
            per_session < 1024.0,
            "{per_session:.0} bytes per tracked session"
        );
        // Still tracked (the measurement is not of an emptied registry).
        let probe = SessionId::new("session-00000042").unwrap();
        assert_eq!(
            layer.worker().last_event_id(&probe).as_deref(),
            Some("0000000000000042")
        );
    });
}
