//! Arbitrary bytes -> SOCKS5 greeting and CONNECT request, read whole, byte by byte
//! and in random chunks -> the same target or refusal each time. Must never panic.
//!
//! Run: `cd engine/fuzz && cargo fuzz run socks5 corpus/socks5`
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    zpath_engine::fuzzing::socks5(data);
});
