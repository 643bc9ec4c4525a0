//! A Server-Sent Events parser for `remora events --follow`: bytes from `GET /v1/journal/stream` go
//! in as they arrive (split anywhere, even inside a line or a CRLF), whole events come out.
//!
//! It follows the WHATWG event-stream rules that matter to a client: lines end in LF, CRLF or CR; a
//! line starting with `:` is a comment (keep-alives); `field: value` loses one space after the colon;
//! `data` lines are joined with `\n`; an empty line dispatches; `id` is remembered across events (it
//! is what `Last-Event-ID` sends on a reconnect); `retry` sets the reconnection delay. A line or an
//! event larger than [`MAX_LINE`] / [`MAX_EVENT`] is refused rather than buffered without bound.

use std::time::Duration;

/// The longest line kept while waiting for its end.
pub const MAX_LINE: usize = 1 << 20;
/// The most `data` one event may carry.
pub const MAX_EVENT: usize = 4 << 20;

/// One dispatched event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The `event` field; `message` when the event had none.
    pub kind: String,
    pub data: String,
    /// The last event id seen in the stream so far (ids carry over to later events).
    pub id: Option<String>,
}

/// The stream broke the size limits.
#[derive(Debug, PartialEq, Eq)]
pub enum Oversized {
    Line,
    Event,
}

impl std::fmt::Display for Oversized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Line => write!(f, "a line of the event stream is longer than {MAX_LINE} bytes"),
            Self::Event => {
                write!(f, "an event of the event stream carries more than {MAX_EVENT} bytes of data")
            }
        }
    }
}

#[derive(Debug, Default)]
pub struct Parser {
    /// The bytes of a line whose end has not arrived yet.
    line: Vec<u8>,
    /// The previous chunk ended in CR: a LF at the start of the next one ends no new line.
    after_cr: bool,
    /// The first line is not read yet (a UTF-8 BOM there is skipped).
    started: bool,
    kind: String,
    data: String,
    has_data: bool,
    last_id: Option<String>,
    retry: Option<Duration>,
}

impl Parser {
    pub fn new() -> Self {
        Self::default()
    }

    /// The last event id seen. `events --follow` resumes from the seq of the last entry it printed
    /// instead: the same number, and it also exists before the first event (from the batch printed).
    #[cfg(test)]
    pub fn last_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// The reconnection delay the server asked for with `retry:`, if any.
    pub fn retry(&self) -> Option<Duration> {
        self.retry
    }

    /// Starts over after a dropped connection: a half-received line or event is discarded (the server
    /// sends it again after `Last-Event-ID`); the last id and retry are kept.
    pub fn reset_connection(&mut self) {
        self.line.clear();
        self.after_cr = false;
        self.started = false;
        self.kind.clear();
        self.data.clear();
        self.has_data = false;
    }

