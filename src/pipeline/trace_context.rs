//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): which trace a request belongs
//! to, and the `traceparent` the upstream is sent.
//!
//! Contract: [`TraceContext::of`] runs once per request, before any stage, and cannot fail.
//! A `traceparent` is **continued** only when it comes from a peer in `trusted_proxies` (the
//! rule that keeps `X-Forwarded-*`, docs/security.md 28) and parses by the spec's grammar:
//! one header; `version "-" trace-id "-" parent-id "-" trace-flags` in lower-case hex; version
//! `ff` refused; all-zero ids refused; version `00` exactly 55 characters, a later version at
//! least 55 with a `-` after the flags if longer (its further fields are not read, as the spec
//! requires). Otherwise — absent, malformed, or from any other peer — the gateway starts a new
//! trace: a client must not be able to join (or flag for sampling) a trace in the operator's
//! tracing system. `tracestate` is kept only with a continued `traceparent`, and removed
//! otherwise (the spec: a `tracestate` is never read when its `traceparent` was not).
//!
//! Either way the gateway is one span of the trace: the upstream receives exactly one
//! `traceparent`, version `00`, with the trace id, a new parent id (the gateway's span) and
//! only the `sampled` flag kept from a continued trace (other flags are reserved and sent as 0;
//! a new trace is not sampled). The trace id is logged with the request id.
//!
//! Cost: parsing reads the header in place and new ids come from a per-process random key and
//! a counter (no syscall per request); the only allocation is the outgoing header value, made
//! by mutate when the request is forwarded.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderMap, HeaderName, HeaderValue};

/// `traceparent`.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate`.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The `sampled` bit of `trace-flags`; the only flag version `00` defines.
const SAMPLED: u8 = 0x01;

/// Length of a version-`00` `traceparent`: `00-` + 32 + `-` + 16 + `-` + 2.
const LEN_00: usize = 55;

/// A `traceparent` the gateway accepted: the caller's trace id, parent id and flags, as the
/// lower-case hex they were sent in (validated, so they are ASCII).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    trace_id: [u8; 32],
    parent_id: [u8; 16],
    flags: u8,
}

impl TraceParent {
    /// Parses one `traceparent` value; `None` when the spec says to restart the trace.
    pub fn parse(value: &[u8]) -> Option<Self> {
        if value.len() < LEN_00 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let version = hex_byte(&value[0..2])?;
        match version {
            0xff => return None,
            // Version 00 has exactly these four fields.
            0x00 if value.len() != LEN_00 => return None,
            // A later version may append fields, each after a `-`; they are not ours to read.
            _ if value.len() > LEN_00 && value[LEN_00] != b'-' => return None,
            _ => {}
        }
        let trace_id: [u8; 32] = value[3..35].try_into().ok()?;
        let parent_id: [u8; 16] = value[36..52].try_into().ok()?;
        let flags = hex_byte(&value[53..55])?;
        if !valid_id(&trace_id) || !valid_id(&parent_id) {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The trace id, 32 lower-case hex digits.
    pub fn trace_id(&self) -> &str {
        ascii(&self.trace_id)
    }

    /// The caller's span, 16 lower-case hex digits.
    pub fn parent_id(&self) -> &str {
        ascii(&self.parent_id)
    }

    /// Whether the caller flagged the trace as sampled.
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }
}

/// The trace a request belongs to and the gateway's span in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 32],
    /// The gateway's own span: the parent id the upstream is sent.
    span_id: [u8; 16],
    /// The flags sent upstream: the caller's `sampled` bit, or 0 for a new trace.
    flags: u8,
    /// Whether the caller's trace was continued (and its `tracestate` is kept).
    continued: bool,
}

impl TraceContext {
    /// The request's trace: the caller's, when `trusted_peer` sent one valid `traceparent`,
    /// else a new one.
    pub fn of(headers: &HeaderMap, trusted_peer: bool) -> Self {
        let (n, key) = next();
        let span_id = hex16(nonzero(mix(n ^ key.span)));
        let caller = trusted_peer.then(|| only(headers)).flatten();
        match caller.and_then(|v| TraceParent::parse(v.as_bytes())) {
            Some(parent) => Self {
                trace_id: parent.trace_id,
                span_id,
                flags: parent.flags & SAMPLED,
                continued: true,
            },
            None => {
                // The random per-process half first, the per-request half on the right, where
                // samplers that hash the trace id look.
                let mut trace_id = [0u8; 32];
                trace_id[..16].copy_from_slice(&hex16(key.prefix));
                trace_id[16..].copy_from_slice(&hex16(mix(n ^ key.trace)));
                Self {
                    trace_id,
                    span_id,
                    flags: 0,
                    continued: false,
                }
            }
        }
    }

    /// The trace id, 32 lower-case hex digits, as logged.
    pub fn trace_id(&self) -> &str {
        ascii(&self.trace_id)
    }

    /// The gateway's span id, 16 lower-case hex digits.
    pub fn span_id(&self) -> &str {
        ascii(&self.span_id)
    }

    /// Whether the caller's trace was continued; if not, its `tracestate` must not be sent on.
    pub fn continued(&self) -> bool {
        self.continued
    }

    /// The `traceparent` for the upstream: version `00`, this trace, the gateway's span.
    pub fn header_value(&self) -> HeaderValue {
        let mut value = [0u8; LEN_00];
        value[..3].copy_from_slice(b"00-");
        value[3..35].copy_from_slice(&self.trace_id);
        value[35] = b'-';
        value[36..52].copy_from_slice(&self.span_id);
        value[52] = b'-';
        value[53] = HEX[usize::from(self.flags >> 4)];
        value[54] = HEX[usize::from(self.flags & 0xf)];
        HeaderValue::from_bytes(&value).expect("hex and dashes are a valid header value")
    }
}

