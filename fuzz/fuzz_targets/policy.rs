#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lane_core::fuzz_targets::policy(data));
