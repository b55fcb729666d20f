//! A real PostgreSQL server for tests: `initdb` in a temporary directory, `postgres` on a
//! free loopback port (and a Unix socket in that directory), password authentication over
//! TCP. Stopped and removed when the handle drops.
//!
//! The server binaries come from `$STRAIT_PG_BIN`, else `pg_config --bindir`, else the
//! newest `/usr/lib/postgresql/*/bin` (Debian's layout). PostgreSQL refuses to run as root,
//! so as root the server runs as `nobody`.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The user the server runs as when the tests run as root.
const NOBODY: u32 = 65534;
/// The superuser `initdb` creates, and its password.
pub const USER: &str = "strait";
pub const PASSWORD: &str = "test-only-password";

/// Where the PostgreSQL server binaries are, or how to install them.
pub fn bin_dir() -> Result<PathBuf> {
    let has_server = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    if let Some(dir) = std::env::var_os("STRAIT_PG_BIN") {
        let dir = PathBuf::from(dir);
        if has_server(&dir) {
            return Ok(dir);
        }
        bail!("STRAIT_PG_BIN={} has no initdb and postgres", dir.display());
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server(&dir) {
            return Ok(dir);
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let dir = e.path().join("bin");
            has_server(&dir).then_some((version, dir))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, dir)) => Ok(dir),
        None => bail!(
            "the PostgreSQL server binaries (initdb, postgres) were not found: install them \
             (Debian/Ubuntu: `apt-get install postgresql`), or point STRAIT_PG_BIN at their directory"
        ),
    }
}

/// Whether this process runs as root (PostgreSQL will not).
fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A free TCP port on loopback (bound and released; used at once).
pub fn free_tcp_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    l.local_addr().expect("local addr").port()
}

/// A running PostgreSQL server.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    child: Option<Child>,
    pub port: u16,
    as_nobody: bool,
}

impl Postgres {
    /// `initdb` and start a server; waits until it accepts connections.
    pub fn start() -> Result<Postgres> {
        let bin = bin_dir()?;
        let dir = tempfile::Builder::new().prefix("strait-pg-").tempdir()?;
        let as_nobody = running_as_root();
        if as_nobody {
            std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY))
                .context("handing the data directory to nobody")?;
        }
        let run = |cmd: &mut Command| {
            if as_nobody {
                cmd.uid(NOBODY).gid(NOBODY);
            }
            // Locale-independent and quiet.
            cmd.env("LC_ALL", "C").env_remove("PGDATA");
        };
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, PASSWORD)?;
        if as_nobody {
            std::os::unix::fs::chown(&pwfile, Some(NOBODY), Some(NOBODY))?;
        }
        let data = dir.path().join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", USER, "-E", "UTF8", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()));
        run(&mut initdb);
        let out = initdb.output().context("running initdb")?;
        if !out.status.success() {
            bail!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut pg = Postgres {
            dir,
            bin,
            child: None,
            port: free_tcp_port(),
            as_nobody,
        };
        pg.launch()?;
        Ok(pg)
    }

    /// Starts `postgres` on the data directory (again, after [`Postgres::stop`]: same port,
    /// same data) and waits until it accepts connections.
    pub fn launch(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("postgres is running already");
        }
        let port = self.port;
        let log = self.dir.path().join("postgres.log");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &port.to_string()])
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=60"])
            .args(["-c", "shared_buffers=16MB"])
            .env("LC_ALL", "C")
            .env_remove("PGDATA")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        if self.as_nobody {
            cmd.uid(NOBODY).gid(NOBODY);
        }
        self.child = Some(cmd.spawn().context("starting postgres")?);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!("postgres exited ({status}):\n{}", self.log_text());
            }
            if Instant::now() > deadline {
                bail!(
                    "postgres did not accept connections in 30 s:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Turns TLS on with this certificate chain and key (PEM); clients that ask for TLS get
    /// it from then on.
    pub fn enable_tls(&self, cert_pem: &str, key_pem: &str) -> Result<()> {
        let data = self.dir.path().join("data");
        for (name, text) in [("server.crt", cert_pem), ("server.key", key_pem)] {
            let path = data.join(name);
            std::fs::write(&path, text)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            if self.as_nobody {
                std::os::unix::fs::chown(&path, Some(NOBODY), Some(NOBODY))?;
            }
        }
        self.psql("postgres", "ALTER SYSTEM SET ssl = on")?;
        self.psql("postgres", "SELECT pg_reload_conf()")?;
        std::thread::sleep(Duration::from_millis(300));
        let on = self.psql("postgres", "SHOW ssl")?;
        if on.trim() != "on" {
            bail!("ssl stayed {on:?}:\n{}", self.log_text());
        }
        Ok(())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// `postgres://strait:<password>@127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs `sql` with psql (over the Unix socket) in database `db`; returns its output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        let out = Command::new(self.bin.join("psql"))
            .arg("-h")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-U", USER, "-d", db])
            .args(["-v", "ON_ERROR_STOP=1", "-X", "-q", "-A", "-t", "-c", sql])
            .output()
            .context("running psql")?;
        if !out.status.success() {
            bail!("psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates database `name` and returns its URL.
    pub fn create_database(&self, name: &str) -> Result<String> {
        self.psql("postgres", &format!("CREATE DATABASE {name}"))?;
        Ok(self.url(name))
    }

    /// Stops the server (fast shutdown), waiting for it to exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- log of postgres ---\n{}", self.log_text());
        }
    }
}
