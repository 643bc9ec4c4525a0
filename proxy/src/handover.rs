//! Zero-downtime restart: the running proxy hands its listening sockets to its successor over a unix
//! socket, the very same sockets (SCM_RIGHTS), so connections already queued in a listener's accept
//! backlog are accepted by the successor instead of being reset, as they would be if the successor
//! bound its own sockets with SO_REUSEPORT and the old process then closed its own.
//!
//! It sits beside the request's way, not on it: the old process runs a [`Server`] next to the admin
//! server; the new one calls [`take_over`] before it starts accepting. The exchange, one line of JSON
//! per message (at most [`MAX_MESSAGE_BYTES`]):
//!
//! 1. successor: `{"version":1,"request":"sockets"}`
//! 2. old: `{"version":1,"sockets":["listener:public","admin"]}`, carrying the sockets' descriptors
//!    in that order as SCM_RIGHTS of the same `sendmsg` (at most [`MAX_SOCKETS`]); or, refusing,
//!    `{"version":1,"error":"…"}`
//! 3. successor, once its listeners accept: `{"ready":true}`
//! 4. old: `{"version":1,"handed_over":true}`, then it calls `on_handed_over` and drains.
//!
//! Until step 4 the old process keeps serving: a successor that fails, lies or goes away changes
//! nothing, and the next one is served. Between steps 2 and 4 both processes accept on the same
//! sockets, which loses nothing either. The acknowledgement in step 4 lets the successor know for sure
//! that the old process drains (without it, a `ready` racing the old side's timeout would leave two
//! processes each believing the other has gone).

use std::future::Future;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::TcpListener;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::sockopt;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketType,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

/// The protocol version both sides must speak.
const VERSION: u32 = 1;

/// The longest message (one JSON line) either side accepts or sends.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The most sockets one handover carries: listeners plus the admin server's.
pub const MAX_SOCKETS: usize = 64;

/// How long the old process waits for a connected successor's request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the old process waits, after sending the sockets, for the successor to be ready: it has to
/// load its configuration and start its listeners in that time, or the old process keeps serving.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the successor waits for each answer of the old process.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// After a failed `accept` on the handover socket (out of file descriptors), before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

