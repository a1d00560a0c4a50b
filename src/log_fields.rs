//! How span and event fields are written into plain-text log lines.
//!
//! The text log formats a span's fields when the span is created, so that any line logged
//! inside it can name them: a coordinator does it for every transaction and every participant
//! call, logged or not. `tracing-subscriber`'s own formatter ([`DefaultFields`]) writes each
//! `name=value` through three nested format calls with colour styles, even when colours are
//! off; measured with callgrind on a `baton serve` under W1 load (2026-12-07, `9b31c97`), those
//! styles alone were 3.7 % of the coordinator's instructions and span fields 7 % in all.
//! [`PlainFields`] writes the same text with plain string writes and integers without the
//! formatting machinery. It is used when the log is not a terminal (no colours); a terminal
//! keeps [`DefaultFields`] and its styles.
//!
//! Fields it does not handle alike (the `message`, raw identifiers `r#…`, errors with their
//! sources) are handed to [`DefaultVisitor`], so that their text, and the escaping of control
//! characters in messages, stay exactly as before.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};
use tracing_subscriber::fmt::FormatFields;

/// Writes fields as `name=value`, separated by spaces, as [`DefaultFields`] does without colours.
///
/// [`DefaultFields`]: tracing_subscriber::fmt::format::DefaultFields
#[derive(Debug, Default, Clone, Copy)]
pub struct PlainFields;

impl<'writer> FormatFields<'writer> for PlainFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = PlainVisitor {
            writer,
            empty: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct PlainVisitor<'a> {
    writer: Writer<'a>,
    /// Whether nothing has been written yet (no space before the first field).
    empty: bool,
    result: fmt::Result,
}

impl PlainVisitor<'_> {
    /// Starts a plain `name=` field; `false` when the field is not a plain one or writing
    /// already failed.
    fn plain_name(&mut self, field: &Field) -> bool {
        let name = field.name();
        if self.result.is_err() || name == "message" || name.starts_with("r#") {
            return false;
        }
        if !self.empty {
            self.result = self.writer.write_char(' ');
        }
        self.empty = false;
        self.result = self
            .result
            .and_then(|()| self.writer.write_str(name))
            .and_then(|()| self.writer.write_char('='));
        true
    }

    /// Hands a field to `tracing-subscriber`'s own visitor, on the same line.
    fn delegate(&mut self, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        if self.result.is_err() {
            return;
        }
        let mut default = DefaultVisitor::new(self.writer.by_ref(), self.empty);
        record(&mut default);
        self.result = default.finish();
        self.empty = false;
    }

    fn integer(&mut self, field: &Field, text: &str) {
        if self.plain_name(field) {
            self.result = self.result.and_then(|()| self.writer.write_str(text));
        } else {
            self.delegate(|v| v.record_debug(field, &format_args!("{text}")));
        }
    }
}

impl Visit for PlainVisitor<'_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.integer(field, itoa::Buffer::new().format(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.integer(field, itoa::Buffer::new().format(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.integer(field, if value { "true" } else { "false" });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if self.plain_name(field) {
            self.result = self.result.and_then(|()| write!(self.writer, "{value:?}"));
        } else {
            self.delegate(|v| v.record_str(field, value));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.delegate(|v| v.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name().starts_with("log.") {
            return;
        }
        if self.plain_name(field) {
            self.result = self.result.and_then(|()| write!(self.writer, "{value:?}"));
        } else {
            self.delegate(|v| v.record_debug(field, value));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::format::DefaultFields;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// A writer that keeps what the log printed.
    #[derive(Clone, Default)]
    struct Kept(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Kept {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[derive(Debug)]
    struct Failure(Option<Box<Failure>>);

    impl fmt::Display for Failure {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(if self.0.is_some() { "outer" } else { "inner" })
        }
    }

    impl std::error::Error for Failure {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.0.as_deref().map(|e| e as _)
        }
    }

    /// What the log prints for spans and events with every kind of field.
    fn lines<N>(fields: N) -> String
    where
        N: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        let kept = Kept::default();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer({
                let kept = kept.clone();
                move || kept.clone()
            })
            .with_ansi(false)
            .without_time()
            .fmt_fields(fields);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let id = uuid::Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_00ff);
            let tx =
                tracing::info_span!("tx", tx_id = %id, count = 3u64, late = tracing::field::Empty);
            let _tx = tx.enter();
            let call = tracing::info_span!(
                "call",
                branch = 2u64,
                name = "re\"serve\n",
                attempt = 1u32,
                delta = -4i64,
                ok = true,
                ratio = 0.5f64,
                r#type = "raw",
                endpoint = tracing::field::Empty,
            );
            call.record("endpoint", tracing::field::display("http://127.0.0.1:1"));
            tx.record("late", 7u64);
            let _call = call.enter();
            let failure = Failure(Some(Box::new(Failure(None))));
            tracing::warn!(
                error = &failure as &(dyn std::error::Error + 'static),
                code = 14u64,
                "call failed: {}\u{1b}[31m",
                "unavailable"
            );
            tracing::info!(message = "plain", detail = ?Some("x"));
        });
        let text = String::from_utf8(kept.0.lock().unwrap().clone()).unwrap();
        text
    }

    #[test]
    fn plain_fields_print_what_the_default_formatter_prints_without_colours() {
        let plain = lines(PlainFields);
        let default = lines(DefaultFields::new());
        assert_eq!(plain, default);
        // The lines hold every field, so that the comparison compares something.
        for part in [
            "tx_id=01930000-0000-7000-8000-0000000000ff",
            "count=3",
            "late=7",
            "branch=2",
            "name=\"re\\\"serve\\n\"",
            "attempt=1",
            "delta=-4",
            "ok=true",
            "ratio=0.5",
            "type=\"raw\"",
            "endpoint=http://127.0.0.1:1",
            "error=outer error.sources=[inner]",
            "code=14",
            "call failed: unavailable",
            "plain detail=Some(\"x\")",
        ] {
            assert!(plain.contains(part), "{part} missing from {plain}");
        }
    }
}
