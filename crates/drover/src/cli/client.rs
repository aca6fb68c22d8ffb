//! The REST client the CLI uses, with errors that say what to do next.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use drover_types::api::ErrorBody;
use reqwest::{Method, StatusCode};
use serde::{Serialize, de::DeserializeOwned};

use super::safe::safe;
use super::{Global, config, default_data_dir};

const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";
/// The CA certificate in a server's data dir.
const LOCAL_CA_FILE: &str = "ca.crt";
/// How long an ordinary request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A followed stream with no byte (the server sends a keep-alive every 15 s) for this long is dead.
const STREAM_IDLE: Duration = Duration::from_secs(45);
/// How long a follower keeps trying to reach the server again before it gives up (exit 5).
pub const RECONNECT_FOR: Duration = Duration::from_secs(300);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Messages that carry what a server (or whatever answered in its place) said are shown escaped
/// ([`safe`]): a control character in an error must not reach the terminal.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no operator token: {} {reason}. If the server keeps its data elsewhere (`drover up --data-dir D`), pass \
         --data-dir D or set DROVER_DATA_DIR=D; for another server pass --token (or DROVER_TOKEN), or run \
         `drover login URL --token …` once",
        path.display()
    )]
    NoToken { path: PathBuf, reason: String },
    /// A token would go where it does not belong (docs/security.md): nothing was sent.
    #[error("{message}")]
    TokenWithheld { message: String },
    /// The command line cannot work as given (exit 2).
    #[error("{message}")]
    Usage { message: String },
    #[error(
        "cannot reach the drover server at {}: {} (is `drover server` running? set --server or DROVER_SERVER)",
        safe(url),
        safe(message)
    )]
    Unreachable { url: String, message: String },
    #[error("{}", safe(message))]
    Api {
        status: u16,
        message: String,
        action: Option<drover_types::action::ActionError>,
    },
    #[error("unexpected answer from {}: {}", safe(url), safe(message))]
    Protocol { url: String, message: String },
}

pub struct Client {
    http: reqwest::Client,
    /// The servers, in order: `--server` repeated names replicas. `current` is the one that last answered.
    bases: Vec<String>,
    current: AtomicUsize,
    token: String,
    /// Added to a 403 that is about the caller's role: how to run the command as an admin instead.
    forbidden_hint: Option<String>,
}

/// Where a command goes and with what: from flags and environment first, then the chosen context of the
/// operator's config, then the local server's admin token.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub base: String,
    /// Further servers (replicas) tried in order when `base` cannot be reached.
    pub others: Vec<String>,
    pub token: String,
    /// The pinned CA (PEM) to verify an `https` server with.
    pub ca: Option<String>,
    /// What a 403 about the caller's role adds: where the admin's token is.
    pub forbidden_hint: Option<String>,
}

fn trim_url(url: &str) -> &str {
    url.trim_end_matches('/')
}

/// Whether `host` (as a URL spells it, IPv6 in brackets) is this machine's loopback: what goes there
/// never leaves the host.
pub fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether `url` (already normalized: it parses) names a server on loopback.
fn on_loopback(url: &str) -> bool {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(is_loopback_host))
        .unwrap_or(false)
}

/// Whether `url` (already normalized) is plain HTTP to a host that is not this machine.
fn plain_http_off_host(url: &str) -> bool {
    url.starts_with("http://") && !on_loopback(url)
}

/// A `--server` as given, made a URL: `host:port` without a scheme means `http://` on loopback (where
/// plain HTTP never leaves the machine) and is refused elsewhere, naming both schemes.
pub fn normalize_server(given: &str) -> Result<String, ClientError> {
    let text = trim_url(given.trim());
    let usage = |message: String| ClientError::Usage { message };
    let url = if text.contains("://") {
        text.to_string()
    } else {
        let guess = format!("http://{text}");
        match reqwest::Url::parse(&guess) {
            Ok(u) if u.host_str().is_some_and(is_loopback_host) => guess,
            _ => {
                return Err(usage(format!(
                    "--server {given:?} names no scheme: use https://{text} (a server started with --api-tls) or \
                     http://{text} (plain HTTP; a token goes in the clear only to loopback, or with \
                     --insecure-send-token-over-http)"
                )));
            }
        }
    };
    let parsed = reqwest::Url::parse(&url).map_err(|e| {
        usage(format!(
            "--server {given:?} is not a URL ({e}): use one like http://127.0.0.1:8080 or https://cp.example.com:8080"
        ))
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(usage(format!(
            "--server {given:?} is not a drover server URL: use http://HOST:PORT or https://HOST:PORT"
        )));
    }
    Ok(url)
}

/// Where the token of a command came from, for the refusals and advice that name it.
enum TokenSource<'a> {
    Flag,
    Context(&'a str, &'a config::Context),
    DataDir,
}

