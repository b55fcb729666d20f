//! Which files and directories a process may trust, by owner and mode. A file another user
//! could have written (a planted `wg.key` lets its author read the node's tunnel traffic) is
//! refused, never used; so is a state directory others can write into, since anything in it
//! may have been planted. The decisions are pure ([`judge_file`], [`judge_dir`]); the
//! checks read metadata.
//!
//! - A file is trusted if its owner is this process's user or root, and neither its group
//!   nor others may write it. A [`Sensitivity::Secret`] file of our own (a private key)
//!   must also be unreadable by them.
//! - A state directory must be owned by this process's user and not writable by its group
//!   or others: such a directory is refused, not tightened, because tightening it would not
//!   remove what may already have been planted. One that others may only read or enter (a
//!   Kubernetes hostPath made with `DirectoryOrCreate` is 0755) is tightened to 0700: reading
//!   it exposes file names only, the keys in it being 0600.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Why a file or directory is not trusted, and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}; {fix}")]
pub struct Untrusted {
    pub path: String,
    pub problem: String,
    pub fix: String,
}

/// How much a file's readers matter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sensitivity {
    /// Its contents decide what the process does (a certificate, a config, a saved map).
    Integrity,
    /// A secret the process keeps (a private key): others must not read it either.
    Secret,
}

/// What is wrong with a file, from its owner and mode (pure).
pub fn judge_file(owner: u32, mode: u32, euid: u32, s: Sensitivity) -> Result<(), String> {
    let mode = mode & 0o7777;
    if owner != euid && owner != 0 {
        return Err(format!(
            "owned by uid {owner}, not by this process's user (uid {euid}) or root, so another user may have written it"
        ));
    }
    if mode & 0o022 != 0 {
        return Err(format!(
            "writable by its group or others (mode {mode:04o}), so another user may have written it"
        ));
    }
    if s == Sensitivity::Secret && mode & 0o044 != 0 {
        return Err(format!(
            "a secret readable by its group or others (mode {mode:04o})"
        ));
    }
    Ok(())
}

/// What a state directory needs, from its owner and mode (pure): `Ok(true)` if it is fine
/// once tightened to 0700, `Ok(false)` if it already is.
pub fn judge_dir(owner: u32, mode: u32, euid: u32) -> Result<bool, String> {
    let mode = mode & 0o7777;
    if owner != euid {
        return Err(format!(
            "owned by uid {owner}, not by this process's user (uid {euid}), so another user may have put files in it"
        ));
    }
    if mode & 0o022 != 0 {
        return Err(format!(
            "writable by its group or others (mode {mode:04o}), so another user may have put files in it"
        ));
    }
    Ok(mode & 0o077 != 0)
}

/// This process's effective user id (from `/proc/self/status`; 0 if it cannot be read,
/// which only makes the checks stricter: files must then be root's).
pub fn euid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Checks that the file at `path` (followed if a symlink: a mounted Secret is one) may be
/// trusted. A missing file is the caller's business (`Ok`).
pub fn check_file(path: &Path, s: Sensitivity) -> Result<(), Untrusted> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    judge_file(meta.uid(), meta.mode(), euid(), s).map_err(|problem| {
        let fix = match s {
            Sensitivity::Secret => format!(
                "check that it is yours, then `chown {} {p} && chmod 600 {p}` (or remove it to make a new one)",
                euid(),
                p = path.display()
            ),
            Sensitivity::Integrity => format!(
                "check its contents, then `chown {} {p} && chmod go-w {p}`",
                euid(),
                p = path.display()
            ),
        };
        Untrusted {
            path: path.display().to_string(),
            problem,
            fix,
        }
    })
}

/// Creates the private directory `path` (0700) or checks an existing one, tightening it to
/// 0700 when others may only read it. Returns whether it was tightened.
pub fn private_dir(path: &Path) -> Result<bool, Untrusted> {
    let io = |e: std::io::Error, what: &str| Untrusted {
        path: path.display().to_string(),
        problem: format!("{what}: {e}"),
        fix: "give this process a directory of its own it can create and write".into(),
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(path).map_err(|e| io(e, "cannot create it"))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| io(e, "cannot set mode 0700"))?;
            return Ok(false);
        }
        Err(e) => return Err(io(e, "cannot read it")),
    };
    if !meta.is_dir() {
        return Err(Untrusted {
            path: path.display().to_string(),
            problem: "not a directory".into(),
            fix: "point the state directory at a directory".into(),
        });
    }
    let tighten = judge_dir(meta.uid(), meta.mode(), euid()).map_err(|problem| Untrusted {
        path: path.display().to_string(),
        problem,
        fix: format!(
            "check every file in it (keys, certificates, map), then `chown {} {p} && chmod 700 {p}`, or remove it to enroll afresh",
            euid(),
            p = path.display()
        ),
    })?;
    if tighten {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io(e, "cannot set mode 0700"))?;
    }
    Ok(tighten)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_others_may_write_or_own_are_refused() {
        use Sensitivity::*;
        assert_eq!(judge_file(0, 0o644, 0, Integrity), Ok(()));
        assert_eq!(judge_file(1000, 0o600, 1000, Secret), Ok(()));
        // Root's files are trusted by every user (a mounted ConfigMap).
        assert_eq!(judge_file(0, 0o644, 1000, Integrity), Ok(()));
        let e = judge_file(1001, 0o600, 0, Secret).unwrap_err();
        assert!(e.contains("owned by uid 1001"), "{e}");
        let e = judge_file(0, 0o666, 0, Integrity).unwrap_err();
        assert!(e.contains("writable") && e.contains("0666"), "{e}");
        assert!(judge_file(0, 0o620, 0, Integrity).is_err());
        let e = judge_file(0, 0o640, 0, Secret).unwrap_err();
        assert!(e.contains("readable"), "{e}");
        assert_eq!(judge_file(0, 0o640, 0, Integrity), Ok(()));
    }

    #[test]
    fn state_directories_others_may_write_are_refused_readable_ones_tightened() {
        assert_eq!(judge_dir(0, 0o700, 0), Ok(false));
        assert_eq!(judge_dir(0, 0o755, 0), Ok(true));
        assert!(judge_dir(0, 0o777, 0).unwrap_err().contains("writable"));
        assert!(judge_dir(0, 0o1777, 0).is_err());
        assert!(judge_dir(0, 0o770, 0).is_err());
        // A directory of root's is not a non-root agent's own.
        assert!(judge_dir(0, 0o700, 1000)
            .unwrap_err()
            .contains("owned by uid 0"));
    }

    #[test]
    fn checks_read_real_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        assert_eq!(private_dir(&state), Ok(false));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(private_dir(&state), Ok(true));
        assert_eq!(mode(&state), 0o700);
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = private_dir(&state).unwrap_err().to_string();
        assert!(e.contains("writable") && e.contains("chmod 700"), "{e}");
        assert_eq!(mode(&state), 0o777, "a refused directory is left as it was");

        let key = dir.path().join("wg.key");
        std::fs::write(&key, "x").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(check_file(&key, Sensitivity::Secret).is_err());
        assert_eq!(check_file(&key, Sensitivity::Integrity), Ok(()));
        assert_eq!(
            check_file(&dir.path().join("none"), Sensitivity::Secret),
            Ok(())
        );
    }
}
