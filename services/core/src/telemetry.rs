//! Logs and metrics, set up once per process.

use std::fmt;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tend_proto::text::EscapeControls;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};

/// Starts logging: filter from `TEND_LOG` (default `info`), JSON lines when
/// `TEND_LOG_FORMAT=json`, else text lines whose fields and message have
/// their control characters escaped ([`EscapedFields`]). Safe to call more
/// than once (tests do).
pub fn init_logs() {
    let filter = EnvFilter::try_from_env("TEND_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("TEND_LOG_FORMAT").is_ok_and(|v| v == "json");
    // Colour only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.fmt_fields(EscapedFields::default()).try_init()
    };
}

/// The text format's fields, the message among them: tracing-subscriber's
/// own layout, written through [`EscapeControls`], so that one event is
/// always one line whatever its values hold (a login name with a `\n` in
/// it would otherwise write a line of its choosing). Everything else on a
/// line (time, level, target, span names) comes from tend's code, not from
/// its input.
///
/// Field names lose their italics on a terminal: colours are escape
/// sequences, and none may reach the writer from here. The level keeps its
/// colour.
#[derive(Debug, Default)]
pub struct EscapedFields(DefaultFields);

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut escaped = EscapeControls(&mut writer);
        self.0.format_fields(Writer::new(&mut escaped), fields)
    }
}

/// The process's Prometheus recorder; installed on first use, so several
/// services started in one test process share it.
pub fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
                .expect("static, non-empty bucket list")
                .install_recorder()
                .expect("no other metrics recorder is installed in tend's processes");
            // Shown at zero from the start, so an alert on their rate works
            // before the first failure.
            for store in ["postgres", "redis"] {
                metrics::counter!("tend_backing_store_errors_total", "store" => store).increment(0);
            }
            handle
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Everything the subscriber writes, for the test to read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// What the text format writes for the events of `log`.
    fn text_of(ansi: bool, log: impl FnOnce()) -> String {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(ansi)
            .with_writer(move || writer.clone())
            .fmt_fields(EscapedFields::default())
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    const HOSTILE: &str = "alice\nINFO tend_platform: login of root\r\x1b[31mok";

    #[test]
    fn a_message_or_field_with_control_characters_stays_on_one_line() {
        let text = text_of(false, || {
            let span = tracing::info_span!("request", path = %HOSTILE);
            let _in = span.enter();
            tracing::info!(user = %HOSTILE, quoted = HOSTILE, "login of {HOSTILE} failed");
            tracing::warn!("second event");
        });
        let lines: Vec<&str> = text.split_terminator('\n').collect();
        assert_eq!(lines.len(), 2, "{text:?}");
        assert!(lines[1].contains("second event"), "{text:?}");
        let first = lines[0];
        assert!(
            !first.contains('\r') && !first.contains('\x1b'),
            "{first:?}"
        );
        // The message, a Display field and the span's field, each escaped.
        let escaped = "alice\\nINFO tend_platform: login of root\\r\\x1b[31mok";
        assert!(
            first.contains(&format!("login of {escaped} failed")),
            "{first:?}"
        );
        assert!(first.contains(&format!("user={escaped}")), "{first:?}");
        assert!(first.contains(&format!("path={escaped}")), "{first:?}");
        // A Debug-quoted field was escaped by Debug already, and stays so.
        assert!(first.contains(r#"quoted="alice\nINFO"#), "{first:?}");
    }

    #[test]
    fn on_a_terminal_only_tend_s_own_colours_are_escape_sequences() {
        let text = text_of(true, || tracing::info!(user = %HOSTILE, "{HOSTILE}"));
        assert_eq!(text.matches('\n').count(), 1, "{text:?}");
        assert!(text.ends_with('\n'));
        assert!(!text.contains('\r'), "{text:?}");
        assert!(!text.contains("\x1b[31m"), "{text:?}");
        assert!(text.contains("\\x1b[31mok"), "{text:?}");
        // The level's colour is still there.
        assert!(text.contains("\x1b[32m"), "{text:?}");
    }
}