const ADMIN: &str = "admin";
const LISTENER_PREFIX: &str = "listener:";

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("cannot bind the handover socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("{path} exists and is not a socket: refusing to replace it with the handover socket")]
    NotASocket { path: PathBuf },
    #[error("no running proxy answers on the handover socket {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("handover connection: {0}")]
    Io(#[from] io::Error),
    #[error("the peer closed the handover connection")]
    Closed,
    #[error("the peer did not answer within {0:?}")]
    Timeout(Duration),
    #[error("handover protocol version {theirs} is not supported (this process speaks version {ours})")]
    Version { ours: u32, theirs: u32 },
    #[error("malformed handover message: {0}")]
    Malformed(String),
    #[error("handover message larger than {MAX_MESSAGE_BYTES} bytes")]
    TooLarge,
    #[error("more than {MAX_SOCKETS} sockets to hand over")]
    TooManySockets,
    #[error("socket {name:?} received in the handover is not a listening TCP socket")]
    NotAListener { name: String },
    #[error("the running proxy refused the handover: {0}")]
    Refused(String),
    #[error("the successor withdrew before it was ready")]
    Withdrawn,
}

/// What the old process offers its successor: duplicates of its listening sockets (e.g.
/// `listener.as_fd().try_clone_to_owned()`), each listener's by name and the admin server's. They are
/// closed once sent; the old process keeps its own.
#[derive(Debug, Default)]
pub struct Offer {
    pub listeners: Vec<(String, OwnedFd)>,
    pub admin: Option<OwnedFd>,
}

impl Offer {
    /// The names and descriptors to send, in the same order.
    fn wire(&self) -> (Vec<String>, Vec<BorrowedFd<'_>>) {
        let listeners = self.listeners.iter().map(|(name, fd)| (format!("{LISTENER_PREFIX}{name}"), fd));
        let admin = self.admin.iter().map(|fd| (ADMIN.to_owned(), fd));
        listeners.chain(admin).map(|(name, fd)| (name, fd.as_fd())).unzip()
    }
}

/// The sockets one process hands to its successor, as the successor receives them: each listener's by
/// name, and the admin server's.
///
/// They are non-blocking, as `tokio::net::TcpListener::from_std` requires. (Non-blocking is
/// a flag of the socket itself, shared with the old process, whose sockets Tokio made non-blocking
/// anyway.)
#[derive(Debug, Default)]
pub struct Inherited {
    pub listeners: Vec<(String, TcpListener)>,
    pub admin: Option<TcpListener>,
}

impl Inherited {
    /// Checks what a peer sent: one descriptor per name, each a listening TCP socket, names known and
    /// not repeated.
    fn from_wire(names: Vec<String>, fds: Vec<OwnedFd>) -> Result<Self, HandoverError> {
        if names.len() != fds.len() {
            return Err(HandoverError::Malformed(format!(
                "{} socket names for {} descriptors",
                names.len(),
                fds.len()
            )));
        }
        let mut inherited = Inherited::default();
        for (name, fd) in names.into_iter().zip(fds) {
            let Some(socket) = tcp_listener(fd)? else {
                return Err(HandoverError::NotAListener { name });
            };
            if name == ADMIN {
                if inherited.admin.replace(socket).is_some() {
                    return Err(HandoverError::Malformed("two admin sockets".to_owned()));
                }
            } else if let Some(listener) = name.strip_prefix(LISTENER_PREFIX) {
                if inherited.listeners.iter().any(|(known, _)| known == listener) {
                    return Err(HandoverError::Malformed(format!("listener {listener:?} twice")));
                }
                inherited.listeners.push((listener.to_owned(), socket));
            } else {
                return Err(HandoverError::Malformed(format!("unknown socket name {name:?}")));
            }
        }
        Ok(inherited)
    }
}

/// The descriptor as a non-blocking std listener, or `None` if it is not a listening TCP socket (a
/// connected one would make every `accept` fail).
fn tcp_listener(fd: OwnedFd) -> io::Result<Option<TcpListener>> {
    let domain = sockopt::socket_domain(&fd)?;
    let listening = sockopt::socket_type(&fd)? == SocketType::STREAM
        && (domain == AddressFamily::INET || domain == AddressFamily::INET6)
        && sockopt::socket_acceptconn(&fd)?;
    if !listening {
        return Ok(None);
    }
    let socket = TcpListener::from(fd);
    socket.set_nonblocking(true)?;
    Ok(Some(socket))
}

/// The successor's first message.
#[derive(Serialize, Deserialize)]
struct Request {
    version: u32,
    request: RequestKind,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RequestKind {
    Sockets,
}

/// Every message of the old process.
#[derive(Serialize, Deserialize)]
struct Reply {
    version: u32,
    #[serde(flatten)]
    body: ReplyBody,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ReplyBody {
    Sockets(Vec<String>),
    Error(String),
    HandedOver(bool),
}

impl Reply {
    fn new(body: ReplyBody) -> Self {
        Reply { version: VERSION, body }
    }
}

/// The successor's last message. It carries no version: the first exchange settled it.
#[derive(Serialize, Deserialize)]
struct Ready {
    ready: bool,
}

/// Only the version, read first so that a peer of another version gets a clear error, not a
/// complaint about fields it does not know.
#[derive(Deserialize)]
struct Versioned {
    version: u32,
}

fn parse<T: DeserializeOwned>(line: &[u8]) -> Result<T, HandoverError> {
    let malformed = |error: serde_json::Error| HandoverError::Malformed(error.to_string());
    serde_json::from_slice(line).map_err(malformed)
}

fn parse_versioned<T: DeserializeOwned>(line: &[u8]) -> Result<T, HandoverError> {
    let Versioned { version } = parse(line)?;
    if version != VERSION {
        return Err(HandoverError::Version { ours: VERSION, theirs: version });
    }
    parse(line)
}

async fn within<T>(
    limit: Duration,
    step: impl Future<Output = Result<T, HandoverError>>,
) -> Result<T, HandoverError> {
    tokio::time::timeout(limit, step).await.map_err(|_| HandoverError::Timeout(limit))?
}

/// One handover connection: newline-framed JSON, descriptors alongside.
#[derive(Debug)]
struct Connection {
    stream: UnixStream,
    /// Bytes received past the last full line.
    buffered: Vec<u8>,
}

impl Connection {
    fn new(stream: UnixStream) -> Self {
        Connection { stream, buffered: Vec::new() }
    }

    /// Sends `message` as one line, with `fds` attached to its first byte.
    async fn send(&mut self, message: &impl Serialize, fds: &[BorrowedFd<'_>]) -> Result<(), HandoverError> {
        let mut line = serde_json::to_vec(message).map_err(io::Error::from)?;
        if line.len() >= MAX_MESSAGE_BYTES {
            return Err(HandoverError::TooLarge);
        }
        if fds.len() > MAX_SOCKETS {
            return Err(HandoverError::TooManySockets);
        }
        line.push(b'\n');
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(HandoverError::TooManySockets);
        }
        let stream = &self.stream;
        let sent = stream
            .async_io(Interest::WRITABLE, || {
                let data = [IoSlice::new(&line)];
                Ok(rustix::net::sendmsg(stream, &data, &mut control, SendFlags::NOSIGNAL)?)
            })
            .await?;
        // A stream socket may take part of the line; the descriptors went with the first byte.
        self.stream.write_all(&line[sent..]).await?;
        Ok(())
    }

    /// Receives the next line, adding the descriptors that came with it to `fds`.
    async fn receive_line(&mut self, fds: &mut Vec<OwnedFd>) -> Result<Vec<u8>, HandoverError> {
        loop {
            if let Some(end) = self.buffered.iter().position(|&byte| byte == b'\n') {
                if end >= MAX_MESSAGE_BYTES {
                    return Err(HandoverError::TooLarge);
                }
                let rest = self.buffered.split_off(end + 1);
                let mut line = std::mem::replace(&mut self.buffered, rest);
                line.pop();
                return Ok(line);
            }
            if self.buffered.len() >= MAX_MESSAGE_BYTES {
                return Err(HandoverError::TooLarge);
            }
            let mut chunk = [0u8; 4096];
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let stream = &self.stream;
            let received = stream
                .async_io(Interest::READABLE, || {
                    let mut data = [IoSliceMut::new(&mut chunk)];
                    // CLOEXEC: the descriptors must not leak into processes the proxy starts.
                    Ok(rustix::net::recvmsg(stream, &mut data, &mut control, RecvFlags::CMSG_CLOEXEC)?)
                })
                .await?;
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(received_fds) = message {
                    fds.extend(received_fds);
                }
            }
            // CTRUNC: the peer sent more descriptors than fit, and the kernel closed the rest.
            if received.flags.contains(ReturnFlags::CTRUNC) || fds.len() > MAX_SOCKETS {
                return Err(HandoverError::TooManySockets);
            }
            if received.bytes == 0 {
                return Err(HandoverError::Closed);
            }
            self.buffered.extend_from_slice(&chunk[..received.bytes]);
        }
    }

    /// Receives a line that must carry no descriptors (any are closed).
    async fn receive_plain(&mut self) -> Result<Vec<u8>, HandoverError> {
        let mut fds = Vec::new();
        let line = self.receive_line(&mut fds).await?;
        if !fds.is_empty() {
            return Err(HandoverError::Malformed("unexpected file descriptors".to_owned()));
        }
        Ok(line)
    }
}

/// The old process' end: the handover socket, bound.
#[derive(Debug)]
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file, to remove it on stop only if no successor replaced it.
    identity: (u64, u64),
}

impl Server {
    /// Binds the handover socket at `path`, permissions 0600, replacing a stale socket file there: the
    /// newest process owns the path. Refuses to replace anything but a socket. The socket is bound at
    /// a hidden name beside `path` and renamed over it, so `path` never names a socket with looser
    /// permissions; keep its directory private all the same. Must be called inside a Tokio runtime.
    pub fn bind(path: PathBuf) -> Result<Self, HandoverError> {
        if let Ok(metadata) = std::fs::symlink_metadata(&path) {
            if !metadata.file_type().is_socket() {
                return Err(HandoverError::NotASocket { path });
            }
        }
        let staging = staging_path(&path);
        let bound = bind_private(&staging, &path);
        if bound.is_err() {
            let _ = std::fs::remove_file(&staging);
        }
        let (listener, identity) =
            bound.map_err(|source| HandoverError::Bind { path: path.clone(), source })?;
        tracing::debug!(path = %path.display(), "handover socket bound");
        Ok(Server { listener, path, identity })
    }

    /// Serves handover requests until one succeeds or `stop` changes, one successor at a time.
    ///
    /// For each successor it awaits `sockets()` at that moment (so listeners added by reloads are
    /// there), sends them and waits for the successor's "ready"; then it calls `on_handed_over`, once,
    /// and returns: the caller stops accepting and drains, leaving the socket file to the successor.
    /// A failed handover (bad peer, successor gone before "ready") is logged and changes nothing. On
    /// `stop`, removes the socket file if it is still this server's.
    pub async fn serve<Offered: Future<Output = Offer>>(
        self,
        sockets: impl Fn() -> Offered,
        on_handed_over: impl FnOnce(),
        mut stop: watch::Receiver<bool>,
    ) {
        let path = self.path.display();
        tracing::info!(path = %path, "handover: a successor can take over the listening sockets here");
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                _ = stop.changed() => break,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(path = %path, %error, "handover: cannot accept a successor");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            tracing::info!(path = %path, "handover: a successor connected");
            let handed = tokio::select! {
                handed = hand_over(Connection::new(stream), &sockets) => handed,
                _ = stop.changed() => break,
            };
            match handed {
                Ok(count) => {
                    tracing::info!(path = %path, sockets = count, "handover: the successor accepts; draining");
                    on_handed_over();
                    return;
                }
                Err(error) => {
                    tracing::warn!(path = %path, %error, "handover failed: this process keeps serving");
                }
            }
        }
        self.remove_socket_file();
    }

    fn remove_socket_file(&self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|metadata| (metadata.dev(), metadata.ino()) == self.identity);
        if ours {
            if let Err(error) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), %error, "cannot remove the handover socket");
            }
        }
    }
}

