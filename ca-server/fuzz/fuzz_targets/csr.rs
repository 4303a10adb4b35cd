#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ca_server::fuzzing::csr(data));
