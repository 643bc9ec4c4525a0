//! W3C Trace Context (level 1): every proxied request leaves Remora with one valid `traceparent`.
//!
//! On the request path, before the request is forwarded, [`ensure_traceparent`] keeps a valid
//! incoming `traceparent` (and its `tracestate`) or starts a new trace; the value it returns goes
//! upstream in the request and into the access log, so a log line can be joined with the
//! application's own traces.
//!
//! A valid incoming value is passed on unchanged, parent-id included, although the spec has each
//! traced hop put its own span's id there: Remora exports no spans, so a parent-id of its own would
//! name a span nobody records, and the upstream's spans would hang from a hole instead of from the
//! caller's span. Being a pass-through, Remora also forwards a higher version as it came.
//!
//! A missing or invalid one is replaced by a new trace (random trace-id and parent-id, flags `01`),
//! and any `tracestate` goes with it: the spec forbids reading `tracestate` when `traceparent`
//! could not be parsed, and its entries describe the trace being dropped.
//!
//! Values are checked as they arrive, surrounding whitespace included: hyper's HTTP/1 parser has
//! already trimmed it, and HTTP/2 forbids it.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The length of a version `00` value, and of the part every higher version starts with.
const LEN: usize = 55;
const HEX: &[u8; 16] = b"0123456789abcdef";

/// Makes sure the request carries a valid `traceparent`: a valid incoming one is kept unchanged (with its
/// `tracestate`); a missing or invalid one (and then any `tracestate`, which the spec says to drop with it)
/// is replaced by a new trace: random non-zero trace-id and parent-id, flags `01`. Returns the value in
/// effect (a cheap clone), for the access log.
pub fn ensure_traceparent(headers: &mut HeaderMap) -> HeaderValue {
    let mut incoming = headers.get_all(&TRACEPARENT).iter();
    // Two values cannot be told apart (which one is the caller's?): the spec's test suite restarts.
    if let (Some(value), None) = (incoming.next(), incoming.next()) {
        if is_valid(value.as_bytes()) {
            return value.clone();
        }
    }
    headers.remove(&TRACESTATE);
    let value = new_traceparent(nonzero_u128(), nonzero_u64());
    // `insert` replaces every value already under the name.
    headers.insert(TRACEPARENT.clone(), value.clone());
    value
}

/// Whether `value` is a valid traceparent per W3C Trace Context level 1 (see rules below).
///
/// `version-traceid-parentid-flags` in lowercase hex: version 2 digits, not `ff`; trace-id 32 digits
/// and parent-id 16, neither all zeros; flags 2. Version `00` is exactly 55 bytes. A higher version
/// may be longer, and then byte 55 must be `-`; what follows is not examined (the spec forbids
/// assuming anything about fields it does not know).
pub fn is_valid(value: &[u8]) -> bool {
    let Some(head) = value.first_chunk::<LEN>() else {
        return false;
    };
    let version = &head[0..2];
    let length_fits = match version {
        b"00" => value.len() == LEN,
        _ => value.get(LEN).is_none_or(|&byte| byte == b'-'),
    };
    let trace_id = &head[3..35];
    let parent_id = &head[36..52];
    length_fits
        && is_lower_hex(version)
        && version != b"ff"
        && head[2] == b'-'
        && is_lower_hex(trace_id)
        && !is_all_zeros(trace_id)
        && head[35] == b'-'
        && is_lower_hex(parent_id)
        && !is_all_zeros(parent_id)
        && head[52] == b'-'
        && is_lower_hex(&head[53..55])
}

fn is_lower_hex(digits: &[u8]) -> bool {
    digits.iter().all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
}

fn is_all_zeros(digits: &[u8]) -> bool {
    digits.iter().all(|&byte| byte == b'0')
}

/// A version `00`, sampled traceparent for these ids, in one allocation whose clones share it.
fn new_traceparent(trace_id: u128, parent_id: u64) -> HeaderValue {
    let mut text = *b"00-00000000000000000000000000000000-0000000000000000-01";
    write_hex(&mut text[3..35], trace_id);
    write_hex(&mut text[36..52], u128::from(parent_id));
    // `from_owner` keeps the array inline in its shared allocation, so the clone that goes to the
    // access log is a reference count, not a second allocation (a `Vec`-backed `Bytes` would allocate
    // again on its first clone).
    HeaderValue::from_maybe_shared(Bytes::from_owner(text))
        .expect("lowercase hex digits and dashes are valid header bytes")
}

