//! The REST client the CLI uses, with errors that say what to do next.

use std::path::PathBuf;

use drover_types::api::ErrorBody;
use reqwest::{Method, StatusCode};
use serde::{Serialize, de::DeserializeOwned};

use super::{Global, default_data_dir};

const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no operator token: pass --token or set DROVER_TOKEN (the admin token is in the server's data dir; {path} was not readable)"
    )]
    NoToken { path: PathBuf },
    #[error(
        "cannot reach the drover server at {url}: {message} (is `drover server` running? set --server or DROVER_SERVER)"
    )]
    Unreachable { url: String, message: String },
    #[error("{message}")]
    Api {
        status: u16,
        message: String,
        action: Option<drover_types::action::ActionError>,
    },
    #[error("unexpected answer from {url}: {message}")]
    Protocol { url: String, message: String },
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    pub fn new(global: &Global) -> Result<Self, ClientError> {
        let base = global
            .server
            .clone()
            .unwrap_or_else(|| DEFAULT_SERVER.to_string())
            .trim_end_matches('/')
            .to_string();
        let token = match &global.token {
            Some(t) => t.clone(),
            None => {
                let path = global
                    .data_dir
                    .clone()
                    .unwrap_or_else(default_data_dir)
                    .join("admin.token");
                std::fs::read_to_string(&path)
                    .ok()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
                    .ok_or(ClientError::NoToken { path })?
            }
        };
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| ClientError::Protocol {
                url: base.clone(),
                message: e.to_string(),
            })?;
        Ok(Self { http, base, token })
    }

    pub async fn request<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<Option<T>, ClientError> {
        self.request_with_timeout(method, path, body, None).await
    }

    /// A request that may take longer than the default 30 s (an action with a long deadline).
    pub async fn request_with_timeout<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        timeout: Option<std::time::Duration>,
    ) -> Result<Option<T>, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        let resp = req.send().await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            message: e.to_string(),
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| ClientError::Protocol {
            url: url.clone(),
            message: e.to_string(),
        })?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
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
}

impl Client {
    /// Uploads raw bytes.
    pub async fn put_bytes(&self, path: &str, bytes: Vec<u8>) -> Result<(), ClientError> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .put(&url)
            .bearer_auth(&self.token)
            .timeout(std::time::Duration::from_secs(600))
            .body(bytes)
            .send()
            .await
            .map_err(|e| ClientError::Unreachable {
                url: self.base.clone(),
                message: e.to_string(),
            })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(api_error(status, &resp.bytes().await.unwrap_or_default()));
        }
        Ok(())
    }

    /// Opens a Server-Sent Events stream (no overall timeout: following may take long).
    pub async fn events(&self, path: &str) -> Result<EventStream, ClientError> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .timeout(std::time::Duration::from_secs(365 * 24 * 3600))
            .send()
            .await
            .map_err(|e| ClientError::Unreachable {
                url: self.base.clone(),
                message: e.to_string(),
            })?;
        if !resp.status().is_success() {
            let status = resp.status();
            return Err(api_error(status, &resp.bytes().await.unwrap_or_default()));
        }
        Ok(EventStream {
            resp,
            buf: Vec::new(),
            url,
        })
    }
}

/// A Server-Sent Events reader: yields (event name, data).
pub struct EventStream {
    resp: reqwest::Response,
    buf: Vec<u8>,
    url: String,
}

impl EventStream {
    /// Whether a complete event is already buffered (so `next` will not wait for the network).
    pub fn has_buffered(&self) -> bool {
        self.buf.windows(2).any(|w| w == b"\n\n")
    }

    /// The next event; `None` when the server closed the stream.
    pub async fn next(&mut self) -> Result<Option<(String, String)>, ClientError> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&block);
                let (mut name, mut data) = (String::from("message"), Vec::new());
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                return Ok(Some((name, data.join("\n"))));
            }
            match self.resp.chunk().await {
                Ok(Some(bytes)) => self.buf.extend_from_slice(&bytes),
                Ok(None) => return Ok(None),
                Err(e) => {
                    return Err(ClientError::Protocol {
                        url: self.url.clone(),
                        message: e.to_string(),
                    });
                }
            }
        }
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

/// Escapes a path segment (node names and ids are plain, but user input may not be).
pub fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
