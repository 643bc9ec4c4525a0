//! Clients: pooled hyper clients (HTTP/1.1, h2c), single-connection ones (to know what shares a
//! connection) and a raw TCP client for bytes no well-behaved client sends.

use std::net::SocketAddr;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{within, Body};

pub type PooledClient = Client<HttpConnector, Body>;

/// A pooled HTTP/1.1 client (keep-alive, several connections when used concurrently).
pub fn h1_client() -> PooledClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A pooled h2c client with prior knowledge (no upgrade dance).
pub fn h2_client() -> PooledClient {
    Client::builder(TokioExecutor::new()).http2_only(true).build_http()
}

async fn connect(addr: SocketAddr) -> TcpStream {
    let tcp = within(&format!("TCP connect to {addr}"), TcpStream::connect(addr))
        .await
        .unwrap_or_else(|error| panic!("connect to {addr}: {error}"));
    let _ = tcp.set_nodelay(true);
    tcp
}

/// One HTTP/1.1 connection: every request goes over the same socket, or fails.
pub struct H1Conn {
    sender: http1::SendRequest<Body>,
    pub local: SocketAddr,
}

impl H1Conn {
    pub async fn connect(addr: SocketAddr) -> H1Conn {
        let tcp = connect(addr).await;
        let local = tcp.local_addr().expect("local address");
        let (sender, connection) = within("HTTP/1.1 handshake", http1::handshake(TokioIo::new(tcp)))
            .await
            .expect("HTTP/1.1 handshake");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        H1Conn { sender, local }
    }

    /// Sends `request` on this connection; the error if the connection is closed or the response
    /// head is broken. Requests need their own `Host` header here.
    pub async fn send(&mut self, request: Request<Body>) -> Result<Response<Incoming>, hyper::Error> {
        within("the HTTP/1.1 connection to be ready", self.sender.ready()).await?;
        within("a response head", self.sender.send_request(request)).await
    }

    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

/// One h2c connection (prior knowledge); clones share it, so requests on it are concurrent streams.
#[derive(Clone)]
pub struct H2Conn {
    sender: http2::SendRequest<Body>,
}

impl H2Conn {
    pub async fn connect(addr: SocketAddr) -> H2Conn {
        let tcp = connect(addr).await;
        let (sender, connection) =
            within("h2 handshake", http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)))
                .await
                .expect("h2 handshake");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        H2Conn { sender }
    }

    /// Sends `request` (with an absolute URI: h2 needs :scheme and :authority) as a new stream.
    pub async fn send(&self, request: Request<Body>) -> Result<Response<Incoming>, hyper::Error> {
        let mut sender = self.sender.clone();
        within("the h2 connection to be ready", sender.ready()).await?;
        within("a response head", sender.send_request(request)).await
    }
}

/// A TCP connection speaking whatever bytes the test writes.
pub struct RawConn {
    tcp: TcpStream,
    buffer: Vec<u8>,
}

#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What came back on a raw connection.
#[derive(Debug)]
pub enum RawOutcome {
    Response(RawResponse),
    /// The peer closed the connection before a whole response head (bytes read so far).
    Closed(Vec<u8>),
    /// Reading failed (connection reset).
    Reset(String),
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> RawConn {
        RawConn { tcp: connect(addr).await, buffer: Vec::new() }
    }

    /// Writes bytes; a peer that already closed may make this fail, which some tests accept.
    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        within("a raw write", self.tcp.write_all(bytes)).await
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let read = within("bytes from the proxy", self.tcp.read(&mut chunk)).await?;
        self.buffer.extend_from_slice(&chunk[..read]);
        Ok(read)
    }

    /// Reads one response (head and body: content-length, chunked, or up to the close).
    pub async fn read_response(&mut self) -> RawOutcome {
        let head_end = loop {
            if let Some(at) = self.buffer.windows(4).position(|window| window == b"\r\n\r\n") {
                break at + 4;
            }
            match self.fill().await {
                Ok(0) => return RawOutcome::Closed(std::mem::take(&mut self.buffer)),
                Ok(_) => {}
                Err(error) => return RawOutcome::Reset(error.to_string()),
            }
        };
        let head = String::from_utf8_lossy(&self.buffer[..head_end]).into_owned();
        self.buffer.drain(..head_end);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter(|line| !line.is_empty())
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
            .collect();
        let mut response = RawResponse { status, headers, body: Vec::new() };
        if (100..200).contains(&status) || status == 204 || status == 304 {
            return RawOutcome::Response(response);
        }
        if let Some(length) = response.header("content-length") {
            let length: usize = length.parse().expect("content-length");
            while self.buffer.len() < length {
                if !matches!(self.fill().await, Ok(read) if read > 0) {
                    break;
                }
            }
            let take = length.min(self.buffer.len());
            response.body = self.buffer.drain(..take).collect();
        } else if response.header("transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked")) {
            response.body = self.read_chunked().await;
        } else {
            while matches!(self.fill().await, Ok(read) if read > 0) {}
            response.body = std::mem::take(&mut self.buffer);
        }
        RawOutcome::Response(response)
    }

    /// Decodes a chunked body; a body cut short returns what arrived.
    async fn read_chunked(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(at) = self.buffer.windows(2).position(|window| window == b"\r\n") {
                    break at;
                }
                if !matches!(self.fill().await, Ok(read) if read > 0) {
                    return body;
                }
            };
            let line = String::from_utf8_lossy(&self.buffer[..line_end]).into_owned();
            self.buffer.drain(..line_end + 2);
            let size =
                usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16).expect("chunk size");
            if size == 0 {
                // Trailers, up to an empty line.
                while !self.buffer.starts_with(b"\r\n") {
                    match self.buffer.windows(4).position(|window| window == b"\r\n\r\n") {
                        Some(at) => {
                            self.buffer.drain(..at + 2);
                        }
                        None if matches!(self.fill().await, Ok(read) if read > 0) => continue,
                        None => return body,
                    }
                }
                self.buffer.drain(..2);
                return body;
            }
            while self.buffer.len() < size + 2 {
                if !matches!(self.fill().await, Ok(read) if read > 0) {
                    body.extend_from_slice(&self.buffer);
                    return body;
                }
            }
            body.extend_from_slice(&self.buffer[..size]);
            self.buffer.drain(..size + 2);
        }
    }

    /// Whether the peer has closed the connection (reads EOF or an error, after any buffered bytes).
    pub async fn closed(&mut self) -> bool {
        loop {
            match self.fill().await {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue,
            }
        }
    }
}
