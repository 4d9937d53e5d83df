#![no_main]
//! See `awqc_fuzz::targets::awq_gemm`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    awqc_fuzz::targets::awq_gemm(data);
});