impl Target {
    pub fn resolve(global: &Global) -> anyhow::Result<Self> {
        let path = config::path();
        // A broken config file must not break a command that names its server and token.
        let config =
            if global.context.is_some() || global.server.is_empty() || global.token.is_none() {
                config::load(&path)?
            } else {
                config::OperatorConfig::default()
            };
        Self::from_parts(global, &config, &path)
    }

    fn from_parts(
        global: &Global,
        config: &config::OperatorConfig,
        path: &std::path::Path,
    ) -> anyhow::Result<Self> {
        let named = global.context.as_ref().or(config.current.as_ref());
        let context = named_context(global, config, named, path)?;
        // A context applies unless --server names another server: its token must never go elsewhere.
        let first = global
            .server
            .first()
            .map(|s| normalize_server(s))
            .transpose()?;
        let context = context_for_server(global, named, context, first.as_deref())?;
        let base = match first {
            Some(f) => f,
            None => normalize_server(context.map(|c| c.server.as_str()).unwrap_or(DEFAULT_SERVER))?,
        };
        let others = other_servers(global, &base)?;
        let servers: Vec<&String> = std::iter::once(&base).chain(&others).collect();
        let data_dir = global.data_dir.clone().unwrap_or_else(default_data_dir);
        let (token, source) = token_of(global, named, context, &data_dir, &servers)?;
        refuse_token_in_clear(global, &source, &servers)?;
        // Without a context, a local server's own CA (beside its admin token) verifies `--api-tls`.
        let ca = match context {
            Some(c) => c.ca.clone(),
            None if base.starts_with("https://") => {
                std::fs::read_to_string(data_dir.join(LOCAL_CA_FILE)).ok()
            }
            None => None,
        };
        let forbidden_hint = forbidden_hint(&source, &data_dir);
        Ok(Self {
            base,
            others,
            token,
            ca,
            forbidden_hint,
        })
    }
}

/// The context named by --context or the config's current one; an unknown --context is a usage error.
fn named_context<'a>(
    global: &Global,
    config: &'a config::OperatorConfig,
    named: Option<&String>,
    path: &std::path::Path,
) -> anyhow::Result<Option<&'a config::Context>> {
    Ok(match named {
        Some(name) => match config.contexts.get(name) {
            Some(c) => Some(c),
            None if global.context.is_some() => super::usage::usage!(
                "no context is named {name:?} in {} (see `drover context list`)",
                path.display()
            ),
            None => None,
        },
        None => None,
    })
}

/// The context, unless --server names another server: dropped when it was the current one, a usage
/// error when --context named it.
fn context_for_server<'a>(
    global: &Global,
    named: Option<&String>,
    context: Option<&'a config::Context>,
    first: Option<&str>,
) -> anyhow::Result<Option<&'a config::Context>> {
    Ok(match (context, first) {
        (Some(c), Some(server)) if server != trim_url(&c.server) => {
            if global.context.is_some() {
                super::usage::usage!(
                    "--server {server} is not the server of context {:?} ({})",
                    named.map(String::as_str).unwrap_or_default(),
                    c.server
                );
            }
            None
        }
        (c, _) => c,
    })
}

/// The replicas after the first --server, normalized, without repeats.
fn other_servers(global: &Global, base: &str) -> Result<Vec<String>, ClientError> {
    let mut others: Vec<String> = Vec::new();
    for s in global.server.iter().skip(1) {
        let s = normalize_server(s)?;
        if s != base && !others.contains(&s) {
            others.push(s);
        }
    }
    Ok(others)
}

