#![no_main]
//! See `awqc_fuzz::targets::turbomind_yaml`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    awqc_fuzz::targets::turbomind_yaml(data);
});
