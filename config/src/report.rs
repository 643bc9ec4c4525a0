//! The report a proxy sends control every interval: what it observed since its previous report (counts,
//! latency histograms, breaker states, queued events). Control merges reports from many proxies into
//! per-node, per-version views and judges SLOs on them (`shared/DESIGN.md`: proxy *report* → control
//! *ingest*). This file is the wire contract both sides share.
//!
//! # Versioning
//!
//! A report carries [`REPORT_SCHEMA`]. The number goes up on any change an older reader could misread:
//! a new field, a field whose meaning or unit changes, a removed field. Readers refuse every field they
//! do not know (`deny_unknown_fields`) and every schema other than their own, naming both numbers, so a
//! mismatch is a clear refusal rather than data silently dropped or misread. [`Report::from_json`]
//! reads the schema before anything else, so a newer report is refused as "schema 2", not as "unknown
//! field". Fields that are empty (zero counts, empty lists, no revision) may be left out when writing
//! and read back as empty.
//!
//! # Histograms
//!
//! Latencies travel as HDR histograms (microseconds) in hdrhistogram's V2 + deflate format, base64 in
//! JSON. Unlike percentiles or fixed buckets, HDR histograms add up exactly: control merges the
//! intervals of many proxies and reads any percentile of the sum, with the same precision as if one
//! histogram had recorded every request. V2 skips runs of empty buckets and deflate squeezes the rest,
//! so the histogram of an interval of thousands of requests takes one to three kilobytes. V2 is also
//! what HdrHistogram's other implementations read, should a tool outside Remora want the data.
//!
//! # Limits
//!
//! A report comes from the network, so reading one never panics and its memory is bounded before it is
//! spent: a body is at most [`MAX_REPORT_BYTES`]; one histogram's text at most
//! [`MAX_HISTOGRAM_ENCODED_LEN`], its inflated form at most 9 bytes per counter; the counters its header
//! asks for at most [`MAX_HISTOGRAM_COUNTERS`], and those of a whole report at most
//! [`MAX_REPORT_COUNTERS`] (a 40-byte histogram can ask for megabytes of counters). Each is checked
//! before the memory it guards is allocated.

use std::borrow::Cow;
use std::fmt;
use std::io::Read;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hdrhistogram::serialization::{
    Deserializer as V2Deserializer, Serializer as _, V2DeflateSerializeError, V2DeflateSerializer,
    V2SerializeError,
};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// The histogram type reports carry, re-exported so proxy and control build against the same version.
pub use hdrhistogram::Histogram;

/// The report format's version; bumped on every change an older reader could misread.
pub const REPORT_SCHEMA: u32 = 1;

/// The largest report body [`Report::from_json`] reads.
pub const MAX_REPORT_BYTES: usize = 8 * 1024 * 1024;

/// The longest base64 text of one histogram a reader decodes.
pub const MAX_HISTOGRAM_ENCODED_LEN: usize = 1024 * 1024;

/// The most significant digits a histogram may keep (hdrhistogram's own maximum). Proxies use 3.
pub const MAX_HISTOGRAM_SIGFIG: u8 = 5;

/// The most counters (8 bytes each in memory) one histogram's header may ask for. A proxy's
/// histogram (3 significant digits, values capped at an hour) needs 23,552; 3 digits over the
/// whole `u64` range 56,320.
pub const MAX_HISTOGRAM_COUNTERS: usize = 1 << 20;

/// The most counters all histograms of one report may ask for together (128 MiB in memory): room for
/// 356 series whose histograms reach an hour, more for shorter ranges.
pub const MAX_REPORT_COUNTERS: usize = 1 << 24;

/// What one proxy observed since its previous report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// [`REPORT_SCHEMA`] of the writer; a reader refuses any other value.
    pub schema: u32,
    /// The node's name (`[node].name`); empty for a standalone proxy.
    pub node: String,
    /// The node's version (`[node].version`), which canary analysis compares.
    pub node_version: String,
    /// This proxy instance's id (e.g. `host:pid`), which tells replicas of one node apart.
    pub proxy: String,
    /// One more than this proxy's previous report, so control can spot gaps and duplicates.
    pub sequence: u64,
    /// Start of the interval this report covers, in milliseconds since the Unix epoch.
    pub start_unix_ms: u64,
    /// End of the interval this report covers, in milliseconds since the Unix epoch.
    pub end_unix_ms: u64,
    /// The generation of the proxy's running configuration (one more per applied reload).
    pub config_generation: u64,
    /// The control desired-state revision the proxy has applied (its acknowledgement), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_revision: Option<u64>,
    /// Traffic per route, cluster and version seen in the interval.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub series: Vec<SeriesReport>,
    /// Every cluster's breaker at the end of the interval.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub breakers: Vec<BreakerReport>,
    /// Events queued since the previous report, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventReport>,
}

/// One series' traffic in the interval: the requests one route sent to one version of one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesReport {
    /// The route's name.
    pub route: String,
    /// The cluster's name.
    pub cluster: String,
    /// The version of the cluster's endpoints (empty when unversioned).
    pub version: String,
    /// Requests by outcome and responses by status class.
    pub counts: Counts,
    /// Request received → end of the response body, in microseconds.
    pub latency: EncodedHistogram,
    /// Request received → response headers, in microseconds.
    pub headers_latency: EncodedHistogram,
}

/// Requests by outcome and responses by status class; all are counts in the interval. A count left out
/// of the JSON is zero.
#[derive(Default, Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Counts {
    /// Requests that ended in the interval, whatever their outcome (the sum of the outcomes below).
    #[serde(skip_serializing_if = "is_zero")]
    pub requests: u64,
    /// The upstream answered 1xx, 2xx or 3xx.
    #[serde(skip_serializing_if = "is_zero")]
    pub success: u64,
    /// The upstream answered 4xx.
    #[serde(skip_serializing_if = "is_zero")]
    pub client_error: u64,
    /// The upstream answered 5xx.
    #[serde(skip_serializing_if = "is_zero")]
    pub server_error: u64,
    /// Refused by a concurrency limit.
    #[serde(skip_serializing_if = "is_zero")]
    pub limits: u64,
    /// Refused by an open breaker.
    #[serde(skip_serializing_if = "is_zero")]
    pub open: u64,
    /// Refused because every endpoint was ejected.
    #[serde(skip_serializing_if = "is_zero")]
    pub ejected: u64,
    /// The route's timeout ran out.
    #[serde(skip_serializing_if = "is_zero")]
    pub timeout: u64,
    /// No connection to the upstream could be made.
    #[serde(skip_serializing_if = "is_zero")]
    pub connect: u64,
    /// The upstream reset or closed the exchange.
    #[serde(skip_serializing_if = "is_zero")]
    pub reset: u64,
    /// Responses with a 1xx status (the proxy's own answers included, as for every class).
    #[serde(skip_serializing_if = "is_zero")]
    pub status_1xx: u64,
    /// Responses with a 2xx status.
    #[serde(skip_serializing_if = "is_zero")]
    pub status_2xx: u64,
    /// Responses with a 3xx status.
    #[serde(skip_serializing_if = "is_zero")]
    pub status_3xx: u64,
    /// Responses with a 4xx status.
    #[serde(skip_serializing_if = "is_zero")]
    pub status_4xx: u64,
    /// Responses with a 5xx status.
    #[serde(skip_serializing_if = "is_zero")]
    pub status_5xx: u64,
    /// The exact sum of the latencies recorded in the series' `latency` histogram, in microseconds (HDR
    /// keeps no exact sum; a mean needs one).
    #[serde(skip_serializing_if = "is_zero")]
    pub latency_sum_us: u64,
}

