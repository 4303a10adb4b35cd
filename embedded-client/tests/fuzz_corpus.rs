//! Replays the committed fuzz corpus and regression inputs of every embedded-client fuzz target
//! (`fuzz/corpus/<target>/`, `fuzz/regressions/<target>/`) through the function the target
//! calls, on the stable toolchain: the suite runs what the fuzzer found without libFuzzer
//! (docs/reliability.md "Fuzzing").

use embedded_client::fuzzing;

protocol_spec::fuzz_corpus_tests! {
    http => fuzzing::http,
    json => fuzzing::json,
    certificate => fuzzing::certificate,
    renewal => fuzzing::renewal,
    enrollment => fuzzing::enrollment,
}