/// The token to send and where it came from: --token, the context's, else the local admin token.
fn token_of<'a>(
    global: &Global,
    named: Option<&'a String>,
    context: Option<&'a config::Context>,
    data_dir: &std::path::Path,
    servers: &[&String],
) -> anyhow::Result<(String, TokenSource<'a>)> {
    Ok(match (global.token.clone(), context) {
        (Some(t), _) => (t, TokenSource::Flag),
        (None, Some(c)) => (
            c.token.clone(),
            TokenSource::Context(named.map(String::as_str).unwrap_or_default(), c),
        ),
        (None, None) => {
            let path = data_dir.join("admin.token");
            // The local server's admin token is for the local server: a typo in --server must not hand
            // it to another host, over TLS or not.
            if let Some(away) = servers.iter().find(|s| !on_loopback(s)) {
                return Err(ClientError::TokenWithheld {
                    message: format!(
                        "not sending the admin token of {} to {away}: it is used only for a server on this \
                         machine (loopback). For another server pass --token (or DROVER_TOKEN), or run \
                         `drover login https://HOST:PORT --token …` once and use its context",
                        path.display()
                    ),
                }
                .into());
            }
            (read_admin_token(&path)?, TokenSource::DataDir)
        }
    })
}

/// No token crosses a network in the clear unless the user said so, for this command or this context.
fn refuse_token_in_clear(
    global: &Global,
    source: &TokenSource<'_>,
    servers: &[&String],
) -> anyhow::Result<()> {
    let consented = |server: &str| {
        global.insecure_send_token_over_http
            || matches!(source, TokenSource::Context(_, c)
                if c.insecure_plain_http && trim_url(&c.server) == server)
    };
    if let Some(clear) = servers
        .iter()
        .find(|s| plain_http_off_host(s) && !consented(s))
    {
        let whose = match source {
            TokenSource::Context(name, _) => format!("the token of context {name:?}"),
            _ => "the API token".to_string(),
        };
        return Err(ClientError::TokenWithheld {
            message: format!(
                "refusing to send {whose} to {clear} over plain HTTP: anyone on the way could read it and act \
                 as you. Use https:// (start the server with --api-tls, then `drover login https://HOST:PORT \
                 --token …` pins its CA), or, on a network you trust, pass --insecure-send-token-over-http"
            ),
        }
        .into());
    }
    Ok(())
}

/// What a 403 adds: how an admin would run the command, by where this command's token came from.
fn forbidden_hint(source: &TokenSource<'_>, data_dir: &std::path::Path) -> Option<String> {
    let admin = data_dir.join("admin.token");
    match source {
        TokenSource::DataDir => None,
        TokenSource::Context(name, _) => Some(format!(
            "this ran with the token of context {name:?}; an admin runs it with `--context NAME` (an admin's \
             context, see `drover context list`) or `--token` with an admin token (the local server's is in {})",
            admin.display()
        )),
        TokenSource::Flag => Some(format!(
            "this ran with the token of --token/DROVER_TOKEN; an admin runs it with an admin's token or \
             `--context NAME` of an admin's context (the local server's admin token is in {})",
            admin.display()
        )),
    }
}

/// The local server's admin token, or why there is none.
fn read_admin_token(path: &std::path::Path) -> Result<String, ClientError> {
    let reason = match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => "is empty".to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist".to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            "may not be read by this user (run as the server's user, or with sudo)".to_string()
        }
        Err(e) => format!("cannot be read ({e})"),
    };
    Err(ClientError::NoToken {
        path: path.to_path_buf(),
        reason,
    })
}

impl Client {
    pub fn new(global: &Global) -> anyhow::Result<Self> {
        Self::for_target(Target::resolve(global)?)
    }