fn is_zero(count: &u64) -> bool {
    *count == 0
}

impl Counts {
    /// `requests` is the sum of the outcomes, as a proxy counts them: a report whose numbers say
    /// otherwise (say, more successes than requests) would skew every rate merged with it.
    pub fn check(&self) -> Result<(), String> {
        let outcomes = [
            self.success,
            self.client_error,
            self.server_error,
            self.limits,
            self.open,
            self.ejected,
            self.timeout,
            self.connect,
            self.reset,
        ];
        let sum = outcomes.iter().fold(0_u64, |sum, count| sum.saturating_add(*count));
        // A count that saturated while merging (a long outage folded into one report) cannot add up.
        if sum == self.requests || sum == u64::MAX || self.requests == u64::MAX {
            Ok(())
        } else {
            Err(format!("requests {} is not the sum of its outcomes ({sum})", self.requests))
        }
    }

    /// Adds another interval's counts (saturating: a count that would overflow stays at `u64::MAX`).
    pub fn merge(&mut self, other: &Counts) {
        let Counts {
            requests,
            success,
            client_error,
            server_error,
            limits,
            open,
            ejected,
            timeout,
            connect,
            reset,
            status_1xx,
            status_2xx,
            status_3xx,
            status_4xx,
            status_5xx,
            latency_sum_us,
        } = other;
        // Destructured so that a new field cannot be forgotten here.
        for (mine, theirs) in [
            (&mut self.requests, requests),
            (&mut self.success, success),
            (&mut self.client_error, client_error),
            (&mut self.server_error, server_error),
            (&mut self.limits, limits),
            (&mut self.open, open),
            (&mut self.ejected, ejected),
            (&mut self.timeout, timeout),
            (&mut self.connect, connect),
            (&mut self.reset, reset),
            (&mut self.status_1xx, status_1xx),
            (&mut self.status_2xx, status_2xx),
            (&mut self.status_3xx, status_3xx),
            (&mut self.status_4xx, status_4xx),
            (&mut self.status_5xx, status_5xx),
            (&mut self.latency_sum_us, latency_sum_us),
        ] {
            *mine = mine.saturating_add(*theirs);
        }
    }

    /// Successes over requests; `None` without requests (no traffic is neither good nor bad).
    pub fn success_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.success as f64 / self.requests as f64)
    }
}

/// One cluster's breaker at the end of the interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerReport {
    /// The cluster's name.
    pub cluster: String,
    /// The breaker's state.
    pub state: BreakerState,
    /// Endpoints currently ejected by outlier detection.
    pub ejected_endpoints: u32,
    /// Endpoints the cluster has.
    pub endpoints: u32,
}

/// A breaker's state, as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Requests flow.
    Closed,
    /// Requests are refused until the breaker's open time has passed.
    Open,
    /// A few probe requests decide whether to close or open again.
    HalfOpen,
    /// The cluster has no breaker configured.
    Disabled,
}

/// An event the proxy queued for control (e.g. `breaker_opened`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventReport {
    /// When it happened, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// The cluster it concerns (empty when none).
    pub cluster: String,
    /// What happened, a `snake_case` name such as `breaker_opened`.
    pub kind: String,
    /// Details for people reading the journal.
    pub detail: String,
}

/// Why a report body was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The body is empty or only whitespace.
    #[error("report body is empty")]
    Empty,
    /// The body exceeds [`MAX_REPORT_BYTES`].
    #[error("report body is {size} bytes, over the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    /// The report was written for another schema.
    #[error("report schema {found} is not supported: this reader understands schema {expected} only")]
    Schema { expected: u32, found: u32 },
    /// The body is not a valid report; serde_json's message names the problem, line and column.
    #[error("invalid report: {0}")]
    Json(#[source] serde_json::Error),
    /// One histogram is invalid; `path` says which (`series[2].latency`).
    #[error("invalid report: {path}: {source}")]
    Histogram {
        path: String,
        #[source]
        source: HistogramError,
    },
    /// A field's value contradicts the rest or what it may be (`path` says which).
    #[error("invalid report: {path}: {message}")]
    Invalid { path: String, message: String },
    /// The histograms together would take more memory than [`MAX_REPORT_COUNTERS`] allows.
    #[error("report's histograms ask for {counters} counters in memory, over the limit of {limit}")]
    TooManyCounters { counters: usize, limit: usize },
}

impl Report {
    /// The report as compact JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing a report cannot fail: every field is plain data with string keys, and a histogram
        // count beyond V2's range is clamped (see `encode`) rather than refused.
        serde_json::to_vec(self).unwrap_or_else(|error| unreachable!("a report always serializes: {error}"))
    }

    /// Reads a report from a body received from the network. Refuses, with a message saying why, an
    /// empty or oversized body, another schema, an unknown field, an invalid histogram, and histograms
    /// that would need too much memory; it never panics.
    pub fn from_json(bytes: &[u8]) -> Result<Report, ReportError> {
        if bytes.len() > MAX_REPORT_BYTES {
            return Err(ReportError::TooLarge { size: bytes.len(), limit: MAX_REPORT_BYTES });
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ReportError::Empty);
        }
        // The schema first: a newer report may not parse as this one, and should be refused as newer.
        let found = serde_json::from_slice::<SchemaOnly>(bytes).map_err(ReportError::Json)?.schema;
        if found != REPORT_SCHEMA {
            return Err(ReportError::Schema { expected: REPORT_SCHEMA, found });
        }
        // Then the memory the histograms would take, before any of them is decoded.
        let texts = serde_json::from_slice::<HistogramTexts>(bytes).map_err(ReportError::Json)?;
        let mut counters = 0_usize;
        for (index, series) in texts.series.iter().enumerate() {
            for (field, text) in [("latency", &series.latency), ("headers_latency", &series.headers_latency)]
            {
                let (header, _) = unpack(text).map_err(|source| ReportError::Histogram {
                    path: format!("series[{index}].{field}"),
                    source,
                })?;
                counters = counters.saturating_add(header.counters);
            }
        }
        if counters > MAX_REPORT_COUNTERS {
            return Err(ReportError::TooManyCounters { counters, limit: MAX_REPORT_COUNTERS });
        }
        let report: Report = serde_json::from_slice(bytes).map_err(ReportError::Json)?;
        if report.desired_revision == Some(0) {
            return Err(ReportError::Invalid {
                path: "desired_revision".to_owned(),
                message: "0 is not a revision (they start at 1; leave it out before the first)".to_owned(),
            });
        }
        for (index, series) in report.series.iter().enumerate() {
            series.counts.check().map_err(|message| ReportError::Invalid {
                path: format!("series[{index}].counts"),
                message,
            })?;
        }
        Ok(report)
    }
}

/// The first look at a body: its schema only (other fields are ignored here). Its messages, like the
/// second look's, name the types a writer knows (`expected struct Report`).
#[derive(Deserialize)]
#[serde(expecting = "struct Report")]
struct SchemaOnly {
    schema: u32,
}

/// The second look: each histogram's text, to total the memory they ask for.
#[derive(Deserialize)]
#[serde(expecting = "struct Report")]
struct HistogramTexts<'a> {
    #[serde(default, borrow)]
    series: Vec<SeriesTexts<'a>>,
}

