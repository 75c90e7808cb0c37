//! Retries by due time; the newest ID supersedes a pending retry.

use super::*;

#[tokio::test(start_paused = true)]
async fn retries_follow_due_time_and_newer_ids_supersede_pending_retries() {
    let (a, b) = (sid("a"), sid("b"));
    // `a` fails its first three writes, `b` its first one.
    let failures = Mutex::new(HashMap::from([(a.clone(), 3u32), (b.clone(), 1u32)]));
    let store = TestStore::new(move |_, _, batch| {
        let mut failures = failures.lock().unwrap();
        let mut fail = false;
        for u in batch {
            if let Some(left) = failures.get_mut(&u.session).filter(|left| **left > 0) {
                *left -= 1;
                fail = true;
            }
        }
        if fail {
            Action::Fail(transient())
        } else {
            Action::Ok
        }
    });
    let tick = Duration::from_millis(10);
    let base = Duration::from_millis(200);
    let config = WorkerConfig::default()
        .flush_interval(tick)
        .base_backoff(base)
        .max_backoff(Duration::from_secs(10))
        .max_attempts(10)
        .breaker_threshold(100);
    let worker = WorkerHandle::spawn(store.clone(), config);

    worker.record(&a, &events(), Some("a1"));
    wait_until("a failed once", || store.calls_for(&a).len() == 1).await;
    worker.record(&a, &events(), Some("a2"));
    wait_until("a failed three times", || store.calls_for(&a).len() == 3).await;
    // `a`'s next attempt is due 400..800 ms after its third failure; `b` fails now and is due
    // 100..200 ms later: it is retried first although scheduled later.
    worker.record(&b, &events(), Some("b1"));
    wait_until("b failed once", || store.calls_for(&b).len() == 1).await;
    worker.record(&b, &events(), Some("b2"));
    worker.record(&a, &events(), Some("a3"));
    tokio::time::sleep(Duration::from_secs(2)).await;

    let a_calls = store.calls_for(&a);
    let b_calls = store.calls_for(&b);
    let ids = |calls: &[Call], s: &SessionId| -> Vec<String> {
        calls
            .iter()
            .map(|c| c.id_of(s).unwrap().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&a_calls, &a), ["a1", "a2", "a2", "a3"]);
    assert_eq!(ids(&b_calls, &b), ["b1", "b2"]);
    assert_eq!(
        a_calls.iter().map(|c| c.failed).collect::<Vec<_>>(),
        [true, true, true, false]
    );
    assert_eq!(
        b_calls.iter().map(|c| c.failed).collect::<Vec<_>>(),
        [true, false]
    );
    // Each retry waits for its backoff: between half and all of base * 2^(attempt - 1), plus at
    // most one tick.
    for (attempt, pair) in a_calls.windows(2).enumerate() {
        let full = base * (1 << attempt);
        let waited = pair[1].at - pair[0].at;
        assert!(
            waited >= full / 2 && waited <= full + tick,
            "a, attempt {}: waited {waited:?}",
            attempt + 1
        );
    }
    let waited = b_calls[1].at - b_calls[0].at;
    assert!(waited >= base / 2 && waited <= base + tick, "b: {waited:?}");
    assert!(
        b_calls[0].at >= a_calls[2].at,
        "b failed after a's third failure"
    );
    assert!(
        b_calls[1].at < a_calls[3].at,
        "the earlier due time goes first"
    );
    // A pending retry never writes an older ID than the newest recorded one.
    assert_eq!(store.accepted(&a), [Some("a3".to_owned())]);
    assert_eq!(store.accepted(&b), [Some("b2".to_owned())]);
    assert_eq!(store.regressions(), Vec::<String>::new());
}
