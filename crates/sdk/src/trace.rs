//! W3C trace context (`traceparent`): parsed strictly, generated, and carried in gRPC metadata.
//!
//! A client may send a `traceparent` header on `Start`; the transaction then keeps that trace id
//! (recorded as the label [`TRACE_LABEL`], so a coordinator that takes the transaction over after
//! a crash keeps it too), and every participant call carries a `traceparent` with that trace id
//! and a fresh span id. Without one, the transaction's trace id is its own id (the UUID's 128
//! bits), which needs no storage and lets an operator go from a trace to the transaction.
//!
//! Used by the coordinator and by both SDKs; it depends on nothing of Baton's own.

use std::fmt;

use tonic::metadata::{MetadataMap, MetadataValue};

/// The gRPC metadata key (and HTTP header) that carries the trace context.
pub const HEADER: &str = "traceparent";

/// The label under which a transaction keeps the trace id its client sent. Reserved: `Start`
/// refuses it among the client's own labels.
pub const TRACE_LABEL: &str = "baton.trace_id";

/// A 128-bit trace id, never all zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId([u8; 16]);

/// A 64-bit span (parent) id, never all zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId([u8; 8]);

/// One `traceparent` value: version 00, a trace id, the id of the calling span, and flags.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    trace_id: TraceId,
    span_id: SpanId,
    flags: u8,
}

/// Bit 0 of the trace flags: the caller records this trace.
const SAMPLED: u8 = 0x01;

impl TraceId {
    /// A new random trace id.
    pub fn random() -> Self {
        loop {
            let bytes: [u8; 16] = rand::random();
            if bytes != [0; 16] {
                return TraceId(bytes);
            }
        }
    }

    /// The trace id with these bytes, unless they are all zeros (invalid in W3C trace context).
    pub fn from_bytes(bytes: [u8; 16]) -> Option<Self> {
        (bytes != [0; 16]).then_some(TraceId(bytes))
    }

    /// Parses 32 lowercase hex digits, not all zeros.
    pub fn parse(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 16];
        hex_into(text, &mut bytes)?;
        TraceId::from_bytes(bytes)
    }

    /// The raw bytes.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0
    }
}

impl SpanId {
    /// A new random span id.
    pub fn random() -> Self {
        loop {
            let bytes: [u8; 8] = rand::random();
            if bytes != [0; 8] {
                return SpanId(bytes);
            }
        }
    }

    /// The span id with these bytes, unless they are all zeros.
    pub fn from_bytes(bytes: [u8; 8]) -> Option<Self> {
        (bytes != [0; 8]).then_some(SpanId(bytes))
    }

    /// Parses 16 lowercase hex digits, not all zeros.
    pub fn parse(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 8];
        hex_into(text, &mut bytes)?;
        (bytes != [0; 8]).then_some(SpanId(bytes))
    }

    /// The raw bytes.
    pub fn to_bytes(self) -> [u8; 8] {
        self.0
    }
}

impl TraceParent {
    /// A sampled context in trace `trace_id` whose calling span is `span_id`.
    pub fn new(trace_id: TraceId, span_id: SpanId) -> Self {
        TraceParent {
            trace_id,
            span_id,
            flags: SAMPLED,
        }
    }

    /// The start of a new trace (random trace and span ids).
    pub fn new_root() -> Self {
        TraceParent::new(TraceId::random(), SpanId::random())
    }

    /// The same trace with a fresh span id: what a caller sends for its next outgoing call.
    pub fn child(&self) -> Self {
        TraceParent {
            span_id: SpanId::random(),
            ..*self
        }
    }

    /// Parses a `traceparent` value strictly, as W3C Trace Context says: lowercase hex only,
    /// version `ff` and all-zero ids refused; version 00 is exactly 55 characters, a later version
    /// may carry more fields after a `-`. `None` for anything else: an invalid header is ignored,
    /// never half-used.
    pub fn parse(text: &str) -> Option<Self> {
        let b = text.as_bytes();
        if !text.is_ascii() || b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let mut version = [0u8; 1];
        hex_into(&text[0..2], &mut version)?;
        match version[0] {
            0xff => return None,
            0x00 if b.len() != 55 => return None,
            0x00 => {}
            _ if b.len() > 55 && b[55] != b'-' => return None,
            _ => {}
        }
        let trace_id = TraceId::parse(&text[3..35])?;
        let span_id = SpanId::parse(&text[36..52])?;
        let mut flags = [0u8; 1];
        hex_into(&text[53..55], &mut flags)?;
        Some(TraceParent {
            trace_id,
            span_id,
            flags: flags[0],
        })
    }

    /// The valid `traceparent` in gRPC metadata, if there is one.
    pub fn from_metadata(metadata: &MetadataMap) -> Option<Self> {
        let mut values = metadata.get_all(HEADER).iter();
        let value = values.next()?;
        // Several traceparent headers are ambiguous: W3C says to ignore them all.
        if values.next().is_some() {
            return None;
        }
        TraceParent::parse(value.to_str().ok()?)
    }

