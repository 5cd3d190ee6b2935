//! Arbitrary bytes through parsing, limits, schema validation, graph checks, scheduling and
//! `{{tasks...}}` interpolation; inputs starting with 0xC7 also become one long dependency chain or
//! cycle (see `exercise::large_graph`). See docs/hardening.md.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dispatch_runner::batch::exercise::exercise(data);
});
