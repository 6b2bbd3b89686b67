//! A key per job: the platform signs admin tokens with a key sync never
//! holds, sync signs device tokens with a key the platform never holds, a
//! published or retired key stops a service at start, and a rotated key
//! keeps the tokens it signed valid while it is listed as previous.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tend_core::token_key::KeyId;
use tend_tests::{Service, Stack, new_token_key, run_to_exit};

/// The value `name` has in the example Secret that tend publishes.
fn example_secret_value(name: &str) -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/k8s/base/secret.example.yaml"
    );
    let text = std::fs::read_to_string(path).expect("the example Secret");
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .unwrap_or_else(|| panic!("the example Secret shows no {name}"))
}

fn kid(token: &str) -> String {
    jsonwebtoken::decode_header(token)
        .expect("a JWT")
        .kid
        .expect("a kid")
}

/// The error line a service printed before it exited.
fn error_line(out: &str) -> &str {
    out.lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in: {out}"))
}

/// The status of a heartbeat with `token` at the stack's sync service.
async fn heartbeat(stack: &Stack, token: &str) -> u16 {
    stack
        .http
        .post(stack.device_api("/heartbeat"))
        .bearer_auth(token)
        .json(&json!({ "agent_version": "test" }))
        .send()
        .await
        .expect("a heartbeat")
        .status()
        .as_u16()
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn a_service_given_the_example_secrets_key_exits_naming_the_variable() {
    for (service, var, name) in [
        (Service::Platform, "TEND_ADMIN_TOKEN_KEY", "admin-token-key"),
        (Service::Sync, "TEND_DEVICE_TOKEN_KEY", "device-token-key"),
    ] {
        let placeholder = example_secret_value(name);
        let (code, out) = run_to_exit(service, env(&[(var, &placeholder)]));
        assert_eq!(code, Some(2), "{service:?}: {out}");
        let line = error_line(&out);
        assert!(
            line.starts_with(&format!("error: {var}: ")) && line.contains("published"),
            "{service:?}: {line}"
        );
        assert!(!out.contains(&placeholder), "the key is shown: {out}");

        // A short or repetitive key is refused the same way, and so is a
        // published key listed among the previous ones.
        let (code, out) = run_to_exit(
            service,
            env(&[(var, "abcabcabcabcabcabcabcabcabcabcabcabc")]),
        );
        assert_eq!(code, Some(2), "{out}");
        assert!(error_line(&out).contains(var), "{out}");
        let previous = format!("{}_PREVIOUS_KEYS", var.trim_end_matches("_KEY"));
        let (code, out) = run_to_exit(
            service,
            env(&[(var, &new_token_key()), (&previous, &placeholder)]),
        );
        assert_eq!(code, Some(2), "{out}");
        assert!(
            error_line(&out).starts_with(&format!("error: {previous}: ")),
            "{out}"
        );
    }
}

#[test]
fn a_service_given_only_the_retired_jwt_secret_exits_naming_the_key_it_needs() {
    let old = new_token_key();
    for (service, var) in [
        (Service::Platform, "TEND_ADMIN_TOKEN_KEY"),
        (Service::Sync, "TEND_DEVICE_TOKEN_KEY"),
    ] {
        let (code, out) = run_to_exit(service, env(&[("TEND_JWT_SECRET", &old)]));
        assert_eq!(code, Some(2), "{service:?}: {out}");
        let line = error_line(&out);
        assert!(
            line.starts_with(&format!("error: {var}: ")) && line.contains("TEND_JWT_SECRET"),
            "{service:?}: {line}"
        );
        assert!(!out.contains(&old), "the old key is shown: {out}");
    }
}

#[tokio::test]
async fn nothing_sync_holds_makes_a_token_the_platform_takes_and_the_reverse() {
    let mut stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let device_token = stack.device_token(&device).await;

    // The services' own tokens, each at the other service.
    assert_eq!(stack.get(&device_token, "/devices").await.0, 401);
    assert_eq!(
        heartbeat(&stack, &admin).await,
        401,
        "an admin token at sync"
    );
    assert_eq!(heartbeat(&stack, &device_token).await, 200);

    // Admin claims (system admin of the admin's tenant) signed with the
    // device key, under either key's id.
    let admin_claims: Value = jsonwebtoken::dangerous::insecure_decode::<Value>(&admin)
        .expect("the admin token's claims")
        .claims;
    let device_key = stack.device_token_key().to_owned();
    for kid in [
        KeyId::of(device_key.as_bytes()).to_string(),
        KeyId::of(stack.admin_token_key().as_bytes()).to_string(),
    ] {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.clone());
        let forged = jsonwebtoken::encode(
            &header,
            &admin_claims,
            &EncodingKey::from_secret(device_key.as_bytes()),
        )
        .unwrap();
        assert_eq!(
            stack.get(&forged, "/devices").await.0,
            401,
            "admin claims signed with the device key, kid {kid}"
        );
    }
    // The same claims under the admin key are taken: the forgery failed
    // for its key alone.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(KeyId::of(stack.admin_token_key().as_bytes()).to_string());
    let genuine = jsonwebtoken::encode(
        &header,
        &admin_claims,
        &EncodingKey::from_secret(stack.admin_token_key().as_bytes()),
    )
    .unwrap();
    assert_eq!(stack.get(&genuine, "/devices").await.0, 200);

    // A token without a kid is refused even with the right key.
    let no_kid = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &admin_claims,
        &EncodingKey::from_secret(stack.admin_token_key().as_bytes()),
    )
    .unwrap();
    assert_eq!(stack.get(&no_kid, "/devices").await.0, 401);

    // A service given a key or the retired secret it does not use says so
    // and starts: the monitor needs no key at all.
    stack.terminate(Service::Monitor);
    stack.set_env(Service::Monitor, "TEND_JWT_SECRET", Some(&new_token_key()));
    stack.spawn(Service::Monitor).await;
    let log = stack.log_of(Service::Monitor);
    assert!(
        log.contains("TEND_JWT_SECRET is set but no longer read"),
        "{log}"
    );
    stack.terminate(Service::Platform);
    stack.set_env(
        Service::Platform,
        "TEND_DEVICE_TOKEN_KEY",
        Some(&device_key),
    );
    stack.spawn(Service::Platform).await;
    let log = stack.log_of(Service::Platform);
    assert!(
        log.contains("TEND_DEVICE_TOKEN_KEY is set but this service does not use it"),
        "{log}"
    );
    assert!(!log.contains(&device_key), "a key in the log");
    assert!(!log.contains(stack.admin_token_key()), "a key in the log");
    // Still only the admin key counts: the device token stays refused.
    assert_eq!(stack.get(&device_token, "/devices").await.0, 401);
}