    pub fn for_target(target: Target) -> anyhow::Result<Self> {
        let Target {
            base,
            others,
            token,
            ca,
            forbidden_hint,
        } = target;
        // No overall timeout on the client: each request sets its own, so a followed stream is never cut.
        let mut builder = reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT);
        if let Some(ca) = &ca {
            builder = builder.use_preconfigured_tls(super::tls::pinned_config(ca)?);
        }
        let http = builder.build().map_err(|e| ClientError::Protocol {
            url: base.clone(),
            message: e.to_string(),
        })?;
        let mut bases = vec![base];
        bases.extend(others);
        Ok(Self {
            http,
            bases,
            current: AtomicUsize::new(0),
            token,
            forbidden_hint,
        })
    }

    /// The server in use, as a URL (for advice that names it).
    pub fn server(&self) -> &str {
        self.base()
    }

    /// The error of a failed request; a refusal for the caller's role says how to run it as an admin.
    fn failed(&self, status: StatusCode, body: &[u8]) -> ClientError {
        let mut error = api_error(status, body);
        if let (
            ClientError::Api {
                status: 403,
                message,
                action: None,
            },
            Some(hint),
        ) = (&mut error, &self.forbidden_hint)
        {
            message.push_str(" (");
            message.push_str(hint);
            message.push(')');
        }
        error
    }

    /// The server in use: the first, or the replica that answered when an earlier one could not be reached.
    fn base(&self) -> &str {
        &self.bases[self.current.load(Ordering::Relaxed) % self.bases.len()]
    }

    /// Sends `req` (built for a path, without a server) to the server in use, moving on to the next while
    /// one cannot be reached at all (nothing was sent, so retrying elsewhere is safe for any method).
    /// Returns the URL that answered.
    async fn send(
        &self,
        path: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<(reqwest::Response, String), ClientError> {
        let protocol = |message: String| ClientError::Protocol {
            url: path.to_string(),
            message,
        };
        let req = req.build().map_err(|e| protocol(e.to_string()))?;
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..self.bases.len() {
            let at = (start + i) % self.bases.len();
            let url = format!("{}{path}", self.bases[at]);
            let mut attempt = req
                .try_clone()
                .ok_or_else(|| protocol("a streamed body cannot be sent again".into()))?;
            *attempt.url_mut() =
                reqwest::Url::parse(&url).map_err(|e| protocol(format!("{url}: {e}")))?;
            match self.http.execute(attempt).await {
                Ok(resp) => {
                    self.current.store(at, Ordering::Relaxed);
                    return Ok((resp, url));
                }
                Err(e) if e.is_connect() => last = Some(unreachable(&self.bases[at], &e)),
                Err(e) => return Err(unreachable(&self.bases[at], &e)),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Unreachable {
            url: self.base().to_string(),
            message: "no server".into(),
        }))
    }

    /// A request builder for `method`; `send` fills in the server.
    fn builder(&self, method: Method) -> reqwest::RequestBuilder {
        // A placeholder URL that always parses; `send` replaces it per server.
        self.http
            .request(method, self.base())
            .bearer_auth(&self.token)
    }

    pub async fn request<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<Option<T>, ClientError> {
        self.request_with_timeout(method, path, body, None).await
    }

    /// A request that may take longer than the default 30 s (an action with a long deadline, a task created
    /// on thousands of nodes).
    pub async fn request_with_timeout<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        timeout: Option<Duration>,
    ) -> Result<Option<T>, ClientError> {
        let mut req = self
            .builder(method)
            .timeout(timeout.unwrap_or(REQUEST_TIMEOUT));
        if let Some(b) = body {
            req = req.json(b);
        }
        let (resp, url) = self.send(path, req).await?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| ClientError::Protocol {
            url: url.clone(),
            message: e.to_string(),
        })?;
        if !status.is_success() {
            return Err(self.failed(status, &bytes));
        }
        if status == StatusCode::NO_CONTENT || bytes.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ClientError::Protocol {
                url,
                message: e.to_string(),
            })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.request(Method::GET, path, None::<&()>)
            .await?
            .ok_or_else(|| ClientError::Protocol {
                url: path.into(),
                message: "empty answer".into(),
            })
    }

    /// Every item of a paged list (`X-Total-Count`, `Link: <…>; rel="next"`; docs/api.md), read a page at
    /// a time from `first` on: a large fleet never comes in one answer.
    pub async fn get_pages<T: DeserializeOwned>(&self, first: &str) -> Result<Vec<T>, ClientError> {
        let mut items: Vec<T> = Vec::new();
        let mut path = first.to_string();
        // A server that links pages without end is stopped: no list has this many pages.
        for _ in 0..MAX_PAGES {
            let req = self.builder(Method::GET).timeout(REQUEST_TIMEOUT);
            let (resp, url) = self.send(&path, req).await?;
            let status = resp.status();
            let next = resp
                .headers()
                .get(reqwest::header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(next_link);
            let bytes = resp.bytes().await.map_err(|e| ClientError::Protocol {
                url: url.clone(),
                message: e.to_string(),
            })?;
            if !status.is_success() {
                return Err(self.failed(status, &bytes));
            }
            let page: Vec<T> =
                serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
                    url: url.clone(),
                    message: e.to_string(),
                })?;
            let empty = page.is_empty();
            items.extend(page);
            match next {
                Some(n) if !empty => path = n,
                _ => return Ok(items),
            }
        }
        Err(ClientError::Protocol {
            url: format!("{}{first}", self.base()),
            message: format!("the list goes on past {MAX_PAGES} pages"),
        })
    }
}

/// Pages `get_pages` follows at most.
const MAX_PAGES: usize = 100_000;

