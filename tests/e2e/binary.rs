//! The real `trove` binary: `demo` seeds a directory and prints JSON, `serve` serves it on
//! embedded defaults and shuts down cleanly on SIGTERM.

use std::process::{Command, Stdio};

use serde_json::Value;
use test_helpers::{free_port, wait_healthy};

use crate::{TROVE, serve_command};

#[tokio::test]
async fn demo_then_serve_then_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = Command::new(TROVE)
        .args(["demo", "--members", "4", "--json", "--data-dir"])
        .arg(&data)
        .env_remove("TROVE_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let creds: Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
    assert_eq!(creds["members"].as_array().unwrap().len(), 4);
    assert_eq!(creds["members"][3]["keys"].as_object().unwrap().len(), 0, "member N has no energy-co agreement");
    assert_eq!(creds["subscribers"][0]["connection"]["environment"], "live");
    let token_file = std::fs::read_to_string(data.join("admin-token")).unwrap();
    assert_eq!(token_file.trim(), creds["admin_token"]);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(data.join("admin-token")).unwrap().permissions().mode() & 0o777, 0o600);

    // A second demo into the same directory is refused with exit 2.
    let again = Command::new(TROVE).args(["demo", "--json", "--data-dir"]).arg(&data).output().unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(again.stdout.is_empty());

    let port = free_port();
    // Info logs, the level that would show request lines with their keys.
    let mut server = serve_command(&[TROVE], &data, port)
        .env("TROVE_LOG", "info")
        .env("TROVE_LOG_FORMAT", "json")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    wait_healthy(&client, port).await;
    // The generated operator token works; a member listing proves the seeded catalog is served.
    let members: Value = client
        .get(format!("http://127.0.0.1:{port}/v1/members"))
        .bearer_auth(creds["admin_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(members.as_array().unwrap().len(), 4);
    // A Mydex call with keys in the query string: keys must never reach the log.
    let key = creds["members"][0]["keys"]["1"]["key"].as_str().unwrap().to_owned();
    let _ = client
        .get(format!("http://127.0.0.1:{port}/api/pds/pds/1.json?con_id=1-1&key={key}&dataset=ds_home"))
        .send()
        .await;

    let status = Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = server.wait().unwrap();
    assert!(exit.success(), "graceful shutdown exits 0, got {exit:?}");
    let mut log = String::new();
    std::io::Read::read_to_string(server.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(log.lines().all(|l| l.starts_with('{')), "TROVE_LOG_FORMAT=json logs JSON lines:\n{log}");
    assert!(!log.contains(&key), "a member key reached the log");
    assert!(!log.contains(creds["admin_token"].as_str().unwrap()), "the operator token reached the log");
}
