#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| device_client::fuzzing::chain(data));
