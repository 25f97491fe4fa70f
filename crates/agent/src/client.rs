//! HTTP to the device API: JSON requests with the device token, the server's `ErrorResponse`
//! turned into [`AgentError::Server`], and the outbox that keeps reports the server did not get.

use std::io::Write;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use upkeep_protocol as proto;

use crate::error::AgentError;
use crate::state::{Enrollment, StateDir};

#[derive(Clone)]
pub struct DeviceClient {
    http: reqwest::Client,
    server: String,
    token: Option<String>,
}

pub fn http_client(timeout: Option<Duration>) -> Result<reqwest::Client, AgentError> {
    // reqwest is built without a default TLS provider; ring is ours.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("upkeep-agent/", env!("CARGO_PKG_VERSION")));
    if let Some(timeout) = timeout {
        builder = builder.timeout(timeout);
    }
    builder
        .build()
        .map_err(|e| AgentError::Invalid(format!("building the HTTP client: {e}")))
}

/// The client for mirrors: no device token is ever attached (they are not trusted), and a mirror
/// that stops sending is given up after a while so the next source gets its turn.
pub fn mirror_http_client() -> Result<reqwest::Client, AgentError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(30))
        .user_agent(concat!("upkeep-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| AgentError::Invalid(format!("building the HTTP client: {e}")))
}

pub fn validate_server_url(server: &str) -> Result<String, AgentError> {
    let trimmed = server.trim_end_matches('/');
    if !(trimmed.starts_with("http://") || trimmed.starts_with("https://")) || trimmed.len() < 10 {
        return Err(AgentError::Invalid(format!(
            "`{server}` is not a server URL; expected http(s)://HOST[:PORT]"
        )));
    }
    Ok(trimmed.to_owned())
}

impl DeviceClient {
    pub fn anonymous(server: &str, timeout: Option<Duration>) -> Result<Self, AgentError> {
        Ok(DeviceClient {
            http: http_client(timeout)?,
            server: validate_server_url(server)?,
            token: None,
        })
    }

    pub fn enrolled(enrollment: &Enrollment, timeout: Option<Duration>) -> Result<Self, AgentError> {
        Ok(DeviceClient {
            http: http_client(timeout)?,
            server: validate_server_url(&enrollment.server)?,
            token: Some(enrollment.device_token.clone()),
        })
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server)
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, self.url(path));
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    pub fn unreachable(&self, err: &reqwest::Error) -> AgentError {
        AgentError::Unreachable {
            server: self.server.clone(),
            reason: error_chain(err),
        }
    }

    /// POSTs JSON; a non-2xx answer becomes the server's error.
    async fn post(&self, path: &str, body: &impl Serialize) -> Result<reqwest::Response, AgentError> {
        let response = self
            .request(reqwest::Method::POST, path)
            .json(body)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        check(response).await
    }

    pub async fn post_json<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, AgentError> {
        self.post(path, body)
            .await?
            .json::<T>()
            .await
            .map_err(|e| AgentError::Server {
                status: 200,
                code: "bad_response".into(),
                message: format!("unreadable answer from the server: {e}"),
                hint: None,
            })
    }

    pub async fn post_no_content<B: Serialize>(&self, path: &str, body: &B) -> Result<(), AgentError> {
        self.post(path, body).await.map(drop)
    }

    /// Sends a report; when the server cannot be reached it goes to the outbox and is sent later.
    /// A report the server refuses outright is logged and dropped: resending would not help.
    pub async fn report(&self, state: &StateDir, mut report: proto::DeviceReport) {
        if report.at.is_none() {
            report.at = Some(jiff::Timestamp::now().to_string());
        }
        match self.post_no_content("/api/v1/device/reports", &report).await {
            Ok(()) => {}
            Err(e) if worth_retrying(&e) => {
                if let Err(e) = append_outbox(state, &report) {
                    eprintln!("upkeep-agent: warning: could not keep a report for later: {e}");
                }
            }
            Err(e) => eprintln!("upkeep-agent: warning: the server refused a report: {e}"),
        }
    }

    /// Delivers reports kept while the server was unreachable, oldest first.
    pub async fn flush_outbox(&self, state: &StateDir) -> Result<(), AgentError> {
        let path = state.outbox_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(AgentError::io("reading the outbox", &path, e)),
        };
        let mut left = String::new();
        let mut reachable = true;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let Ok(report) = serde_json::from_str::<proto::DeviceReport>(line) else {
                continue;
            };
            if reachable {
                match self.post_no_content("/api/v1/device/reports", &report).await {
                    Ok(()) => continue,
                    Err(e) if worth_retrying(&e) => reachable = false,
                    Err(_) => continue,
                }
            }
            left.push_str(line);
            left.push('\n');
        }
        if left.is_empty() {
            let _ = std::fs::remove_file(&path);
        } else {
            crate::state::write_atomic(&path, left.as_bytes(), true)?;
        }
        Ok(())
    }
}

/// Unreachable, or the server (or a proxy in front) is restarting or overloaded: try again later.
fn worth_retrying(err: &AgentError) -> bool {
    match err {
        AgentError::Unreachable { .. } => true,
        AgentError::Server { status, .. } => *status >= 500 || *status == 408 || *status == 429,
        _ => false,
    }
}

fn append_outbox(state: &StateDir, report: &proto::DeviceReport) -> Result<(), AgentError> {
    let path = state.outbox_path();
    let line = serde_json::to_string(report).map_err(|e| AgentError::Invalid(e.to_string()))?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| AgentError::io("writing the outbox", &path, e))?;
    writeln!(file, "{line}").map_err(|e| AgentError::io("writing the outbox", &path, e))
}

/// Turns a non-2xx answer into the server's error.
pub async fn check(response: reqwest::Response) -> Result<reqwest::Response, AgentError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.bytes().await.unwrap_or_default();
    Err(match serde_json::from_slice::<proto::ErrorResponse>(&body) {
        Ok(e) => AgentError::Server {
            status: status.as_u16(),
            code: e.code,
            message: e.message,
            hint: e.hint,
        },
        Err(_) => AgentError::Server {
            status: status.as_u16(),
            code: format!("http_{}", status.as_u16()),
            message: format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body).chars().take(200).collect::<String>()
            ),
            hint: None,
        },
    })
}

/// reqwest's top-level message is terse; the cause chain says what really happened.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
