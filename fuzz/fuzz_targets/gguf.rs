#![no_main]
//! See `awqc_fuzz::targets::gguf`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    awqc_fuzz::targets::gguf(data);
});
