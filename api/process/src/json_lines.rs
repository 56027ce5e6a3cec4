//! The JSON line of each log event, as tracing-subscriber's `json()` formatter writes it with
//! flattened events and the current span (`{"timestamp":…,"level":…,<the event's fields>,
//! "target":…,"span":{<its fields>,"name":…}}`), without that formatter's per-line work: it
//! parsed the span's fields back from their stored JSON into a map and went through serde for
//! every value, about 9% of the API's CPU per hold (one `hold.created` line per hold).

use std::fmt::{self, Write as _};

use chrono::{SecondsFormat, Utc};
use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
    span,
};
use tracing_subscriber::{
    field::RecordFields,
    fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, format::Writer},
    registry::LookupSpan,
};

/// The event formatter. Span fields are stored by the layer's field formatter, which must write
/// them as one JSON object ([`JsonSpanFields`], or tracing-subscriber's `JsonFields`).
pub struct JsonLines;

/// How a span's fields are stored when it is made (once per HTTP request): one JSON object, in
/// the order recorded, written directly (tracing-subscriber's `JsonFields` gathered them in a
/// map and serialized it through serde: about 4% of the API's CPU per hold).
pub struct JsonSpanFields;

impl<'writer> FormatFields<'writer> for JsonSpanFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        writer.write_char('{')?;
        let mut members = Fields::new(&mut writer, false);
        fields.record(&mut members);
        members.result?;
        writer.write_char('}')
    }

    /// Fields recorded on a span after it was made join its object.
    fn add_fields(
        &self,
        current: &mut FormattedFields<Self>,
        fields: &span::Record<'_>,
    ) -> fmt::Result {
        let Some(members) = current.fields.strip_suffix('}').map(str::len) else {
            // Nothing stored yet: a new object.
            current.fields.clear();
            return self.format_fields(current.as_writer(), fields);
        };
        let empty = members <= 1;
        current.fields.truncate(members);
        let mut writer = current.as_writer();
        let mut added = Fields::new(&mut writer, !empty);
        fields.record(&mut added);
        added.result?;
        writer.write_char('}')
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let timestamp = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
        write!(
            writer,
            "{{\"timestamp\":\"{timestamp}\",\"level\":\"{}\"",
            meta.level()
        )?;
        let mut fields = Fields::new(&mut writer, true);
        event.record(&mut fields);
        let Fields {
            result, log_target, ..
        } = fields;
        result?;
        // An event from the `log` crate names its real target in a field.
        writer.write_str(",\"target\":")?;
        string(&mut writer, log_target.as_deref().unwrap_or(meta.target()))?;
        let span = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current());
        if let Some(span) = span {
            writer.write_str(",\"span\":{")?;
            let extensions = span.extensions();
            let stored = extensions
                .get::<FormattedFields<N>>()
                .map(|f| f.fields.trim())
                .unwrap_or_default();
            match stored.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(inner) if inner.trim().is_empty() => {}
                Some(inner) => write!(writer, "{inner},")?,
                // Not a JSON object: kept whole, as text.
                None if stored.is_empty() => {}
                None => {
                    writer.write_str("\"fields\":")?;
                    string(&mut writer, stored)?;
                    writer.write_char(',')?;
                }
            }
            writer.write_str("\"name\":")?;
            string(&mut writer, span.name())?;
            writer.write_char('}')?;
        }
        writer.write_str("}\n")
    }
}

/// Writes fields as members of a JSON object, in the order they were recorded.
struct Fields<'a, 'w> {
    out: &'a mut Writer<'w>,
    /// Whether a member was written before the first of these (then a comma goes first).
    after_member: bool,
    /// For values written through `Debug`, reused across the fields of one event.
    scratch: String,
    log_target: Option<String>,
    result: fmt::Result,
}

impl<'a, 'w> Fields<'a, 'w> {
    fn new(out: &'a mut Writer<'w>, after_member: bool) -> Self {
        Self {
            out,
            after_member,
            scratch: String::new(),
            log_target: None,
            result: Ok(()),
        }
    }

