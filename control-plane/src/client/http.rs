//! A small HTTPS client for the API: one request per connection, TLS verified against
//! the control plane's CA, bearer credential, JSON in and out.

use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

use super::Endpoint;
use crate::views::ErrorBody;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
const MAX_RESPONSE: usize = 1 << 30;

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The CLI is not configured well enough to call.
    #[error("{0}")]
    Config(String),
    /// The server could not be reached or the connection broke.
    #[error("cannot reach the control plane at {server}: {reason}")]
    Connect {
        /// Where.
        server: String,
        /// Why.
        reason: String,
    },
    /// The server answered with an error.
    #[error("{message} (HTTP {status})")]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// The server's message.
        message: String,
    },
    /// The answer did not have the expected shape.
    #[error("unexpected answer from the control plane: {0}")]
    Decode(String),
}

/// A client for one control plane.
pub struct ApiClient {
    server: String,
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    token: String,
    tls: tokio_rustls::TlsConnector,
    /// Whether the server is trusted through the system's roots rather than a given CA.
    system_roots: bool,
}

impl ApiClient {
    /// A client for `endpoint`, trusting only its CA, or the system's roots when none is
    /// given (a control plane with a publicly trusted certificate).
    pub fn new(endpoint: &Endpoint) -> Result<Self, ClientError> {
        use rustls::pki_types::pem::PemObject;
        let rest = endpoint.server.strip_prefix("https://").ok_or_else(|| {
            ClientError::Config(format!(
                "server {:?} must be an https:// URL",
                endpoint.server
            ))
        })?;
        let authority = rest.trim_end_matches('/');
        let (host, port) = continuum_shared::tls::split_address(authority)
            .or_else(|| Some((authority.to_owned(), 443)).filter(|_| !authority.contains(':')))
            .ok_or_else(|| {
                ClientError::Config(format!(
                    "server {:?} is not of the form https://host:port",
                    endpoint.server
                ))
            })?;
        let server_name = continuum_shared::tls::server_name(&host).map_err(ClientError::Config)?;
        let mut roots = rustls::RootCertStore::empty();
        if endpoint.ca_pem.trim().is_empty() {
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                return Err(ClientError::Config(
                    "no CA certificate given and no usable one in the system's trust store: pass --ca FILE (the data directory's ca.crt)".into(),
                ));
            }
        }
        for cert in CertificateDer::pem_slice_iter(endpoint.ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| ClientError::Config(format!("CA certificate: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| ClientError::Config(format!("CA certificate: {e}")))?;
        }
        let mut config =
            rustls::ClientConfig::builder_with_provider(continuum_shared::tls::provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| ClientError::Config(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ApiClient {
            server: endpoint.server.clone(),
            host,
            port,
            server_name,
            token: endpoint.token.clone(),
            tls: tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)),
            system_roots: endpoint.ca_pem.trim().is_empty(),
        })
    }

    /// GET a JSON resource.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        decode(&self.request(Method::GET, path, None).await?)
    }

    /// POST a JSON body, read a JSON answer.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Decode(e.to_string()))?;
        decode(
            &self
                .request(Method::POST, path, Some(("application/json", body)))
                .await?,
        )
    }

    /// PUT a JSON body, read a JSON answer.
    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Decode(e.to_string()))?;
        decode(
            &self
                .request(Method::PUT, path, Some(("application/json", body)))
                .await?,
        )
    }

    /// DELETE a resource, read a JSON answer.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        decode(&self.request(Method::DELETE, path, None).await?)
    }

    /// POST raw bytes of `content_type`, read a JSON answer.
    pub async fn post_bytes<T: DeserializeOwned>(
        &self,
        path: &str,
        content_type: &'static str,
        body: Vec<u8>,
    ) -> Result<T, ClientError> {
        decode(
            &self
                .request(Method::POST, path, Some((content_type, body)))
                .await?,
        )
    }

    /// GET raw bytes.
    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        self.request(Method::GET, path, None).await
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<Vec<u8>, ClientError> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method, path, body))
            .await
            .map_err(|_| {
                self.connect_error(format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()))
            })?
    }

    fn connect_error(&self, reason: impl Into<String>) -> ClientError {
        ClientError::Connect {
            server: self.server.clone(),
            reason: reason.into(),
        }
    }

    /// GET a body that streams (logs), handing each chunk to `sink` as it arrives;
    /// returns when the server ends the body. No overall time limit.
    pub async fn get_streamed(
        &self,
        path: &str,
        mut sink: impl FnMut(&[u8]),
    ) -> Result<(), ClientError> {
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.send(Method::GET, path, None))
            .await
            .map_err(|_| {
                self.connect_error(format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()))
            })??;
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let bytes = Limited::new(body, MAX_RESPONSE)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(api_error(status, &bytes));
        }
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| self.connect_error(format!("reading the answer: {e}")))?;
            if let Some(data) = frame.data_ref() {
                sink(data);
            }
        }
        Ok(())
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<Vec<u8>, ClientError> {
        let response = self.send(method, path, body).await?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| self.connect_error(format!("reading the answer: {e}")))?
            .to_bytes();
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        Err(api_error(status, &bytes))
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| self.connect_error("connection timed out"))?
        .map_err(|e| self.connect_error(format!("{e} (is `continuum serve` running?)")))?;
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| {
                let hint = if self.system_roots
                    && e.to_string().contains("UnknownIssuer")
                {
                    " (the server's certificate is not publicly trusted; pass --ca FILE, the control plane's ca.crt)"
                } else {
                    ""
                };
                self.connect_error(format!("TLS: {e}{hint}"))
            })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| self.connect_error(e.to_string()))?;
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, format!("{}:{}", self.host, self.port))
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .header(
                hyper::header::USER_AGENT,
                concat!("continuum-cli/", env!("CARGO_PKG_VERSION")),
            );
        let body = match body {
            Some((content_type, body)) => {
                request = request.header(hyper::header::CONTENT_TYPE, content_type);
                body
            }
            None => Vec::new(),
        };
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ClientError::Config(e.to_string()))?;
        sender
            .send_request(request)
            .await
            .map_err(|e| self.connect_error(e.to_string()))
    }
}

fn api_error(status: StatusCode, bytes: &[u8]) -> ClientError {
    let message = serde_json::from_slice::<ErrorBody>(bytes)
        .map(|b| b.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(bytes).trim().to_owned());
    ClientError::Api { status, message }
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(bytes).map_err(|e| ClientError::Decode(e.to_string()))
}
