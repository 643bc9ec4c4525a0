//! A response body fed from a channel: Server-Sent Events for `/v1/journal/stream`.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use tokio::sync::mpsc;

/// Frames as they come from the channel; the body ends when every sender is gone.
#[derive(Debug)]
pub struct ChannelBody {
    receiver: mpsc::Receiver<Bytes>,
}

impl ChannelBody {
    pub fn new(receiver: mpsc::Receiver<Bytes>) -> Self {
        Self { receiver }
    }
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.receiver.poll_recv(context).map(|bytes| bytes.map(|bytes| Ok(Frame::data(bytes))))
    }
}

/// One event in the SSE wire format.
pub fn event(id: u64, kind: &str, data: &str) -> Bytes {
    let mut text = format!("id: {id}\nevent: {kind}\n");
    for line in data.lines() {
        text.push_str("data: ");
        text.push_str(line);
        text.push('\n');
    }
    text.push('\n');
    Bytes::from(text)
}

#[cfg(test)]
mod tests {
    #[test]
    fn events_are_framed_with_id_kind_and_data() {
        let framed = super::event(7, "registered", "{\"a\":1}\n{\"b\":2}");
        assert_eq!(&framed[..], b"id: 7\nevent: registered\ndata: {\"a\":1}\ndata: {\"b\":2}\n\n");
    }
}
