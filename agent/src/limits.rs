//! What the agent accepts from the server, and how much of it.
//!
//! The server is trusted to say what to do (with signed instructions, only
//! what the platform signed), never to size the agent's memory, disk or
//! clock: a broken proxy, a bug or an attacker in front of the device can
//! answer anything. Every number the server sends is clamped to a range
//! that makes sense on a device before it reaches a clock or an
//! allocation, every body is read against a limit, and every instruction
//! is bounded before it is journaled. Each bound is written here once, with
//! why it is the size it is.

use std::time::Duration;

/// The largest body read from `POST /device/v1/auth`,
/// `POST /device/v1/heartbeat` and `POST /device/v1/update-check`: their
/// answers are a few dozen bytes, so 64 KiB is room for any future field
/// and still nothing for a device's memory.
pub const SMALL_BODY_BYTES: usize = 64 * 1024;

/// The largest body read from `GET /device/v1/instructions`: a batch of
/// [`MAX_INSTRUCTIONS_PER_FETCH`] instructions with ordinary params is a
/// few tens of KiB; 1 MiB leaves room for large log-query patterns and
/// artifact references while keeping a hostile answer from costing more.
pub const INSTRUCTIONS_BODY_BYTES: usize = 1024 * 1024;

/// How much of an error answer's body is read, to show in a log line.
pub const ERROR_BODY_BYTES: usize = 1024;

/// The most instructions handled from one fetch. A device's queue holds a
/// handful of commands; a longer list is cut, and the rest (if the server
/// still holds them) come with the next fetch, after these are reported.
pub const MAX_INSTRUCTIONS_PER_FETCH: usize = 64;

/// The largest `params` of one instruction, as JSON: the params of every
/// kind are a few hundred bytes (a log query's pattern is at most 1 KiB).
/// Larger params are refused, and never journaled or logged whole.
pub const MAX_PARAMS_BYTES: usize = 16 * 1024;

/// The most of an instruction's `kind` kept in the journal and in
/// messages: every kind is a short word, and an unknown one is refused.
pub const MAX_KIND_BYTES: usize = 64;

/// The longest an instruction's command may run: the platform's own limit
/// for `timeout_s`, so no command it creates is cut short here.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(tend_proto::command::MAX_TIMEOUT_S as u64);

/// How long an instruction's command may run: its `timeout_s`, at least
/// one second and at most [`MAX_TIMEOUT`], so that neither 0 nor an
/// absurd value reaches a timer.
pub fn instruction_timeout(timeout_s: u32) -> Duration {
    Duration::from_secs(u64::from(timeout_s)).clamp(Duration::from_secs(1), MAX_TIMEOUT)
}

/// `text` cut to at most `max` bytes, on a character boundary.
pub fn shorten(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Whether the JSON of `value` takes more than `limit` bytes, counted
/// without building it: counting stops once past `limit`, so an enormous
/// value costs no more than the limit.
pub fn json_larger_than(value: &serde_json::Value, limit: usize) -> bool {
    struct Counter {
        bytes: usize,
        limit: usize,
    }
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.bytes = self.bytes.saturating_add(buf.len());
            if self.bytes > self.limit {
                return Err(std::io::Error::other("over the limit"));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter { bytes: 0, limit };
    serde_json::to_writer(&mut counter, value).is_err()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_instruction_timeout_is_at_least_a_second_and_at_most_a_day() {
        assert_eq!(instruction_timeout(0), Duration::from_secs(1));
        assert_eq!(instruction_timeout(1), Duration::from_secs(1));
        assert_eq!(instruction_timeout(300), Duration::from_secs(300));
        assert_eq!(instruction_timeout(86_400), Duration::from_secs(86_400));
        assert_eq!(instruction_timeout(86_401), MAX_TIMEOUT);
        assert_eq!(instruction_timeout(u32::MAX), MAX_TIMEOUT);
        assert_eq!(MAX_TIMEOUT, Duration::from_secs(24 * 3600));
    }

    #[test]
    fn shortened_text_keeps_whole_characters() {
        assert_eq!(shorten("reboot", MAX_KIND_BYTES), "reboot");
        assert_eq!(
            shorten(&"k".repeat(1000), MAX_KIND_BYTES).len(),
            MAX_KIND_BYTES
        );
        assert_eq!(shorten("aé", 2), "a");
        assert_eq!(shorten("", 0), "");
    }

    #[test]
    fn params_over_the_limit_are_found_without_being_written_out() {
        assert!(!json_larger_than(&json!({}), MAX_PARAMS_BYTES));
        let pattern = "x".repeat(1024);
        let query = json!({"source": "app", "pattern": pattern});
        assert!(!json_larger_than(&query, MAX_PARAMS_BYTES));
        let huge = json!({"blob": "y".repeat(10 * MAX_PARAMS_BYTES)});
        assert!(json_larger_than(&huge, MAX_PARAMS_BYTES));
        // Exactly at the limit (a string and its two quotes) is accepted;
        // one byte more is not.
        let at = json!("a".repeat(MAX_PARAMS_BYTES - 2));
        assert!(!json_larger_than(&at, MAX_PARAMS_BYTES));
        let over = json!("a".repeat(MAX_PARAMS_BYTES - 1));
        assert!(json_larger_than(&over, MAX_PARAMS_BYTES));
    }
}
