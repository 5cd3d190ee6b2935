//! Arbitrary bytes through parsing, limits, schema validation, graph checks, scheduling and
//! `{{tasks...}}` interpolation. See docs/fuzzing.md.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dispatch_runner::batch::exercise::exercise(data);
});
