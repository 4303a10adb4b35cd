//! Runs the shared vectors in an implementation's tests (SPEC §1.5), with that implementation's
//! skip list: a TOML table per vector file, `"*"` skipping a whole file, a vector id recording a
//! known failure with its reason. A skipped vector that starts passing fails the run, so skip
//! lists cannot go stale. Test-only (std); the rest of the crate stays `no_std`.

use std::collections::{BTreeMap, BTreeSet};
use std::format;
use std::string::{String, ToString};
use std::vec::Vec;

use serde_json::Value;

use crate::vectors;

/// One vector entry.
pub struct Vector {
    /// The entry's `id`.
    pub id: String,
    /// Its `input`.
    pub input: Value,
    /// Its `expect`.
    pub expect: Value,
}

/// A skip list and the vector files an implementation runs.
pub struct Runner {
    skips: BTreeMap<String, BTreeMap<String, String>>,
    run: &'static [&'static str],
}

/// A string member of a vector's `input` or `expect`.
pub fn field<'v>(v: &'v Value, name: &str) -> Result<&'v str, String> {
    v[name]
        .as_str()
        .ok_or_else(|| format!("vector has no string {name:?}"))
}

/// The octets of hex text, as the vectors write octets (`*_hex` members).
pub fn hex(text: &str) -> Result<Vec<u8>, String> {
    if text.len() % 2 != 0 {
        return Err(format!("{text:?} has an odd number of hex digits"));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .filter(|pair| pair.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| format!("{text:?} is not hex"))
        })
        .collect()
}

/// The octets of a hex string member of a vector's `input` or `expect`.
pub fn hex_field(v: &Value, name: &str) -> Result<Vec<u8>, String> {
    hex(field(v, name)?)
}

/// An attestation object written by [`crate::attestation::encode`] into a vector of the size
/// it needs: for tests that build objects, including ones a verifier must refuse.
pub fn attestation_object(fmt: &str, alg: i64, sig: &[u8], x5c: &[&[u8]]) -> Vec<u8> {
    let stmt = crate::attestation::Statement { fmt, alg, sig, x5c };
    let mut out = std::vec![0u8; stmt.encoded_len()];
    let n = crate::attestation::encode(&stmt, &mut out)
        .map(<[u8]>::len)
        .unwrap_or_default();
    out.truncate(n);
    out
}

/// The entries of vector file `stem`.
///
/// # Panics
/// If there is no such file or it is not an array of entries: the vectors are broken.
pub fn load(stem: &str) -> Vec<Vector> {
    let (_, text) = vectors::ALL
        .iter()
        .find(|(name, _)| *name == stem)
        .unwrap_or_else(|| panic!("no vector file {stem}"));
    let entries: Vec<Value> = serde_json::from_str(text).expect("vector file is a JSON array");
    entries
        .into_iter()
        .map(|e| Vector {
            id: e["id"].as_str().expect("vector id").to_string(),
            input: e["input"].clone(),
            expect: e["expect"].clone(),
        })
        .collect()
}

impl Runner {
    /// A runner for the files in `run`, skipping as `skip_toml` says.
    ///
    /// # Panics
    /// If the skip list is not valid TOML of that shape.
    pub fn new(skip_toml: &str, run: &'static [&'static str]) -> Self {
        Self {
            skips: toml::from_str(skip_toml).expect("the skip list parses"),
            run,
        }
    }

    /// Runs `check` on every vector of `stem`, honouring the skip list.
    ///
    /// # Panics
    /// With a summary, if a vector fails that is not skipped, or a skipped one passes.
    pub fn run(&self, stem: &str, check: impl Fn(&Vector) -> Result<(), String>) {
        let skip = self.skips.get(stem);
        assert!(
            skip.is_none_or(|s| !s.contains_key("*")),
            "{stem} is skipped as a whole but also run"
        );
        let mut failures = Vec::new();
        let mut stale = Vec::new();
        for v in load(stem) {
            match (check(&v), skip.and_then(|s| s.get(&v.id))) {
                (Ok(()), None) => {}
                (Err(e), None) => failures.push(format!("{stem}/{}: {e}", v.id)),
                (Ok(()), Some(_)) => stale.push(format!("{stem}/{}", v.id)),
                (Err(e), Some(reason)) => {
                    std::eprintln!("skipped {stem}/{}: {reason} (fails with: {e})", v.id);
                }
            }
        }
        assert!(
            failures.is_empty() && stale.is_empty(),
            "vector failures:\n  {}\nskip entries that now pass (remove them from the skip list):\n  {}",
            failures.join("\n  "),
            stale.join("\n  ")
        );
    }

    /// Every vector file is either run or skipped as a whole, and every skip names an existing
    /// vector and gives a reason.
    ///
    /// # Panics
    /// On the first file or entry that breaks this.
    pub fn check_coverage(&self) {
        for (stem, _) in vectors::ALL {
            let whole = self.skips.get(*stem).is_some_and(|s| s.contains_key("*"));
            assert!(
                self.run.contains(stem) != whole,
                "{stem} must be either run or skipped with \"*\", not both or neither"
            );
        }
        for (stem, entries) in &self.skips {
            let ids: BTreeSet<String> = load(stem).into_iter().map(|v| v.id).collect();
            for (id, reason) in entries {
                assert!(
                    !reason.trim().is_empty(),
                    "{stem}/{id}: skip without a reason"
                );
                assert!(
                    id == "*" || ids.contains(id),
                    "{stem}/{id}: skip entry names no vector"
                );
            }
        }
    }
}

/// Replays a fuzz target's committed inputs through `run`, the function the target calls:
/// every file of `fuzz_dir/corpus/<target>/` and, if it exists, `fuzz_dir/regressions/<target>/`
/// (inputs that once failed, kept after the fix). Fails naming the file whose input fails,
/// and fails if the corpus directory is missing or empty, so that a moved or emptied corpus
/// cannot pass unnoticed. Returns how many inputs ran.
pub fn replay_fuzz_corpus(fuzz_dir: &std::path::Path, target: &str, run: impl Fn(&[u8])) -> usize {
    let mut ran = 0;
    for kind in ["corpus", "regressions"] {
        let dir = fuzz_dir.join(kind).join(target);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(_) if kind == "regressions" => continue,
            Err(e) => panic!("{}: {e}", dir.display()),
        };
        let mut paths: Vec<_> = entries
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        paths.sort();
        if kind == "corpus" {
            assert!(!paths.is_empty(), "{}: no corpus files", dir.display());
        }
        for path in paths {
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&data)));
            assert!(outcome.is_ok(), "{target}: {} fails", path.display());
            ran += 1;
        }
    }
    ran
}

/// One `#[test]` per fuzz target that replays its committed inputs with
/// [`replay_fuzz_corpus`] from the calling crate's `fuzz/` directory: `target => entry`, where
/// `entry` is the function the target calls (an expression, evaluated once per test, so a
/// block can set up state for a closure).
#[macro_export]
macro_rules! fuzz_corpus_tests {
    ($($target:ident => $entry:expr),* $(,)?) => {$(
        #[test]
        fn $target() {
            let fuzz_dir = ::std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
            $crate::runner::replay_fuzz_corpus(&fuzz_dir, stringify!($target), $entry);
        }
    )*};
}
