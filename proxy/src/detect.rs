//! Protocol detection for inbound and outbound listeners: the client's first bytes say whether a
//! connection is HTTP/2 (the prior-knowledge preface), HTTP/1 (a request line) or anything else
//! (opaque TCP). Reverse listeners do not come here: hyper's auto server tells HTTP/1.1 from h2c on
//! its own, without a wait.
//!
//! The bytes read are not lost: [`Prefixed`] hands them to whoever serves the connection next (hyper,
//! or the TCP forwarder, which writes them upstream first). A client that sends nothing decisive
//! within the listener's `detect_timeout` (a server-speaks-first protocol such as MySQL or SMTP,
//! whose client waits for the server's greeting) is forwarded as opaque TCP, never failed.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::stats::tcp::Detected;

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The most bytes read while deciding. A request line still well-formed at this length is taken for
/// HTTP/1 (hyper then applies the listener's own limits to it).
pub const MAX_DETECT_BYTES: usize = 8 * 1024;

/// The longest method token accepted (the registered ones are at most 17 bytes long).
const MAX_METHOD: usize = 24;

/// What the bytes seen so far say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Http1,
    Http2,
    Tcp,
    /// Still a possible beginning of HTTP: read more.
    NeedMore,
}

/// Classifies a connection's first bytes. HTTP/2 is the whole 24-byte preface; HTTP/1 is a request
/// line up to its version: a method token, one space, a request target of visible characters (origin
/// form `/…`, `*`, absolute form or CONNECT's authority), one space and `HTTP/1.` with a digit.
/// Anything that cannot be the beginning of one of these is TCP as soon as the byte that rules it out
/// arrives.
pub fn classify(bytes: &[u8]) -> Verdict {
    if bytes.is_empty() {
        return Verdict::NeedMore;
    }
    let compared = bytes.len().min(PREFACE.len());
    if bytes[..compared] == PREFACE[..compared] {
        return if bytes.len() >= PREFACE.len() { Verdict::Http2 } else { Verdict::NeedMore };
    }
    request_line(bytes)
}

fn request_line(bytes: &[u8]) -> Verdict {
    // Method: a token, then one space.
    let method = bytes.iter().take_while(|byte| is_token_byte(**byte)).count();
    if method > MAX_METHOD {
        return Verdict::Tcp;
    }
    let Some(&after_method) = bytes.get(method) else { return Verdict::NeedMore };
    if method == 0 || after_method != b' ' {
        return Verdict::Tcp;
    }
    // Target: visible bytes up to the next space (ASCII, and 0x80–0xFF as httparse allows: raw UTF-8
    // in a path is still HTTP); its first byte starts one of the four forms.
    let target = &bytes[method + 1..];
    let Some(&first) = target.first() else { return Verdict::NeedMore };
    if !(first == b'/' || first == b'*' || first == b'[' || first.is_ascii_alphanumeric()) {
        return Verdict::Tcp;
    }
    let length = target.iter().take_while(|byte| (0x21..=0x7e).contains(*byte) || **byte >= 0x80).count();
    let Some(&after_target) = target.get(length) else {
        return if bytes.len() >= MAX_DETECT_BYTES { Verdict::Http1 } else { Verdict::NeedMore };
    };
    if after_target != b' ' {
        return Verdict::Tcp;
    }
    // Version: `HTTP/1.` and a digit.
    const VERSION: &[u8] = b"HTTP/1.";
    let version = &target[length + 1..];
    let compared = version.len().min(VERSION.len());
    if version[..compared] != VERSION[..compared] {
        return Verdict::Tcp;
    }
    match version.get(VERSION.len()) {
        None => Verdict::NeedMore,
        Some(digit) if digit.is_ascii_digit() => Verdict::Http1,
        Some(_) => Verdict::Tcp,
    }
}