#[tokio::test]
async fn a_rotated_admin_key_keeps_old_tokens_until_it_is_removed() {
    let mut stack = Stack::start().await;
    let old_key = stack.admin_token_key().to_owned();
    let old_token = stack
        .login(tend_tests::ADMIN_USER, tend_tests::ADMIN_PASSWORD)
        .await;
    assert_eq!(kid(&old_token), KeyId::of(old_key.as_bytes()).to_string());

    // Rotate: a new key signs, the old one is previous.
    let new_key = new_token_key();
    stack.terminate(Service::Platform);
    stack.set_env(Service::Platform, "TEND_ADMIN_TOKEN_KEY", Some(&new_key));
    stack.set_env(
        Service::Platform,
        "TEND_ADMIN_TOKEN_PREVIOUS_KEYS",
        Some(&old_key),
    );
    stack.spawn(Service::Platform).await;
    assert_eq!(
        stack.get(&old_token, "/devices").await.0,
        200,
        "the old token still works"
    );
    let new_token = stack
        .login(tend_tests::ADMIN_USER, tend_tests::ADMIN_PASSWORD)
        .await;
    assert_eq!(kid(&new_token), KeyId::of(new_key.as_bytes()).to_string());
    assert_eq!(stack.get(&new_token, "/devices").await.0, 200);

    // The old key removed: its tokens are refused, the new ones are not.
    stack.terminate(Service::Platform);
    stack.set_env(Service::Platform, "TEND_ADMIN_TOKEN_PREVIOUS_KEYS", None);
    stack.spawn(Service::Platform).await;
    assert_eq!(stack.get(&old_token, "/devices").await.0, 401);
    assert_eq!(stack.get(&new_token, "/devices").await.0, 200);
}

#[tokio::test]
async fn a_rotated_device_key_keeps_device_tokens_valid_while_it_is_previous() {
    let mut stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device(&admin).await;
    let old_key = stack.device_token_key().to_owned();
    let old_token = stack.device_token(&device).await;
    assert_eq!(heartbeat(&stack, &old_token).await, 200);

    let new_key = new_token_key();
    stack.terminate(Service::Sync);
    stack.set_env(Service::Sync, "TEND_DEVICE_TOKEN_KEY", Some(&new_key));
    stack.set_env(
        Service::Sync,
        "TEND_DEVICE_TOKEN_PREVIOUS_KEYS",
        Some(&old_key),
    );
    stack.spawn(Service::Sync).await;
    assert_eq!(heartbeat(&stack, &old_token).await, 200, "the old token");
    let new_token = stack.device_token(&device).await;
    assert_eq!(kid(&new_token), KeyId::of(new_key.as_bytes()).to_string());
    assert_eq!(heartbeat(&stack, &new_token).await, 200);

    // The old key removed: its tokens are refused, the new ones are not.
    stack.terminate(Service::Sync);
    stack.set_env(Service::Sync, "TEND_DEVICE_TOKEN_PREVIOUS_KEYS", None);
    stack.spawn(Service::Sync).await;
    assert_eq!(heartbeat(&stack, &old_token).await, 401);
    assert_eq!(heartbeat(&stack, &new_token).await, 200);
}
