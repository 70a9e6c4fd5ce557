//! End-to-end tests: the real router over real HTTP with a real catalog (SQLite, and
//! PostgreSQL when `TROVE_TEST_POSTGRES_URL` is set), plus the real binary. One test binary
//! so the workspace links once.

mod abuse;
mod auth;
mod binary;
mod crash;
mod durability;
#[cfg(feature = "failpoints")]
mod faults;
mod ingest;
mod isolation;
mod lifecycle;
mod load;
mod operations;
mod overload;
mod pds;
mod query;

use std::path::Path;
use std::process::{Command, Stdio};

/// The real binary, for the suites that run it.
const TROVE: &str = env!("CARGO_BIN_EXE_trove");

/// Seeds `data` with the demo fixture through the real binary: its credentials, as
/// `trove demo --json` prints them.
fn demo(data: &Path) -> serde_json::Value {
    let out = Command::new(TROVE)
        .args(["demo", "--json", "--data-dir"])
        .arg(data)
        .env_remove("TROVE_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(out.status.success(), "trove demo: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `trove serve` over `data` on loopback `port`, run by `program` (the binary, or a wrapper
/// such as `prlimit` whose arguments follow): warnings only, nothing on stdout, and the
/// operator token from the data directory, never from this environment.
fn serve_command(program: &[&str], data: &Path, port: u16) -> Command {
    let (first, rest) = program.split_first().expect("a program");
    let mut command = Command::new(first);
    command
        .args(rest)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data)
        .env_remove("TROVE_ADMIN_TOKEN")
        .env("TROVE_LOG", "warn")
        .stdout(Stdio::null());
    command
}
