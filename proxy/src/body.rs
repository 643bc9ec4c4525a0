//! The response body the proxy hands to hyper: the upstream's stream, passed through untouched, or a
//! short body of the proxy's own. An enum rather than a boxed trait object: no allocation per request.
//! The upstream variant carries the lease of its HTTP/1.1 connection and gives it back to the pool the
//! moment the last frame has arrived. A proxied request's stats [`Record`] rides along and is written
//! when the body ends, fails or is dropped.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::pool::Lease;
use crate::stats::Record;

#[derive(Debug)]
pub struct ProxyBody {
    kind: Kind,
    record: Option<Record>,
}

#[derive(Debug)]
enum Kind {
    /// The upstream's body, frames (data and trailers) passed as they come.
    Upstream { body: Incoming, lease: Option<Lease> },
    /// A body the proxy wrote itself; `None` once sent.
    Local(Option<Bytes>),
}

impl ProxyBody {
    pub fn local(bytes: Bytes) -> Self {
        Self { kind: Kind::Local(Some(bytes)), record: None }
    }

    pub fn empty() -> Self {
        Self { kind: Kind::Local(None), record: None }
    }

    /// The upstream's body; a body that is already complete gives its connection back at once.
    pub fn upstream(body: Incoming, lease: Option<Lease>) -> Self {
        if body.is_end_stream() {
            if let Some(lease) = lease {
                lease.release();
            }
            return Self { kind: Kind::Upstream { body, lease: None }, record: None };
        }
        Self { kind: Kind::Upstream { body, lease }, record: None }
    }

    /// Attaches the request's stats, written when the body ends.
    pub fn with_record(mut self, record: Record) -> Self {
        self.record = Some(record);
        self
    }

    fn finish(&mut self, reset: bool) {
        if let Some(record) = self.record.take() {
            record.finish(reset);
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // hyper drops a body it has sent in full (and one whose client went away).
        self.finish(false);
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let (frame, ended, failed) = match &mut this.kind {
            Kind::Upstream { body, lease } => {
                let frame = Pin::new(&mut *body).poll_frame(context);
                // hyper stops polling a body whose size is known once it is complete, so the end is
                // seen either as `None` or as `is_end_stream` after the last frame.
                let ended = match &frame {
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Ok(_))) => body.is_end_stream(),
                    Poll::Ready(Some(Err(_))) | Poll::Pending => false,
                };
                if ended {
                    if let Some(lease) = lease.take() {
                        lease.release();
                    }
                }
                let failed = matches!(frame, Poll::Ready(Some(Err(_))));
                (frame, ended, failed)
            }
            Kind::Local(bytes) => {
                (Poll::Ready(bytes.take().map(|bytes| Ok(Frame::data(bytes)))), true, false)
            }
        };
        if ended || failed {
            this.finish(failed);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream { body, .. } => body.is_end_stream(),
            Kind::Local(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream { body, .. } => body.size_hint(),
            Kind::Local(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Kind::Local(None) => SizeHint::with_exact(0),
        }
    }
}
