//! The HTTP side of the CLI: one wrapper over reqwest that knows where the admin API lives,
//! sends the bearer token, and turns every way a request can fail into one readable error.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use anyhow::anyhow;
use reqwest::multipart::Form;
use reqwest::{Method, RequestBuilder, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use upkeep_protocol::ErrorResponse;

use crate::Hinted;
use crate::config::show;
use crate::upload::ReadError;

/// How long to wait for a TCP (and TLS) connection before calling the server unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Requests other than uploads are small; a server that takes longer than this is stuck.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// An error the server explained with the API's [`ErrorResponse`].
#[derive(Debug)]
pub struct ServerError {
    pub response: ErrorResponse,
}

impl fmt::Display for ServerError {
    /// `message [code, field f]`: the message for people, the code for scripts and bug reports.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ErrorResponse {
            code, message, field, ..
        } = &self.response;
        match field {
            Some(field) => write!(f, "{message} [{code}, field {field}]"),
            None => write!(f, "{message} [{code}]"),
        }
    }
}

impl StdError for ServerError {}

/// A client for one server, signed in or not (only `login` goes without a token).
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    server: Url,
    token: Option<String>,
}

impl Client {
    pub fn new(server: Url, token: Option<String>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("upkeep-cli/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| anyhow!("cannot set up the HTTP client: {}", causes(&e)))?;
        Ok(Client { http, server, token })
    }

    /// `GET /api/v1/<segments>?<query>`.
    pub async fn get<T: DeserializeOwned>(&self, segments: &[&str], query: &[(&str, String)]) -> anyhow::Result<T> {
        let request = self
            .request(Method::GET, segments)?
            .query(query)
            .timeout(REQUEST_TIMEOUT);
        self.send(request).await
    }

    /// `POST /api/v1/<segments>` with a JSON body.
    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, segments: &[&str], body: &B) -> anyhow::Result<T> {
        let request = self
            .request(Method::POST, segments)?
            .json(body)
            .timeout(REQUEST_TIMEOUT);
        self.send(request).await
    }

    /// `PATCH /api/v1/<segments>` with a JSON body.
    pub async fn patch<B: Serialize, T: DeserializeOwned>(&self, segments: &[&str], body: &B) -> anyhow::Result<T> {
        let request = self
            .request(Method::PATCH, segments)?
            .json(body)
            .timeout(REQUEST_TIMEOUT);
        self.send(request).await
    }

    /// `POST /api/v1/<segments>` with a multipart body. No overall time limit: a large artifact
    /// over a slow link takes as long as it takes, and the server then inspects the archive.
    pub async fn post_form<T: DeserializeOwned>(&self, segments: &[&str], form: Form) -> anyhow::Result<T> {
        let request = self.request(Method::POST, segments)?.multipart(form);
        self.send(request).await
    }

    fn request(&self, method: Method, segments: &[&str]) -> anyhow::Result<RequestBuilder> {
        let mut request = self.http.request(method, self.url(segments)?);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        Ok(request)
    }

    /// The server URL plus `/api/v1/` plus `segments`, each percent-encoded, so a name typed on
    /// the command line can never change which route is called.
    fn url(&self, segments: &[&str]) -> anyhow::Result<Url> {
        // `Url` silently drops `.` and `..` segments and an empty one would hit another route.
        if let Some(bad) = segments.iter().find(|s| matches!(**s, "" | "." | "..")) {
            return Err(anyhow!("`{bad}` is not a valid name or id"));
        }
        let mut url = self.server.clone();
        url.path_segments_mut()
            .map_err(|()| anyhow!("{} cannot be used as a server URL", show(&self.server)))?
            .pop_if_empty()
            .extend(["api", "v1"])
            .extend(segments);
        Ok(url)
    }