    /// Sets (replaces) the `traceparent` entry of `metadata`.
    pub fn to_metadata(&self, metadata: &mut MetadataMap) {
        // Always valid ASCII: hex digits and dashes.
        if let Ok(value) = MetadataValue::try_from(&self.header()[..]) {
            metadata.insert(HEADER, value);
        }
    }

    /// The header value, `00-<trace id>-<span id>-<flags>`, written byte by byte: every
    /// participant call sends one, and through `format!` it cost about 1,500 instructions.
    fn header(&self) -> [u8; HEADER_LEN] {
        let mut out = [b'-'; HEADER_LEN];
        out[..2].copy_from_slice(b"00");
        hex_bytes(&self.trace_id.0, &mut out[3..35]);
        hex_bytes(&self.span_id.0, &mut out[36..52]);
        hex_bytes(&[self.flags], &mut out[53..]);
        out
    }

    /// The trace this context belongs to.
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// The calling span's id.
    pub fn span_id(&self) -> SpanId {
        self.span_id
    }

    /// Whether the caller records this trace.
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }
}

/// Fills `out` from exactly `2 * out.len()` lowercase hex digits.
fn hex_into(text: &str, out: &mut [u8]) -> Option<()> {
    let b = text.as_bytes();
    if b.len() != out.len() * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = (digit(b[2 * i])? << 4) | digit(b[2 * i + 1])?;
    }
    Some(())
}

/// The length of a `traceparent` value of version 00.
const HEADER_LEN: usize = 55;

/// Writes `bytes` as lowercase hex into `out`, two digits a byte, as far as `out` reaches.
fn hex_bytes(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0x0f)];
    }
}

/// Writes `bytes` (at most 16) as lowercase hex in one write: ids are formatted into every call's
/// `traceparent` and span, where a formatting pass per byte showed in profiles.
fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    let mut buf = [0u8; 32];
    let len = 2 * bytes.len().min(16);
    hex_bytes(bytes, &mut buf[..len]);
    f.pad(std::str::from_utf8(&buf[..len]).map_err(|_| fmt::Error)?)
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

/// The header value, `00-<trace id>-<span id>-<flags>`.
impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(&self.header()).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceParent({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_prints_the_same_header() {
        let tp = TraceParent::parse(GOOD).expect("valid");
        assert_eq!(tp.to_string(), GOOD);
        assert_eq!(
            tp.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(tp.span_id().to_string(), "00f067aa0ba902b7");
        assert!(tp.sampled());
        let unsampled = TraceParent::parse(&GOOD.replace("-01", "-00")).expect("valid");
        assert!(!unsampled.sampled());
    }

    #[test]
    fn ids_print_as_lowercase_hex_of_every_byte() {
        for _ in 0..200 {
            let (trace, span) = (TraceId::random(), SpanId::random());
            let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
            assert_eq!(trace.to_string(), hex(&trace.0));
            assert_eq!(span.to_string(), hex(&span.0));
            // Padding and width still apply to the whole id.
            assert_eq!(format!("{span:>20}"), format!("{:>20}", hex(&span.0)));
        }
    }

    #[test]
    fn refuses_malformed_headers() {
        let bad = [
            "",
            "00",
            // Upper case, wrong lengths, wrong separators.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            // All-zero ids, version ff, non-hex.
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0é",
        ];
        for text in bad {
            assert_eq!(TraceParent::parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn a_later_version_may_carry_more_fields() {
        let text = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
        let tp = TraceParent::parse(text).expect("valid");
        assert_eq!(tp.to_string(), GOOD, "re-sent as version 00");
    }

    #[test]
    fn a_child_keeps_the_trace_and_changes_the_span() {
        let root = TraceParent::new_root();
        let child = root.child();
        assert_eq!(child.trace_id(), root.trace_id());
        assert_ne!(child.span_id(), root.span_id());
        assert_eq!(TraceParent::parse(&child.to_string()), Some(child));
    }

    #[test]
    fn round_trips_through_metadata_and_ignores_duplicates() {
        let tp = TraceParent::parse(GOOD).unwrap();
        let mut md = MetadataMap::new();
        tp.to_metadata(&mut md);
        assert_eq!(md.get(HEADER).and_then(|v| v.to_str().ok()), Some(GOOD));
        assert_eq!(TraceParent::from_metadata(&md), Some(tp));
        md.append(HEADER, MetadataValue::from_static(GOOD));
        assert_eq!(TraceParent::from_metadata(&md), None);
        let mut md = MetadataMap::new();
        md.insert(HEADER, MetadataValue::from_static("garbage"));
        assert_eq!(TraceParent::from_metadata(&md), None);
    }
}
