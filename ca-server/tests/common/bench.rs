//! The command line of the benches that run without a harness: `--bench` tells `cargo bench`
//! (full size) from `cargo test --benches` (a handful of records); options are `--name value`
//! pairs and bare flags.

pub struct BenchArgs {
    argv: Vec<String>,
}

impl BenchArgs {
    pub fn from_env() -> Self {
        Self {
            argv: std::env::args().collect(),
        }
    }

    /// Run by `cargo bench` rather than `cargo test --benches`.
    pub fn bench(&self) -> bool {
        self.flag("--bench")
    }

    pub fn flag(&self, name: &str) -> bool {
        self.argv.iter().any(|a| a == name)
    }

    pub fn value(&self, name: &str) -> Option<String> {
        self.argv
            .iter()
            .position(|a| a == name)
            .and_then(|i| self.argv.get(i + 1))
            .cloned()
    }

    /// A number option (`_` separators allowed), `default` when absent; panics on a bad value.
    pub fn number(&self, name: &str, default: usize) -> usize {
        self.value(name).map_or(default, |v| {
            v.replace('_', "")
                .parse()
                .unwrap_or_else(|_| panic!("{name} takes a number, got {v:?}"))
        })
    }
}
