//! The artifact store against a real S3-protocol server (moto, started by
//! `deploy/local/s3-server.sh`): what tend-platform's uploads and
//! tend-sync's downloads rely on, with the S3 protocol in the way
//! (multipart uploads, ranged GETs, presigned URLs).

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use std::time::Duration;
use tend_core::store::{ArtifactStore, PART_SIZE, StoreError};
use tend_tests::s3::S3Bucket;

fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i / 251) as u8)
        .collect()
}

fn body(data: &[u8]) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin + use<> {
    let chunks: Vec<_> = data
        .chunks(64 * 1024 - 3)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures_util::stream::iter(chunks)
}

fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn store_in(bucket: &S3Bucket) -> ArtifactStore {
    ArtifactStore::open_with(&bucket.url("artifacts"), &bucket.vars()).unwrap()
}

async fn read(store: &ArtifactStore, key: &str, range: std::ops::Range<u64>) -> Vec<u8> {
    let chunks: Vec<Bytes> = store
        .get_range(key, range)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    chunks.concat()
}

/// The keys of the objects in the bucket.
async fn keys_in(bucket: &S3Bucket) -> Vec<String> {
    let xml = reqwest::get(format!("{}/{}?list-type=2", bucket.endpoint, bucket.name))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(xml.contains("ListBucketResult"), "{xml}");
    xml.split("<Key>")
        .skip(1)
        .filter_map(|rest| rest.split_once("</Key>"))
        .map(|(key, _)| key.to_owned())
        .collect()
}

/// The multipart uploads S3 still holds open in the bucket (parts it
/// keeps, and bills, until someone aborts them).
async fn open_uploads(bucket: &S3Bucket) -> usize {
    let xml = reqwest::get(format!("{}/{}?uploads", bucket.endpoint, bucket.name))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(xml.contains("ListMultipartUploadsResult"), "{xml}");
    xml.matches("<Upload>").count()
}

#[tokio::test]
async fn an_upload_of_several_parts_to_s3_reads_back_whole_by_ranges() {
    let bucket = S3Bucket::create().await;
    let store = store_in(&bucket);
    store.check().await.unwrap();
    let data = pattern(2 * PART_SIZE + 123_457);

    let stored = store
        .put_stream("image", body(&data), u64::MAX)
        .await
        .unwrap();

    assert_eq!(stored.size, data.len() as u64);
    assert_eq!(stored.sha256, sha256(&data));
    assert_eq!(store.size("image").await.unwrap(), data.len() as u64);
    assert_eq!(open_uploads(&bucket).await, 0);
    // Ranges of an odd size, joined, are the object.
    let len = data.len() as u64;
    let step = 3 * 1024 * 1024 + 7;
    let mut joined = Vec::with_capacity(data.len());
    let mut start = 0;
    while start < len {
        let end = (start + step).min(len);
        joined.extend(read(&store, "image", start..end).await);
        start = end;
    }
    assert_eq!(sha256(&joined), stored.sha256);
    assert_eq!(read(&store, "image", 0..1).await, data[..1]);
    assert_eq!(
        read(&store, "image", len - 1..len).await,
        data[data.len() - 1..]
    );
    assert_eq!(read(&store, "image", 1000..2024).await, data[1000..2024]);
}

#[tokio::test]
async fn a_small_upload_to_s3_is_one_object_under_the_prefix() {
    let bucket = S3Bucket::create().await;
    let store = store_in(&bucket);

    let stored = store
        .put_stream("small", body(b"hello"), 1024)
        .await
        .unwrap();

    assert_eq!(stored.sha256, sha256(b"hello"));
    // Under the URL's prefix, not at the bucket's root.
    assert_eq!(keys_in(&bucket).await, ["artifacts/small"]);
}

#[tokio::test]
async fn a_failed_upload_to_s3_leaves_no_object_and_no_open_upload() {
    let bucket = S3Bucket::create().await;
    let store = store_in(&bucket);
    let data = pattern(2 * PART_SIZE + 10);

    // Past the limit, after a part was sent.
    let limit = PART_SIZE as u64 + 1;
    let err = store
        .put_stream("big", body(&data), limit)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::TooLarge(l) if l == limit),
        "{err:?}"
    );
    assert!(matches!(store.size("big").await, Err(StoreError::NotFound)));
    assert_eq!(open_uploads(&bucket).await, 0);

    // The client's body breaks off after two parts.
    let failing = body(&data).chain(futures_util::stream::iter([Err(std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "client went away",
    ))]));
    let err = store
        .put_stream("cut", failing, u64::MAX)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Body(_)), "{err:?}");
    assert!(matches!(store.size("cut").await, Err(StoreError::NotFound)));
    assert_eq!(open_uploads(&bucket).await, 0);
    assert!(keys_in(&bucket).await.is_empty());
}

#[tokio::test]
async fn a_presigned_url_serves_a_range_to_a_plain_http_client() {
    let bucket = S3Bucket::create().await;
    let store = store_in(&bucket);
    let data = pattern(300_000);
    store
        .put_stream("image", body(&data), u64::MAX)
        .await
        .unwrap();

    let url = store
        .presigned_get("image", Duration::from_secs(60))
        .await
        .unwrap()
        .expect("S3 has presigned URLs");
    let res = reqwest::Client::new()
        .get(url.as_str())
        .header("Range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();

    assert_eq!(res.status(), 206);
    assert_eq!(res.bytes().await.unwrap(), data[1000..2000]);
}

#[tokio::test]
async fn a_missing_object_in_s3_is_not_found_a_range_past_the_end_is_invalid_and_deleting_is_fine()
{
    let bucket = S3Bucket::create().await;
    let store = store_in(&bucket);
    assert!(matches!(
        store.size("nothing").await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.get_range("nothing", 0..10).await.err().unwrap(),
        StoreError::NotFound
    ));
    store.delete("nothing").await.unwrap();

    store.put_stream("k", body(b"abc"), 10).await.unwrap();
    assert!(matches!(
        store.get_range("k", 10..20).await.err().unwrap(),
        StoreError::InvalidRange(_)
    ));
    store.delete("k").await.unwrap();
    assert!(matches!(store.size("k").await, Err(StoreError::NotFound)));
}

#[tokio::test]
async fn a_bucket_that_does_not_exist_or_an_endpoint_that_is_down_fails_the_check() {
    let bucket = S3Bucket::create().await;
    let missing = ArtifactStore::open_with("s3://tend-no-such-bucket", &bucket.vars()).unwrap();
    assert!(matches!(
        missing.check().await,
        Err(StoreError::Unavailable(_))
    ));

    // A port nobody listens on: refused at once, retried a few times.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut vars = bucket.vars();
    vars.insert(
        "AWS_ENDPOINT_URL".into(),
        format!("http://127.0.0.1:{port}"),
    );
    let down = ArtifactStore::open_with(&bucket.url(""), &vars).unwrap();
    let started = std::time::Instant::now();
    assert!(matches!(
        down.check().await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(started.elapsed() < Duration::from_secs(30));
}
