//! Arbitrary bytes -> a request (method and URI, or HTTP/2 frames through h2's server)
//! -> the CONNECT validation of port 15008 and its answer. Must never panic.
//!
//! Run: `cd tunnel/fuzz && cargo fuzz run connect corpus/connect`
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    zpath_tunnel::fuzzing::connect(data);
});