/// `.<name>.<pid>.new` beside `path`.
fn staging_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|name| name.to_string_lossy()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.new", std::process::id()))
}

fn bind_private(staging: &Path, path: &Path) -> io::Result<(UnixListener, (u64, u64))> {
    match std::fs::remove_file(staging) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
        Ok(()) | Err(_) => {}
    }
    let listener = std::os::unix::net::UnixListener::bind(staging)?;
    std::fs::set_permissions(staging, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(staging, path)?;
    let metadata = std::fs::symlink_metadata(path)?;
    listener.set_nonblocking(true)?;
    Ok((UnixListener::from_std(listener)?, (metadata.dev(), metadata.ino())))
}

/// The old side of one handover; returns how many sockets went once the successor accepts.
async fn hand_over<Offered: Future<Output = Offer>>(
    mut connection: Connection,
    sockets: &impl Fn() -> Offered,
) -> Result<usize, HandoverError> {
    let request =
        within(REQUEST_TIMEOUT, async { parse_versioned::<Request>(&connection.receive_plain().await?) })
            .await;
    let offer = match request {
        Ok(Request { request: RequestKind::Sockets, .. }) => sockets().await,
        Err(error) => return Err(refuse(&mut connection, error).await),
    };
    let (names, fds) = offer.wire();
    let count = fds.len();
    let reply = Reply::new(ReplyBody::Sockets(names));
    match within(REQUEST_TIMEOUT, connection.send(&reply, &fds)).await {
        Ok(()) => {}
        Err(error @ (HandoverError::TooManySockets | HandoverError::TooLarge)) => {
            return Err(refuse(&mut connection, error).await)
        }
        Err(error) => return Err(error),
    }
    drop(offer);

    let ready: Ready = within(READY_TIMEOUT, async { parse(&connection.receive_plain().await?) }).await?;
    if !ready.ready {
        return Err(HandoverError::Withdrawn);
    }
    within(REQUEST_TIMEOUT, connection.send(&Reply::new(ReplyBody::HandedOver(true)), &[])).await?;
    Ok(count)
}

