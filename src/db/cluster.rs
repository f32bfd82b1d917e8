//! The zero-config private PostgreSQL cluster under `DATA_DIR/postgres`.
//!
//! Initialised from the PostgreSQL binaries installed on the machine, listening on a
//! unix socket only, reused on the next start and stopped on shutdown by the process
//! that started it. PostgreSQL refuses to run as root, so when this process is root the
//! cluster runs as the unprivileged `postgres` system user, which owns the data dir.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{Context, bail};
use sqlx::postgres::PgConnectOptions;
use tokio::process::Command;

/// The port only names the socket file; nothing listens on TCP.
const PORT: u16 = 5432;
/// Longest unix socket path the kernel takes is 107 bytes; leave room for the file name.
const MAX_SOCKET_DIR: usize = 90;

/// A running private cluster.
#[derive(Debug)]
pub struct PrivateCluster {
    data_dir: PathBuf,
    socket_dir: PathBuf,
    bin_dir: PathBuf,
    run_as: Option<String>,
    /// Whether this process started the server (and so stops it).
    owned: bool,
}

impl PrivateCluster {
    /// Initialises (first time) and starts (unless already running) the cluster in `dir`.
    pub async fn ensure(dir: &Path) -> anyhow::Result<Self> {
        let bin_dir = find_bin_dir()?;
        std::fs::create_dir_all(dir.join("data")).with_context(|| format!("cannot create {}", dir.display()))?;
        let root = std::fs::canonicalize(dir)?;
        let data_dir = root.join("data");
        let socket_dir = socket_dir_for(&root);
        let run_as = if is_root() { Some("postgres".to_string()) } else { None };
        let cluster = Self { data_dir, socket_dir, bin_dir, run_as, owned: false };
        cluster.prepare_dirs()?;
        if !cluster.data_dir.join("PG_VERSION").exists() {
            cluster.initdb().await?;
        }
        cluster.start().await
    }

