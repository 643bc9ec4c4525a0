//! The response body the proxy hands to hyper: the upstream's stream, passed through untouched, or a
//! short body of the proxy's own. An enum rather than a boxed trait object: no allocation per request.
//! The upstream variant carries the lease of its HTTP/1.1 connection and gives it back to the pool the
//! moment the last frame has arrived.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::pool::Lease;

#[derive(Debug)]
pub enum ProxyBody {
    /// The upstream's body, frames (data and trailers) passed as they come.
    Upstream { body: Incoming, lease: Option<Lease> },
    /// A body the proxy wrote itself; `None` once sent.
    Local(Option<Bytes>),
}

impl ProxyBody {
    pub fn local(bytes: Bytes) -> Self {
        ProxyBody::Local(Some(bytes))
    }

    pub fn empty() -> Self {
        ProxyBody::Local(None)
    }

    /// The upstream's body; a body that is already complete gives its connection back at once.
    pub fn upstream(body: Incoming, lease: Option<Lease>) -> Self {
        if body.is_end_stream() {
            if let Some(lease) = lease {
                lease.release();
            }
            return ProxyBody::Upstream { body, lease: None };
        }
        ProxyBody::Upstream { body, lease }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream { body, lease } => {
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
                frame
            }
            ProxyBody::Local(bytes) => Poll::Ready(bytes.take().map(|bytes| Ok(Frame::data(bytes)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { body, .. } => body.is_end_stream(),
            ProxyBody::Local(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { body, .. } => body.size_hint(),
            ProxyBody::Local(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            ProxyBody::Local(None) => SizeHint::with_exact(0),
        }
    }
}
