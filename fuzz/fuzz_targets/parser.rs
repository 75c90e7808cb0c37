//! Fuzzes `SseParser`: any input, cut into chunks anywhere, must parse the same as the whole
//! stream, and never panic. Run with `cargo +nightly fuzz run parser` from the crate root.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../check.rs"]
mod check;

fuzz_target!(|input: &[u8]| check::check(input));