/// The one `traceparent`; two of them cannot both be the caller's span, so neither is.
fn only(headers: &HeaderMap) -> Option<&HeaderValue> {
    let mut all = headers.get_all(TRACEPARENT).iter();
    match (all.next(), all.next()) {
        (Some(one), None) => Some(one),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Two lower-case hex digits as a byte; upper case is refused, as the grammar's `HEXDIGLC` says.
fn hex_byte(two: &[u8]) -> Option<u8> {
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    Some(digit(two[0])? << 4 | digit(two[1])?)
}

/// Lower-case hex and not all zeros.
fn valid_id(id: &[u8]) -> bool {
    id.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) && id.iter().any(|b| *b != b'0')
}

/// Validated hex is ASCII; the fallback is never taken.
fn ascii(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or_default()
}

fn hex16(n: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, byte) in n.to_be_bytes().iter().enumerate() {
        out[2 * i] = HEX[usize::from(byte >> 4)];
        out[2 * i + 1] = HEX[usize::from(byte & 0xf)];
    }
    out
}

/// An all-zero id is invalid; the one counter value that mixes to 0 takes 1 instead.
fn nonzero(n: u64) -> u64 {
    n.max(1)
}

/// SplitMix64's finalizer: a bijection on `u64`, so distinct counters give distinct ids, and
/// consecutive ones look unrelated.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The per-process random key new ids are made from.
struct Key {
    /// The left half of every new trace id; never 0, so a new trace id is never all zeros.
    prefix: u64,
    trace: u64,
    span: u64,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);
static KEY: OnceLock<Key> = OnceLock::new();

/// A fresh counter value and the key, read once per request.
fn next() -> (u64, &'static Key) {
    let key = KEY.get_or_init(|| {
        let mut bytes = [0u8; 24];
        // If the OS RNG fails the ids are still unique within the process, just predictable.
        let _ = aws_lc_rs::rand::fill(&mut bytes);
        let word = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap_or_default());
        Key {
            prefix: nonzero(word(0)),
            trace: word(8),
            span: word(16),
        }
    });
    (COUNTER.fetch_add(1, Ordering::Relaxed), key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn parse(s: &str) -> Option<TraceParent> {
        TraceParent::parse(s.as_bytes())
    }

    #[test]
    fn a_valid_version_00_traceparent_is_parsed() {
        let p = parse(VALID).unwrap();
        assert_eq!(p.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p.parent_id(), "00f067aa0ba902b7");
        assert!(p.sampled());
        let unsampled = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.sampled());
        // A bit field: 09 is sampled plus a reserved flag.
        assert!(
            parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09")
                .unwrap()
                .sampled()
        );
    }

    #[test]
    fn all_zero_trace_or_parent_ids_are_refused() {
        assert!(parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
        assert!(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01").is_none());
    }

    #[test]
    fn upper_case_hex_is_refused_in_every_field() {
        for value in [
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
            "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse(value).is_none(), "{value}");
        }
    }

    #[test]
    fn version_ff_is_refused() {
        assert!(parse("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_none());
    }

    #[test]
    fn a_future_version_with_extra_fields_is_accepted_and_its_extra_fields_ignored() {
        let p = parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future")
            .unwrap();
        assert_eq!(p.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(p.sampled());
        // A later version of exactly the known length is fine too.
        assert!(parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").is_some());
        // But the flags must end the value or be followed by a dash.
        assert!(parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x").is_none());
    }

    #[test]
    fn version_00_with_extra_fields_or_a_wrong_shape_is_refused() {
        for value in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-g1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
            "",
            "00",
        ] {
            assert!(parse(value).is_none(), "{value:?}");
        }
    }

    fn headers(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(TRACEPARENT, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn a_trusted_peers_trace_is_continued_with_a_new_span_and_its_sampled_flag() {
        let ctx = TraceContext::of(&headers(&[VALID]), true);
        assert!(ctx.continued());
        assert_eq!(ctx.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(ctx.span_id(), "00f067aa0ba902b7");
        let sent = ctx.header_value();
        let sent = TraceParent::parse(sent.as_bytes()).expect("the gateway sends a valid value");
        assert_eq!(sent.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(sent.parent_id(), ctx.span_id());
        assert!(sent.sampled());
        // Reserved flags are not passed on.
        let ctx = TraceContext::of(
            &headers(&["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09"]),
            true,
        );
        assert!(ctx.header_value().as_bytes().ends_with(b"-01"));
    }

    #[test]
    fn an_untrusted_peer_a_malformed_value_or_two_values_start_a_new_trace() {
        let cases = [
            (headers(&[VALID]), false),
            (headers(&[]), true),
            (
                headers(&["00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"]),
                true,
            ),
            (headers(&[VALID, VALID]), true),
        ];
        for (h, trusted) in cases {
            let ctx = TraceContext::of(&h, trusted);
            assert!(!ctx.continued());
            assert_ne!(ctx.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
            let sent = TraceParent::parse(ctx.header_value().as_bytes()).unwrap();
            assert_eq!(sent.trace_id(), ctx.trace_id());
            assert!(!sent.sampled(), "a new trace is not flagged sampled");
        }
    }

    #[test]
    fn new_trace_and_span_ids_differ_from_request_to_request() {
        let mut traces = std::collections::HashSet::new();
        let mut spans = std::collections::HashSet::new();
        for _ in 0..1000 {
            let ctx = TraceContext::of(&HeaderMap::new(), false);
            assert!(traces.insert(ctx.trace_id().to_owned()));
            assert!(spans.insert(ctx.span_id().to_owned()));
        }
    }
}