/// Tells the peer why, as far as it still listens, and returns the reason.
async fn refuse(connection: &mut Connection, error: HandoverError) -> HandoverError {
    let refusal = Reply::new(ReplyBody::Error(error.to_string()));
    let _ = within(REQUEST_TIMEOUT, connection.send(&refusal, &[])).await;
    error
}

/// Connects to the running process' handover socket, receives its sockets, and returns them with a
/// handle to confirm readiness. Until [`Confirm::ready`] succeeds the old process keeps serving too;
/// dropping the `Confirm` instead leaves it in charge.
pub async fn take_over(path: &Path) -> Result<(Inherited, Confirm), HandoverError> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| HandoverError::Connect { path: path.to_owned(), source })?;
    let mut connection = Connection::new(stream);
    let request = Request { version: VERSION, request: RequestKind::Sockets };
    within(REPLY_TIMEOUT, connection.send(&request, &[])).await?;
    let mut fds = Vec::new();
    let reply: Reply =
        within(REPLY_TIMEOUT, async { parse_versioned(&connection.receive_line(&mut fds).await?) }).await?;
    let names = match reply.body {
        ReplyBody::Sockets(names) => names,
        ReplyBody::Error(message) => return Err(HandoverError::Refused(message)),
        ReplyBody::HandedOver(_) => {
            return Err(HandoverError::Malformed("handed over before sending sockets".to_owned()))
        }
    };
    let inherited = Inherited::from_wire(names, fds)?;
    Ok((inherited, Confirm { connection }))
}

