//! SWUpdate's own hawkBit client (`suricatta`, Debian's `swupdate`), which
//! no one here wrote, managed by tend-sync over DDI: a signed `.swu`
//! uploaded as an artifact and queued as an `upgrade` is polled for,
//! downloaded, verified, installed and reported until the command
//! succeeds; a `.swu` signed by a key the device does not trust ends
//! `failed` with nothing installed; polls with nothing queued change
//! nothing.

use std::time::Duration;

use tend_tests::swu::{self, Auth, Boot, Image, Signature, SigningKey, Suricatta};
use tend_tests::{Device, Service, Stack, eventually};
use uuid::Uuid;

use super::ddi::{artifact, queue_upgrade};

/// Generous: suricatta polls every second (the stack's heartbeat), but a
/// loaded machine runs the test command's other tests beside it.
const WAIT: Duration = Duration::from_secs(60);

fn suricatta(stack: &Stack, name: &str, device: &Device, key: &SigningKey) -> Suricatta {
    Suricatta::spawn(
        &stack.dir.path().join(name),
        swu::Device {
            url: stack.url(Service::Sync),
            tenant: "default".into(),
            controller_id: name.into(),
            auth: Auth::TargetToken(device.secret.clone()),
            cert: key.cert.clone(),
            identify: vec![("board".into(), swu::BOARD.into())],
        },
    )
    .expect("starting suricatta")
}

/// Uploads the `.swu` at `swu` as `version` and queues its upgrade.
async fn upgrade(
    stack: &Stack,
    admin: &str,
    device: &Device,
    version: &str,
    swu: &std::path::Path,
) -> Uuid {
    let name = swu.file_name().unwrap().to_str().unwrap();
    let id = artifact(stack, admin, version, name, &std::fs::read(swu).unwrap()).await;
    queue_upgrade(stack, admin, device.id, &id).await
}

async fn commands_of(stack: &Stack, token: &str, device: Uuid) -> usize {
    let (status, v) = stack
        .get(token, &format!("/devices/{device}/commands"))
        .await;
    assert_eq!(status, 200, "{v}");
    v["items"].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn suricatta_installs_a_signed_swu_queued_as_an_upgrade_and_the_command_succeeds() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device_of_type(&admin, "cam-s1", "camera").await;
    let work = stack.dir.path().join("images");
    std::fs::create_dir_all(&work).unwrap();
    let key = SigningKey::generate(&work, "vendor").expect("the signing key");
    let target = stack.dir.path().join("rootfs").join("app.conf");
    let payload = b"listen = 8080\n";
    let swu = Image {
        signer: &key,
        signature: Signature::Valid,
        version: "2.0.0",
        target: &target,
        payload,
    }
    .build(&work, "update")
    .expect("the signed image");

    let mut client = suricatta(&stack, "cam-s1", &device, &key);

    // Polls with nothing queued: the device is online, its attributes are
    // recorded (configData), and nothing else happens.
    eventually(WAIT, "suricatta online with its attributes", || async {
        let (_, d) = stack.get(&admin, &format!("/devices/{}", device.id)).await;
        (d["status"] == "online" && d["reported"]["attributes"]["board"] == swu::BOARD)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(commands_of(&stack, &admin, device.id).await, 0);
    assert!(!target.exists());

    let command = upgrade(&stack, &admin, &device, "2.0.0", &swu).await;

    // Downloaded, verified and installed; suricatta then waits for the
    // reboot that proves the new software, and the command waits with it.
    eventually(WAIT, "the payload installed", || async {
        (std::fs::read(&target).ok().as_deref() == Some(payload.as_slice())).then_some(())
    })
    .await;
    let installing = stack.wait_for(&admin, command, "in_progress", WAIT).await;
    assert_eq!(
        installing["result"]["detail"]["phase"], "proceeding",
        "{installing}"
    );

    client
        .reboot(Boot::Succeeded)
        .expect("restarting suricatta");
    let done = stack.wait_for(&admin, command, "succeeded", WAIT).await;
    assert_eq!(done["result"]["detail"]["phase"], "closed", "{done}");
    let (_, d) = stack.get(&admin, &format!("/devices/{}", device.id)).await;
    assert_eq!(d["components"]["rootfs"]["version"], "2.0.0", "{d}");

    // Nothing more is offered, and nothing more happens.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(commands_of(&stack, &admin, device.id).await, 1);
    assert!(!client.has_exited(), "{}", client.log());
}

#[tokio::test]
async fn a_swu_signed_by_an_untrusted_key_ends_failed_and_installs_nothing() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device_of_type(&admin, "cam-s2", "camera").await;
    let work = stack.dir.path().join("images");
    std::fs::create_dir_all(&work).unwrap();
    let trusted = SigningKey::generate(&work, "vendor").expect("the device's key");
    let stranger = SigningKey::generate(&work, "stranger").expect("another key");
    let target = stack.dir.path().join("rootfs").join("app.conf");
    let swu = Image {
        signer: &trusted,
        signature: Signature::OtherKey(&stranger),
        version: "6.6.6",
        target: &target,
        payload: b"evil\n",
    }
    .build(&work, "forged")
    .expect("the forged image");

    let client = suricatta(&stack, "cam-s2", &device, &trusted);
    let command = upgrade(&stack, &admin, &device, "6.6.6", &swu).await;
    let failed = stack.wait_for(&admin, command, "failed", WAIT).await;
    // Which of suricatta's log lines reach the feedback varies; its own
    // log always says why.
    let error = failed["result"]["error"].as_str().unwrap_or_default();
    assert!(!error.is_empty(), "{failed}");
    let log = client.log();
    assert!(
        error.contains("signature") || log.contains("Authentication of all signatures failed"),
        "{failed}\n{log}"
    );
    assert!(!target.exists(), "a forged image was installed");
}
