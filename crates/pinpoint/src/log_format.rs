//! The JSON log line (`serve --log-format json`, the default): one object per event,
//! `{"timestamp":..,"level":..,"message":..,<fields>..,"target":..}`, the shape
//! tracing-subscriber's `json().flatten_event(true)` writes, written directly.
//!
//! Why not tracing-subscriber's own JSON formatter: it runs every field through serde and
//! an adaptor that re-checks each written piece as UTF-8, and formats the timestamp through
//! `fmt`. On the proxy's hot path, where every request writes one access-log line, that was
//! 29,000 instructions a request (a fifth of a proxied GET; `bench/instructions.sh`,
//! 2026-12-06); this writer takes about 5,000. Strings are escaped exactly as serde_json
//! escapes them (`pinpoint_core::json`), so the lines are byte-for-byte what they were.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The JSON event format.
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut line = String::with_capacity(512);
        line.push_str("{\"timestamp\":\"");
        push_timestamp(&mut line, std::time::SystemTime::now());
        line.push_str("\",\"level\":\"");
        line.push_str(event.metadata().level().as_str());
        line.push('"');
        let mut fields = JsonFields {
            line: &mut line,
            scratch: String::new(),
        };
        event.record(&mut fields);
        line.push_str(",\"target\":");
        pinpoint_core::json::push_str(&mut line, event.metadata().target());
        line.push_str("}\n");
        writer.write_str(&line)
    }
}

/// Appends each field as `,"name":value`.
struct JsonFields<'a> {
    line: &'a mut String,
    /// Where `Debug`/`Display` values are formatted before they are escaped.
    scratch: String,
}

