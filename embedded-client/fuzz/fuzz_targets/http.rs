#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| embedded_client::fuzzing::http(data));