    /// Feeds the next bytes of the stream; returns the events they complete.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<Vec<Event>, Oversized> {
        let mut events = Vec::new();
        if chunk.is_empty() {
            return Ok(events);
        }
        if self.after_cr {
            self.after_cr = false;
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
            }
        }
        while let Some(end) = chunk.iter().position(|&byte| byte == b'\n' || byte == b'\r') {
            if self.line.len() + end > MAX_LINE {
                return Err(Oversized::Line);
            }
            self.line.extend_from_slice(&chunk[..end]);
            let line = std::mem::take(&mut self.line);
            if let Some(event) = self.line_ended(&line)? {
                events.push(event);
            }
            let crlf = chunk[end] == b'\r';
            chunk = &chunk[end + 1..];
            if crlf {
                match chunk.first() {
                    Some(b'\n') => chunk = &chunk[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        if self.line.len() + chunk.len() > MAX_LINE {
            return Err(Oversized::Line);
        }
        self.line.extend_from_slice(chunk);
        Ok(events)
    }

    fn line_ended(&mut self, mut line: &[u8]) -> Result<Option<Event>, Oversized> {
        if !self.started {
            self.started = true;
            line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        }
        if line.is_empty() {
            return Ok(self.dispatch());
        }
        if line[0] == b':' {
            return Ok(None);
        }
        let (field, value) = match line.iter().position(|&byte| byte == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        let value = String::from_utf8_lossy(value);
        match field {
            b"data" => {
                if self.data.len() + value.len() + 1 > MAX_EVENT {
                    return Err(Oversized::Event);
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&value);
                self.has_data = true;
            }
            b"event" => self.kind = value.into_owned(),
            // An id with a NUL is ignored, as the spec says.
            b"id" if !value.contains('\0') => self.last_id = Some(value.into_owned()),
            b"retry" => {
                if let Ok(millis) = value.parse::<u64>() {
                    self.retry = Some(Duration::from_millis(millis));
                }
            }
            _ => {}
        }
        Ok(None)
    }

    fn dispatch(&mut self) -> Option<Event> {
        let kind = std::mem::take(&mut self.kind);
        let data = std::mem::take(&mut self.data);
        if !std::mem::take(&mut self.has_data) {
            return None;
        }
        let kind = if kind.is_empty() { "message".to_owned() } else { kind };
        Some(Event { kind, data, id: self.last_id.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::{Event, Oversized, Parser, MAX_LINE};

    fn event(kind: &str, data: &str, id: Option<&str>) -> Event {
        Event { kind: kind.to_owned(), data: data.to_owned(), id: id.map(str::to_owned) }
    }

    /// Feeds `chunks` one after the other and collects every event.
    fn parse(parser: &mut Parser, chunks: &[&[u8]]) -> Vec<Event> {
        let mut events = Vec::new();
        for chunk in chunks {
            events.extend(parser.feed(chunk).expect("within limits"));
        }
        events
    }

    const STREAM: &[u8] = b": keepalive\n\nid: 7\nevent: registered\ndata: {\"seq\":7}\n\n:keepalive\n\
        id: 8\nevent: status_changed\ndata: {\"a\":1,\ndata:  \"b\":2}\n\n";

    fn expected() -> Vec<Event> {
        vec![
            event("registered", "{\"seq\":7}", Some("7")),
            event("status_changed", "{\"a\":1,\n \"b\":2}", Some("8")),
        ]
    }

    #[test]
    fn a_whole_stream_in_one_chunk() {
        assert_eq!(parse(&mut Parser::new(), &[STREAM]), expected());
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        for split in 0..=STREAM.len() {
            let mut parser = Parser::new();
            let events = parse(&mut parser, &[&STREAM[..split], &STREAM[split..]]);
            assert_eq!(events, expected(), "split at {split}");
            assert_eq!(parser.last_id(), Some("8"));
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let chunks: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(parse(&mut Parser::new(), &chunks), expected());
    }

    #[test]
    fn crlf_and_cr_line_ends_even_when_a_crlf_is_split() {
        let stream = b"id: 1\r\nevent: a\r\ndata: x\r\n\r\nid: 2\revent: b\rdata: y\r\r";
        for split in 0..=stream.len() {
            let events = parse(&mut Parser::new(), &[&stream[..split], b"", &stream[split..]]);
            assert_eq!(
                events,
                vec![event("a", "x", Some("1")), event("b", "y", Some("2"))],
                "split at {split}"
            );
        }
    }

    #[test]
    fn ids_carry_over_and_an_event_without_data_only_moves_the_id() {
        let mut parser = Parser::new();
        let events = parse(&mut parser, &[b"id: 3\ndata: a\n\ndata: b\n\nid: 4\nevent: nothing\n\n"]);
        assert_eq!(events, vec![event("message", "a", Some("3")), event("message", "b", Some("3"))]);
        assert_eq!(parser.last_id(), Some("4"));
        // The kind of the data-less event does not leak into the next one.
        let events = parse(&mut parser, &[b"data: c\n\n"]);
        assert_eq!(events, vec![event("message", "c", Some("4"))]);
    }

    #[test]
    fn an_event_is_only_dispatched_by_its_empty_line() {
        let mut parser = Parser::new();
        assert_eq!(parse(&mut parser, &[b"id: 1\ndata: x\n"]), vec![]);
        assert_eq!(parse(&mut parser, &[b"\n"]), vec![event("message", "x", Some("1"))]);
    }

    #[test]
    fn fields_without_a_colon_or_space_and_unknown_fields() {
        let mut parser = Parser::new();
        let events = parse(&mut parser, &[b"data\ndata:x\nfoo: bar\nretry: 1500\nretry: soon\n\n"]);
        assert_eq!(events, vec![event("message", "\nx", None)]);
        assert_eq!(parser.retry(), Some(std::time::Duration::from_millis(1500)));
    }

    #[test]
    fn a_byte_order_mark_at_the_start_is_skipped() {
        let events = parse(&mut Parser::new(), &[b"\xEF\xBB", b"\xBFdata: x\n\n"]);
        assert_eq!(events, vec![event("message", "x", None)]);
    }

    #[test]
    fn a_reconnect_drops_the_half_event_but_keeps_the_id() {
        let mut parser = Parser::new();
        parse(&mut parser, &[b"id: 5\ndata: a\n\nid: 6\ndata: trunc"]);
        parser.reset_connection();
        let events = parse(&mut parser, &[b"id: 6\ndata: again\n\n"]);
        assert_eq!(events, vec![event("message", "again", Some("6"))]);
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut parser = Parser::new();
        let chunk = vec![b'x'; MAX_LINE / 2 + 1];
        assert_eq!(parser.feed(&chunk), Ok(vec![]));
        assert_eq!(parser.feed(&chunk), Err(Oversized::Line));
    }
}
