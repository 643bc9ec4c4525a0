//! The end-to-end harness: runs the real `remora` binary against small upstream servers that live in
//! the test process, and drives it with hyper clients or raw sockets.
//!
//! - [`process`]: start `remora proxy` with a config in a temp dir, wait for `ready:` on stdout, read
//!   its memory from /proc, signal it, kill it on drop (printing its stderr if the test failed).
//! - [`upstream`]: hyper servers on `127.0.0.1:0` (echo, hand-written handlers) and raw TCP upstreams
//!   that misbehave on purpose.
//! - [`client`]: HTTP/1.1 and h2c clients (pooled, or one connection), and a raw TCP client.
//!
//! Every await on the network goes through [`within`], so a proxy bug fails a test instead of hanging it.
#![allow(dead_code, unused_imports)] // each test binary uses its own part of the harness

pub mod browser;
pub mod chaos;
pub mod client;
pub mod control;
pub mod load;
pub mod netns;
pub mod process;
pub mod upstream;

use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use tokio::sync::mpsc;

pub use chaos::*;
pub use client::{h1_client, h2_client, H1Conn, H2Conn, RawConn, RawOutcome, RawResponse};
pub use process::{remora_check, Memory, Proxy};
pub use upstream::{dead_addr, Gate, Proto, Seen, Upstream};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The one body type used by every client and server here.
pub type Body = BoxBody<Bytes, BoxError>;

/// How long any single network step may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Awaits `future`, failing the test (instead of hanging it) after [`TIMEOUT`].
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    within_for(TIMEOUT, what, future).await
}

pub async fn within_for<F: Future>(limit: Duration, what: &str, future: F) -> F::Output {
    match tokio::time::timeout(limit, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

pub fn empty() -> Body {
    Empty::<Bytes>::new().map_err(|never| match never {}).boxed()
}

pub fn boxed<B>(body: B) -> Body
where
    B: HttpBody<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// Collects a whole body (data and trailers), bounded by [`TIMEOUT`].
pub async fn collect<B>(what: &str, body: B) -> Result<http_body_util::Collected<Bytes>, B::Error>
where
    B: HttpBody<Data = Bytes>,
{
    within(what, body.collect()).await
}

/// Collects a body's bytes, failing the test on a body error.
pub async fn read_body<B>(what: &str, body: B) -> Bytes
where
    B: HttpBody<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    match collect(what, body).await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => panic!("body of {what} failed: {error:?}"),
    }
}

/// A body fed from the test, frame by frame: data now, more later, trailers at the end.
pub struct ChannelBody {
    receiver: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
}

#[derive(Clone)]
pub struct BodySender {
    sender: mpsc::Sender<Result<Frame<Bytes>, BoxError>>,
}

pub fn channel_body() -> (BodySender, Body) {
    let (sender, receiver) = mpsc::channel(16);
    (BodySender { sender }, ChannelBody { receiver }.boxed())
}

impl BodySender {
    pub async fn data(&self, bytes: impl Into<Bytes>) {
        let sent = within("body channel", self.sender.send(Ok(Frame::data(bytes.into())))).await;
        sent.expect("the body's reader went away (request or response dropped)");
    }

    pub async fn trailers(&self, trailers: http::HeaderMap) {
        let sent = within("body channel", self.sender.send(Ok(Frame::trailers(trailers)))).await;
        sent.expect("the body's reader went away (request or response dropped)");
    }

    /// Ends the body with an error, which a server or client turns into a reset.
    pub async fn abort(&self) {
        let _ = self.sender.send(Err("aborted by the test".into())).await;
    }
}

impl HttpBody for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.receiver.poll_recv(cx)
    }
}

/// A deterministic byte stream of any length, generated on the fly: byte `i` is `PATTERN[i % P]` for a
/// prime period P, so a chunk lost, repeated or moved shows up when compared with [`Pattern::check`].
#[derive(Clone)]
pub struct Pattern {
    /// The period twice over, so that any window of up to P bytes is one slice.
    doubled: Bytes,
}

const PERIOD: usize = 65_521;