/// Writes `value`'s low `out.len()` nibbles into `out` as lowercase hex, most significant first.
fn write_hex(out: &mut [u8], mut value: u128) {
    for digit in out.iter_mut().rev() {
        *digit = HEX[(value & 0xf) as usize];
        value >>= 4;
    }
}

fn nonzero_u128() -> u128 {
    loop {
        let id = fastrand::u128(..);
        if id != 0 {
            return id;
        }
    }
}

fn nonzero_u64() -> u64 {
    loop {
        let id = fastrand::u64(..);
        if id != 0 {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    const SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const NOT_SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    const CONGO_ROJO: &str = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";

    fn request(traceparents: &[&str], tracestate: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in traceparents {
            headers.append(TRACEPARENT.clone(), HeaderValue::from_str(value).unwrap());
        }
        if let Some(tracestate) = tracestate {
            headers.append(TRACESTATE.clone(), HeaderValue::from_str(tracestate).unwrap());
        }
        headers
    }

    fn traceparents(headers: &HeaderMap) -> Vec<&HeaderValue> {
        headers.get_all(&TRACEPARENT).iter().collect()
    }

    fn trace_id(value: &HeaderValue) -> &[u8] {
        &value.as_bytes()[3..35]
    }

    /// Asserts that `headers` now carry exactly one new, valid traceparent, equal to `returned`, and
    /// no tracestate.
    fn assert_restarted(case: &str, headers: &HeaderMap, returned: &HeaderValue, old: &[&str]) {
        assert!(is_valid(returned.as_bytes()), "{case}: generated {returned:?} is not valid");
        assert_eq!(traceparents(headers), [returned], "{case}: not the one header returned");
        for old in old {
            assert_ne!(returned, old, "{case}: the invalid value was kept");
            if let Some(old_trace_id) = old.as_bytes().get(3..35) {
                assert_ne!(trace_id(returned), old_trace_id, "{case}: trace-id kept");
            }
        }
        assert!(headers.get(&TRACESTATE).is_none(), "{case}: tracestate kept");
    }

    #[test]
    fn spec_examples_are_kept_byte_for_byte_with_their_tracestate() {
        for example in [SAMPLED, NOT_SAMPLED, "00-12345678901234567890123456789012-1234567890123456-00"] {
            let mut headers = request(&[example], Some(CONGO_ROJO));
            let returned = ensure_traceparent(&mut headers);
            assert_eq!(returned, example);
            assert_eq!(traceparents(&headers), [example]);
            assert_eq!(headers.get(&TRACESTATE).unwrap(), CONGO_ROJO);
        }
    }

    #[test]
    fn every_tracestate_header_is_kept_with_a_valid_traceparent() {
        let mut headers = request(&[SAMPLED], Some("foo=1,bar=2"));
        headers.append(TRACESTATE.clone(), HeaderValue::from_static("baz=3"));
        ensure_traceparent(&mut headers);
        let kept: Vec<_> = headers.get_all(&TRACESTATE).iter().collect();
        assert_eq!(kept, ["foo=1,bar=2", "baz=3"]);
    }

    #[test]
    fn a_valid_incoming_value_is_shared_not_copied() {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT.clone(), HeaderValue::from_maybe_shared(Bytes::from(SAMPLED)).unwrap());
        let returned = ensure_traceparent(&mut headers);
        let in_request = headers.get(&TRACEPARENT).unwrap();
        assert_eq!(returned.as_bytes().as_ptr(), in_request.as_bytes().as_ptr());
    }

    /// Invalid values, most from the W3C test suite (`test/test.py`), each with why it is invalid.
    const INVALID: &[(&str, &str)] = &[
        ("empty", ""),
        ("trace-id all zeros", "00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        ("parent-id all zeros", "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
        ("version ff", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("uppercase version", "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("uppercase trace-id", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
        ("uppercase parent-id", "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01"),
        ("uppercase flags", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A"),
        ("00 with a trailing byte", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01."),
        (
            "00 with future fields",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-will-be-like",
        ),
        ("00 one byte short", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1"),
        ("no dashes", "004bf92f3577b34da6a3ce929d0e0e473600f067aa0ba902b701abc"),
        ("no dash after version", "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("no dash after trace-id", "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01"),
        ("no dash after parent-id", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01"),
        ("non-hex version", ".0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("non-hex trace-id", "00-4bf92f3577b34da6a3ce929d0e0e473.-00f067aa0ba902b7-01"),
        ("non-hex parent-id", "00-4bf92f3577b34da6a3ce929d0e0e4736-.0f067aa0ba902b7-01"),
        ("non-hex flags", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g"),
        ("version too long", "000-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("version too short", "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("trace-id too long", "00-4bf92f3577b34da6a3ce929d0e0e47361-00f067aa0ba902b7-01"),
        ("trace-id too short", "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01"),
        ("parent-id too long", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b71-01"),
        ("parent-id too short", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01"),
        ("flags too long", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-001"),
        ("leading space", " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("future version too short", "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1"),
        (
            "future version, byte 55 not a dash",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.what-the-future-will-be-like",
        ),
    ];

    #[test]
    fn invalid_values_are_refused() {
        for (case, value) in INVALID {
            assert!(!is_valid(value.as_bytes()), "{case}: {value:?} accepted");
        }
    }

    #[test]
    fn invalid_values_are_replaced_and_their_tracestate_dropped() {
        for (case, value) in INVALID {
            let mut headers = request(&[value], Some(CONGO_ROJO));
            let returned = ensure_traceparent(&mut headers);
            assert_restarted(case, &headers, &returned, &[value]);
        }
    }

    #[test]
    fn two_traceparent_headers_are_replaced_even_when_both_are_valid() {
        let both = ["00-12345678901234567890123456789011-1234567890123456-01", SAMPLED];
        let mut headers = request(&both, Some(CONGO_ROJO));
        let returned = ensure_traceparent(&mut headers);
        assert_restarted("two headers", &headers, &returned, &both);
    }

    #[test]
    fn future_versions_are_kept_when_their_first_four_fields_parse() {
        for value in [
            "cc-12345678901234567890123456789012-1234567890123456-01",
            "cc-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like",
            "fe-12345678901234567890123456789012-1234567890123456-09-",
        ] {
            assert!(is_valid(value.as_bytes()), "{value:?} refused");
            let mut headers = request(&[value], Some(CONGO_ROJO));
            assert_eq!(ensure_traceparent(&mut headers), value);
            assert_eq!(traceparents(&headers), [value]);
            assert_eq!(headers.get(&TRACESTATE).unwrap(), CONGO_ROJO);
        }
    }

    #[test]
    fn a_future_version_without_a_dash_at_byte_55_is_replaced() {
        let value = "cc-12345678901234567890123456789012-1234567890123456-01.what-the-future-will-be-like";
        let mut headers = request(&[value], Some(CONGO_ROJO));
        let returned = ensure_traceparent(&mut headers);
        assert_restarted("no dash at 55", &headers, &returned, &[value]);
    }

    #[test]
    fn a_missing_traceparent_is_inserted_and_a_lone_tracestate_dropped() {
        let mut headers = HeaderMap::new();
        let returned = ensure_traceparent(&mut headers);
        assert_restarted("missing", &headers, &returned, &[]);

        let mut headers = request(&[], Some("foo=1"));
        let returned = ensure_traceparent(&mut headers);
        assert_restarted("tracestate alone", &headers, &returned, &[]);
    }

    #[test]
    fn generated_values_are_valid_sampled_and_distinct() {
        let mut trace_ids = HashSet::new();
        for _ in 0..1_000 {
            let mut headers = HeaderMap::new();
            let value = ensure_traceparent(&mut headers);
            let bytes = value.as_bytes();
            assert!(is_valid(bytes), "{value:?}");
            assert_eq!(&bytes[..3], b"00-");
            assert_eq!(&bytes[52..], b"-01");
            trace_ids.insert(trace_id(&value).to_vec());
        }
        assert_eq!(trace_ids.len(), 1_000);
    }

    #[test]
    fn ids_are_written_most_significant_nibble_first_with_leading_zeros() {
        let value = new_traceparent(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736, 0x00f0_67aa_0ba9_02b7);
        assert_eq!(value, SAMPLED);
        let value = new_traceparent(1, 1);
        assert_eq!(value, "00-00000000000000000000000000000001-0000000000000001-01");
        let value = new_traceparent(u128::MAX, u64::MAX);
        assert_eq!(value, "00-ffffffffffffffffffffffffffffffff-ffffffffffffffff-01");
    }
}