/// The path of a `Link` header's `rel="next"` target, when it is one of this server's paths.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.trim().split_once(';')?;
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        let next = params
            .split(';')
            .any(|p| p.trim().replace(' ', "") == "rel=\"next\"");
        (next && target.starts_with('/')).then(|| target.to_string())
    })
}

/// Where the REST API is, for a CLI pointed at the agent port.
const REST_IS_ON: &str = "the REST API is on `drover server --listen`, 127.0.0.1:8080 by default";

/// A failed send, with its causes: "error sending request" alone hides a refused certificate.
fn unreachable(base: &str, e: &reqwest::Error) -> ClientError {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    // The agent port speaks gRPC over TLS: plain HTTP reads its TLS alert as a broken status line, and
    // TLS without a node certificate is cut short in the handshake.
    if message.contains("invalid HTTP version") {
        message.push_str(&format!(
            " (that looks like drover's agent port (gRPC); {REST_IS_ON})"
        ));
    } else if base.starts_with("https://") && message.contains("handshake eof") {
        message.push_str(&format!(
            " (if this is drover's agent port, it wants node certificates; {REST_IS_ON})"
        ));
    }
    ClientError::Unreachable {
        url: base.to_string(),
        message,
    }
}

impl Client {
    /// Uploads raw bytes.
    pub async fn put_bytes(&self, path: &str, bytes: Vec<u8>) -> Result<(), ClientError> {
        let req = self
            .builder(Method::PUT)
            .timeout(Duration::from_secs(600))
            .body(bytes);
        let (resp, _) = self.send(path, req).await?;
        let status = resp.status();
        if !status.is_success() {
            return Err(self.failed(status, &resp.bytes().await.unwrap_or_default()));
        }
        Ok(())
    }

    /// Opens a Server-Sent Events stream, resuming after `last_id` when given. No overall timeout:
    /// following may take long; a stream silent past its keep-alives counts as broken instead.
    pub async fn events(
        &self,
        path: &str,
        last_id: Option<&str>,
    ) -> Result<EventStream, ClientError> {
        let mut req = self.builder(Method::GET);
        if let Some(id) = last_id {
            req = req.header("Last-Event-ID", id);
        }
        let (resp, url) = self.send(path, req).await?;
        if !resp.status().is_success() {
            let status = resp.status();
            return Err(self.failed(status, &resp.bytes().await.unwrap_or_default()));
        }
        Ok(EventStream {
            resp,
            buf: Vec::new(),
            scanned: 0,
            url,
        })
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub name: String,
    pub data: String,
    /// The event's `id:`, from which a follower resumes.
    pub id: Option<String>,
}

/// A Server-Sent Events reader.
pub struct EventStream {
    resp: reqwest::Response,
    buf: Vec<u8>,
    /// How far `buf` was searched for a block end without finding one.
    scanned: usize,
    url: String,
}

/// Where the first complete event block in `buf` ends (after its blank line), searching from `from` (an
/// offset before which no block end lies): each byte is looked at once however the event arrives in pieces.
fn block_end(buf: &[u8], from: usize) -> Option<usize> {
    let from = from.min(buf.len());
    memchr::memmem::find(&buf[from..], b"\n\n").map(|i| from + i + 2)
}

/// Takes the first complete event block out of `buf` (ending before `end`, as `block_end` found it):
/// `Some(None)` for a block without data (a keep-alive comment, or an `id:` alone), `None` when no block is
/// complete yet. `scanned` carries how far earlier calls looked, so a large event is not searched again
/// with every piece that arrives.
fn take_event(buf: &mut Vec<u8>, scanned: &mut usize) -> Option<Option<Event>> {
    let Some(end) = block_end(buf, scanned.saturating_sub(1)) else {
        *scanned = buf.len();
        return None;
    };
    let event = parse_block(&buf[..end]);
    buf.drain(..end);
    *scanned = 0;
    Some(event)
}

/// The fields of one event block. Data lines are joined with newlines, as the SSE specification says.
fn parse_block(block: &[u8]) -> Option<Event> {
    let (mut name, mut data, mut id) = (None, None::<String>, None);
    let text = |b: &[u8]| match std::str::from_utf8(b) {
        Ok(t) => t.to_string(),
        Err(_) => String::from_utf8_lossy(b).into_owned(),
    };
    for line in block.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let (field, value) = match memchr::memchr(b':', line) {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &[][..]),
        };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        match field {
            b"event" => name = Some(text(value)),
            b"data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(&text(value));
                }
                None => data = Some(text(value)),
            },
            b"id" => id = Some(text(value)),
            _ => {}
        }
    }
    Some(Event {
        name: name.unwrap_or_else(|| "message".into()),
        data: data?,
        id,
    })
}

