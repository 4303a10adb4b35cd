#![no_main]

use std::sync::LazyLock;

use ca_server::fuzzing::{attestation, attestation_cases, AttestationCase};

static CASES: LazyLock<Vec<AttestationCase>> =
    LazyLock::new(|| attestation_cases(protocol_spec::vectors::DEVICE_ATTEST));

libfuzzer_sys::fuzz_target!(|data: &[u8]| attestation(data, &CASES));
