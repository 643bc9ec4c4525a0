//! The response body the proxy hands to hyper: the upstream's stream, passed through untouched, or a
//! short body of the proxy's own. An enum rather than a boxed trait object: no allocation per request.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

#[derive(Debug)]
pub enum ProxyBody {
    /// The upstream's body, frames (data and trailers) passed as they come.
    Upstream(Incoming),
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
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream(incoming) => Pin::new(incoming).poll_frame(context),
            ProxyBody::Local(bytes) => Poll::Ready(bytes.take().map(|bytes| Ok(Frame::data(bytes)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(incoming) => incoming.is_end_stream(),
            ProxyBody::Local(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(incoming) => incoming.size_hint(),
            ProxyBody::Local(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            ProxyBody::Local(None) => SizeHint::with_exact(0),
        }
    }
}
