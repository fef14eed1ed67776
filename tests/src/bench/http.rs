//! A small HTTP/1.1 client for the bench: one keep-alive connection per caller, over the
//! daemon's Unix socket or over loopback TCP (Restate). Each concurrent worker of a workload owns
//! its own [`Conn`], so requests never queue behind each other inside the client.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{header, Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};

/// Where a server listens.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Unix(std::path::PathBuf),
    Tcp(std::net::SocketAddr),
}

impl Endpoint {
    pub fn unix(path: &Path) -> Endpoint {
        Endpoint::Unix(path.to_owned())
    }

    /// Opens a new keep-alive connection.
    pub async fn connect(&self) -> Result<Conn> {
        match self {
            Endpoint::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .with_context(|| format!("connecting to {}", path.display()))?;
                Conn::handshake(stream, "localhost".to_owned()).await
            }
            Endpoint::Tcp(address) => {
                let stream = tokio::net::TcpStream::connect(address)
                    .await
                    .with_context(|| format!("connecting to {address}"))?;
                stream.set_nodelay(true)?;
                Conn::handshake(stream, address.to_string()).await
            }
        }
    }
}

/// A response: status and body bytes.
pub struct Response {
    pub status: u16,
    pub body: Bytes,
}

impl Response {
    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "response body (status {}) is not JSON: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The JSON body of a 2xx response, or an error naming the status and the body.
    pub fn ok_json(&self, what: &str) -> Result<Value> {
        if !(200..300).contains(&self.status) {
            return Err(anyhow!(
                "{what}: status {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            ));
        }
        self.json()
    }
}

/// One HTTP/1.1 connection.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl Conn {
    async fn handshake<S>(stream: S, host: String) -> Result<Conn>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // Ends when the server closes the connection or the `Conn` is dropped.
            let _ = connection.await;
        });
        Ok(Conn { sender, host })
    }

    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response> {
        self.sender.ready().await.context("connection closed")?;
        let bytes = match body {
            Some(value) => Bytes::from(serde_json::to_vec(value)?),
            None => Bytes::new(),
        };
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.host);
        if body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        let response = self
            .sender
            .send_request(builder.body(Full::new(bytes))?)
            .await
            .with_context(|| format!("request {path}"))?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Response { status, body })
    }

    pub async fn get(&mut self, path: &str) -> Result<Response> {
        self.request(Method::GET, path, None).await
    }

    pub async fn post(&mut self, path: &str, body: &Value) -> Result<Response> {
        self.request(Method::POST, path, Some(body)).await
    }
}
