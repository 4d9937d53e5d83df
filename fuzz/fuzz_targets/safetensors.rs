#![no_main]
//! See `awqc_fuzz::targets::safetensors`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    awqc_fuzz::targets::safetensors(data);
});
