//! The real agent in front of a hostile sync server (issue 15): for each
//! answer no working server gives, the agent stays up, its memory and its
//! state directory stay bounded, and it runs nothing it should not. No
//! answer here makes the agent exit: each is a server to outlast, and a
//! device that exits on one is cut off from the next, honest, answer.

use std::time::Duration;

use serde_json::{Value, json};
use tend_tests::eventually;
use tend_tests::hostile::{
    Answer, Body, HostileAgent, HostileServer, Request, TestCa, instruction,
};

/// The agent's bounds as the tests see them: the tests check the limits
/// from outside, so they name them again rather than import them.
const INSTRUCTIONS_PER_FETCH: usize = 64;
/// Far above what the agent uses (about 10 MB), far below what the
/// hostile answers would cost an agent that read them whole.
const MEMORY_BOUND: u64 = 64 * 1024 * 1024;
/// The journal, the operation log and the lock after a few seconds of
/// hostile answers.
const STATE_BOUND: u64 = 4 * 1024 * 1024;

/// Runs the agent against `server` for `seconds`, sampling it every
/// 200 ms: it must stay alive, under [`MEMORY_BOUND`] and [`STATE_BOUND`],
/// and have run nothing; and its state must be private (the test process
/// runs it with its own umask, usually 022). Returns the agent for the
/// test's own checks.
async fn outlasts(server: &HostileServer, seconds: u64, test: &str) -> HostileAgent {
    let mut agent = HostileAgent::start(&server.url(), None);
    let until = tokio::time::Instant::now() + Duration::from_secs(seconds);
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(agent.is_alive(), "{test}: the agent exited");
        let memory = agent.peak_memory_bytes();
        assert!(
            memory < MEMORY_BOUND,
            "{test}: the agent's peak memory is {memory} bytes"
        );
        let state = agent.state_bytes();
        assert!(
            state < STATE_BOUND,
            "{test}: the state directory holds {state} bytes"
        );
    }
    assert!(
        agent.ran().is_empty(),
        "{test}: the agent ran {:?}",
        agent.ran()
    );
    let open = agent.open_state_files();
    assert!(
        open.is_empty(),
        "{test}: state open to other users: {open:?}"
    );
    agent
}

fn is(request: &Request, method: &str, path: &str) -> bool {
    request.method == method && request.path == path
}

/// A heartbeat that says work is pending and to come back at once.
fn pending(request: &Request) -> Option<Answer> {
    is(request, "POST", "/device/v1/heartbeat")
        .then(|| Answer::json(&json!({"pending": true, "next_heartbeat_s": 0})))
}

/// Serves `instructions` (as they are, every time) with a pending heartbeat.
fn serving(instructions: Vec<Value>) -> impl Fn(&Request, usize) -> Option<Answer> {
    let body = json!({ "instructions": instructions });
    move |request, _| {
        if is(request, "GET", "/device/v1/instructions") {
            return Some(Answer::json(&body));
        }
        pending(request)
    }
}

/// The final report the server got for `id`.
fn report_of(server: &HostileServer, id: &Value) -> Option<Value> {
    let id = id.as_str().expect("an id");
    server
        .reports()
        .into_iter()
        .filter(|(reported, _)| reported == id)
        .map(|(_, body)| body)
        .find(|body| body["status"] != "in_progress")
}

#[tokio::test]
async fn an_endless_token_lifetime_neither_panics_nor_stops_the_heartbeats() {
    let server = HostileServer::start(|request, _| {
        is(request, "POST", "/device/v1/auth")
            .then(|| Answer::json(&json!({"token": "t", "expires_in": u64::MAX})))
    })
    .await;
    outlasts(&server, 4, "token-lifetime").await;
    let heartbeats = server.requests_to("/device/v1/heartbeat").len();
    assert!(heartbeats >= 2, "{heartbeats} heartbeats");
}

#[tokio::test]
async fn a_device_type_that_is_not_one_is_neither_kept_nor_believed() {
    let server = HostileServer::start(|request, _| {
        is(request, "POST", "/device/v1/auth").then(|| {
            Answer::json(&json!({"token": "t", "expires_in": 3600,
                "device_type": format!("kiosk\n{}", "x".repeat(60_000))}))
        })
    })
    .await;
    let agent = outlasts(&server, 3, "device-type").await;
    let kept = agent.dir.join("state");
    let found: Vec<_> = std::fs::read_dir(&kept)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("device_type"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default().len())
        .collect();
    assert!(found.iter().all(|&len| len == 0), "kept: {found:?}");
    assert!(
        server.requests_to("/device/v1/heartbeat").len() >= 2,
        "the agent stopped heartbeating"
    );
}

