#![no_main]
//! See `awqc_fuzz::targets::config_json`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    awqc_fuzz::targets::config_json(data);
});
