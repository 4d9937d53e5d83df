#![no_main]
//! See `awqc_fuzz::targets::tokenizer_json`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    awqc_fuzz::targets::tokenizer_json(data);
});