#[tokio::test]
async fn a_heartbeat_interval_of_2_pow_63_seconds_is_held_to_an_hour() {
    let server = HostileServer::start(|request, _| {
        is(request, "POST", "/device/v1/heartbeat")
            .then(|| Answer::json(&json!({"pending": false, "next_heartbeat_s": 1u64 << 63})))
    })
    .await;
    outlasts(&server, 3, "heartbeat-interval").await;
    // The first heartbeat learns the interval; the long-poll that follows
    // asks to be held for the clamped one, and is the last for an hour.
    let heartbeats = server.requests_to("/device/v1/heartbeat");
    assert_eq!(heartbeats.len(), 2, "{heartbeats:?}");
    assert_eq!(heartbeats[1].json()["wait_s"], 3600);
}

/// Answers the first three requests to `path` with `broken` bodies, then
/// `honest`; the agent must refuse each broken one, retry with its
/// backoff and go on working.
async fn numbers_refused_then_retried(
    path: &'static str,
    broken: [&'static str; 3],
    honest: Value,
) {
    let server = HostileServer::start(move |request, n| {
        (is(request, "POST", path)).then(|| match broken.get(n) {
            Some(body) => Answer::raw(200, *body),
            None => Answer::json(&honest),
        })
    })
    .await;
    let agent = outlasts(&server, 2, "numbers").await;
    // Backoff: about 1, 2 and 4 s after the three broken answers.
    eventually(
        Duration::from_secs(20),
        "a heartbeat after the broken answers",
        || {
            let heartbeats = server.requests_to("/device/v1/heartbeat");
            let answered = heartbeats.len() >= if path.ends_with("heartbeat") { 4 } else { 1 };
            async move { answered.then_some(()) }
        },
    )
    .await;
    assert!(
        agent.log().matches("is not valid").count() >= 3,
        "{}",
        agent.log()
    );
}

#[tokio::test]
async fn negative_fractional_and_string_token_lifetimes_are_refused_and_retried() {
    numbers_refused_then_retried(
        "/device/v1/auth",
        [
            r#"{"token": "t", "expires_in": -1}"#,
            r#"{"token": "t", "expires_in": 3600.5}"#,
            r#"{"token": "t", "expires_in": "3600"}"#,
        ],
        json!({"token": "t", "expires_in": 3600}),
    )
    .await;
}

#[tokio::test]
async fn negative_fractional_and_string_heartbeat_answers_are_refused_and_retried() {
    numbers_refused_then_retried(
        "/device/v1/heartbeat",
        [
            r#"{"pending": false, "next_heartbeat_s": -5}"#,
            r#"{"pending": false, "next_heartbeat_s": 0.5}"#,
            r#"{"pending": "yes", "next_heartbeat_s": "1"}"#,
        ],
        json!({"pending": false, "next_heartbeat_s": 1}),
    )
    .await;
}

#[tokio::test]
async fn a_huge_retry_after_does_not_silence_the_agent() {
    let server = HostileServer::start(|request, _| {
        is(request, "POST", "/device/v1/heartbeat").then(|| {
            Answer::raw(503, "{}").with_header("retry-after", "99999999999999999999999999")
        })
    })
    .await;
    outlasts(&server, 5, "retry-after").await;
    let heartbeats = server.requests_to("/device/v1/heartbeat").len();
    assert!(heartbeats >= 3, "{heartbeats} heartbeats in 5 s");
}

#[tokio::test]
async fn a_40_mib_instructions_body_is_cut_at_its_limit_and_asked_again_later() {
    let server = HostileServer::start(|request, _| {
        if is(request, "GET", "/device/v1/instructions") {
            return Some(Answer {
                status: 200,
                headers: vec![("content-type".into(), "application/json".into())],
                body: Body::Huge {
                    prefix: br#"{"instructions": [{"id": ""#.to_vec(),
                    fill: b'x',
                    len: 40 * 1024 * 1024,
                },
            });
        }
        pending(request)
    })
    .await;
    let agent = outlasts(&server, 5, "huge-body").await;
    let fetches = server.requests_to("/device/v1/instructions").len();
    assert!(
        (2..20).contains(&fetches),
        "{fetches} fetches: retried, with a backoff"
    );
    let log = agent.log();
    assert!(log.contains("larger than 1048576 bytes"), "{log}");
}

#[tokio::test]
async fn a_body_that_never_ends_is_cut_by_the_request_timeout() {
    let server = HostileServer::start(|request, _| {
        if is(request, "GET", "/device/v1/instructions") {
            return Some(Answer {
                status: 200,
                headers: vec![("content-type".into(), "application/json".into())],
                body: Body::Drip {
                    prefix: br#"{"instructions": ["#.to_vec(),
                    every: Duration::from_millis(100),
                },
            });
        }
        pending(request)
    })
    .await;
    let agent = outlasts(&server, 7, "slow-drip").await;
    // request_timeout_s = 2: each fetch is given up after 2 s, then asked
    // again after a backoff.
    let fetches = server.requests_to("/device/v1/instructions").len();
    assert!((2..=4).contains(&fetches), "{fetches} fetches in 7 s");
    assert!(agent.log().contains("cannot fetch instructions"));
}

#[tokio::test]
async fn malformed_json_is_an_error_not_a_crash() {
    let server = HostileServer::start(|request, _| {
        if is(request, "GET", "/device/v1/instructions") {
            return Some(Answer::raw(200, r#"{"instructions": [{"id": "#));
        }
        pending(request)
    })
    .await;
    let agent = outlasts(&server, 4, "malformed").await;
    assert!(server.requests_to("/device/v1/instructions").len() >= 2);
    let log = agent.log();
    assert!(log.contains("the instructions fetch is not valid"), "{log}");
}

#[tokio::test]
async fn an_instruction_with_params_its_kind_does_not_know_is_rejected() {
    let reboot = instruction("reboot", json!({"force": true}));
    let query = instruction(
        "log_query",
        json!({"source": "operations", "path": "/etc/shadow"}),
    );
    let server = HostileServer::start(serving(vec![reboot.clone(), query.clone()])).await;
    outlasts(&server, 4, "unknown-params").await;
    for sent in [&reboot, &query] {
        let report = report_of(&server, &sent["id"]).expect("a final report");
        assert_eq!(report["status"], "rejected", "{report}");
        assert!(
            report["error"]
                .as_str()
                .unwrap()
                .contains("params are invalid"),
            "{report}"
        );
    }
}

#[tokio::test]
async fn a_shutdown_expired_days_ago_is_rejected_and_never_runs() {
    let mut shutdown = instruction("shutdown", json!({}));
    let past = chrono::Utc::now() - chrono::Duration::days(3);
    shutdown["expires_at"] = json!(past);
    shutdown["issued_at"] = json!(past - chrono::Duration::hours(1));
    let server = HostileServer::start(serving(vec![shutdown.clone()])).await;
    outlasts(&server, 4, "expired").await;
    let report = report_of(&server, &shutdown["id"]).expect("a final report");
    assert_eq!(report["status"], "rejected", "{report}");
    assert!(
        report["error"].as_str().unwrap().contains("expired"),
        "{report}"
    );
}

#[tokio::test]
async fn an_agent_that_pins_the_platform_key_runs_nothing_a_server_signed_or_left_unsigned() {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use ed25519_dalek::{Signer, SigningKey};

    let platform = SigningKey::from_bytes(&[5; 32]);
    let server_key = SigningKey::from_bytes(&[6; 32]);
    let unsigned = instruction("shutdown", json!({}));
    // Signed well, by a key of the server's own.
    let mut forged = instruction("reboot", json!({}));
    let parsed: tend_proto::device::Instruction = serde_json::from_value(forged.clone()).unwrap();
    // Any device id: the key is wrong whatever the device.
    let bytes = tend_proto::signing::signed_bytes(&parsed, uuid::Uuid::new_v4()).unwrap();
    forged["key_id"] = json!(tend_proto::signing::key_id(
        server_key.verifying_key().as_bytes()
    ));
    forged["signature"] = json!(STANDARD.encode(server_key.sign(&bytes).to_bytes()));
    let server = HostileServer::start(serving(vec![unsigned.clone(), forged.clone()])).await;
    let mut agent = HostileAgent::start_pinned(
        &server.url(),
        &STANDARD.encode(platform.verifying_key().as_bytes()),
    );
    eventually(
        Duration::from_secs(15),
        "both refusals reported",
        || async {
            (report_of(&server, &unsigned["id"]).is_some()
                && report_of(&server, &forged["id"]).is_some())
            .then_some(())
        },
    )
    .await;
    for (what, i) in [("not signed", &unsigned), ("does not pin", &forged)] {
        let report = report_of(&server, &i["id"]).unwrap();
        assert_eq!(report["status"], "rejected", "{report}");
        assert!(report["error"].as_str().unwrap().contains(what), "{report}");
    }
    assert!(agent.is_alive(), "the agent exited");
    assert!(agent.ran().is_empty(), "the agent ran {:?}", agent.ran());
}

#[tokio::test]
async fn params_too_large_to_journal_are_rejected_and_never_written_whole() {
    let reboot = instruction("reboot", json!({"blob": "x".repeat(512 * 1024)}));
    let server = HostileServer::start(serving(vec![reboot.clone()])).await;
    let agent = outlasts(&server, 4, "large-params").await;
    let report = report_of(&server, &reboot["id"]).expect("a final report");
    assert_eq!(report["status"], "rejected", "{report}");
    assert!(
        report["error"].as_str().unwrap().contains("larger than"),
        "{report}"
    );
    for file in ["journal.jsonl", "operations.log"] {
        let text = std::fs::read_to_string(agent.dir.join("state").join(file)).unwrap();
        assert!(
            text.contains(reboot["id"].as_str().unwrap()),
            "{file}: {text}"
        );
        assert!(text.len() < 16 * 1024, "{file} holds {} bytes", text.len());
    }
}

#[tokio::test]
async fn an_absurd_timeout_is_clamped_and_the_instruction_still_answered() {
    let mut query = instruction("log_query", json!({"source": "operations"}));
    query["timeout_s"] = json!(u32::MAX);
    let server = HostileServer::start(serving(vec![query.clone()])).await;
    outlasts(&server, 4, "timeout").await;
    let report = report_of(&server, &query["id"]).expect("a final report");
    assert_eq!(report["status"], "succeeded", "{report}");
}

#[tokio::test]
async fn the_same_instruction_sent_many_times_runs_once() {
    // A legitimate shutdown (the only instruction here that runs), sent 200
    // times in each answer, answer after answer.
    let shutdown = instruction("shutdown", json!({}));
    let server = HostileServer::start(serving(vec![shutdown.clone(); 200])).await;
    let mut agent = HostileAgent::start(&server.url(), None);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(agent.is_alive());
    assert!(agent.peak_memory_bytes() < MEMORY_BOUND);
    assert!(agent.state_bytes() < STATE_BOUND);
    assert_eq!(agent.ran(), [shutdown["id"].as_str().unwrap()]);
}

#[tokio::test]
async fn thousands_of_instructions_in_one_answer_are_handled_a_bounded_batch_at_a_time() {
    // Each would be refused (a reboot with params), and each answer brings
    // all of them again: the agent takes the first batch, reports it, and
    // the server (which forgets nothing) sends the same again.
    let many: Vec<Value> = (0..3000)
        .map(|_| instruction("reboot", json!({"now": 1})))
        .collect();
    let server = HostileServer::start(serving(many)).await;
    outlasts(&server, 5, "many").await;
    let mut reported: Vec<String> = server.reports().into_iter().map(|(id, _)| id).collect();
    reported.sort();
    reported.dedup();
    assert_eq!(reported.len(), INSTRUCTIONS_PER_FETCH, "ids reported");
}

#[tokio::test]
async fn with_ca_file_the_agent_trusts_a_private_ca_and_without_it_refuses_the_certificate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new(dir.path());
    let server = HostileServer::start_tls(&ca, |_, _| None).await;
    assert!(server.url().starts_with("https://"));

    let mut trusting = HostileAgent::start(&server.url(), Some(&ca.ca_file));
    eventually(Duration::from_secs(10), "a heartbeat over TLS", || {
        let heartbeats = server.requests_to("/device/v1/heartbeat").len();
        async move { (heartbeats > 0).then_some(()) }
    })
    .await;
    assert!(trusting.is_alive());
    drop(trusting);

    let before = server.requests().len();
    let mut refusing = HostileAgent::start(&server.url(), None);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(refusing.is_alive(), "the agent retries; it does not exit");
    assert_eq!(
        server.requests().len(),
        before,
        "no request got through without the CA"
    );
    let log = refusing.log();
    assert!(log.contains("certificate"), "{log}");
}