    async fn send<T: DeserializeOwned>(&self, request: RequestBuilder) -> anyhow::Result<T> {
        let response = request.send().await.map_err(|e| self.transport_error(&e))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| self.transport_error(&e))?;
        let server = show(&self.server);
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|e| {
                Hinted::new(
                    format!("the server at {server} sent an answer this CLI does not understand: {e}"),
                    "check that the CLI and the server are the same version",
                )
                .into()
            });
        }
        if let Ok(response) = serde_json::from_slice::<ErrorResponse>(&body) {
            return Err(ServerError { response }.into());
        }
        // Not the API's error shape: a proxy, or not an upkeep server at all.
        let text = String::from_utf8_lossy(&body);
        let snippet = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut message = format!("the server at {server} answered {status}");
        if !snippet.is_empty() && snippet.len() <= 200 {
            message.push_str(&format!(": {snippet}"));
        }
        Err(Hinted::new(
            message,
            format!("check that {server} is the address of an upkeep server"),
        )
        .into())
    }

    fn transport_error(&self, err: &reqwest::Error) -> anyhow::Error {
        // A failure reading the artifact surfaces here as a failed request; say what it was.
        if let Some(read) = find::<ReadError>(err) {
            return anyhow!("{read}");
        }
        let server = show(&self.server);
        let cause = causes(err);
        let message = if err.is_connect() {
            format!("cannot reach the server at {server}: {cause}")
        } else if err.is_timeout() {
            format!("the server at {server} did not answer in time")
        } else {
            format!("lost the connection to the server at {server}: {cause}")
        };
        TransportError {
            message,
            connected: !err.is_connect(),
        }
        .into()
    }
}

/// The request did not get an answer: the server was unreachable, or the connection broke.
#[derive(Debug)]
pub struct TransportError {
    message: String,
    /// Whether the server was reached at all, so it may have seen (and refused) the request.
    pub connected: bool,
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for TransportError {}

/// The first error of type `E` in `err`'s chain, including errors wrapped in an `io::Error`
/// (whose `source()` skips the wrapped error itself).
fn find<'a, E: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a E> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        let wrapped = e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref());
        if let Some(found) = wrapped.and_then(|inner| inner.downcast_ref::<E>()) {
            return Some(found);
        }
        next = e.source();
    }
    None
}

/// What went wrong underneath a reqwest error: its sources, without reqwest's own line (which
/// repeats the URL) and without layers that only repeat what the next one says.
fn causes(err: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = err.source();
    while let Some(e) = next {
        let text = e.to_string();
        // hyper-util's "client error (Connect)" says only what `is_connect` already told us.
        if !text.starts_with("client error (") && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    if parts.is_empty() {
        err.to_string()
    } else {
        parts.join(": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(server: &str) -> Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Client::new(crate::config::parse_server_url(server).unwrap(), None).unwrap()
    }

    #[test]
    fn urls_are_built_from_encoded_segments() {
        let c = client("http://127.0.0.1:8080");
        assert_eq!(
            c.url(&["products", "demo", "releases"]).unwrap().as_str(),
            "http://127.0.0.1:8080/api/v1/products/demo/releases"
        );
        assert_eq!(
            c.url(&["workstations", "a/b?c"]).unwrap().as_str(),
            "http://127.0.0.1:8080/api/v1/workstations/a%2Fb%3Fc"
        );
        assert!(c.url(&["workstations", ".."]).is_err());
        assert!(c.url(&["workstations", ""]).is_err());
        let prefixed = client("https://example.com/updates/");
        assert_eq!(
            prefixed.url(&["rollouts"]).unwrap().as_str(),
            "https://example.com/updates/api/v1/rollouts"
        );
    }

    #[test]
    fn server_errors_show_code_and_field() {
        let err = ServerError {
            response: ErrorResponse {
                code: "invalid_version".into(),
                message: "bad".into(),
                field: Some("version".into()),
                hint: None,
            },
        };
        assert_eq!(err.to_string(), "bad [invalid_version, field version]");
        let err = ServerError {
            response: ErrorResponse {
                field: None,
                ..err.response
            },
        };
        assert_eq!(err.to_string(), "bad [invalid_version]");
    }
}