    /// Connection options for the cluster's `postgres` database over the socket.
    pub fn connect_options(&self) -> PgConnectOptions {
        PgConnectOptions::new().socket(&self.socket_dir).port(PORT).username("postgres").database("postgres")
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Whether this process started the server.
    pub fn owned(&self) -> bool {
        self.owned
    }

    /// Stops the server if this process started it (fast shutdown: open sessions end).
    pub async fn stop(&self) -> anyhow::Result<()> {
        if !self.owned {
            return Ok(());
        }
        let data = self.data_dir.display().to_string();
        let out = self.pg_ctl(&["-D", &data, "-m", "fast", "-w", "stop"]).await?;
        if !out.status.success() {
            bail!("pg_ctl stop failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        tracing::info!(data_dir = %self.data_dir.display(), "private PostgreSQL stopped");
        Ok(())
    }

    fn prepare_dirs(&self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.socket_dir)?;
        if let Some(user) = &self.run_as {
            // The server's user must own its directories, and reach them.
            let root = self.data_dir.parent().unwrap_or(&self.data_dir).to_path_buf();
            for dir in [&root, &self.socket_dir] {
                let status = std::process::Command::new("chown")
                    .args(["-R", &format!("{user}:{user}"), &dir.display().to_string()])
                    .status()
                    .context("cannot run chown")?;
                if !status.success() {
                    bail!(
                        "cannot hand {} to the '{user}' system user, which PostgreSQL needs when started as root; \
                         create the user (apt-get install postgresql) or run as a normal user",
                        dir.display()
                    );
                }
            }
            let probe = std::process::Command::new("runuser")
                .args(["-u", user, "--", "test", "-w", &self.data_dir.display().to_string()])
                .status();
            if !matches!(probe, Ok(s) if s.success()) {
                bail!(
                    "the '{user}' system user cannot reach {}: move DATA_DIR under a directory it can traverse (e.g. /var/tmp) or set DATABASE_URL",
                    self.data_dir.display()
                );
            }
            tracing::info!(user, "running as root: the private PostgreSQL cluster runs as the '{user}' system user");
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.data_dir, std::fs::Permissions::from_mode(0o700))?;
        // Only the server's user (and root) may reach the socket.
        std::fs::set_permissions(&self.socket_dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(())
    }

    async fn initdb(&self) -> anyhow::Result<()> {
        tracing::info!(data_dir = %self.data_dir.display(), "initialising a private PostgreSQL cluster");
        let data = self.data_dir.display().to_string();
        let out = self
            .run(
                &self.bin_dir.join("initdb"),
                &["-D", &data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"],
            )
            .await?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        // Unix socket only, in a directory of our own.
        let conf = format!(
            "\n# data-export private cluster\nlisten_addresses = ''\nunix_socket_directories = '{}'\nunix_socket_permissions = 0700\nport = {PORT}\nmax_connections = 200\nfsync = on\n",
            self.socket_dir.display()
        );
        let conf_path = self.data_dir.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path)?;
        text.push_str(&conf);
        std::fs::write(&conf_path, text)?;
        Ok(())
    }

    async fn start(mut self) -> anyhow::Result<Self> {
        let data = self.data_dir.display().to_string();
        let status = self.pg_ctl(&["-D", &data, "status"]).await?;
        if status.status.success() {
            tracing::info!(data_dir = %data, "reusing the running private PostgreSQL cluster");
            return Ok(self);
        }
        // A stale pid file from a crash is handled by postgres itself.
        let log = self.data_dir.join("server.log").display().to_string();
        let out = self.pg_ctl(&["-D", &data, "-l", &log, "-w", "-t", "60", "start"]).await?;
        if !out.status.success() {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let last = tail.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
            bail!("the private PostgreSQL cluster in {data} did not start: {last}");
        }
        self.owned = true;
        tracing::info!(data_dir = %data, "private PostgreSQL started");
        Ok(self)
    }

    async fn pg_ctl(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        self.run(&self.bin_dir.join("pg_ctl"), args).await
    }

    async fn run(&self, program: &Path, args: &[&str]) -> anyhow::Result<std::process::Output> {
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.args(args).stdin(Stdio::null()).current_dir(&self.data_dir);
        cmd.output().await.with_context(|| format!("cannot run {}", program.display()))
    }
}

/// Finds the newest PostgreSQL server binaries: `/usr/lib/postgresql/<major>/bin`, then `PATH`.
pub fn find_bin_dir() -> anyhow::Result<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Ok(bin);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").exists() && dir.join("pg_ctl").exists() {
                return Ok(dir);
            }
        }
    }
    bail!(
        "no PostgreSQL server binaries found (looked for initdb in /usr/lib/postgresql/*/bin and on PATH): \
         install them (apt-get install postgresql) or set DATABASE_URL"
    )
}

/// `<root>/run`, or a short directory under /tmp when that path is too long for a socket.
fn socket_dir_for(root: &Path) -> PathBuf {
    let dir = root.join("run");
    if dir.as_os_str().len() <= MAX_SOCKET_DIR {
        return dir;
    }
    // Too long for a socket path: a short directory under /tmp named after the data dir.
    use sha2::Digest;
    let hash = hex::encode(&sha2::Sha256::digest(root.as_os_str().as_encoded_bytes())[..8]);
    PathBuf::from(format!("/tmp/data-export-pg-{hash}"))
}

fn is_root() -> bool {
    // SAFETY-free check: the effective uid from /proc, avoiding a libc dependency.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_data_dirs_get_a_short_socket_dir() {
        let long = PathBuf::from(format!("/{}", "x".repeat(120)));
        let s = socket_dir_for(&long);
        assert!(s.as_os_str().len() < MAX_SOCKET_DIR);
        assert_eq!(s, socket_dir_for(&long), "stable across starts");
        assert_eq!(socket_dir_for(Path::new("/d")), PathBuf::from("/d/run"));
    }
}
