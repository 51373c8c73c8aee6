//! A handshake with a rustls peer, then arbitrary records the peer seals or sends raw
//! -> the session's record layer, reads, writes and close. Must never panic, stall,
//! or hand out plaintext the peer did not send as application data.
//!
//! Run: `cd crypto/fuzz && cargo fuzz run tls_records corpus/tls_records`
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    zpath_crypto::fuzzing::tls_records(data);
});
