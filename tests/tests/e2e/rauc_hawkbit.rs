//! rauc-hawkbit's `DDIClient` (PyPI `rauc-hawkbit` 0.2.0, aiohttp), a
//! second hawkBit DDI client that no one here wrote, managed by tend-sync:
//! tests/ddi/rauc_client.py polls until the queued upgrade is offered,
//! reads its deploymentBase, downloads the artifact in `Range` segments,
//! checks the reassembled bytes against the offered hashes and reports
//! progress (`cnt`/`of`), then success as rauc-hawkbit's own service does,
//! with no progress arguments (`"progress": {}` in the body); the command
//! ends `succeeded` and the device shows the new version.
//!
//! The client runs from the venv `deploy/local/test.sh` makes
//! (target/rauc-hawkbit-venv); without it the test fails, it never skips.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tend_tests::{Service, Stack};

use super::ddi::{artifact, queue_upgrade};

/// Generous for a loaded machine: the client itself polls for at most
/// 30 s, then downloads a few hundred kilobytes.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn python() -> PathBuf {
    let python = root().join("target/rauc-hawkbit-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: deploy/local/test.sh creates it (rauc-hawkbit 0.2.0 and aiohttp); \
         run it, or the venv step of it, first",
        python.display()
    );
    python
}

#[tokio::test]
async fn rauc_hawkbit_polls_downloads_in_ranges_and_reports_until_the_upgrade_succeeds() {
    let python = python();
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let device = stack.new_device_of_type(&admin, "cam-r1", "camera").await;
    // Not a multiple of the range size: the last segment is short.
    let bytes: Vec<u8> = (0..200_003_usize)
        .map(|i| (i * 31 + i / 251) as u8)
        .collect();
    let id = artifact(&stack, &admin, "5.1", "bundle.raucb", &bytes).await;
    let command = queue_upgrade(&stack, &admin, device.id, &id).await;

    let url = stack.url(Service::Sync);
    let host = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("tend-sync over plain HTTP: {url}"));
    let run = tokio::process::Command::new(&python)
        .arg(root().join("tests/ddi/rauc_client.py"))
        .args([host, "default", "cam-r1", &device.secret])
        .args(["--range-size", "65536", "--wait", "30"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(CLIENT_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| panic!("rauc_client.py still running after {CLIENT_TIMEOUT:?}"))
        .expect("running rauc_client.py");
    let output = format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "rauc_client.py: {}\n{output}",
        out.status
    );
    assert!(output.contains("in 4 ranges of at most 65536"), "{output}");

    let done = stack
        .wait_for(&admin, command, "succeeded", Duration::from_secs(10))
        .await;
    assert_eq!(done["result"]["detail"]["phase"], "closed", "{done}");
    let (_, d) = stack.get(&admin, &format!("/devices/{}", device.id)).await;
    assert_eq!(d["components"]["rootfs"]["version"], "5.1", "{d}");
}
