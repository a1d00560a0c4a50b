//! Ties `tracing` spans to W3C trace ids, and (with the cargo feature `otlp`) exports them over
//! OTLP/gRPC.
//!
//! Without the feature these are plain functions with no dependencies: a participant call's span
//! id is random. With it, and with `OTEL_EXPORTER_OTLP_ENDPOINT` set when `baton serve` starts,
//! spans go to that collector; the transaction's span is placed in the transaction's trace, and
//! the span id sent to a participant is that of the coordinator's call span, so the participant's
//! own spans hang under it in the trace.

use crate::trace::{SpanId, TraceParent};

/// Places `span` in the trace of `parent` (as its remote parent). Call it before the span is
/// entered. Does nothing unless spans are exported.
pub fn set_parent(span: &tracing::Span, parent: &TraceParent) {
    #[cfg(feature = "otlp")]
    otlp::set_parent(span, parent);
    #[cfg(not(feature = "otlp"))]
    let _ = (span, parent);
}

/// The span id to send downstream for a call made in `span`: the exported span's own id, or a
/// fresh random one when spans are not exported.
pub fn span_id(span: &tracing::Span) -> SpanId {
    #[cfg(feature = "otlp")]
    if let Some(id) = otlp::span_id(span) {
        return id;
    }
    let _ = span;
    SpanId::random()
}

/// OTLP export (cargo feature `otlp`).
#[cfg(feature = "otlp")]
pub mod otlp {
    use opentelemetry::trace::{
        SpanContext, TraceContextExt, TraceFlags, TraceState, TracerProvider as _,
    };
    use opentelemetry_otlp::WithExportConfig;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use crate::trace::{SpanId, TraceParent};

    /// The standard variable that turns export on and names the collector
    /// (e.g. `http://otel-collector:4317`).
    pub const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

    /// Flushes and stops the exporter when dropped (at the end of `main`).
    pub struct Guard(SdkTracerProvider);

    impl Drop for Guard {
        fn drop(&mut self) {
            if let Err(e) = self.0.shutdown() {
                eprintln!("warning: could not flush exported spans: {e}");
            }
        }
    }

    /// The tracer for a `tracing_opentelemetry` layer, exporting to the collector
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` names, or `None` when it is unset. Must run inside a Tokio
    /// runtime (the gRPC client lives there). The service name is `baton` unless
    /// `OTEL_SERVICE_NAME` says otherwise.
    pub fn tracer() -> Result<Option<(opentelemetry_sdk::trace::Tracer, Guard)>, String> {
        let Ok(endpoint) = std::env::var(ENDPOINT_VAR) else {
            return Ok(None);
        };
        if endpoint.trim().is_empty() {
            return Ok(None);
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()
            .map_err(|e| format!("{ENDPOINT_VAR}={endpoint:?}: {e}"))?;
        let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "baton".to_string());
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(service)
                    .build(),
            )
            .build();
        let tracer = provider.tracer("baton");
        Ok(Some((tracer, Guard(provider))))
    }

    pub(super) fn set_parent(span: &tracing::Span, parent: &TraceParent) {
        let remote = SpanContext::new(
            opentelemetry::trace::TraceId::from_bytes(parent.trace_id().to_bytes()),
            opentelemetry::trace::SpanId::from_bytes(parent.span_id().to_bytes()),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        // Fails only when no OpenTelemetry layer is installed: then there is nothing to link.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }

    pub(super) fn span_id(span: &tracing::Span) -> Option<SpanId> {
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        if !sc.is_valid() {
            return None;
        }
        SpanId::parse(&sc.span_id().to_string())
    }

    #[cfg(test)]
    mod tests {
        use tracing_subscriber::layer::SubscriberExt;

        use super::*;

        #[test]
        fn call_spans_join_the_transactions_trace() {
            let provider = SdkTracerProvider::builder().build();
            let subscriber = tracing_subscriber::registry()
                .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
            tracing::subscriber::with_default(subscriber, || {
                let caller = TraceParent::new_root();
                let tx = tracing::info_span!("tx");
                super::super::set_parent(&tx, &caller);
                let call = tx.in_scope(|| tracing::info_span!("call"));
                let id = super::super::span_id(&call);
                let cx = call.context();
                let sc = cx.span().span_context().clone();
                assert_eq!(
                    sc.trace_id().to_bytes(),
                    caller.trace_id().to_bytes(),
                    "the call span is in the caller's trace"
                );
                assert_eq!(sc.span_id().to_bytes(), id.to_bytes());
                assert_ne!(id, caller.span_id());
            });
        }
    }
}
