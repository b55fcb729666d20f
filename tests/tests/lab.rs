//! `strait-lab up` builds a working three-site mesh and `strait-lab down` removes every
//! namespace, process and file it made (root needed; the lab's namespaces are unique to this
//! test, and a guard runs `down` if the test fails half way).

use std::path::PathBuf;
use std::process::{Command, Output};

use strait_tests::procs::bin;

struct Lab {
    prefix: String,
    dir: PathBuf,
    _parent: tempfile::TempDir,
}

impl Lab {
    fn cmd(&self, args: &[&str]) -> Output {
        let bin_dir = bin("strait-agent").parent().unwrap().to_path_buf();
        Command::new(env!("CARGO_BIN_EXE_strait-lab"))
            .args(["--prefix", &self.prefix, "--dir"])
            .arg(&self.dir)
            .args(args)
            .env("STRAIT_BIN_DIR", bin_dir)
            .output()
            .expect("strait-lab")
    }

    fn namespaces(&self) -> Vec<String> {
        let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&format!("{}-", self.prefix)))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.cmd(&["down"]);
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn lab_up_builds_a_working_mesh_and_down_leaves_nothing() {
    let parent = tempfile::tempdir().unwrap();
    let lab = Lab {
        prefix: format!("sl{}", std::process::id()),
        dir: parent.path().join("lab"),
        _parent: parent,
    };
    let up = lab.cmd(&["up"]);
    let out = text(&up);
    assert!(up.status.success(), "strait-lab up failed:\n{out}");
    assert!(out.contains("Lab up in"), "{out}");
    for link in [
        "aws-use1/gw-1    azure-eus/gw-1  tunnel       up",
        "aws-use1/gw-1    gcp-usc1/gw-1   tunnel       up",
        "azure-eus/gw-1   gcp-usc1/gw-1   tunnel       up",
    ] {
        assert!(out.contains(link), "missing {link:?} in:\n{out}");
    }
    assert_eq!(lab.namespaces().len(), 11, "{:?}", lab.namespaces());

    // Traffic between workloads without agents crosses the gateways' tunnels: the
    // "internet" router has no route to any site's private range.
    let inet_routes = Command::new("ip")
        .args(["-n", &format!("{}-inet", lab.prefix), "route"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&inet_routes.stdout).contains("10."));
    let ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("{}-gcp-vm", lab.prefix),
            "ping",
            "-c",
            "2",
            "-W",
            "2",
            "10.30.0.10",
        ])
        .output()
        .unwrap();
    assert!(ping.status.success(), "{}", text(&ping));

    // Running `up` again is refused and changes nothing.
    let again = lab.cmd(&["up"]);
    assert!(!again.status.success());
    assert!(text(&again).contains("already up"), "{}", text(&again));
    assert_eq!(lab.namespaces().len(), 11);

    // straitctl through the lab.
    let nodes = lab.cmd(&["ctl", "-o", "json", "nodes"]);
    assert!(nodes.status.success(), "{}", text(&nodes));
    let v: serde_json::Value = serde_json::from_slice(&nodes.stdout).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(6), "{v}");

    let down = lab.cmd(&["down"]);
    assert!(down.status.success(), "{}", text(&down));
    assert!(
        text(&down).contains("7 processes stopped, 11 namespaces deleted"),
        "{}",
        text(&down)
    );
    assert!(lab.namespaces().is_empty(), "{:?}", lab.namespaces());
    assert!(!lab.dir.exists(), "state directory left behind");
    let procs = Command::new("pgrep")
        .args(["-f", &lab.dir.display().to_string()])
        .output()
        .unwrap();
    assert!(
        procs.stdout.is_empty(),
        "processes left: {}",
        String::from_utf8_lossy(&procs.stdout)
    );
}
