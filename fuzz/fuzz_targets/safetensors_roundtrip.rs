#![no_main]
//! See `awqc_fuzz::targets::safetensors_roundtrip`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    awqc_fuzz::targets::safetensors_roundtrip(data);
});
