//! `ca-server`: run the CA, or manage it from the CA host (`ca_server::cli`).

use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: allocation was about 7.5 % of the server's CPU per
/// certificate in a perf profile of the load benchmark, and with mimalloc the server used 15 % less CPU per
/// certificate at C=32 and 4 % less at C=8, for a higher RSS (docs/performance.md, "Scale").
///
/// The `system-allocator` feature keeps glibc's malloc, for heap profilers that hook it
/// (heaptrack, docs/reliability.md "Soak").
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    ca_server::cli::main().await
}