#[derive(Deserialize)]
#[serde(expecting = "struct SeriesReport")]
struct SeriesTexts<'a> {
    #[serde(borrow)]
    latency: Cow<'a, str>,
    #[serde(borrow)]
    headers_latency: Cow<'a, str>,
}

/// An HDR histogram (microseconds) as it travels: V2 + deflate, base64 (standard alphabet) in JSON.
///
/// Two are equal when they hold the same recorded values with the same counts, whatever their
/// configured ranges.
#[derive(Clone)]
pub struct EncodedHistogram(Histogram<u64>);

/// Why a histogram could not be decoded or merged.
#[derive(Debug, thiserror::Error)]
pub enum HistogramError {
    /// The base64 text exceeds [`MAX_HISTOGRAM_ENCODED_LEN`]; it was not decoded.
    #[error("histogram is {length} characters of base64, over the limit of {limit}")]
    TooLong { length: usize, limit: usize },
    /// The text is not base64 (standard alphabet, padded).
    #[error("histogram is not base64 (standard alphabet, padded): {0}")]
    Base64(#[source] base64::DecodeError),
    /// The deflate stream is corrupt or cut short.
    #[error("histogram's deflate stream is corrupt or cut short: {0}")]
    Deflate(#[source] std::io::Error),
    /// The bytes are not a V2 + deflate histogram, or one this reader refuses.
    #[error("histogram is malformed: {0}")]
    Malformed(String),
    /// The header asks for more counters than [`MAX_HISTOGRAM_COUNTERS`].
    #[error(
        "histogram of {sigfig} significant digits over {low}..={high} asks for {counters} counters, over \
         the limit of {limit}"
    )]
    TooWide { sigfig: u8, low: u64, high: u64, counters: usize, limit: usize },
    /// The two histograms bucket values differently, so adding them would not be exact.
    #[error(
        "histograms cannot be merged exactly: {ours} significant digits from {our_low} against \
         {theirs} from {their_low}"
    )]
    Incompatible { ours: u8, our_low: u64, theirs: u8, their_low: u64 },
    /// hdrhistogram refused the addition.
    #[error("histograms cannot be merged: {0}")]
    Merge(#[source] hdrhistogram::AdditionError),
}

/// The significant digits of [`EncodedHistogram::default`], as the proxy records.
const DEFAULT_SIGFIG: u8 = 3;

impl EncodedHistogram {
    /// Wraps a histogram for sending. For control to accept it, it must stay within
    /// [`MAX_HISTOGRAM_SIGFIG`] and [`MAX_HISTOGRAM_COUNTERS`].
    pub fn new(histogram: Histogram<u64>) -> Self {
        Self(histogram)
    }

    /// The histogram.
    pub fn into_inner(self) -> Histogram<u64> {
        self.0
    }

    /// The histogram, borrowed.
    pub fn as_histogram(&self) -> &Histogram<u64> {
        &self.0
    }

    /// Adds `other`'s recorded values to this one, exactly: the result equals one histogram that
    /// recorded both sets of values. This histogram grows to take `other`'s values. Refused (and this
    /// histogram unchanged) when a non-empty `other` has other significant digits or another lowest
    /// discernible value, which would shift values between buckets.
    pub fn merge(&mut self, other: &EncodedHistogram) -> Result<(), HistogramError> {
        let (ours, theirs) = (&mut self.0, &other.0);
        if theirs.is_empty() {
            return Ok(());
        }
        if ours.sigfig() != theirs.sigfig() || ours.low() != theirs.low() {
            return Err(HistogramError::Incompatible {
                ours: ours.sigfig(),
                our_low: ours.low(),
                theirs: theirs.sigfig(),
                their_low: theirs.low(),
            });
        }
        ours.auto(true);
        ours.add(theirs).map_err(HistogramError::Merge)
    }
}

impl Default for EncodedHistogram {
    /// An empty histogram of 3 significant digits that grows to the largest value recorded.
    fn default() -> Self {
        Self(Histogram::new(DEFAULT_SIGFIG).unwrap_or_else(|_| unreachable!("3 significant digits is valid")))
    }
}

impl PartialEq for EncodedHistogram {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len() && recorded(&self.0).eq(recorded(&other.0))
    }
}

impl Eq for EncodedHistogram {}

/// Each recorded bucket's highest equivalent value with its count.
fn recorded(histogram: &Histogram<u64>) -> impl Iterator<Item = (u64, u64)> + '_ {
    histogram.iter_recorded().map(|bucket| (bucket.value_iterated_to(), bucket.count_at_value()))
}

impl fmt::Debug for EncodedHistogram {
    /// A summary: the counters themselves run to thousands.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let histogram = &self.0;
        f.debug_struct("EncodedHistogram")
            .field("len", &histogram.len())
            .field("min", &histogram.min())
            .field("p50", &histogram.value_at_quantile(0.5))
            .field("p99", &histogram.value_at_quantile(0.99))
            .field("max", &histogram.max())
            .field("sigfig", &histogram.sigfig())
            .finish()
    }
}

impl Serialize for EncodedHistogram {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&encode(&self.0).map_err(serde::ser::Error::custom)?)
    }
}

impl<'de> Deserialize<'de> for EncodedHistogram {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl de::Visitor<'_> for Visitor {
            type Value = EncodedHistogram;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an HDR histogram: base64 of its V2 + deflate encoding")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                decode(text).map(EncodedHistogram).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(Visitor)
    }
}

/// The V2 + deflate encoding, base64.
fn encode(histogram: &Histogram<u64>) -> Result<String, V2DeflateSerializeError> {
    let mut bytes = Vec::new();
    let mut serializer = V2DeflateSerializer::new();
    match serializer.serialize(histogram, &mut bytes) {
        // V2 carries counts up to i64::MAX. A larger one (only reachable by saturating merges of
        // absurd inputs) is clamped, so a report always serializes.
        Err(V2DeflateSerializeError::InternalSerializationError(V2SerializeError::CountNotSerializable)) => {
            bytes.clear();
            serializer.serialize(&clamped(histogram), &mut bytes)?;
        }
        result => {
            result?;
        }
    }
    Ok(BASE64.encode(bytes))
}

/// The largest count V2 can carry.
const V2_MAX_COUNT: u64 = i64::MAX as u64;

fn clamped(histogram: &Histogram<u64>) -> Histogram<u64> {
    let mut copy = Histogram::new_from(histogram);
    copy.auto(true);
    for (value, count) in recorded(histogram) {
        // The copy has the source's buckets and grows if need be: recording cannot fail.
        let _ = copy.record_n(value, count.min(V2_MAX_COUNT));
    }
    copy
}

// The V2 format, as hdrhistogram (and HdrHistogram's other implementations) write it: an 8-byte
// frame (cookie, compressed length) around a zlib stream of a 40-byte header and the counts.
const V2_COOKIE: u32 = 0x1c84_9313;
const V2_DEFLATE_COOKIE: u32 = 0x1c84_9314;
const V2_FRAME_LEN: usize = 8;
const V2_HEADER_LEN: usize = 40;
/// The longest number in the counts (LEB128 of at most 9 bytes).
const V2_MAX_NUMBER_LEN: usize = 9;

/// What the V2 header says, once checked.
struct Header {
    payload_len: usize,
    counters: usize,
}

