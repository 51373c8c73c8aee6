//! Arbitrary bytes -> local config file -> `LocalConfig::parse` -> snapshots for its
//! nodes -> lookups, routes, policy and the admin dump. Must never panic.
//!
//! Run: `cd control/fuzz && cargo fuzz run local_config corpus/local_config`
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    zpath_control::fuzzing::local_config(data);
});
