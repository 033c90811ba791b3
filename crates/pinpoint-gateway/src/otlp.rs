//! OTLP span export (cargo feature `otlp`; `[server] otlp_traces_endpoint`): one span per
//! proxied request, in the request's W3C trace (the caller's parent, or the trace
//! Pinpoint started), with the span id the upstream saw as its parent, named after the
//! route and carrying the status, the reason code and the request id. Spans are batched
//! and sent as OTLP/HTTP JSON by the opentelemetry SDK on its own thread; the request path
//! only hands a finished span over. Without the feature, [`Exporter::start`] says how to
//! get it, and a config naming an endpoint is refused.

#[cfg(feature = "otlp")]
use std::time::SystemTime;

use pinpoint_core::Decision;

use crate::trace_context::TraceContext;

/// The span exporter, when configured.
pub struct Exporter {
    #[cfg(feature = "otlp")]
    provider: opentelemetry_sdk::trace::SdkTracerProvider,
    #[cfg(feature = "otlp")]
    tracer: opentelemetry_sdk::trace::SdkTracer,
}

#[cfg(feature = "otlp")]
impl Exporter {
    /// Starts exporting to `endpoint` (`http://collector:4318/v1/traces`).
    pub fn start(endpoint: &str) -> Result<Exporter, String> {
        use opentelemetry::trace::TracerProvider as _;
        use opentelemetry_otlp::{WithExportConfig, WithHttpConfig as _};
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpJson)
            .with_endpoint(endpoint)
            .with_timeout(std::time::Duration::from_secs(5))
            .with_headers(Default::default())
            .build()
            .map_err(|e| format!("OTLP exporter for {endpoint}: {e}"))?;
        let batches = opentelemetry_sdk::trace::BatchConfigBuilder::default()
            .with_scheduled_delay(std::time::Duration::from_millis(500))
            .build();
        let processor = opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter)
            .with_batch_config(batches)
            .build();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name("pinpoint")
                    .build(),
            )
            .build();
        let tracer = provider.tracer("pinpoint");
        Ok(Exporter { provider, tracer })
    }

    /// Whether `endpoint` can be exported to (an http(s) URL).
    pub fn check(endpoint: &str) -> Result<(), String> {
        match endpoint.parse::<http::Uri>() {
            Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => Ok(()),
            _ => Err(format!(
                "otlp_traces_endpoint `{endpoint}` must be an http:// or https:// URL"
            )),
        }
    }

    /// Hands over the span of one finished request.
    pub fn record(&self, trace: &TraceContext, decision: &Decision) {
        let started = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(decision.at_ms.max(0) as u64);
        use opentelemetry::trace::{
            SpanBuilder, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId, TraceState,
            Tracer as _,
        };
        use opentelemetry::KeyValue;
        let (Ok(trace_id), Ok(span_id)) = (TraceId::from_hex(&trace.trace_id), SpanId::from_hex(&trace.span_id)) else {
            return;
        };
        let flags = TraceFlags::new(trace.flags);
        let parent = match trace.parent_id.as_deref().map(SpanId::from_hex) {
            Some(Ok(parent)) => opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
                trace_id,
                parent,
                flags,
                true,
                TraceState::default(),
            )),
            _ => opentelemetry::Context::new(),
        };
        let mut attributes = vec![
            KeyValue::new("http.request.method", decision.method.clone()),
            KeyValue::new("url.path", decision.path.clone()),
            KeyValue::new("http.response.status_code", i64::from(decision.status)),
            KeyValue::new("pinpoint.request_id", decision.request_id.clone()),
        ];
        if let Some(route) = &decision.route {
            attributes.push(KeyValue::new("http.route", route.clone()));
        }
        if let Some(reason) = decision.reason {
            attributes.push(KeyValue::new("pinpoint.reason", reason.code()));
        }
        let status = match decision.reason {
            Some(reason) => Status::error(reason.code()),
            None => Status::Unset,
        };
        let end = started + std::time::Duration::from_micros(decision.duration_micros);
        let builder = SpanBuilder {
            trace_id: Some(trace_id),
            span_id: Some(span_id),
            span_kind: Some(SpanKind::Server),
            start_time: Some(started),
            end_time: Some(end),
            attributes: Some(attributes),
            status,
            ..SpanBuilder::from_name(match &decision.route {
                Some(route) => format!("{} {route}", decision.method),
                None => decision.method.clone(),
            })
        };
        // Ending it (when the span drops) hands it to the batch processor.
        drop(self.tracer.build_with_context(builder, &parent));
    }

    /// Sends what is batched (at shutdown).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "OTLP exporter did not shut down cleanly");
        }
    }
}

#[cfg(not(feature = "otlp"))]
impl Exporter {
    /// Without the `otlp` feature there is no exporter: the error says how to build one.
    pub fn start(endpoint: &str) -> Result<Exporter, String> {
        Err(format!(
            "exporting spans to {endpoint} needs a build with OTLP: cargo build --release --features otlp"
        ))
    }

    /// Refused: the build has no exporter.
    pub fn check(endpoint: &str) -> Result<(), String> {
        Self::start(endpoint).map(|_| ())
    }

    /// Never called: no exporter exists without the feature.
    pub fn record(&self, _: &TraceContext, _: &Decision) {}

    pub fn shutdown(&self) {}
}
