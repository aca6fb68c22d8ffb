//! Rollout health checks: what a manifest's `rollout.health` asks the node to check on itself once the
//! manifest's resources are ready (an HTTP GET, a TCP connect, a command). Each check has
//! [`CHECK_TIMEOUT`]; a manifest is healthy when all of its pass. A command runs exactly as a task would,
//! under the node's policy (`--allow-exec` / `--allow-shell`): one the policy refuses fails the check.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use drover_types::manifest::ManifestHealth;
use drover_types::rollout::HealthCheck;
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::policy::Policy;
use crate::tasks::exec::{self, ExecRequest};

/// How long one check may take, connecting included: a check that hangs is failing.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a command past its limit has between SIGTERM and SIGKILL.
const COMMAND_GRACE: Duration = Duration::from_millis(500);
/// Output of a failing command kept for its reason.
const OUTPUT_KEPT: usize = 200;
/// Where distributions keep the CA bundle `https` checks trust (the agent carries no root store).
const CA_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// Runs a manifest's checks, all at once, and says how they went; the reason names the first failing one.
pub async fn check_manifest(
    manifest: &str,
    checks: Vec<HealthCheck>,
    policy: Arc<Policy>,
) -> ManifestHealth {
    let mut runs = tokio::task::JoinSet::new();
    for (i, check) in checks.into_iter().enumerate() {
        let policy = policy.clone();
        runs.spawn(async move { (i, run(&check, &policy).await, check) });
    }
    let mut failures = Vec::new();
    while let Some(done) = runs.join_next().await {
        match done {
            Ok((_, Ok(()), _)) => {}
            Ok((i, Err(why), check)) => failures.push((i, format!("{}: {why}", describe(&check)))),
            Err(e) => failures.push((usize::MAX, format!("the check stopped: {e}"))),
        }
    }
    failures.sort();
    ManifestHealth {
        manifest: manifest.to_string(),
        healthy: failures.is_empty(),
        reason: failures.into_iter().next().map(|(_, why)| why),
    }
}

/// A check as its reason names it.
pub fn describe(check: &HealthCheck) -> String {
    match check {
        HealthCheck::Http { url, .. } => format!("http GET {url}"),
        HealthCheck::Tcp { address } => format!("tcp {address}"),
        HealthCheck::Command(argv) => format!("command {argv:?}"),
    }
}

/// One check, within [`CHECK_TIMEOUT`].
pub async fn run(check: &HealthCheck, policy: &Policy) -> Result<(), String> {
    run_within(check, policy, CHECK_TIMEOUT).await
}

async fn run_within(check: &HealthCheck, policy: &Policy, limit: Duration) -> Result<(), String> {
    let late = || Err(format!("no answer within {limit:?}"));
    let connect = async {
        match check {
            HealthCheck::Http { url, expect_status } => {
                http_get(url, expect_status.unwrap_or(200)).await
            }
            HealthCheck::Tcp { address } => TcpStream::connect(address.as_str())
                .await
                .map(drop)
                .map_err(|e| format!("cannot connect: {e}")),
            // A command stops itself at the limit, its whole process group with it (dropping it would
            // kill the program alone and leave what it started).
            HealthCheck::Command(argv) => return command(argv, policy, limit).await,
        }
    };
    tokio::time::timeout(limit, connect)
        .await
        .unwrap_or_else(|_| late())
}

/// A GET answering `expect`; the body is not read.
async fn http_get(url: &str, expect: u16) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err("the URL must start with http:// or https://".into()),
    };
    let (host, authority) = match (uri.host(), uri.authority()) {
        (Some(h), Some(a)) => (h.trim_start_matches('[').trim_end_matches(']'), a.as_str()),
        _ => return Err("the URL names no host".into()),
    };
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let status = if https {
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| format!("{host:?} is not a TLS server name: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(tls_config()?)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        get(tls, authority, path).await?
    } else {
        get(tcp, authority, path).await?
    };
    if status == expect {
        Ok(())
    } else {
        Err(format!("answered {status}, expected {expect}"))
    }
}

/// One HTTP/1.1 GET over `io`; its status.
async fn get<T>(io: T, authority: &str, path: &str) -> Result<u16, String>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    // The connection ends with the check (dropped at its end or its timeout).
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::USER_AGENT, "drover-agent health check")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("HTTP: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    Ok(response.status().as_u16())
}

/// The TLS client of `https` checks, trusting the system's CA bundle; read once.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            use rustls::pki_types::{CertificateDer, pem::PemObject};
            let mut roots = rustls::RootCertStore::empty();
            for bundle in CA_BUNDLES {
                if let Ok(pem) = std::fs::read(bundle) {
                    for cert in CertificateDer::pem_slice_iter(&pem).flatten() {
                        // A certificate rustls cannot use is skipped, as every TLS client does.
                        let _ = roots.add(cert);
                    }
                }
            }
            if roots.is_empty() {
                return Err(format!(
                    "no CA certificates on this node to check https with (looked in {})",
                    CA_BUNDLES.join(", ")
                ));
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
                .map_err(|e| format!("TLS: {e}"))
        })
        .clone()
}

