#![no_main]
//! See `awqc_fuzz::targets::turbomind`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    awqc_fuzz::targets::turbomind(data);
});
