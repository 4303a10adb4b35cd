//! Replays the committed fuzz corpus and regression inputs of every device-client fuzz target
//! (`fuzz/corpus/<target>/`, `fuzz/regressions/<target>/`) through the function the target
//! calls, on the stable toolchain: the suite runs what the fuzzer found without libFuzzer
//! (docs/reliability.md "Fuzzing").

use device_client::fuzzing;

protocol_spec::fuzz_corpus_tests! {
    responses => fuzzing::responses,
    chain => fuzzing::chain,
    crl => {
        let issuer = fuzzing::crl_issuer(protocol_spec::vectors::DEVICE_ATTEST);
        assert!(!issuer.is_empty(), "no CRL issuer in the vectors");
        move |data: &[u8]| fuzzing::crl(data, &issuer)
    },
}
