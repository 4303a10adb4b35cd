#![no_main]

use std::sync::LazyLock;

use device_client::fuzzing::{crl, crl_issuer};

static ISSUER: LazyLock<Vec<u8>> =
    LazyLock::new(|| crl_issuer(protocol_spec::vectors::DEVICE_ATTEST));

libfuzzer_sys::fuzz_target!(|data: &[u8]| crl(data, &ISSUER));
