//! Raw bodies cut at arbitrary frame boundaries: forwarded unchanged, tracked per spec.

use super::*;

/// What a stream should leave tracked: `None` no ID, `Some("")` cleared, else the ID.
struct Case {
    name: &'static str,
    chunks: &'static [&'static [u8]],
    last: Option<&'static str>,
}

const SPLIT_CASES: &[Case] = &[
    Case {
        name: "one frame per event",
        chunks: &[b"id: 1\ndata: a\n\n", b"id: 2\ndata: b\n\n"],
        last: Some("2"),
    },
    Case {
        // Read as two line breaks, the CR+LF would end the block and commit "2".
        name: "cr at frame end then lf is one line break",
        chunks: &[b"id: 1\ndata: a\n\nid: 2\r", b"\ndata: b\n"],
        last: Some("1"),
    },
    Case {
        name: "cr at frame end then lf completes the blank line",
        chunks: &[b"id: 7\r\ndata: x\r", b"\n\r", b"\n"],
        last: Some("7"),
    },
    Case {
        name: "crlf everywhere",
        chunks: &[b"id: 8\r\ndata: z\r\n\r\nid: 9\r\ndata: z\r\n\r\n"],
        last: Some("9"),
    },
    Case {
        name: "bare cr line endings",
        chunks: &[b"id: 3\rdata: q\r\rid: 4\rdata: q\r\r"],
        last: Some("4"),
    },
    Case {
        name: "bom split across frames is stripped",
        chunks: &[b"\xEF", b"\xBB", b"\xBFid: 7\n", b"data: x\n\n"],
        last: Some("7"),
    },
    Case {
        // Only the first BOM is stripped: the second makes the field name "\u{FEFF}id".
        name: "second bom is part of the field name",
        chunks: &[b"\xEF\xBB\xBF\xEF\xBB\xBFid: 7\ndata: x\n\n"],
        last: None,
    },
    Case {
        name: "comments are ignored",
        chunks: &[
            b": comment with id: 9\n",
            b"id: 3\n: another\ndata: y\n\n",
            b":id: 4\n\n",
        ],
        last: Some("3"),
    },
    Case {
        name: "ids without data are committed at the blank line",
        chunks: &[b"id: 10\n\n", b"id: 11\n", b"\n"],
        last: Some("11"),
    },
    Case {
        name: "empty id clears",
        chunks: &[b"id: 5\ndata: a\n\nid\ndata: b\n\n"],
        last: Some(""),
    },
    Case {
        name: "id with nul is ignored",
        chunks: &[b"id: 6\n\nid: 7\0x\ndata: c\n\n"],
        last: Some("6"),
    },
    Case {
        name: "one leading space is stripped, the second kept",
        chunks: &[b"id:  9\n\n"],
        last: Some(" 9"),
    },
    Case {
        name: "unterminated final block is discarded",
        chunks: &[b"id: 1\ndata: a\n\nid: 2\ndata: b\n"],
        last: Some("1"),
    },
    Case {
        name: "empty frames anywhere",
        chunks: &[
            b"", b"id: 1", b"", b"2\ndata", b"", b": a\n", b"", b"\n", b"",
        ],
        last: Some("12"),
    },
    Case {
        name: "every byte its own frame",
        chunks: &[
            b"\xEF", b"\xBB", b"\xBF", b"i", b"d", b":", b" ", b"4", b"2", b"\r", b"\n", b"\r",
            b"\n",
        ],
        last: Some("42"),
    },
    Case {
        name: "field name split from its colon",
        chunks: &[b"i", b"d", b":4", b"3\n", b"data:x\n", b"\n"],
        last: Some("43"),
    },
];

#[tokio::test]
async fn arbitrary_frame_splits_are_forwarded_unchanged_and_tracked_per_spec() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).build();
    for (i, case) in SPLIT_CASES.iter().enumerate() {
        let session = format!("split-{i}");
        let (got, tracked) =
            fetch(&tracking, sse_service(case.chunks), request(Some(&session))).await;
        assert!(tracked, "{}", case.name);
        assert_eq!(got, concat(case.chunks), "{}: bytes changed", case.name);
        assert_eq!(
            tracking
                .worker()
                .last_event_id(&sid(&session), &events())
                .as_deref(),
            case.last,
            "{}: tracked id",
            case.name
        );
    }
    tracking.flush().await.unwrap();
    for (i, case) in SPLIT_CASES.iter().enumerate() {
        let record = stored(&store, &format!("split-{i}"));
        match case.last {
            Some(id) if !id.is_empty() => assert_eq!(record, set(id), "{}", case.name),
            // Cleared, or never set: a record (activity) without an ID, or none at all.
            _ => assert!(
                matches!(record, None | Some(LastEventId::Cleared)),
                "{}: {record:?}",
                case.name
            ),
        }
    }
}