impl Pattern {
    pub fn new() -> Pattern {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut period = Vec::with_capacity(PERIOD);
        for _ in 0..PERIOD {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            period.push((state >> 24) as u8);
        }
        let mut doubled = period.clone();
        doubled.extend_from_slice(&period);
        Pattern { doubled: Bytes::from(doubled) }
    }

    /// Bytes `offset .. offset + len` of the stream (without a copy when `len` is at most the period).
    pub fn slice(&self, offset: u64, len: usize) -> Bytes {
        let start = (offset % PERIOD as u64) as usize;
        if len <= PERIOD {
            return self.doubled.slice(start..start + len);
        }
        let mut bytes = Vec::with_capacity(len);
        while bytes.len() < len {
            let piece = (len - bytes.len()).min(PERIOD);
            bytes.extend_from_slice(&self.slice(offset + bytes.len() as u64, piece));
        }
        Bytes::from(bytes)
    }

    /// Whether `chunk` is what the stream holds at `offset`.
    pub fn check(&self, offset: u64, chunk: &[u8]) -> bool {
        let mut position = offset;
        for piece in chunk.chunks(PERIOD) {
            if self.slice(position, piece.len()) != piece {
                return false;
            }
            position += piece.len() as u64;
        }
        true
    }

    /// A body of `total` bytes of the stream in chunks of `chunk` bytes; `known_length` decides whether
    /// the body announces its size (content-length) or not (chunked).
    pub fn body(&self, total: u64, chunk: usize, known_length: bool) -> Body {
        PatternBody { pattern: self.clone(), offset: 0, total, chunk, known_length }.boxed()
    }
}

impl Default for Pattern {
    fn default() -> Self {
        Pattern::new()
    }
}

struct PatternBody {
    pattern: Pattern,
    offset: u64,
    total: u64,
    chunk: usize,
    known_length: bool,
}

impl HttpBody for PatternBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.offset >= self.total {
            return Poll::Ready(None);
        }
        let len = (self.total - self.offset).min(self.chunk as u64) as usize;
        let bytes = self.pattern.slice(self.offset, len);
        self.offset += len as u64;
        Poll::Ready(Some(Ok(Frame::data(bytes))))
    }

    fn is_end_stream(&self) -> bool {
        self.offset >= self.total
    }

    fn size_hint(&self) -> SizeHint {
        if self.known_length {
            SizeHint::with_exact(self.total - self.offset)
        } else {
            SizeHint::default()
        }
    }
}

/// Reads a body to its end, checking every byte against `pattern`; returns the length read.
pub async fn check_pattern_body<B>(what: &str, mut body: B, pattern: &Pattern) -> Result<u64, String>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Display,
{
    let mut offset = 0u64;
    loop {
        let frame = match within(what, body.frame()).await {
            None => return Ok(offset),
            Some(Ok(frame)) => frame,
            Some(Err(error)) => return Err(format!("{what}: body error after {offset} bytes: {error}")),
        };
        if let Ok(data) = frame.into_data() {
            if !pattern.check(offset, &data) {
                return Err(format!(
                    "{what}: bytes {offset}..{} differ from what was sent",
                    offset + data.len() as u64
                ));
            }
            offset += data.len() as u64;
        }
    }
}

/// Fills `{NAME}` tokens in a config template. `{ADMIN}` is an admin section on `127.0.0.1:0` and
/// `{LISTENER}` one listener named `main` on `127.0.0.1:0`; other names come from `vars`.
pub fn config(template: &str, vars: &[(&str, &dyn Display)]) -> String {
    let mut text = template.replace("{ADMIN}", ADMIN).replace("{LISTENER}", LISTENER);
    for (name, value) in vars {
        text = text.replace(&format!("{{{name}}}"), &value.to_string());
    }
    let leftover = text.split('{').skip(1).find(|rest| {
        let name: String =
            rest.chars().take_while(|c| c.is_ascii_uppercase() || *c == '_' || c.is_ascii_digit()).collect();
        !name.is_empty() && rest[name.len()..].starts_with('}')
    });
    assert!(leftover.is_none(), "config template has an unfilled token: {{{}", leftover.unwrap_or_default());
    text
}

pub const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";
pub const LISTENER: &str = "[[listeners]]\nname = \"main\"\nlisten = \"127.0.0.1:0\"\n";