impl EventStream {
    /// Whether a complete event is already buffered (so `next` will not wait for the network).
    pub fn has_buffered(&self) -> bool {
        block_end(&self.buf, self.scanned.saturating_sub(1)).is_some()
    }

    /// The next event; `None` when the server closed the stream.
    pub async fn next(&mut self) -> Result<Option<Event>, ClientError> {
        loop {
            if let Some(event) = take_event(&mut self.buf, &mut self.scanned) {
                match event {
                    Some(e) => return Ok(Some(e)),
                    None => continue,
                }
            }
            let broken = |message: String| ClientError::Protocol {
                url: self.url.clone(),
                message,
            };
            match tokio::time::timeout(STREAM_IDLE, self.resp.chunk()).await {
                Ok(Ok(Some(bytes))) => self.buf.extend_from_slice(&bytes),
                Ok(Ok(None)) => return Ok(None),
                Ok(Err(e)) => return Err(broken(e.to_string())),
                Err(_) => return Err(broken(format!("nothing received for {STREAM_IDLE:?}"))),
            }
        }
    }
}

/// An event stream that outlives the connection under it: when the stream breaks or the server cannot be
/// reached it reconnects with backoff (100 ms doubling to 2 s), resuming after the last event id seen, and
/// gives up only after [`RECONNECT_FOR`] without a connection. Events may repeat across a resume (the
/// server resumes from a point at or before the last event); callers drop what they have seen.
pub struct Subscription<'a> {
    client: &'a Client,
    path: String,
    /// Whether the server ending the stream is its natural end (a replay) rather than a break.
    ends: bool,
    stream: Option<EventStream>,
    last_id: Option<String>,
    backoff: Duration,
    down_since: Option<Instant>,
}

impl<'a> Subscription<'a> {
    pub fn new(client: &'a Client, path: String, ends: bool) -> Self {
        Self {
            client,
            path,
            ends,
            stream: None,
            last_id: None,
            backoff: BACKOFF_FIRST,
            down_since: None,
        }
    }

    /// Whether a complete event is already buffered (so `next` will not wait for the network).
    pub fn has_buffered(&self) -> bool {
        self.stream.as_ref().is_some_and(EventStream::has_buffered)
    }

    /// The next event; `None` when the stream ended and `ends` says that is its end.
    pub async fn next(&mut self) -> Result<Option<Event>, ClientError> {
        loop {
            let stream = match &mut self.stream {
                Some(s) => s,
                None => {
                    if self.down_since.is_some() {
                        tokio::time::sleep(self.backoff).await;
                        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                    }
                    match self
                        .client
                        .events(&self.path, self.last_id.as_deref())
                        .await
                    {
                        Ok(s) => {
                            if self.down_since.take().is_some() {
                                eprintln!("reconnected to the server");
                            }
                            self.stream.insert(s)
                        }
                        Err(e) if retryable(&e) => {
                            self.broken(e)?;
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            match stream.next().await {
                Ok(Some(event)) => {
                    self.backoff = BACKOFF_FIRST;
                    if event.id.is_some() {
                        self.last_id.clone_from(&event.id);
                    }
                    return Ok(Some(event));
                }
                Ok(None) if self.ends => return Ok(None),
                Ok(None) => self.broken(ClientError::Protocol {
                    url: self.path.clone(),
                    message: "the server ended the stream".into(),
                })?,
                Err(e) => self.broken(e)?,
            }
        }
    }

    /// Notes a lost connection; fails once the server has been away too long.
    fn broken(&mut self, error: ClientError) -> Result<(), ClientError> {
        self.stream = None;
        let since = *self.down_since.get_or_insert_with(|| {
            eprintln!(
                "lost the connection to the server ({error}); reconnecting for up to {} minutes...",
                RECONNECT_FOR.as_secs() / 60
            );
            Instant::now()
        });
        if since.elapsed() < RECONNECT_FOR {
            return Ok(());
        }
        Err(match error {
            e @ ClientError::Unreachable { .. } => e,
            other => ClientError::Unreachable {
                url: self.client.base().to_string(),
                message: format!(
                    "no working event stream for {} minutes ({other})",
                    RECONNECT_FOR.as_secs() / 60
                ),
            },
        })
    }
}

/// Errors a later attempt may not see: the server away, the stream cut, a proxy answering for it.
fn retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Unreachable { .. } | ClientError::Protocol { .. } => true,
        ClientError::Api { status, .. } => matches!(status, 502..=504),
        ClientError::NoToken { .. }
        | ClientError::TokenWithheld { .. }
        | ClientError::Usage { .. } => false,
    }
}

/// The error of a failed request, from its body when the server explained itself.
fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    let (message, action) = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => (b.error, b.action_error),
        Err(_) => (format!("the server answered {status}"), None),
    };
    ClientError::Api {
        status: status.as_u16(),
        message,
        action,
    }
}

