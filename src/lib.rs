//! Make Server-Sent-Events streams trackable and resumable.
//!
//! `tower-sse-tracking` reads the `text/event-stream` bodies that pass through it, byte for byte
//! unchanged, and records the last event ID each session has been sent, so that a reconnecting
//! client can resume where it left off.
//!
//! The building blocks so far:
//!
//! - [`parser`]: an incremental, spec-exact `text/event-stream` parser that never copies `data`.

#![warn(missing_docs, rust_2018_idioms, missing_debug_implementations)]
#![deny(unreachable_pub, unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod parser;
