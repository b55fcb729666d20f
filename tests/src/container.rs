//! Containers of Strait's image, run with podman for the image tests
//! (`tests/tests/image_mesh.rs`). Each container is named `strait-<tag>-<pid>` and removed
//! when its handle drops; its log is printed if the test is panicking.

use std::process::{Command, Output};

/// The image under test: `STRAIT_IMAGE` (e.g. `localhost/strait:0.1.0`, built by
/// `deploy/image/build.sh`).
pub fn image() -> String {
    std::env::var("STRAIT_IMAGE").unwrap_or_else(|_| {
        panic!(
            "STRAIT_IMAGE is not set: build the image with deploy/image/build.sh and run \
             STRAIT_IMAGE=localhost/strait:<version> cargo test -p strait-tests --test image_mesh -- --ignored"
        )
    })
}

/// `podman ARGS`, with its output.
pub fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .output()
        .expect("podman must be installed (apt-get install podman)")
}

/// `podman ARGS`, panicking with podman's error on failure; stdout.
pub fn podman_ok(args: &[&str]) -> String {
    let out = podman(args);
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A detached container, removed (`podman rm -f`) on drop.
pub struct Container {
    pub name: String,
}

impl Container {
    /// `podman run -d --name strait-<tag>-<pid> OPTIONS IMAGE COMMAND`.
    pub fn run(tag: &str, options: &[&str], command: &[&str]) -> Container {
        let name = format!("strait-{tag}-{}", std::process::id());
        let _ = podman(&["rm", "-f", &name]);
        let mut args = vec!["run", "-d", "--name", &name];
        args.extend_from_slice(options);
        let image = image();
        args.push(&image);
        args.extend_from_slice(command);
        podman_ok(&args);
        Container { name }
    }

    pub fn logs(&self) -> String {
        let out = podman(&["logs", &self.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Whether the container is still running.
    pub fn running(&self) -> bool {
        podman_ok(&["inspect", "--format", "{{.State.Running}}", &self.name]).trim() == "true"
    }

    /// A `podman inspect --format` value of the container.
    pub fn inspect(&self, format: &str) -> String {
        podman_ok(&["inspect", "--format", format, &self.name])
            .trim()
            .to_string()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- log of container {} ---\n{}", self.name, self.logs());
        }
        let _ = podman(&["rm", "-f", "-t", "5", &self.name]);
    }
}

/// `podman run --rm OPTIONS IMAGE COMMAND` to completion.
pub fn run_once(options: &[&str], command: &[&str]) -> Output {
    let mut args = vec!["run", "--rm"];
    args.extend_from_slice(options);
    let image = image();
    args.push(&image);
    args.extend_from_slice(command);
    podman(&args)
}
