//! Replays the committed fuzz corpus and regression inputs of every ca-server fuzz target
//! (`fuzz/corpus/<target>/`, `fuzz/regressions/<target>/`) through the function the target
//! calls, on the stable toolchain: the suite runs what the fuzzer found without libFuzzer
//! (docs/reliability.md "Fuzzing").

use ca_server::fuzzing;

protocol_spec::fuzz_corpus_tests! {
    jws => fuzzing::jws,
    jwk => fuzzing::jwk,
    csr => fuzzing::csr,
    attestation => {
        let cases = fuzzing::attestation_cases(protocol_spec::vectors::DEVICE_ATTEST);
        move |data: &[u8]| fuzzing::attestation(data, &cases)
    },
    requests => {
        let server = fuzzing::Server::new();
        move |data: &[u8]| fuzzing::requests(data, &server)
    },
}