/// RFC 9110 `tchar`.
fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// Reads from `stream` until [`classify`] decides, the client closes its side (TCP), the buffer
/// holds [`MAX_DETECT_BYTES`] (TCP, or HTTP/1 per `classify`) or `timeout` passes (TCP). Returns the
/// verdict and every byte read. A read error (a reset) is returned as it is.
pub async fn detect(stream: &mut TcpStream, timeout: Duration) -> io::Result<(Detected, BytesMut)> {
    let mut buffer = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let read = match tokio::time::timeout_at(deadline, stream.read_buf(&mut buffer)).await {
            Err(_elapsed) => return Ok((Detected::Timeout, buffer)),
            Ok(read) => read?,
        };
        let verdict = classify(&buffer);
        let detected = match verdict {
            Verdict::Http1 => Detected::Http1,
            Verdict::Http2 => Detected::Http2,
            Verdict::Tcp => Detected::Tcp,
            // The client closed before it could tell: whatever it sent goes on as TCP.
            Verdict::NeedMore if read == 0 => Detected::Tcp,
            Verdict::NeedMore if buffer.len() >= MAX_DETECT_BYTES => Detected::Tcp,
            Verdict::NeedMore => {
                buffer.reserve(1024.min(MAX_DETECT_BYTES - buffer.len()));
                continue;
            }
        };
        return Ok((detected, buffer));
    }
}

