//! The HTTP client: where the server is, the API token, and errors a person can read.
//!
//! Every request goes to the REST API; an error answer prints the server's own message
//! (`{"error": {"code", "message"}}`), a server that cannot be reached says so with its URL.

use std::fmt;
use std::time::Duration;

use gantry_contracts::error::ErrorEnvelope;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// What went wrong, as the user is told.
#[derive(Debug)]
pub enum Error {
    /// The server answered with an error.
    Api {
        /// HTTP status.
        status: StatusCode,
        /// The server's message.
        message: String,
    },
    /// No answer from the server.
    Unreachable {
        /// The server's URL.
        url: String,
        /// Why.
        detail: String,
    },
    /// Anything else (bad input, files, a check that failed).
    Other(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Api { status, message } => {
                write!(f, "{message} (HTTP {})", status.as_u16())
            }
            Error::Unreachable { url, detail } => {
                write!(f, "cannot reach the Gantry server at {url}: {detail}")
            }
            Error::Other(m) => f.write_str(m),
        }
    }
}

impl Error {
    /// A plain message.
    pub fn msg(m: impl Into<String>) -> Self {
        Error::Other(m.into())
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Other(e.to_string())
    }
}

/// Result of a command.
pub type Result<T> = std::result::Result<T, Error>;

/// A client of one server with one credential.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// How long an ordinary request may take; streams and downloads have no limit.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

impl Client {
    /// A client of `base` (e.g. `http://127.0.0.1:8080`) sending `token` as its bearer token.
    pub fn new(base: &str, token: Option<String>) -> Result<Self> {
        if !base.starts_with("http://") {
            return Err(Error::msg(format!(
                "{base}: give the server as http://HOST:PORT (this gantry speaks plain HTTP)"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("gantry-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::msg(format!("cannot set up HTTP: {e}")))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http,
        })
    }

    /// A request to `path` (starting with `/`), with the token.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// Send `req`; an error status becomes [`Error::Api`] with the server's message.
    pub async fn send(&self, req: RequestBuilder) -> Result<Response> {
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let message = match serde_json::from_str::<ErrorEnvelope>(&text) {
            Ok(env) => env.error.message,
            Err(_) if text.trim().is_empty() => status
                .canonical_reason()
                .unwrap_or("request failed")
                .to_owned(),
            Err(_) => text.trim().chars().take(500).collect(),
        };
        Err(Error::Api { status, message })
    }

    /// What a failed send means to the user.
    pub fn transport(&self, e: reqwest::Error) -> Error {
        if e.is_connect() || e.is_timeout() || e.is_request() {
            let mut detail = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                detail = s.to_string();
                source = s.source();
            }
            Error::Unreachable {
                url: self.base.clone(),
                detail,
            }
        } else {
            Error::msg(format!("talking to {}: {e}", self.base))
        }
    }

    async fn json<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T> {
        let resp = self.send(req.timeout(REQUEST_TIMEOUT)).await?;
        let bytes = resp.bytes().await.map_err(|e| self.transport(e))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::msg(format!(
                "the server at {} answered something this gantry does not understand ({e}); \
                 is it a Gantry server of the same version?",
                self.base
            ))
        })
    }

    /// `GET path` as JSON.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.json(self.request(Method::GET, path)).await
    }

    /// `GET path?query` as JSON.
    pub async fn get_query<T: DeserializeOwned, Q: Serialize + ?Sized>(
        &self,
        path: &str,
        query: &Q,
    ) -> Result<T> {
        self.json(self.request(Method::GET, path).query(query))
            .await
    }

    /// `method path` with a JSON body, answer as JSON.
    pub async fn send_json<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T> {
        self.json(self.request(method, path).json(body)).await
    }

    /// `DELETE path`, answer ignored.
    pub async fn delete(&self, path: &str) -> Result<()> {
        self.send(self.request(Method::DELETE, path).timeout(REQUEST_TIMEOUT))
            .await?;
        Ok(())
    }
}

/// `s` as one URL path segment.
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