impl JsonFields<'_> {
    fn key(&mut self, field: &Field) {
        self.line.push(',');
        pinpoint_core::json::push_str(self.line, field.name());
        self.line.push(':');
    }
}

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        pinpoint_core::json::push_str(self.line, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        self.line.push_str(itoa::Buffer::new().format(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        self.line.push_str(itoa::Buffer::new().format(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.line.push_str(if value { "true" } else { "false" });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        // serde_json's own rendering (shortest round trip, `null` for NaN and infinities).
        self.line
            .push_str(&serde_json::to_string(&value).unwrap_or_else(|_| "null".to_owned()));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.scratch.clear();
        let _ = write!(self.scratch, "{value}");
        self.key(field);
        pinpoint_core::json::push_str(self.line, &self.scratch);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.scratch.clear();
        let _ = write!(self.scratch, "{value:?}");
        self.key(field);
        pinpoint_core::json::push_str(self.line, &self.scratch);
    }
}

/// The JSON format's access-log line, written straight from the request's fields into the
/// log sink: byte for byte what [`JsonLines`] writes for the `pinpoint::access` event, less
/// tracing's dispatch and field visitors (see `pinpoint_gateway::telemetry::AccessLog`).
pub struct JsonAccessLog {
    pub sink: crate::log_sink::LogSink,
}

impl JsonAccessLog {
    fn line(line: &pinpoint_gateway::telemetry::AccessLine<'_>, at: std::time::SystemTime) -> String {
        use pinpoint_core::json::push_str;
        let mut out = String::with_capacity(512);
        out.push_str("{\"timestamp\":\"");
        push_timestamp(&mut out, at);
        // The keys are fixed identifiers: nothing in them to escape. Written out field by
        // field: a loop over (name, value) pairs cost 670 instructions a line more
        // (bench/instructions.sh, bare route: 3,230 against 2,560).
        out.push_str("\",\"level\":\"INFO\",\"message\":\"request\",\"request_id\":");
        push_str(&mut out, line.request_id);
        out.push_str(",\"client_request_id\":");
        push_str(&mut out, line.client_request_id);
        out.push_str(",\"trace_id\":");
        push_str(&mut out, line.trace_id);
        out.push_str(",\"client\":");
        push_str(&mut out, line.client);
        out.push_str(",\"method\":");
        push_str(&mut out, line.method);
        out.push_str(",\"path\":");
        push_str(&mut out, line.path);
        out.push_str(",\"route\":");
        push_str(&mut out, line.route);
        out.push_str(",\"status\":");
        out.push_str(itoa::Buffer::new().format(line.status));
        out.push_str(",\"reason\":");
        push_str(&mut out, line.reason);
        out.push_str(",\"upstream\":");
        push_str(&mut out, line.upstream);
        out.push_str(",\"duration_us\":");
        out.push_str(itoa::Buffer::new().format(line.duration_us));
        out.push_str(",\"revision\":");
        push_str(&mut out, line.revision);
        out.push_str(",\"target\":\"pinpoint::access\"}\n");
        out
    }
}

impl pinpoint_gateway::telemetry::AccessLog for JsonAccessLog {
    fn write(&self, line: &pinpoint_gateway::telemetry::AccessLine<'_>) {
        use std::io::Write as _;
        use tracing_subscriber::fmt::MakeWriter as _;
        let _ = self
            .sink
            .make_writer()
            .write_all(Self::line(line, std::time::SystemTime::now()).as_bytes());
    }
}

/// Appends `at` as RFC 3339 in UTC with microseconds (`2026-12-06T02:44:58.712736Z`).
fn push_timestamp(out: &mut String, at: std::time::SystemTime) {
    let since_epoch = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let (days, second_of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = pinpoint_core::time::civil_from_days(days as i64);
    push_digits(out, year.clamp(0, 9999) as u32, 4);
    out.push('-');
    push_digits(out, month, 2);
    out.push('-');
    push_digits(out, day, 2);
    out.push('T');
    push_digits(out, (second_of_day / 3600) as u32, 2);
    out.push(':');
    push_digits(out, (second_of_day / 60 % 60) as u32, 2);
    out.push(':');
    push_digits(out, (second_of_day % 60) as u32, 2);
    out.push('.');
    push_digits(out, since_epoch.subsec_micros(), 6);
    out.push('Z');
}

/// Appends the last `width` decimal digits of `value`, zero-padded.
fn push_digits(out: &mut String, value: u32, width: u32) {
    for place in (0..width).rev() {
        out.push(char::from(b'0' + (value / 10u32.pow(place) % 10) as u8));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drops the timestamp's value: the two lines are written at different moments.
    fn without_timestamp(line: &str) -> String {
        let start = line.find("\"timestamp\":\"").map_or(0, |i| i + 13);
        let end = line[start..].find('"').map_or(start, |i| start + i);
        format!("{}{}", &line[..start], &line[end..])
    }

    #[test]
    fn the_direct_access_line_is_the_one_tracing_writes() {
        use crate::log_sink::Captured;
        let lines = [
            pinpoint_gateway::telemetry::AccessLine {
                request_id: "0123456789abcdef0123456789abcdef",
                client_request_id: "-",
                trace_id: "13d01493087e288b1b8373815157a202",
                client: "127.0.0.1:36540",
                method: "GET",
                path: "/bare/x",
                route: "bare",
                status: 200,
                reason: "-",
                upstream: "127.0.0.1:19600",
                duration_us: 19154,
                revision: "rf3dcf16b4c6f",
            },
            pinpoint_gateway::telemetry::AccessLine {
                request_id: "id",
                client_request_id: "client \"quoted\" \\ id\n",
                trace_id: "-",
                client: "[::1]:1",
                method: "POST",
                path: "/caf\u{e9}/\u{1}",
                route: "-",
                status: 403,
                reason: "waf.sqli",
                upstream: "-",
                duration_us: 0,
                revision: "r",
            },
        ];
        for line in &lines {
            let through_tracing = Captured::default();
            let subscriber = tracing_subscriber::fmt()
                .event_format(JsonLines)
                .with_writer(through_tracing.clone())
                .finish();
            tracing::subscriber::with_default(subscriber, || pinpoint_gateway::telemetry::log_access(line));
            let expected = String::from_utf8(through_tracing.0.lock().unwrap().clone()).unwrap();
            let direct = JsonAccessLog::line(line, std::time::SystemTime::now());
            assert_eq!(without_timestamp(&direct), without_timestamp(&expected));
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let cases = [
            (0, "1970-01-01T00:00:00.000000Z"),
            (951_782_400_000_001, "2000-02-29T00:00:00.000001Z"),
            (1_796_525_098_712_736, "2026-12-06T02:44:58.712736Z"),
            (4_107_542_399_999_999, "2100-02-28T23:59:59.999999Z"),
        ];
        for (micros, expected) in cases {
            let mut out = String::new();
            push_timestamp(
                &mut out,
                std::time::UNIX_EPOCH + std::time::Duration::from_micros(micros),
            );
            assert_eq!(out, expected);
        }
    }
}
