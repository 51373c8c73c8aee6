//! Arbitrary bytes -> a sequence of ZDS packets from istio-cni (with descriptor counts,
//! truncation and reconnections) -> decode -> the pod session. Must never panic.
//!
//! Run: `cd control/fuzz && cargo fuzz run zds corpus/zds`
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    zpath_control::fuzzing::zds(data);
});
