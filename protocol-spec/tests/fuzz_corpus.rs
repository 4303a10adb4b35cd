//! Replays the committed fuzz corpus and regression inputs of every protocol-spec fuzz target
//! (`fuzz/corpus/<target>/`, `fuzz/regressions/<target>/`) through the function the target
//! calls, on the stable toolchain: the suite runs what the fuzzer found without libFuzzer
//! (docs/reliability.md "Fuzzing").

use protocol_spec::fuzzing;

protocol_spec::fuzz_corpus_tests! {
    base64url => fuzzing::base64url,
    identifier => fuzzing::identifier,
    ip => fuzzing::ip,
    punycode => fuzzing::punycode,
    ari => fuzzing::ari,
    small_text => fuzzing::small_text,
}
