//! Arbitrary bytes -> decode as Address / Authorization / DeltaDiscoveryResponse ->
//! conversion hook and subscription state machine. Must never panic.
//!
//! Run: `cd control/fuzz && cargo +nightly fuzz run xds_decode corpus/xds_decode`
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    zpath_control::xds::resource::fuzz_decode(data, |resource| {
        // The domain TryFrom conversion plugs in here once the model provides it.
        let _ = format!("{resource:?}");
    });
});