/// Escapes a path segment or query value.
pub use drover_types::url::percent_encode as segment;

#[cfg(test)]
mod tests {
    use super::{ClientError, Event, Target, next_link, retryable, take_event};
    use crate::cli::Global;
    use crate::cli::config::{Context, OperatorConfig};

    fn global(server: Option<&str>, token: Option<&str>, context: Option<&str>) -> Global {
        Global {
            server: server.into_iter().map(Into::into).collect(),
            context: context.map(Into::into),
            token: token.map(Into::into),
            data_dir: Some("/nonexistent".into()),
            insecure_send_token_over_http: false,
        }
    }

    #[test]
    fn the_next_page_is_read_from_the_link_header() {
        assert_eq!(
            next_link("</api/v1/nodes?limit=2&offset=2>; rel=\"next\"").as_deref(),
            Some("/api/v1/nodes?limit=2&offset=2")
        );
        assert_eq!(
            next_link("</a?o=0>; rel=\"prev\", </a?o=4>; rel=\"next\"").as_deref(),
            Some("/a?o=4")
        );
        // Only this server's paths are followed (the token goes with the request).
        assert_eq!(next_link("<https://elsewhere/x>; rel=\"next\""), None);
        assert_eq!(next_link("garbage"), None);
    }

    #[test]
    fn flags_beat_the_context_and_its_token_never_goes_to_another_server() {
        let mut config = OperatorConfig::default();
        for (name, server) in [("prod", "https://prod:8080"), ("lab", "https://lab:8080")] {
            config.contexts.insert(
                name.into(),
                Context {
                    server: server.into(),
                    token: format!("tok-{name}"),
                    ca: Some(format!("ca-{name}")),
                    ca_fingerprint: None,
                    insecure_plain_http: false,
                },
            );
        }
        config.current = Some("prod".into());
        let path = std::path::Path::new("config.toml");
        let resolve = |g: Global| Target::from_parts(&g, &config, path);
        let t = resolve(global(None, None, None)).unwrap();
        assert_eq!(
            (t.base.as_str(), t.token.as_str()),
            ("https://prod:8080", "tok-prod")
        );
        assert_eq!(t.ca.as_deref(), Some("ca-prod"));
        let t = resolve(global(None, Some("mine"), Some("lab"))).unwrap();
        assert_eq!(
            (t.base.as_str(), t.token.as_str()),
            ("https://lab:8080", "mine")
        );
        // Another server: the context's token is not used (and there is no admin token to fall back on).
        assert!(resolve(global(Some("https://other:8080"), None, None)).is_err());
        let t = resolve(global(Some("https://other:8080"), Some("t"), None)).unwrap();
        assert_eq!((t.base.as_str(), t.ca), ("https://other:8080", None));
        assert!(resolve(global(Some("https://other:8080"), Some("t"), Some("lab"))).is_err());
        assert!(resolve(global(None, None, Some("missing"))).is_err());
    }