/// A command exiting 0, run as a task with the same argv would be (the node's policy first).
async fn command(argv: &[String], policy: &Policy, limit: Duration) -> Result<(), String> {
    let request = ExecRequest {
        argv: argv.to_vec(),
        shell: None,
        env: Default::default(),
        cwd: None,
        user: None,
        timeout: Some(limit),
        grace: COMMAND_GRACE,
    };
    let (emit, mut output) = mpsc::channel::<(u8, Vec<u8>)>(16);
    // Held until the command ends: a dropped canceller would mean "never cancelled" anyway.
    let (_cancel, cancelled) = watch::channel(false);
    // The output is drained while the command runs (a full pipe would stall it); the tail is kept.
    let tail = async {
        let mut tail: Vec<u8> = Vec::new();
        while let Some((_, chunk)) = output.recv().await {
            tail.extend_from_slice(&chunk);
            let excess = tail.len().saturating_sub(OUTPUT_KEPT);
            tail.drain(..excess);
        }
        tail
    };
    let (ended, tail) = tokio::join!(exec::run(request, policy, emit, cancelled), tail);
    let said = String::from_utf8_lossy(&tail).trim().to_string();
    let said = if said.is_empty() {
        String::new()
    } else {
        format!(": {said}")
    };
    match (ended.state, ended.exit_code) {
        ("Succeeded", _) => Ok(()),
        ("Refused" | "Error", _) => Err(ended.error),
        ("TimedOut", _) => Err(format!("no answer within {limit:?}")),
        (_, Some(code)) => Err(format!("exited with {code}{said}")),
        (_, None) => Err(format!(
            "killed by signal {}{said}",
            ended.signal.unwrap_or_default()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A listener answering every request with `status`; its address.
    async fn answering(status: u16) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await;
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            }
        });
        address
    }

    /// An address nothing listens on.
    async fn closed() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().to_string()
    }

    fn http(address: &str, expect: Option<u16>) -> HealthCheck {
        HealthCheck::Http {
            url: format!("http://{address}/health"),
            expect_status: expect,
        }
    }

    fn policy() -> Policy {
        Policy::new(&[])
    }

    #[tokio::test]
    async fn http_checks_want_their_status_and_tcp_checks_a_connection() {
        let ok = answering(200).await;
        let broken = answering(500).await;
        let p = policy();
        assert_eq!(run(&http(&ok, None), &p).await, Ok(()));
        assert_eq!(
            run(&http(&broken, None), &p).await,
            Err("answered 500, expected 200".into())
        );
        assert_eq!(run(&http(&broken, Some(500)), &p).await, Ok(()));
        let tcp = |address: &str| HealthCheck::Tcp {
            address: address.into(),
        };
        assert_eq!(run(&tcp(&ok), &p).await, Ok(()));
        let refused = run(&tcp(&closed().await), &p).await.unwrap_err();
        assert!(refused.starts_with("cannot connect"), "{refused}");
    }

    #[tokio::test]
    async fn a_check_that_hangs_fails_at_its_timeout() {
        // Accepts and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let limit = Duration::from_millis(300);
        let result = run_within(&http(&address, None), &policy(), limit).await;
        assert_eq!(result, Err("no answer within 300ms".into()));
        let mut shell = policy();
        shell.allow_shell = true;
        let sleeper = HealthCheck::Command(vec!["sleep".into(), "30".into()]);
        let started = std::time::Instant::now();
        let result = run_within(&sleeper, &shell, limit).await;
        assert_eq!(result, Err("no answer within 300ms".into()));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "stopped, not waited for"
        );
        drop(listener);
    }

    #[tokio::test]
    async fn a_command_runs_only_as_the_policy_allows_and_the_report_names_the_first_failure() {
        let argv = |a: &[&str]| HealthCheck::Command(a.iter().map(|s| s.to_string()).collect());
        let refused = run(&argv(&["true"]), &policy()).await.unwrap_err();
        assert!(refused.contains("rule allow-exec"), "{refused}");
        let mut shell = policy();
        shell.allow_shell = true;
        assert_eq!(run(&argv(&["true"]), &shell).await, Ok(()));
        let failed = run(&argv(&["sh", "-c", "echo down >&2; exit 3"]), &shell)
            .await
            .unwrap_err();
        assert_eq!(failed, "exited with 3: down");
        let mut exec = policy();
        exec.allow_exec = vec![exec::resolve_program("true").unwrap()];
        assert_eq!(run(&argv(&["true"]), &exec).await, Ok(()));

        let ok = answering(200).await;
        let health = check_manifest(
            "web",
            vec![
                http(&ok, None),
                argv(&["false"]),
                HealthCheck::Tcp {
                    address: closed().await,
                },
            ],
            Arc::new(shell),
        )
        .await;
        assert!(!health.healthy);
        assert_eq!(
            health.reason.as_deref(),
            Some("command [\"false\"]: exited with 1")
        );
        let health = check_manifest("web", vec![http(&ok, None)], Arc::new(policy())).await;
        assert_eq!((health.healthy, health.reason), (true, None));
    }
}