    fn member(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_ok() {
            let comma = std::mem::replace(&mut self.after_member, true);
            self.result = (|| {
                if comma {
                    self.out.write_char(',')?;
                }
                string(self.out, field.name())?;
                self.out.write_char(':')?;
                value(self.out)
            })();
        }
    }
}

impl Visit for Fields<'_, '_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        if write!(scratch, "{value:?}").is_err() {
            self.result = Err(fmt::Error);
        }
        self.member(field, |out| string(out, &scratch));
        self.scratch = scratch;
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "log.target" {
            self.log_target = Some(value.to_owned());
        }
        self.member(field, |out| string(out, value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_debug(field, &format_args!("{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // As serde_json writes it: a number, or `null` for NaN and the infinities.
        self.member(field, |out| {
            if value.is_finite() {
                write!(out, "{value:?}")
            } else {
                out.write_str("null")
            }
        });
    }
}

/// A JSON string (RFC 8259): quotes, backslashes and control characters escaped.
fn string(out: &mut impl fmt::Write, s: &str) -> fmt::Result {
    out.write_char('"')?;
    let mut plain = 0;
    for (i, b) in s.bytes().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.write_str(&s[plain..i])?;
        if escaped.is_empty() {
            write!(out, "\\u{b:04x}")?;
        } else {
            out.write_str(escaped)?;
        }
        plain = i + 1;
    }
    out.write_str(&s[plain..])?;
    out.write_char('"')
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::{fmt::MakeWriter, layer::SubscriberExt};

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;
        fn make_writer(&'a self) -> Lines {
            self.clone()
        }
    }

    /// The lines `log` writes, with our formatter and with tracing-subscriber's own.
    fn both(log: impl Fn()) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
        let ours = Lines::default();
        let theirs = Lines::default();
        let subscriber = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .event_format(JsonLines)
                    .fmt_fields(JsonSpanFields)
                    .with_writer(ours.clone()),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(theirs.clone()),
            );
        tracing::subscriber::with_default(subscriber, log);
        let parse = |lines: Lines| {
            let bytes = lines.0.lock().unwrap().clone();
            String::from_utf8(bytes)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect::<Vec<serde_json::Value>>()
        };
        (parse(ours), parse(theirs))
    }

    #[test]
    fn lines_are_those_of_the_json_formatter() {
        let (ours, theirs) = both(|| {
            let span = tracing::info_span!("request", request_id = "r-1", method = "POST");
            let _entered = span.enter();
            tracing::info!(
                metric = "hold.created",
                hold_id = 7_i64,
                product_id = 1_u64,
                quantity = 2,
                ok = true,
                ratio = 0.5,
                nan = f64::NAN,
                "hold created"
            );
            let err = std::io::Error::other("disk \"full\"\n\u{1}");
            tracing::warn!(error = %err, debug = ?("a\\b", 'é'), "answering 503");
            drop(_entered);
            tracing::info!(text = "outside any span");
            let later = tracing::info_span!("empty", added = tracing::field::Empty);
            let _entered = later.enter();
            tracing::info!("in a span without fields");
            later.record("added", "then \"one\"");
            tracing::info!("in a span with a field recorded later");
            let full = tracing::info_span!("full", a = 1, b = tracing::field::Empty);
            let _entered = full.enter();
            full.record("b", 2);
            tracing::info!("in a span with two fields");
        });
        assert_eq!(ours.len(), 6);
        for (ours, theirs) in ours.iter().zip(&theirs) {
            let (mut ours, mut theirs) = (ours.clone(), theirs.clone());
            // The clocks were read a moment apart; both are RFC 3339 with microseconds.
            for line in [&mut ours, &mut theirs] {
                let ts = line["timestamp"].as_str().unwrap().to_owned();
                assert!(
                    chrono::DateTime::parse_from_rfc3339(&ts).is_ok() && ts.len() == 27,
                    "{ts}"
                );
                line["timestamp"] = serde_json::Value::Null;
            }
            assert_eq!(ours, theirs);
        }
    }
}
