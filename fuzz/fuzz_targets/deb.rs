#![no_main]

use std::sync::Once;

static DEFAULT_HOOK: Once = Once::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // lane-core catches the xz decoder's panics on malformed streams (it
    // reports them as an error); libfuzzer-sys's hook would abort before
    // that catch. A panic that escapes lane-core still aborts the run.
    DEFAULT_HOOK.call_once(|| drop(std::panic::take_hook()));
    lane_core::fuzz_targets::deb(data)
});