/// A stream whose first bytes were already read: reads return them first, then the stream's own.
/// Writes go straight to the stream.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: BytesMut,
    stream: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: BytesMut, stream: S) -> Self {
        Self { prefix, stream }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let length = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..length]);
            this.prefix.advance(length);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn the_h2_preface_is_http2_and_its_prefixes_need_more() {
        assert_eq!(classify(PREFACE), Verdict::Http2);
        let mut with_settings = PREFACE.to_vec();
        with_settings.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(classify(&with_settings), Verdict::Http2);
        for length in 1..PREFACE.len() {
            assert_eq!(classify(&PREFACE[..length]), Verdict::NeedMore, "{length} bytes of the preface");
        }
        // `PRI * HTTP/2.0` followed by anything but the preface's rest is neither.
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n\r\nXX"), Verdict::Tcp);
    }

    #[test]
    fn raw_utf8_in_the_target_is_still_http1() {
        assert_eq!(classify("GET /café HTTP/1.1\r\n".as_bytes()), Verdict::Http1);
        assert_eq!(classify(b"GET /caf\xc3"), Verdict::NeedMore);
        assert_eq!(classify(b"GET /a\x01b HTTP/1.1\r\n"), Verdict::Tcp, "a control byte is not HTTP");
    }

    #[test]
    fn every_http1_method_is_http1() {
        for method in
            ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "PROPFIND"]
        {
            let target = match method {
                "CONNECT" => "payments.internal:443",
                "OPTIONS" => "*",
                _ => "/api/v1?x=1",
            };
            for version in ["1.1", "1.0"] {
                let line = format!("{method} {target} HTTP/{version}\r\nHost: a\r\n\r\n");
                assert_eq!(classify(line.as_bytes()), Verdict::Http1, "{line:?}");
            }
        }
        assert_eq!(classify(b"GET http://example.com/ HTTP/1.1\r\n"), Verdict::Http1, "absolute form");
    }

    #[test]
    fn a_request_line_cut_anywhere_needs_more_until_its_version() {
        let line = b"POST /upload HTTP/1.1\r\n";
        let decided = b"POST /upload HTTP/1.1".len();
        for length in 1..decided {
            assert_eq!(classify(&line[..length]), Verdict::NeedMore, "{:?}", &line[..length]);
        }
        for length in decided..=line.len() {
            assert_eq!(classify(&line[..length]), Verdict::Http1);
        }
    }

    #[test]
    fn binary_garbage_and_other_protocols_are_tcp() {
        let client_hello = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03];
        assert_eq!(classify(&client_hello), Verdict::Tcp, "TLS ClientHello");
        assert_eq!(classify(&[0x16]), Verdict::Tcp, "one byte of a ClientHello is enough");
        assert_eq!(classify(&[0, 0, 0, 0x2a, 0xff]), Verdict::Tcp);
        assert_eq!(classify(b"\x00\x00\x00\x08\x04\xd2\x16\x2f"), Verdict::Tcp, "PostgreSQL SSLRequest");
        assert_eq!(classify(b"*1\r\n$4\r\nPING\r\n"), Verdict::Tcp, "Redis RESP");
        assert_eq!(classify(b"SET key value\r\n"), Verdict::Tcp, "Redis inline: a token, but no version");
        assert_eq!(classify(b"PING\r\n"), Verdict::Tcp);
        assert_eq!(classify(b"EHLO mail.example.com\r\n"), Verdict::Tcp, "SMTP");
        assert_eq!(classify(b"GET / HTTP/2.0\r\n"), Verdict::Tcp, "not an HTTP/1 version");
        assert_eq!(classify(b"GET\t/ HTTP/1.1\r\n"), Verdict::Tcp);
        assert_eq!(classify(b" GET / HTTP/1.1\r\n"), Verdict::Tcp);
        assert_eq!(classify(b"GET /a b HTTP/1.1\r\n"), Verdict::Tcp);
        assert_eq!(classify(b"GET \"/ HTTP/1.1\r\n"), Verdict::Tcp);
        assert_eq!(classify(&[b'A'; MAX_METHOD + 1]), Verdict::Tcp, "a token too long for a method");
    }

    #[test]
    fn a_long_but_wellformed_target_is_http1_at_the_cap() {
        let mut line = b"GET /".to_vec();
        line.resize(MAX_DETECT_BYTES, b'a');
        assert_eq!(classify(&line[..MAX_DETECT_BYTES - 1]), Verdict::NeedMore);
        assert_eq!(classify(&line), Verdict::Http1);
    }

    /// A connected pair on 127.0.0.1: (the side the test writes, the side `detect` reads).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn partial_reads_are_joined_until_the_verdict() {
        let (mut client, mut server) = pair().await;
        let writer = tokio::spawn(async move {
            for piece in [&b"GE"[..], b"T /x HT", b"TP/1", b".1\r\nhost: a\r\n\r\n"] {
                client.write_all(piece).await.unwrap();
                client.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            client
        });
        let (detected, bytes) = detect(&mut server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(detected, Detected::Http1);
        assert!(bytes.starts_with(b"GET /x HTTP/1."), "{bytes:?}");
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn h2_preface_in_pieces_is_http2() {
        let (mut client, mut server) = pair().await;
        client.write_all(&PREFACE[..5]).await.unwrap();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            client.write_all(&PREFACE[5..]).await.unwrap();
            client
        });
        let (detected, bytes) = detect(&mut server, Duration::from_secs(5)).await.unwrap();
        assert_eq!((detected, &bytes[..]), (Detected::Http2, PREFACE));
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn silence_is_a_timeout_and_a_close_is_tcp() {
        let (client, mut server) = pair().await;
        let (detected, bytes) = detect(&mut server, Duration::from_millis(50)).await.unwrap();
        assert_eq!((detected, bytes.len()), (Detected::Timeout, 0), "a server-speaks-first client waits");
        drop(client);
        let (detected, bytes) = detect(&mut server, Duration::from_secs(5)).await.unwrap();
        assert_eq!((detected, bytes.len()), (Detected::Tcp, 0), "closed without a byte");

        let (mut client, mut server) = pair().await;
        client.write_all(b"GET /").await.unwrap();
        client.shutdown().await.unwrap();
        let (detected, bytes) = detect(&mut server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            (detected, &bytes[..]),
            (Detected::Tcp, &b"GET /"[..]),
            "closed half-way: TCP, bytes kept"
        );
    }

    #[tokio::test]
    async fn tls_client_hello_is_tcp_at_once() {
        let (mut client, mut server) = pair().await;
        client.write_all(&[0x16, 0x03, 0x01, 0x00, 0xa5, 0x01]).await.unwrap();
        let (detected, bytes) = detect(&mut server, Duration::from_secs(30)).await.unwrap();
        assert_eq!((detected, bytes.len()), (Detected::Tcp, 6));
    }

    #[tokio::test]
    async fn prefixed_reads_the_prefix_then_the_stream() {
        let (mut client, server) = pair().await;
        client.write_all(b" world").await.unwrap();
        client.shutdown().await.unwrap();
        let mut prefixed = Prefixed::new(BytesMut::from(&b"hello"[..]), server);
        let mut all = Vec::new();
        prefixed.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"hello world");
    }
}
