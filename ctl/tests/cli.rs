//! `straitctl` refuses bad input with errors that name it and an exit code scripts can use.

use std::process::Command;

#[test]
fn straitctl_without_a_certificate_exits_unreachable_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_straitctl"))
        .args(["status", "--tls-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tls-dir"), "{err}");
}
