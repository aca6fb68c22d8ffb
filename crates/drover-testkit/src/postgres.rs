//! A real, throwaway PostgreSQL cluster for tests: made with `initdb` in a temp dir, owned by the
//! `postgres` user when the tests run as root (PostgreSQL refuses to run as root), listening on a free
//! loopback port with its socket in the same temp dir; stopped and removed when the handle drops, which
//! also happens when the test fails. Needs PostgreSQL's server binaries (`scripts/testbed.sh` installs
//! `postgresql`; `DROVER_PG_BIN` may point at another `bin` dir).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, bail};

use crate::free_port;

pub struct Postgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub port: u16,
    /// Run PostgreSQL's programs as this user (the tests run as root), or as ourselves.
    run_as: Option<String>,
    started: bool,
    /// `synchronous_commit=on`: commits survive `kill`.
    durable: bool,
    /// TLS on and required (`hostssl` lines only in pg_hba.conf), with these certificates.
    tls: Option<crate::TestCerts>,
}

/// PostgreSQL's `bin` dir: `DROVER_PG_BIN`, else the newest under /usr/lib/postgresql (Debian's layout).
fn find_bin() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("DROVER_PG_BIN") {
        let dir = PathBuf::from(dir);
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
        bail!("DROVER_PG_BIN={} has no initdb", dir.display());
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => Ok(bin),
        None => bail!(
            "PostgreSQL is not installed: no /usr/lib/postgresql/*/bin/initdb (run scripts/testbed.sh, which \
             installs the `postgresql` package, or set DROVER_PG_BIN to a PostgreSQL bin dir)"
        ),
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl Postgres {
    /// Makes and starts a fresh cluster. Fails, saying what is missing, when PostgreSQL is not installed.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(false)
    }

    /// As `start`, with each commit written out before it returns (`synchronous_commit=on`), so a commit
    /// survives `kill`: for tests that crash the database and count what is kept. (`fsync` stays off:
    /// the machine does not crash, only PostgreSQL.)
    pub fn start_durable() -> anyhow::Result<Self> {
        Self::start_with(true)
    }

    /// As `start`, with TLS required on TCP: `ssl = on` with a certificate for `localhost` and 127.0.0.1
    /// signed by a fresh CA (`ca_path`), and only `hostssl` lines in pg_hba.conf, so a plain TCP
    /// connection is refused ("no pg_hba.conf entry ... no encryption"). The unix socket stays open.
    pub fn start_tls() -> anyhow::Result<Self> {
        Self::start_as(false, true)
    }

    fn start_with(durable: bool) -> anyhow::Result<Self> {
        Self::start_as(durable, false)
    }

    fn start_as(durable: bool, tls: bool) -> anyhow::Result<Self> {
        let bin = find_bin()?;
        let dir = tempfile::Builder::new().prefix("drover-pg").tempdir()?;
        let run_as = if is_root() {
            let uid = Command::new("id")
                .args(["-u", "postgres"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<u32>().ok())
                .context(
                    "there is no `postgres` user to run PostgreSQL as (the tests run as root): install \
                     the `postgresql` package (scripts/testbed.sh)",
                )?;
            std::os::unix::fs::chown(dir.path(), Some(uid), None)
                .context("cannot hand the cluster's temp dir to the postgres user")?;
            Some("postgres".to_string())
        } else {
            None
        };
        let mut pg = Self {
            bin,
            dir,
            port: free_port(),
            run_as,
            started: false,
            durable,
            tls: None,
        };
        let data = pg.data_dir();
        let data = data
            .to_str()
            .context("temp dir path is not UTF-8")?
            .to_string();
        let data = data.as_str();
        pg.run(
            "initdb",
            &[
                "-D",
                data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        if tls {
            pg.require_tls()?;
        }
        pg.start_again()?;
        Ok(pg)
    }

    /// Certificates for the cluster (the key readable by its owner only, as PostgreSQL demands) and a
    /// pg_hba.conf that takes TCP connections over TLS only.
    fn require_tls(&mut self) -> anyhow::Result<()> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let certs = crate::TestCerts::make(self.dir.path(), "pg")?;
        let owner = std::fs::metadata(self.dir.path())?.uid();
        std::fs::set_permissions(&certs.key, std::fs::Permissions::from_mode(0o600))?;
        for file in [&certs.key, &certs.cert] {
            std::os::unix::fs::chown(file, Some(owner), None)
                .context("cannot hand the certificate to the cluster's user")?;
        }
        std::fs::write(
            self.data_dir().join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
        )?;
        self.tls = Some(certs);
        Ok(())
    }

    /// The CA that signed the server's certificate (`start_tls`), for `sslrootcert=`.
    pub fn ca_path(&self) -> Option<&Path> {
        self.tls.as_ref().map(|c| c.ca.as_path())
    }

    /// Starts the stopped cluster again, on the same port and data.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        let data = self.data_dir();
        let data = data.to_str().context("temp dir path is not UTF-8")?;
        // A throwaway cluster: durability off for speed; the socket beside the data, not in /run.
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit={} \
             -c full_page_writes=off -c max_connections=400",
            self.port,
            self.dir.path().display(),
            if self.durable { "on" } else { "off" }
        );
        if let Some(certs) = &self.tls {
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                certs.cert.display(),
                certs.key.display()
            ));
        }
        let log = self.dir.path().join("log");
        let log = log.to_str().context("temp dir path is not UTF-8")?;
        self.started = true;
        self.run(
            "pg_ctl",
            &["-D", data, "-o", &options, "-l", log, "-w", "start"],
        )
        .with_context(|| format!("PostgreSQL did not start; its log:\n{}", self.log()))?;
        Ok(())
    }

    /// Stops the cluster as a crash would (`immediate`: no checkpoint, connections cut); `start_again`
    /// recovers it.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if self.started {
            self.started = false;
            let data = self.data_dir();
            let data = data.to_str().context("temp dir path is not UTF-8")?;
            self.run("pg_ctl", &["-D", data, "-m", "immediate", "-w", "stop"])?;
        }
        Ok(())
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match &self.run_as {
            Some(user) => {
                let mut cmd = Command::new("runuser");
                cmd.args(["-u", user, "--"]).arg(path);
                cmd
            }
            None => Command::new(path),
        }
    }

    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        let out = self
            .command(program)
            .args(args)
            // The cluster's temp dir, not ours: the postgres user may not enter the caller's cwd.
            .current_dir(self.dir.path())
            .output()
            .with_context(|| format!("cannot run {program}"))?;
        if !out.status.success() {
            bail!(
                "{program} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }

    /// Makes a database in the cluster.
    pub fn create_database(&self, name: &str) -> anyhow::Result<()> {
        let port = self.port.to_string();
        self.run(
            "psql",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-q",
                "-c",
                &format!("CREATE DATABASE \"{name}\""),
            ],
        )
        .map(|_| ())
    }

    /// The URL of a database, over TCP on loopback.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The dir holding the cluster's unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the cluster now (dropping the handle also does).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if self.started {
            self.started = false;
            let data = self.data_dir();
            let data = data.to_str().context("temp dir path is not UTF-8")?;
            self.run("pg_ctl", &["-D", data, "-m", "fast", "-w", "stop"])?;
        }
        Ok(())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("cannot stop the test PostgreSQL: {e}");
        }
    }
}
