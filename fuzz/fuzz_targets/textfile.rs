#![no_main]
//! See `awqc_fuzz::targets::textfile`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    awqc_fuzz::targets::textfile(data);
});