/// The successor's side of a handover in progress.
#[derive(Debug)]
pub struct Confirm {
    connection: Connection,
}

impl Confirm {
    /// Tells the old process that this one accepts now, and waits for its acknowledgement. `Ok` means
    /// the old process stops accepting and drains; on `Err` it may still be serving, and this process
    /// should close its listeners and exit rather than run beside it.
    pub async fn ready(mut self) -> Result<(), HandoverError> {
        within(REPLY_TIMEOUT, self.connection.send(&Ready { ready: true }, &[])).await?;
        let reply: Reply =
            within(REPLY_TIMEOUT, async { parse_versioned(&self.connection.receive_plain().await?) }).await?;
        match reply.body {
            ReplyBody::HandedOver(true) => Ok(()),
            ReplyBody::Error(message) => Err(HandoverError::Refused(message)),
            ReplyBody::HandedOver(false) | ReplyBody::Sockets(_) => {
                Err(HandoverError::Malformed("expected the handover's acknowledgement".to_owned()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::sync::Arc;

    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    use super::*;

    /// The old process' listeners, never accepted from unless a test says so.
    struct Old {
        public: TcpListener,
        internal: TcpListener,
        admin: TcpListener,
    }

    impl Old {
        fn bind() -> Arc<Old> {
            let bind = || TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
            Arc::new(Old { public: bind(), internal: bind(), admin: bind() })
        }

        fn offer(&self) -> Offer {
            let dup = |socket: &TcpListener| socket.as_fd().try_clone_to_owned().expect("dup");
            Offer {
                listeners: vec![
                    ("public".to_owned(), dup(&self.public)),
                    ("internal".to_owned(), dup(&self.internal)),
                ],
                admin: Some(dup(&self.admin)),
            }
        }
    }

    fn addr(socket: &TcpListener) -> SocketAddr {
        socket.local_addr().expect("local address")
    }

    struct Running {
        path: PathBuf,
        handed_over: oneshot::Receiver<()>,
        stop: watch::Sender<bool>,
        task: JoinHandle<()>,
    }

    fn start(path: PathBuf, old: &Arc<Old>) -> Running {
        let server = Server::bind(path.clone()).expect("bind the handover socket");
        let (handed_tx, handed_over) = oneshot::channel();
        let (stop, stop_rx) = watch::channel(false);
        let old = old.clone();
        let task = tokio::spawn(server.serve(
            move || std::future::ready(old.offer()),
            move || {
                let _ = handed_tx.send(());
            },
            stop_rx,
        ));
        Running { path, handed_over, stop, task }
    }

    fn socket_path(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("handover.sock")
    }

    /// Sends raw bytes as a successor would, and returns the old process' answer line.
    async fn exchange_raw(path: &Path, bytes: &[u8]) -> String {
        let mut stream = UnixStream::connect(path).await.expect("connect");
        stream.write_all(bytes).await.expect("write");
        let mut line = String::new();
        let mut reader = BufReader::new(stream);
        let read = reader.read_line(&mut line);
        tokio::time::timeout(Duration::from_secs(10), read).await.expect("an answer").expect("read");
        line
    }

    #[tokio::test]
    async fn queued_connections_are_accepted_by_the_successor() {
        let dir = tempfile::tempdir().expect("temp dir");
        let old = Old::bind();
        let (public, internal, admin) = (addr(&old.public), addr(&old.internal), addr(&old.admin));
        // Sits in the old socket's accept backlog: the old side never accepts it.
        let mut queued = TcpStream::connect(public).expect("connect before the handover");
        queued.write_all(b"early").expect("write");
        let running = start(socket_path(&dir), &old);

        let (inherited, confirm) = take_over(&running.path).await.expect("take over");
        let names: Vec<_> =
            inherited.listeners.iter().map(|(name, socket)| (name.as_str(), addr(socket))).collect();
        assert_eq!(names, [("public", public), ("internal", internal)]);
        let inherited_admin = inherited.admin.expect("the admin socket");
        assert_eq!(addr(&inherited_admin), admin);
        confirm.ready().await.expect("ready");
        running.handed_over.await.expect("handed over");
        running.task.await.expect("the server returns once handed over");
        assert!(running.path.exists(), "the socket file is left to the successor");
        // The old process has exited: only the successor's descriptors remain.
        drop(Arc::into_inner(old).expect("the server dropped its offer"));

        // Non-blocking, as documented: an accept with nothing queued returns at once.
        let nothing = inherited_admin.accept().map(|_| ()).map_err(|error| error.kind());
        assert_eq!(nothing, Err(io::ErrorKind::WouldBlock));
        let mut listeners = inherited.listeners.into_iter();
        let (_, successor_public) = listeners.next().expect("public");
        let successor_public = tokio::net::TcpListener::from_std(successor_public).expect("into tokio");
        let accept = tokio::time::timeout(Duration::from_secs(10), successor_public.accept());
        let (accepted, _) = accept.await.expect("the queued connection").expect("accept");
        let mut accepted = accepted.into_std().expect("into std");
        accepted.set_nonblocking(false).expect("blocking");
        let mut early = [0u8; 5];
        accepted.read_exact(&mut early).expect("read");
        assert_eq!(&early, b"early");
    }

    #[tokio::test]
    async fn handed_over_fires_only_after_ready() {
        let dir = tempfile::tempdir().expect("temp dir");
        let old = Old::bind();
        let mut running = start(socket_path(&dir), &old);

        let (_inherited, confirm) = take_over(&running.path).await.expect("take over");
        let early = tokio::time::timeout(Duration::from_millis(200), &mut running.handed_over).await;
        assert!(early.is_err(), "handed over before ready");
        confirm.ready().await.expect("ready");
        running.handed_over.await.expect("handed over after ready");
    }

    #[tokio::test]
    async fn successor_gone_before_ready_leaves_the_old_process_serving() {
        let dir = tempfile::tempdir().expect("temp dir");
        let old = Old::bind();
        let mut running = start(socket_path(&dir), &old);

        let (inherited, confirm) = take_over(&running.path).await.expect("take over");
        drop((inherited, confirm));
        // One successor at a time: once the next one has its sockets, the first one was dealt with.
        let (_inherited, second) = take_over(&running.path).await.expect("take over again");
        assert_eq!(running.handed_over.try_recv(), Err(oneshot::error::TryRecvError::Empty));
        let _client = TcpStream::connect(addr(&old.public)).expect("connect");
        old.public.accept().expect("the old listener still accepts");
        drop(second);

        running.stop.send(true).expect("stop");
        running.task.await.expect("the server stops");
        assert!(running.handed_over.await.is_err(), "never handed over");
        assert!(!running.path.exists(), "a stopped server removes its socket file");
    }

    #[tokio::test]
    async fn sockets_are_listed_when_a_successor_asks() {
        let dir = tempfile::tempdir().expect("temp dir");
        let server = Server::bind(socket_path(&dir)).expect("bind");
        let live =
            Arc::new(std::sync::Mutex::new(vec![("first", TcpListener::bind("127.0.0.1:0").expect("bind"))]));
        let (_stop, stop_rx) = watch::channel(false);
        let listed = live.clone();
        let offer = move || {
            let live = listed.lock().expect("lock");
            let dup = |(name, socket): &(&str, TcpListener)| {
                (name.to_string(), socket.as_fd().try_clone_to_owned().expect("dup"))
            };
            std::future::ready(Offer { listeners: live.iter().map(dup).collect(), admin: None })
        };
        tokio::spawn(server.serve(offer, || {}, stop_rx));

        let (before, _) = take_over(&socket_path(&dir)).await.expect("take over");
        // A reload adds a listener while the server runs.
        live.lock().expect("lock").push(("second", TcpListener::bind("127.0.0.1:0").expect("bind")));
        let (after, _) = take_over(&socket_path(&dir)).await.expect("take over");
        let names = |inherited: &Inherited| -> Vec<String> {
            inherited.listeners.iter().map(|(name, _)| name.clone()).collect()
        };
        assert_eq!(names(&before), ["first"]);
        assert_eq!(names(&after), ["first", "second"]);
        assert!(before.admin.is_none());
    }

    #[tokio::test]
    async fn bad_peers_are_refused_and_the_next_successor_is_served() {
        let dir = tempfile::tempdir().expect("temp dir");
        let old = Old::bind();
        let running = start(socket_path(&dir), &old);

        let garbage = exchange_raw(&running.path, b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(garbage.contains("malformed handover message"), "{garbage}");
        let newer = exchange_raw(&running.path, b"{\"version\":2,\"request\":\"sockets\"}\n").await;
        let newer: serde_json::Value = serde_json::from_str(&newer).expect("JSON");
        assert_eq!(newer["version"], 1);
        let error = newer["error"].as_str().expect("an error");
        assert!(error.contains("version 2 is not supported"), "{error}");
        let unknown = exchange_raw(&running.path, b"{\"version\":1,\"request\":\"keys\"}\n").await;
        assert!(unknown.contains("unknown variant"), "{unknown}");
        let endless = exchange_raw(&running.path, &vec![b'x'; MAX_MESSAGE_BYTES + 10]).await;
        assert!(endless.contains("larger than"), "{endless}");
        drop(UnixStream::connect(&running.path).await.expect("connect and leave"));

        let (inherited, confirm) = take_over(&running.path).await.expect("a good successor");
        assert_eq!(inherited.listeners.len(), 2);
        confirm.ready().await.expect("ready");
        running.handed_over.await.expect("handed over");
    }

    /// A fake old process: answers the request with `reply` and the given descriptors.
    fn fake_old(path: &Path, reply: &'static str, fds: Vec<OwnedFd>) -> JoinHandle<()> {
        let listener = UnixListener::bind(path).expect("bind");
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let mut connection = Connection::new(stream);
            connection.receive_plain().await.expect("the request");
            let reply: serde_json::Value = serde_json::from_str(reply).expect("JSON");
            let borrowed: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
            connection.send(&reply, &borrowed).await.expect("reply");
        })
    }

    #[tokio::test]
    async fn take_over_refuses_another_version() {
        let dir = tempfile::tempdir().expect("temp dir");
        let old = fake_old(&socket_path(&dir), r#"{"version":2,"sockets":[]}"#, Vec::new());
        let error = take_over(&socket_path(&dir)).await.expect_err("version 2");
        assert!(matches!(error, HandoverError::Version { ours: 1, theirs: 2 }), "{error}");
        old.await.expect("fake old process");
    }

    #[tokio::test]
    async fn take_over_refuses_what_is_not_a_listening_tcp_socket() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (unix, _peer) = std::os::unix::net::UnixStream::pair().expect("pair");
        let bound = TcpListener::bind("127.0.0.1:0").expect("bind");
        let connected = TcpStream::connect(addr(&bound)).expect("connect");
        let fds = vec![OwnedFd::from(unix), OwnedFd::from(connected)];
        let reply = r#"{"version":1,"sockets":["admin","listener:public"]}"#;
        let old = fake_old(&socket_path(&dir), reply, fds);
        let error = take_over(&socket_path(&dir)).await.expect_err("a unix socket");
        assert!(matches!(&error, HandoverError::NotAListener { name } if name == "admin"), "{error}");
        old.await.expect("fake old process");
    }

    #[tokio::test]
    async fn take_over_refuses_names_that_do_not_match_the_descriptors() {
        let dir = tempfile::tempdir().expect("temp dir");
        let bound = TcpListener::bind("127.0.0.1:0").expect("bind");
        let reply = r#"{"version":1,"sockets":["admin","listener:public"]}"#;
        let old = fake_old(&socket_path(&dir), reply, vec![OwnedFd::from(bound)]);
        let error = take_over(&socket_path(&dir)).await.expect_err("one descriptor short");
        assert!(matches!(error, HandoverError::Malformed(_)), "{error}");
        old.await.expect("fake old process");
    }

    #[tokio::test]
    async fn more_sockets_than_the_limit_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let server = Server::bind(socket_path(&dir)).expect("bind");
        let socket = TcpListener::bind("127.0.0.1:0").expect("bind");
        let (_stop, stop_rx) = watch::channel(false);
        let offer = move || {
            let dup = |index| (format!("l{index}"), socket.as_fd().try_clone_to_owned().expect("dup"));
            std::future::ready(Offer { listeners: (0..=MAX_SOCKETS).map(dup).collect(), admin: None })
        };
        tokio::spawn(server.serve(offer, || panic!("handed over"), stop_rx));
        let error = take_over(&socket_path(&dir)).await.expect_err("too many");
        assert!(
            matches!(&error, HandoverError::Refused(message) if message.contains("more than 64")),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_stale_socket_file_is_replaced_with_a_private_socket() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = socket_path(&dir);
        drop(std::os::unix::net::UnixListener::bind(&path).expect("a socket left by a crash"));
        let stale = take_over(&path).await.expect_err("nobody listens");
        assert!(matches!(stale, HandoverError::Connect { .. }), "{stale}");

        let old = Old::bind();
        let running = start(path.clone(), &old);
        let mode = std::fs::metadata(&path).expect("socket file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (_inherited, confirm) = take_over(&path).await.expect("take over");
        confirm.ready().await.expect("ready");
        running.handed_over.await.expect("handed over");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).expect("list").collect();
        assert_eq!(leftovers.len(), 1, "no staging file is left: {leftovers:?}");
    }

    #[tokio::test]
    async fn a_regular_file_is_not_replaced() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = socket_path(&dir);
        std::fs::write(&path, "not a socket").expect("write");
        let error = Server::bind(path.clone()).expect_err("not a socket");
        assert!(matches!(error, HandoverError::NotASocket { .. }), "{error}");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "not a socket");
    }

    #[tokio::test]
    async fn take_over_without_a_running_proxy_names_the_path() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = socket_path(&dir);
        let error = take_over(&path).await.expect_err("no socket file");
        let message = error.to_string();
        assert!(message.starts_with("no running proxy answers on the handover socket"), "{message}");
        assert!(message.contains("handover.sock"), "{message}");
    }
}
