//! Nested cargo builds from a test: the same target directory and profile as the test itself,
//! so they are no-ops when fresh and never rebuild what the outer build made.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

/// Where the running test executable was built: `(<target>/<profile>, <target>, <profile>)`.
/// Integration tests live in `<target>/<profile>/deps`; binaries one level up.
pub fn build_dirs() -> Result<(PathBuf, PathBuf, String)> {
    let exe = env::current_exe().context("cannot find the test executable's path")?;
    let exe_dir = exe
        .parent()
        .with_context(|| format!("{} has no parent directory", exe.display()))?;
    let profile_dir = if exe_dir.file_name().is_some_and(|n| n == "deps") {
        exe_dir.parent().unwrap_or(exe_dir)
    } else {
        exe_dir
    };
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("cannot tell the profile from {}", profile_dir.display()))?
        .to_owned();
    let target_dir = profile_dir
        .parent()
        .with_context(|| format!("{} has no parent directory", profile_dir.display()))?
        .to_owned();
    Ok((profile_dir.to_owned(), target_dir, profile))
}

/// The workspace root.
pub fn workspace_dir() -> Result<&'static Path> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the tests package has no parent directory")
}

/// `cargo SUBCOMMAND --manifest-path <workspace> --target-dir <target>` for a nested build,
/// with the environment cleaned as [`remove_crate_env`] says.
pub fn workspace_cargo(subcommand: &str, target_dir: &Path) -> Result<Command> {
    // `cargo test` sets $CARGO for the processes it runs.
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    remove_crate_env(&mut cmd);
    cmd.arg(subcommand)
        .arg("--manifest-path")
        .arg(workspace_dir()?.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    Ok(cmd)
}

/// Removes the variables cargo sets for the crate it runs (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`,
/// …) from `cmd`'s environment. Build scripts such as ring's declare `rerun-if-env-changed` on
/// them, so a nested cargo that inherits this test's values reruns them and rebuilds ring,
/// rustls and everything above, and the next outer build rebuilds them back.
pub fn remove_crate_env(cmd: &mut Command) {
    const EXACT: &[&str] = &[
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_MANIFEST_LINKS",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
    ];
    const PREFIXES: &[&str] = &["CARGO_PKG_", "CARGO_CFG_", "CARGO_BIN_EXE_"];
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if EXACT.contains(&key) || PREFIXES.iter().any(|p| key.starts_with(p)) {
            cmd.env_remove(key);
        }
    }
}
