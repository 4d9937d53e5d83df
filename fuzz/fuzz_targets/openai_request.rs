#![no_main]
//! See `awqc_fuzz::targets::openai_request`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    awqc_fuzz::targets::openai_request(data);
});
