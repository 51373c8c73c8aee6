//! Arbitrary bytes -> policies, destinations and connections -> compile -> evaluate,
//! checked against the reference evaluator. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    zpath_policy::fuzzing::run(data);
});