/// Decodes a histogram from its text; every defect is an error, never a panic or an unbounded
/// allocation.
fn decode(text: &str) -> Result<Histogram<u64>, HistogramError> {
    let (_, v2) = unpack(text)?;
    check_counts(v2.get(V2_HEADER_LEN..).unwrap_or_default())?;
    let mut histogram: Histogram<u64> = V2Deserializer::new()
        .deserialize(&mut v2.as_slice())
        .map_err(|error| HistogramError::Malformed(error.to_string()))?;
    histogram.auto(true);
    Ok(histogram)
}

/// Base64, the frame and the zlib stream, checked step by step: the plain V2 bytes and their header.
fn unpack(text: &str) -> Result<(Header, Vec<u8>), HistogramError> {
    if text.len() > MAX_HISTOGRAM_ENCODED_LEN {
        return Err(HistogramError::TooLong { length: text.len(), limit: MAX_HISTOGRAM_ENCODED_LEN });
    }
    let framed = BASE64.decode(text).map_err(HistogramError::Base64)?;
    let Some((frame, compressed)) = framed.split_at_checked(V2_FRAME_LEN) else {
        return Err(malformed(format!("{} bytes, shorter than the {V2_FRAME_LEN}-byte frame", framed.len())));
    };
    let cookie = u32::from_be_bytes(array(frame, 0));
    if cookie != V2_DEFLATE_COOKIE {
        return Err(malformed(format!(
            "cookie {cookie:#010x} is not V2 + deflate's {V2_DEFLATE_COOKIE:#010x}"
        )));
    }
    let compressed_len = u32::from_be_bytes(array(frame, 4));
    if usize::try_from(compressed_len).ok() != Some(compressed.len()) {
        return Err(malformed(format!(
            "the frame announces {compressed_len} compressed bytes but {} follow",
            compressed.len()
        )));
    }

    let mut inflater = flate2::bufread::ZlibDecoder::new(compressed);
    let mut raw_header = [0_u8; V2_HEADER_LEN];
    inflater.read_exact(&mut raw_header).map_err(HistogramError::Deflate)?;
    let header = Header::parse(&raw_header)?;
    let mut v2 = Vec::with_capacity(V2_HEADER_LEN + header.payload_len);
    v2.extend_from_slice(&raw_header);
    // Bounded by the header's length, itself bounded by the counters: a deflate bomb stops here.
    (&mut inflater).take(header.payload_len as u64).read_to_end(&mut v2).map_err(HistogramError::Deflate)?;
    let counts_len = v2.len() - V2_HEADER_LEN;
    if counts_len < header.payload_len {
        return Err(malformed(format!(
            "the counts stop after {counts_len} of the {} bytes the header announces",
            header.payload_len
        )));
    }
    // The stream must end with the counts (reading on also checks zlib's checksum), and the frame
    // with the stream.
    match inflater.read(&mut [0_u8; 1]) {
        Ok(0) => {}
        Ok(_) => return Err(malformed("bytes follow the counts".to_owned())),
        Err(error) => return Err(HistogramError::Deflate(error)),
    }
    if !inflater.into_inner().is_empty() {
        return Err(malformed("bytes follow the deflate stream".to_owned()));
    }
    Ok((header, v2))
}

impl Header {
    fn parse(raw: &[u8; V2_HEADER_LEN]) -> Result<Header, HistogramError> {
        let cookie = u32::from_be_bytes(array(raw, 0));
        if cookie != V2_COOKIE {
            return Err(malformed(format!("inner cookie {cookie:#010x} is not V2's {V2_COOKIE:#010x}")));
        }
        let payload_len = u32::from_be_bytes(array(raw, 4));
        let normalizing_offset = u32::from_be_bytes(array(raw, 8));
        if normalizing_offset != 0 {
            return Err(malformed(format!("normalizing index offset {normalizing_offset} is not supported")));
        }
        let sigfig = u32::from_be_bytes(array(raw, 12));
        let sigfig = match u8::try_from(sigfig) {
            Ok(sigfig) if sigfig <= MAX_HISTOGRAM_SIGFIG => sigfig,
            _ => {
                return Err(malformed(format!(
                    "{sigfig} significant digits, over the maximum of {MAX_HISTOGRAM_SIGFIG}"
                )))
            }
        };
        let low = u64::from_be_bytes(array(raw, 16));
        let high = u64::from_be_bytes(array(raw, 24));
        let ratio = f64::from_be_bytes(array(raw, 32));
        if ratio.to_bits() != 1.0_f64.to_bits() {
            return Err(malformed(format!("integer-to-double ratio {ratio} is not supported")));
        }
        let counters = counters_for(sigfig, low, high).ok_or_else(|| {
            malformed(format!("no histogram of {sigfig} significant digits spans {low}..={high}"))
        })?;
        if counters > MAX_HISTOGRAM_COUNTERS {
            return Err(HistogramError::TooWide {
                sigfig,
                low,
                high,
                counters,
                limit: MAX_HISTOGRAM_COUNTERS,
            });
        }
        let payload_len = usize::try_from(payload_len).unwrap_or(usize::MAX);
        if payload_len > counters.saturating_mul(V2_MAX_NUMBER_LEN) {
            return Err(malformed(format!("{payload_len} bytes of counts for {counters} counters")));
        }
        Ok(Header { payload_len, counters })
    }
}

/// How many counters `Histogram::new_with_bounds(low, high, sigfig)` allocates: hdrhistogram 7's
/// sizing, with `low`'s magnitude rounded down (hdrhistogram goes through `f64`), so that the figure is
/// never below the real one. `None` where hdrhistogram refuses the bounds.
fn counters_for(sigfig: u8, low: u64, high: u64) -> Option<usize> {
    if sigfig > MAX_HISTOGRAM_SIGFIG || low == 0 || high / 2 < low {
        return None;
    }
    // Single-unit resolution up to 2 × 10^sigfig, in a power-of-two count of sub-buckets.
    let largest_single_unit = 2 * 10_u64.pow(u32::from(sigfig));
    let sub_bucket_count_magnitude = u64::BITS - (largest_single_unit - 1).leading_zeros();
    let unit_magnitude = u64::BITS - 1 - low.leading_zeros();
    if unit_magnitude + sub_bucket_count_magnitude > 63 {
        return None;
    }
    let sub_bucket_half_count = 1_u64 << (sub_bucket_count_magnitude - 1);
    let mut smallest_untrackable = 1_u64 << (sub_bucket_count_magnitude + unit_magnitude);
    let mut buckets = 1_u64;
    while smallest_untrackable <= high {
        if smallest_untrackable > u64::MAX / 2 {
            buckets += 1;
            break;
        }
        smallest_untrackable <<= 1;
        buckets += 1;
    }
    usize::try_from((buckets + 1) * sub_bucket_half_count).ok()
}

/// Checks the counts' numbers before hdrhistogram reads them. hdrhistogram 7 negates each negative
/// number (a run of zeros); the one whose negation overflows, `i64::MIN` (zig-zag `u64::MAX`), would
/// panic in a build with overflow checks.
fn check_counts(mut counts: &[u8]) -> Result<(), HistogramError> {
    while !counts.is_empty() {
        let Some((number, rest)) = read_number(counts) else {
            return Err(malformed("the counts end inside a number".to_owned()));
        };
        if number == u64::MAX {
            return Err(malformed("a run of zero counts is out of range".to_owned()));
        }
        counts = rest;
    }
    Ok(())
}