    #[test]
    fn a_token_crosses_plain_http_only_to_loopback_or_when_told() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("admin.token"), "drvadm.secret\n").unwrap();
        let mut config = OperatorConfig::default();
        config.contexts.insert(
            "lab".into(),
            Context {
                server: "http://10.9.9.9:8080".into(),
                token: "tok-lab".into(),
                ca: None,
                ca_fingerprint: None,
                insecure_plain_http: true,
            },
        );
        let path = std::path::Path::new("config.toml");
        let at = |server: &str, token: Option<&str>, context: Option<&str>, insecure: bool| {
            let mut g = global(Some(server), token, context);
            g.data_dir = Some(dir.path().to_path_buf());
            g.insecure_send_token_over_http = insecure;
            Target::from_parts(&g, &config, path)
        };
        let withheld = |r: anyhow::Result<Target>| {
            matches!(
                r.unwrap_err().downcast_ref::<ClientError>(),
                Some(ClientError::TokenWithheld { .. })
            )
        };
        // The data dir's admin token: loopback only, whatever the scheme or flag.
        assert_eq!(
            at("http://127.0.0.1:8080", None, None, false)
                .unwrap()
                .token,
            "drvadm.secret"
        );
        assert_eq!(
            at("http://[::1]:8080", None, None, false).unwrap().token,
            "drvadm.secret"
        );
        assert!(withheld(at("http://10.1.1.1:8080", None, None, false)));
        assert!(withheld(at("https://10.1.1.1:8080", None, None, false)));
        assert!(withheld(at("http://10.1.1.1:8080", None, None, true)));
        // An explicit token: over TLS anywhere, over plain HTTP off the host only when told.
        assert!(at("https://10.1.1.1:8080", Some("t"), None, false).is_ok());
        assert!(withheld(at("http://10.1.1.1:8080", Some("t"), None, false)));
        assert_eq!(
            at("http://10.1.1.1:8080", Some("t"), None, true)
                .unwrap()
                .token,
            "t"
        );
        // A context made with the opt-in keeps it, for its own server only.
        assert_eq!(
            at("http://10.9.9.9:8080", None, Some("lab"), false)
                .unwrap()
                .token,
            "tok-lab"
        );
        let mut g = global(None, None, Some("lab"));
        g.server = vec!["http://10.9.9.9:8080".into(), "http://10.9.9.8:8080".into()];
        assert!(withheld(Target::from_parts(&g, &config, path)));
    }

    #[test]
    fn a_server_without_a_scheme_is_http_on_loopback_and_refused_elsewhere() {
        use super::normalize_server;
        assert_eq!(
            normalize_server("127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            normalize_server("localhost:8080/").unwrap(),
            "http://localhost:8080"
        );
        assert_eq!(normalize_server("[::1]:8080").unwrap(), "http://[::1]:8080");
        assert_eq!(
            normalize_server("https://cp:8080/").unwrap(),
            "https://cp:8080"
        );
        for bad in [
            "cp.example.com:8080",
            "10.0.0.5:8080",
            "ftp://cp:21",
            "http://",
        ] {
            let e = normalize_server(bad).unwrap_err();
            assert!(matches!(e, ClientError::Usage { .. }), "{bad}");
            assert!(e.to_string().contains("https://"), "{e}");
        }
    }

    #[test]
    fn events_carry_their_name_data_and_id_and_keep_alives_are_skipped() {
        let mut buf =
            b": keep-alive\n\nevent: output\nid: 42\ndata: [1,\ndata: 2]\n\nid: 43\n\nevent: do"
                .to_vec();
        let mut scanned = 0;
        assert_eq!(take_event(&mut buf, &mut scanned), Some(None), "a comment");
        assert_eq!(
            take_event(&mut buf, &mut scanned),
            Some(Some(Event {
                name: "output".into(),
                data: "[1,\n2]".into(),
                id: Some("42".into()),
            }))
        );
        assert_eq!(
            take_event(&mut buf, &mut scanned),
            Some(None),
            "an id alone is no event"
        );
        assert_eq!(
            take_event(&mut buf, &mut scanned),
            None,
            "incomplete: wait for more"
        );
        assert_eq!(buf, b"event: do");
        // The rest arrives in pieces, the blank line split between two of them.
        buf.extend_from_slice(b"ne\ndata: {}\n");
        assert_eq!(take_event(&mut buf, &mut scanned), None);
        buf.extend_from_slice(b"\n");
        assert_eq!(
            take_event(&mut buf, &mut scanned),
            Some(Some(Event {
                name: "done".into(),
                data: "{}".into(),
                id: None,
            }))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn only_a_server_away_or_a_broken_stream_is_worth_retrying() {
        let api = |status| ClientError::Api {
            status,
            message: String::new(),
            action: None,
        };
        let unreachable = ClientError::Unreachable {
            url: "u".into(),
            message: "refused".into(),
        };
        let broken = ClientError::Protocol {
            url: "u".into(),
            message: "cut".into(),
        };
        assert!(retryable(&unreachable) && retryable(&broken) && retryable(&api(503)));
        assert!(!retryable(&api(404)) && !retryable(&api(401)) && !retryable(&api(400)));
    }
}
