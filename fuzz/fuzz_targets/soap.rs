#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| cwmpd::fuzzing::fuzz_soap(data));