/// One LEB128 number of V2's counts (at most 9 bytes; the ninth contributes all 8 bits) and the rest.
fn read_number(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut number = 0_u64;
    for (index, &byte) in bytes.iter().enumerate().take(V2_MAX_NUMBER_LEN) {
        if index == V2_MAX_NUMBER_LEN - 1 {
            number |= u64::from(byte) << 56;
            return Some((number, &bytes[V2_MAX_NUMBER_LEN..]));
        }
        number |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            return Some((number, &bytes[index + 1..]));
        }
    }
    None
}

/// `N` bytes at a fixed offset of a slice whose length the caller has checked.
fn array<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0_u8; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

fn malformed(message: String) -> HistogramError {
    HistogramError::Malformed(message)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::write::ZlibEncoder;
    use flate2::Compression;

    use super::*;

    /// A tiny deterministic generator (the config crate has no `fastrand`).
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            self.0 >> 33
        }

        fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound
        }

        /// Uniform in [0, 1).
        fn unit(&mut self) -> f64 {
            self.next() as f64 / (1_u64 << 31) as f64
        }
    }

    fn histogram() -> Histogram<u64> {
        EncodedHistogram::default().into_inner()
    }

    /// 980 values around 1 ms, 20 around 80 ms, one of an hour.
    fn known_latencies() -> Histogram<u64> {
        let mut histogram = histogram();
        for index in 0..980 {
            histogram.record(980 + index % 41).unwrap();
        }
        for index in 0..20 {
            histogram.record(79_000 + index * 97).unwrap();
        }
        histogram.record(3_600_000_000).unwrap();
        histogram
    }

    fn series(route: &str, latency: Histogram<u64>, headers: Histogram<u64>) -> SeriesReport {
        let requests = latency.len();
        // Up to three failures (two 5xx, one timeout), the rest successes: counts that add up.
        let failed = requests.min(3);
        let server_error = failed.min(2);
        SeriesReport {
            route: route.to_owned(),
            cluster: "checkout".to_owned(),
            version: "v2".to_owned(),
            counts: Counts {
                requests,
                success: requests - failed,
                server_error,
                timeout: failed - server_error,
                status_2xx: requests - failed,
                status_5xx: server_error,
                status_4xx: failed - server_error,
                latency_sum_us: 3_601_234_567,
                ..Counts::default()
            },
            latency: EncodedHistogram::new(latency),
            headers_latency: EncodedHistogram::new(headers),
        }
    }

    fn report(series: Vec<SeriesReport>) -> Report {
        Report {
            schema: REPORT_SCHEMA,
            node: "checkout".to_owned(),
            node_version: "v2".to_owned(),
            proxy: "host-a:4242".to_owned(),
            sequence: 17,
            start_unix_ms: 1_700_000_000_000,
            end_unix_ms: 1_700_000_001_000,
            config_generation: 3,
            desired_revision: Some(42),
            series,
            breakers: vec![
                BreakerReport {
                    cluster: "a".to_owned(),
                    state: BreakerState::Closed,
                    ejected_endpoints: 0,
                    endpoints: 3,
                },
                BreakerReport {
                    cluster: "b".to_owned(),
                    state: BreakerState::Open,
                    ejected_endpoints: 1,
                    endpoints: 2,
                },
                BreakerReport {
                    cluster: "c".to_owned(),
                    state: BreakerState::HalfOpen,
                    ejected_endpoints: 0,
                    endpoints: 1,
                },
                BreakerReport {
                    cluster: "d".to_owned(),
                    state: BreakerState::Disabled,
                    ejected_endpoints: 0,
                    endpoints: 0,
                },
            ],
            events: vec![EventReport {
                unix_ms: 1_700_000_000_500,
                cluster: "b".to_owned(),
                kind: "breaker_opened".to_owned(),
                detail: "5 consecutive failures".to_owned(),
            }],
        }
    }

    /// A report of two series with the known latencies.
    fn sample() -> Report {
        let mut headers = histogram();
        for value in [120, 130, 150, 900, 40_000] {
            headers.record(value).unwrap();
        }
        report(vec![
            series("/pay", known_latencies(), headers.clone()),
            series("/cart", headers, histogram()),
        ])
    }

    fn encoded_text(histogram: &Histogram<u64>) -> String {
        encode(histogram).unwrap()
    }

    fn decode_error(text: &str) -> String {
        decode(text).map(|histogram| histogram.len()).unwrap_err().to_string()
    }

    /// The report as JSON with `edit` applied, for bodies `Report` cannot express.
    fn edited(report: &Report, edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut value: serde_json::Value = serde_json::from_slice(&report.to_json()).unwrap();
        edit(&mut value);
        serde_json::to_vec(&value).unwrap()
    }

    /// A V2 header and counts, as hdrhistogram writes them.
    fn v2(payload_len: u32, sigfig: u32, low: u64, high: u64, counts: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(V2_COOKIE.to_be_bytes());
        out.extend(payload_len.to_be_bytes());
        out.extend(0_u32.to_be_bytes());
        out.extend(sigfig.to_be_bytes());
        out.extend(low.to_be_bytes());
        out.extend(high.to_be_bytes());
        out.extend(1.0_f64.to_be_bytes());
        out.extend(counts);
        out
    }

    /// Deflated, framed and base64'd, as on the wire.
    fn framed(v2: &[u8]) -> String {
        let mut compressor = ZlibEncoder::new(Vec::new(), Compression::default());
        compressor.write_all(v2).unwrap();
        let compressed = compressor.finish().unwrap();
        let mut out = V2_DEFLATE_COOKIE.to_be_bytes().to_vec();
        out.extend(u32::try_from(compressed.len()).unwrap().to_be_bytes());
        out.extend(compressed);
        BASE64.encode(out)
    }

    #[test]
    fn round_trip_keeps_every_field_and_every_recorded_value() {
        let report = sample();
        let decoded = Report::from_json(&report.to_json()).unwrap();
        assert_eq!(decoded, report);

        for (sent, read) in report.series.iter().zip(&decoded.series) {
            for (sent, read) in
                [(&sent.latency, &read.latency), (&sent.headers_latency, &read.headers_latency)]
            {
                let (sent, read) = (sent.as_histogram(), read.as_histogram());
                assert_eq!(read.len(), sent.len());
                assert_eq!(read.max(), sent.max());
                assert_eq!(read.min(), sent.min());
                for quantile in [0.5, 0.9, 0.99, 0.999] {
                    assert_eq!(
                        read.value_at_quantile(quantile),
                        sent.value_at_quantile(quantile),
                        "q{quantile}"
                    );
                }
                assert!(read.is_auto_resize(), "control can merge into a decoded histogram");
            }
        }
        let latency = decoded.series[0].latency.as_histogram();
        assert_eq!(latency.len(), 1001);
        assert!(latency.equivalent(latency.value_at_quantile(0.5), 1000));
        assert!(latency.equivalent(latency.value_at_quantile(0.99), 79_000 + 10 * 97), "the 991st of 1001");
        assert!(latency.equivalent(latency.max(), 3_600_000_000));
    }

    #[test]
    fn minimal_report_omits_its_empty_parts_and_reads_them_back_empty() {
        let report =
            Report { desired_revision: None, series: vec![], breakers: vec![], events: vec![], ..sample() };
        let json = String::from_utf8(report.to_json()).unwrap();
        for absent in ["desired_revision", "series", "breakers", "events"] {
            assert!(!json.contains(absent), "{absent} in {json}");
        }
        assert!(json.starts_with(r#"{"schema":1,"#), "{json}");
        assert_eq!(Report::from_json(json.as_bytes()).unwrap(), report);
    }

    #[test]
    fn merge_of_decoded_histograms_equals_recording_everything_in_one() {
        let mut random = Lcg(7);
        // A holds only small values, B values up to an hour: their counters differ in length, so the
        // merge takes hdrhistogram's value-by-value path as well as the direct one.
        let (mut a, mut b, mut all) = (histogram(), histogram(), histogram());
        for _ in 0..5_000 {
            let value = 1 + random.below(50_000);
            a.record(value).unwrap();
            all.record(value).unwrap();
        }
        for _ in 0..5_000 {
            let digits = 1 + random.below(9) as u32;
            let value = 1 + random.below(10_u64.pow(digits)).min(3_599_999_999);
            b.record(value).unwrap();
            all.record(value).unwrap();
        }
        let wire = |histogram: Histogram<u64>| -> EncodedHistogram {
            let json = serde_json::to_string(&EncodedHistogram::new(histogram)).unwrap();
            serde_json::from_str(&json).unwrap()
        };
        let (a, b, all) = (wire(a), wire(b), EncodedHistogram::new(all));

        let mut merged = EncodedHistogram::default();
        merged.merge(&a).unwrap();
        merged.merge(&b).unwrap();
        assert_eq!(merged, all);
        let mut b_then_a = b.clone();
        b_then_a.merge(&a).unwrap();
        assert_eq!(b_then_a, all);
        let mut a_then_b = a.clone();
        a_then_b.merge(&b).unwrap();
        assert_eq!(a_then_b, all);

        let (merged, all) = (merged.as_histogram(), all.as_histogram());
        assert_eq!(merged.len(), 10_000);
        for bucket in all.iter_recorded() {
            assert_eq!(merged.count_at(bucket.value_iterated_to()), bucket.count_at_value());
        }
        for quantile in [0.0, 0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(merged.value_at_quantile(quantile), all.value_at_quantile(quantile));
        }
    }

    #[test]
    fn equality_is_about_recorded_values() {
        let mut one = histogram();
        one.record(1_000).unwrap();
        let mut other = histogram();
        other.record(1_000).unwrap();
        other.record(5_000_000).unwrap();
        other.reset(); // grown, then emptied
        other.record(1_000).unwrap();
        assert_eq!(EncodedHistogram::new(one.clone()), EncodedHistogram::new(other.clone()));
        other.record(1_000).unwrap();
        assert_ne!(EncodedHistogram::new(one.clone()), EncodedHistogram::new(other));
        let mut moved = histogram();
        moved.record(2_000).unwrap();
        assert_ne!(EncodedHistogram::new(one), EncodedHistogram::new(moved));
    }

    #[test]
    fn merge_of_another_precision_is_refused_and_changes_nothing() {
        let mut target = EncodedHistogram::new(known_latencies());
        let mut coarse = Histogram::new(2).unwrap();
        coarse.record(1_000).unwrap();
        let error = target.merge(&EncodedHistogram::new(coarse)).unwrap_err();
        assert!(matches!(error, HistogramError::Incompatible { ours: 3, theirs: 2, .. }), "{error}");
        assert_eq!(target, EncodedHistogram::new(known_latencies()));
        // An empty histogram adds nothing, whatever its precision.
        target.merge(&EncodedHistogram::new(Histogram::new(2).unwrap())).unwrap();
        assert_eq!(target, EncodedHistogram::new(known_latencies()));
    }

    #[test]
    fn count_above_v2_range_is_clamped_not_a_failure() {
        let mut huge = histogram();
        huge.record_n(1_000, u64::MAX).unwrap();
        huge.record(2_000).unwrap();
        let read = decode(&encoded_text(&huge)).unwrap();
        assert_eq!(read.count_at(1_000), V2_MAX_COUNT);
        assert_eq!(read.count_at(2_000), 1);
    }

    #[test]
    fn wrong_schema_is_refused_naming_both_numbers() {
        let body = edited(&sample(), |value| value["schema"] = 2.into());
        let error = Report::from_json(&body).unwrap_err();
        assert!(matches!(error, ReportError::Schema { expected: 1, found: 2 }));
        assert_eq!(
            error.to_string(),
            "report schema 2 is not supported: this reader understands schema 1 only"
        );
    }

    #[test]
    fn newer_schema_with_new_fields_is_refused_for_its_schema() {
        let body = edited(&sample(), |value| {
            value["schema"] = 2.into();
            value["series"][0]["latency"] = serde_json::json!({"buckets": [1, 2]});
            value["retries"] = 3.into();
        });
        assert!(matches!(Report::from_json(&body), Err(ReportError::Schema { expected: 1, found: 2 })));
    }

    #[test]
    fn missing_schema_is_refused() {
        let body = edited(&sample(), |value| {
            value.as_object_mut().unwrap().remove("schema");
        });
        let error = Report::from_json(&body).unwrap_err().to_string();
        assert!(error.contains("missing field `schema`"), "{error}");
    }

    #[test]
    fn counts_that_do_not_add_up_are_refused_with_their_path() {
        for (field, value) in [("success", 1_000_000), ("requests", 0), ("reset", 7)] {
            let edit = |report: &mut serde_json::Value| {
                report.pointer_mut("/series/0/counts").unwrap()[field] = value.into();
            };
            let error = Report::from_json(&edited(&sample(), edit)).unwrap_err().to_string();
            assert!(error.starts_with("invalid report: series[0].counts: requests "), "{field}: {error}");
        }
        assert!(Report::from_json(&sample().to_json()).is_ok());
        let zero = edited(&sample(), |report| report["desired_revision"] = 0.into());
        let error = Report::from_json(&zero).unwrap_err().to_string();
        assert!(error.starts_with("invalid report: desired_revision: 0 is not a revision"), "{error}");
    }

    #[test]
    fn unknown_fields_are_refused_wherever_they_are() {
        // Each field, added to the object at a JSON pointer.
        let cases = [
            ("", "retries"),
            ("/series/0", "weight"),
            ("/series/0/counts", "status_6xx"),
            ("/breakers/0", "reason"),
            ("/events/0", "severity"),
        ];
        for (object, field) in cases {
            let edit = |value: &mut serde_json::Value| value.pointer_mut(object).unwrap()[field] = 3.into();
            let error = Report::from_json(&edited(&sample(), edit)).unwrap_err();
            assert!(matches!(error, ReportError::Json(_)), "{field}: {error}");
            let message = error.to_string();
            assert!(message.contains(&format!("unknown field `{field}`")), "{message}");
            assert!(message.contains("line 1 column"), "{message}");
        }
    }

    #[test]
    fn unknown_breaker_state_is_refused_and_known_ones_are_snake_case() {
        let json = serde_json::to_string(&BreakerState::HalfOpen).unwrap();
        assert_eq!(json, r#""half_open""#);
        let body = edited(&sample(), |value| value["breakers"][0]["state"] = "melted".into());
        let error = Report::from_json(&body).unwrap_err().to_string();
        assert!(error.contains("unknown variant `melted`"), "{error}");
    }

    #[test]
    fn histogram_that_is_not_base64_is_refused_with_its_path() {
        let body = edited(&sample(), |value| value["series"][1]["headers_latency"] = "not base64!".into());
        let error = Report::from_json(&body).unwrap_err();
        assert!(matches!(&error, ReportError::Histogram { path, source: HistogramError::Base64(_) }
            if path == "series[1].headers_latency"));
        assert!(error
            .to_string()
            .starts_with("invalid report: series[1].headers_latency: histogram is not base64"));
        // Read directly through serde, without `from_json`'s first pass, it is refused all the same.
        let error = serde_json::from_str::<EncodedHistogram>(r#""not base64!""#).unwrap_err().to_string();
        assert!(error.contains("histogram is not base64"), "{error}");
    }

    #[test]
    fn base64_of_garbage_is_refused() {
        for garbage in [&b""[..], b"garbage", b"garbage bytes, long enough for a frame", &[0xff; 64]] {
            let error = decode_error(&BASE64.encode(garbage));
            assert!(error.starts_with("histogram is malformed"), "{error}");
        }
        // The right frame around a stream that is not zlib.
        let mut framed = V2_DEFLATE_COOKIE.to_be_bytes().to_vec();
        framed.extend(16_u32.to_be_bytes());
        framed.extend([0x5a; 16]);
        let error = decode_error(&BASE64.encode(framed));
        assert!(error.starts_with("histogram's deflate stream is corrupt"), "{error}");
        // Not a string at all.
        let error = serde_json::from_str::<EncodedHistogram>("[1, 2]").unwrap_err().to_string();
        assert!(error.contains("expected an HDR histogram"), "{error}");
    }

    #[test]
    fn every_truncation_of_a_valid_encoding_is_refused() {
        let text = encoded_text(&known_latencies());
        let bytes = BASE64.decode(&text).unwrap();
        for length in 0..text.len() {
            assert!(decode(&text[..length]).is_err(), "{length} of {} characters", text.len());
        }
        for length in 0..bytes.len() {
            assert!(decode(&BASE64.encode(&bytes[..length])).is_err(), "{length} of {} bytes", bytes.len());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_error(&BASE64.encode(longer)).contains("announces"));
    }

    #[test]
    fn corrupted_bytes_never_panic() {
        let bytes = BASE64.decode(encoded_text(&known_latencies())).unwrap();
        let mut accepted = 0;
        for position in 0..bytes.len() {
            for mask in [0x01, 0x10, 0x80, 0xff] {
                let mut corrupted = bytes.clone();
                corrupted[position] ^= mask;
                if let Ok(histogram) = decode(&BASE64.encode(&corrupted)) {
                    accepted += 1;
                    assert!(histogram.sigfig() <= MAX_HISTOGRAM_SIGFIG);
                    assert!(histogram.distinct_values() <= MAX_HISTOGRAM_COUNTERS);
                }
            }
        }
        let mut checksum = bytes.clone();
        *checksum.last_mut().unwrap() ^= 1;
        assert!(decode_error(&BASE64.encode(checksum)).contains("corrupt deflate stream"));
        // zlib's checksum catches nearly every change (a flipped padding bit may pass unnoticed).
        assert!(accepted * 100 < bytes.len() * 4, "{accepted} of {} corruptions accepted", bytes.len() * 4);
    }

    #[test]
    fn oversize_histogram_text_is_refused_before_decoding() {
        let text = "!".repeat(MAX_HISTOGRAM_ENCODED_LEN + 1);
        let error = decode(&text).unwrap_err();
        assert!(matches!(error, HistogramError::TooLong { length, limit: MAX_HISTOGRAM_ENCODED_LEN }
            if length == MAX_HISTOGRAM_ENCODED_LEN + 1));
        let body = edited(&sample(), |value| value["series"][0]["latency"] = text.into());
        let error = Report::from_json(&body).unwrap_err().to_string();
        assert!(error.contains("series[0].latency: histogram is 1048577 characters of base64"), "{error}");
    }

    #[test]
    fn body_over_max_report_bytes_is_refused_unread() {
        let mut body = sample().to_json();
        body.resize(MAX_REPORT_BYTES + 1, b' ');
        let error = Report::from_json(&body).unwrap_err();
        let limit = MAX_REPORT_BYTES;
        assert!(
            matches!(error, ReportError::TooLarge { size, limit: MAX_REPORT_BYTES } if size == limit + 1)
        );
        // The same body, one byte shorter, is read.
        body.truncate(MAX_REPORT_BYTES);
        assert_eq!(Report::from_json(&body).unwrap(), sample());
    }

    #[test]
    fn empty_body_is_refused() {
        for body in [&b""[..], b" \n\t"] {
            let error = Report::from_json(body).unwrap_err();
            assert!(matches!(error, ReportError::Empty));
            assert_eq!(error.to_string(), "report body is empty");
        }
        let error = Report::from_json(b"{").unwrap_err().to_string();
        assert!(error.starts_with("invalid report: EOF while parsing"), "{error}");
        let error = Report::from_json(br#""report""#).unwrap_err().to_string();
        let expected = r#"invalid report: invalid type: string "report", expected struct Report"#;
        assert!(error.starts_with(expected), "{error}");
        let body = br#"{"schema": 1, "series": [{"latency": 5}]}"#;
        let error = Report::from_json(body).unwrap_err().to_string();
        assert!(error.contains("invalid type: integer `5`, expected a string"), "{error}");
    }

    #[test]
    fn crafted_encoding_helper_matches_hdrhistogram() {
        // One count of 5 at index 1000 (value 1000): a run of 1000 zeros, then 5; zig-zag, LEB128.
        let text = framed(&v2(3, 3, 1, 2048, &[0xcf, 0x0f, 0x0a]));
        let histogram = decode(&text).unwrap();
        assert_eq!((histogram.len(), histogram.count_at(1_000)), (5, 5));
        let mut expected = histogram.clone();
        expected.reset();
        expected.record_n(1_000, 5).unwrap();
        assert_eq!(EncodedHistogram::new(histogram), EncodedHistogram::new(expected));
    }

    #[test]
    fn malformed_headers_are_refused_with_a_reason() {
        let cases = [
            (framed(&v2(1, 6, 1, 2048, &[0])), "6 significant digits, over the maximum of 5"),
            (framed(&v2(1, 3, 0, 2048, &[0])), "no histogram of 3 significant digits spans 0..=2048"),
            (framed(&v2(1, 3, 1000, 1999, &[0])), "spans 1000..=1999"),
            (framed(&v2(1, 3, 1 << 60, u64::MAX, &[0])), "spans"),
            (
                framed(&[&[0x1c, 0x84, 0x93, 0x12][..], &v2(1, 3, 1, 2048, &[0])[4..]].concat()),
                "inner cookie",
            ),
            (framed(&v2(1, 3, 1, 2048, &[0])[..39]), "deflate stream is corrupt or cut short"),
            // Counts longer than any histogram of this range could need: refused, not allocated.
            (framed(&v2(u32::MAX, 3, 1, 2048, &[0])), "4294967295 bytes of counts for 3072 counters"),
            (framed(&v2(100, 3, 1, 2048, &[0])), "the counts stop after 1 of the 100 bytes"),
            (framed(&v2(1, 3, 1, 2048, &[0, 0])), "bytes follow the counts"),
            (framed(&v2(2, 3, 1, 2048, &[0xff, 0xff])), "the counts end inside a number"),
            // A run of 3,072 zeros, then a count: past the last of the 3,072 counters.
            (framed(&v2(3, 3, 1, 2048, &[0xff, 0x2f, 0x02])), "longer than it should be"),
        ];
        for (text, expected) in cases {
            let error = decode_error(&text);
            assert!(error.contains(expected), "{error:?} should contain {expected:?}");
        }
        let mut normalized = v2(1, 3, 1, 2048, &[0]);
        normalized[8..12].copy_from_slice(&1_u32.to_be_bytes());
        assert!(decode_error(&framed(&normalized)).contains("normalizing index offset 1"));
        let mut ratio = v2(1, 3, 1, 2048, &[0]);
        ratio[32..40].copy_from_slice(&2.0_f64.to_be_bytes());
        assert!(decode_error(&framed(&ratio)).contains("integer-to-double ratio 2"));
        let mut trailing = BASE64.decode(framed(&v2(1, 3, 1, 2048, &[0]))).unwrap();
        trailing.push(0);
        let length = u32::try_from(trailing.len() - V2_FRAME_LEN).unwrap();
        trailing[4..8].copy_from_slice(&length.to_be_bytes());
        assert!(decode_error(&BASE64.encode(trailing)).contains("bytes follow the deflate stream"));
    }

    #[test]
    fn zero_run_that_overflows_hdrhistogram_is_refused_not_a_panic() {
        // Zig-zag u64::MAX is i64::MIN, which hdrhistogram 7 negates.
        let text = framed(&v2(9, 3, 1, 2048, &[0xff; 9]));
        assert!(decode_error(&text).contains("a run of zero counts is out of range"));
    }

    #[test]
    fn histogram_claiming_a_huge_range_is_refused_before_allocating() {
        // 40 bytes of header asking for 6.3 million counters (50 MiB).
        let text = framed(&v2(1, 5, 1, u64::MAX, &[0]));
        let error = decode(&text).unwrap_err();
        assert!(matches!(error, HistogramError::TooWide { sigfig: 5, counters: 6_291_456, .. }), "{error}");
    }

    #[test]
    fn report_whose_histograms_ask_for_too_much_memory_is_refused() {
        // Legal alone (835,584 counters, 6.4 MiB) but not 22 times over.
        let wide = framed(&v2(1, 4, 1, u64::MAX, &[0]));
        assert_eq!(decode(&wide).unwrap().distinct_values(), 835_584);
        let many = report((0..11).map(|_| series("/", histogram(), histogram())).collect());
        let body = edited(&many, |value| {
            for series in value["series"].as_array_mut().unwrap() {
                series["latency"] = wide.as_str().into();
                series["headers_latency"] = wide.as_str().into();
            }
        });
        let error = Report::from_json(&body).unwrap_err();
        assert!(
            matches!(
                error,
                ReportError::TooManyCounters { counters: 18_382_848, limit: MAX_REPORT_COUNTERS }
            ),
            "{error}"
        );
        // One such series is fine.
        let one = report(vec![series("/", histogram(), histogram())]);
        let body = edited(&one, |value| {
            value["series"][0]["latency"] = wide.as_str().into();
            value["series"][0]["headers_latency"] = wide.as_str().into();
        });
        Report::from_json(&body).unwrap();
    }

    #[test]
    fn counter_estimate_matches_hdrhistogram() {
        // The figures `MAX_HISTOGRAM_COUNTERS` and `MAX_REPORT_COUNTERS` quote.
        assert_eq!(counters_for(3, 1, 3_600_000_000), Some(23_552));
        assert_eq!(counters_for(3, 1, u64::MAX), Some(56_320));
        assert_eq!(MAX_REPORT_COUNTERS / (2 * 23_552), 356);
        for sigfig in 0..=5 {
            for low in [1, 2, 3, 1_000, 1 << 20] {
                for high in [2 * low, 2_048, 3_600_000_000, u64::MAX / 3, u64::MAX] {
                    let Ok(histogram) = Histogram::<u64>::new_with_bounds(low, high, sigfig) else {
                        continue;
                    };
                    let counters = histogram.distinct_values();
                    assert_eq!(counters_for(sigfig, low, high), Some(counters), "{sigfig} {low} {high}");
                }
            }
        }
    }

    /// `count` latencies (µs), log-normal around 2 ms with a spread of `sigma` (of the logarithm), and
    /// one in `slow_one_in` a slow one between 100 ms and 2 s; and the headers latencies, a third of each.
    fn interval(count: u64, sigma: f64, slow_one_in: u64) -> (Histogram<u64>, Histogram<u64>) {
        let mut random = Lcg(11);
        let (mut latency, mut headers) = (histogram(), histogram());
        for _ in 0..count {
            // A sum of 4 uniforms, less its mean, over its standard deviation: near enough normal.
            let normal = ((0..4).map(|_| random.unit()).sum::<f64>() - 2.0) / (1.0_f64 / 3.0).sqrt();
            let mut value = (2_000.0 * (sigma * normal).exp()) as u64;
            if random.below(slow_one_in) == 0 {
                value = 100_000 + random.below(1_900_000);
            }
            latency.record(value.max(1)).unwrap();
            headers.record((value / 3).max(1)).unwrap();
        }
        (latency, headers)
    }

    #[test]
    fn realistic_interval_encodes_compactly_and_omits_zero_counts() {
        // Measured sizes of the base64 text (latency, headers), bounds about 20% above.
        let cases = [
            // 10,000 requests, p99 about 6 ms.
            (10_000, 0.4, 1_000, 2_300),
            // 10,000 requests spread wider, 1% slow: the p99 is slow.
            (10_000, 0.8, 100, 3_400),
            // A one-second interval at 1,000 requests a second.
            (1_000, 0.8, 100, 1_300),
        ];
        for (count, sigma, slow_one_in, bound) in cases {
            let (latency, headers) = interval(count, sigma, slow_one_in);
            let (latency_len, headers_len) = (encoded_text(&latency).len(), encoded_text(&headers).len());
            assert!(
                latency_len < bound && headers_len < bound,
                "{count} {sigma}: {latency_len}, {headers_len}"
            );
        }
        assert!(encoded_text(&histogram()).len() < 64, "an empty histogram");

        let (latency, headers) = interval(10_000, 0.4, 1_000);
        let mut one = report(vec![series("/pay", latency, headers)]);
        one.series[0].counts =
            Counts { requests: 10_000, success: 10_000, status_2xx: 10_000, ..Counts::default() };
        let json = String::from_utf8(one.to_json()).unwrap();
        let counts = serde_json::to_string(&one.series[0].counts).unwrap();
        assert_eq!(counts, r#"{"requests":10000,"success":10000,"status_2xx":10000}"#);
        assert!(json.contains(&format!(r#""counts":{counts}"#)), "{json}");
        assert_eq!(serde_json::from_str::<Counts>("{}").unwrap(), Counts::default());
        assert_eq!(Report::from_json(json.as_bytes()).unwrap(), one);
    }

    #[test]
    fn counts_merge_saturating_and_success_rate_needs_requests() {
        let mut total =
            Counts { requests: 4, success: 3, server_error: 1, status_5xx: 1, ..Counts::default() };
        total.merge(&Counts { requests: 6, success: 6, latency_sum_us: u64::MAX, ..Counts::default() });
        total.merge(&Counts { latency_sum_us: 5, ..Counts::default() });
        assert_eq!(
            total,
            Counts {
                requests: 10,
                success: 9,
                server_error: 1,
                status_5xx: 1,
                latency_sum_us: u64::MAX,
                ..Counts::default()
            }
        );
        assert_eq!(total.success_rate(), Some(0.9));
        assert_eq!(Counts::default().success_rate(), None);
    }
}
