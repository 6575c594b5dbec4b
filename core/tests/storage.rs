//! Storage against a real S3 server over HTTP: the embedded s3s server for the normal
//! paths, and small hand-rolled TCP servers for the hostile peers a real server will not
//! imitate (no Content-Length, silence, a trickle).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use tempfile::TempDir;
use tessera_core::hotkey::Hotkey;
use tessera_core::slice::{ObjectKey, SliceKind};
use tessera_core::storage::{
    AccessKeys, BucketClient, BucketLocation, EmbeddedS3, PeerClients, RetryPolicy, StorageError, TransferOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const MIB: usize = 1 << 20;

fn opts() -> TransferOptions {
    TransferOptions {
        request_timeout: Duration::from_secs(20),
        transfer_timeout: Duration::from_secs(60),
        progress_timeout: Duration::from_secs(10),
        retry: RetryPolicy {
            max_attempts: 2,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(50),
        },
        // The test servers are on 127.0.0.1.
        allow_private_endpoints: true,
        ..TransferOptions::default()
    }
}

struct Fixture {
    _dir: TempDir,
    downloads: TempDir,
    server: EmbeddedS3,
    location: BucketLocation,
    own: BucketClient,
}

async fn fixture(opts: TransferOptions) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let server = EmbeddedS3::start(dir.path().join("s3"), AccessKeys::random()).await.unwrap();
    let location = server.create_bucket("miner-bucket").await.unwrap();
    let own = BucketClient::new(&location, "us-east-1", server.keys().to_credentials().unwrap(), opts).unwrap();
    Fixture { _dir: dir, downloads: tempfile::tempdir().unwrap(), server, location, own }
}

/// Deterministic, non-repeating-looking content.
fn payload(len: usize, seed: u8) -> Bytes {
    let mut state = 0x2545_f491_4f6c_dd1du64 ^ u64::from(seed);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[tokio::test]
async fn put_and_get_round_trip_small_and_multipart() {
    let fx = fixture(TransferOptions { multipart_threshold: 8 * MIB, ..opts() }).await;

    let small = payload(1000, 1);
    fx.own.put("small.bin", small.clone()).await.unwrap();
    assert_eq!(fx.own.get_bytes("small.bin", 1000).await.unwrap(), small);

    // 20 MiB over an 8 MiB threshold: three parts of rust-s3's 8 MiB.
    let big = payload(20 * MIB, 2);
    fx.own.put("big.bin", big.clone()).await.unwrap();
    let dest = fx.downloads.path().join("nested").join("big.bin");
    let size = fx.own.get_to_file("big.bin", &dest, big.len() as u64).await.unwrap();
    assert_eq!(size, big.len() as u64);
    assert!(std::fs::read(&dest).unwrap() == big[..], "multipart object differs after the round trip");
    assert_eq!(dir_entries(dest.parent().unwrap()), ["big.bin"]);
    // The ETag of a multipart object is `md5-of-part-md5s-N`: it really went in 3 parts.
    let region = s3::Region::Custom {
        region: "us-east-1".into(),
        endpoint: fx.server.endpoint().origin().ascii_serialization(),
    };
    let raw =
        s3::Bucket::new("miner-bucket", region, fx.server.keys().to_credentials().unwrap()).unwrap().with_path_style();
    let (head, _) = raw.head_object("big.bin").await.unwrap();
    assert!(head.e_tag.as_deref().unwrap_or("").trim_matches('"').ends_with("-3"), "{:?}", head.e_tag);

    let listed = fx.own.list("").await.unwrap();
    let sizes: Vec<(&str, u64)> = listed.iter().map(|o| (o.key.as_str(), o.size)).collect();
    assert_eq!(sizes, [("big.bin", big.len() as u64), ("small.bin", 1000)]);
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    for o in &listed {
        let t = o.last_modified_ms.expect("the embedded server sends parseable dates");
        assert!((now_ms - 120_000..=now_ms + 5_000).contains(&t), "{o:?} vs now {now_ms}");
    }

    // Overwrite, then delete (and deleting again is fine).
    fx.own.put("small.bin", Bytes::from_static(b"v2")).await.unwrap();
    assert_eq!(&fx.own.get_bytes("small.bin", 10).await.unwrap()[..], b"v2");
    fx.own.delete("small.bin").await.unwrap();
    fx.own.delete("small.bin").await.unwrap();
    assert!(matches!(fx.own.get_bytes("small.bin", 10).await, Err(StorageError::NotFound { .. })));
    fx.server.stop().await;
}

#[tokio::test]
async fn missing_objects_are_not_found_without_leaving_files() {
    let fx = fixture(opts()).await;
    let dest = fx.downloads.path().join("x.slice");
    let err = fx.own.get_to_file("absent.slice", &dest, 100).await.unwrap_err();
    assert!(matches!(&err, StorageError::NotFound { key, .. } if key == "absent.slice"), "{err}");
    assert!(err.to_string().contains("miner-bucket/absent.slice"), "{err}");
    assert!(dir_entries(fx.downloads.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_follows_pagination_past_1000_keys() {
    let fx = fixture(opts()).await;
    let keys: Vec<String> = (0..1100).map(|i| format!("page-{i:05}")).collect();
    let results: Vec<_> = futures::stream::iter(keys.iter())
        .map(|k| fx.own.put(k, Bytes::from(k.clone().into_bytes())))
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(results.iter().all(Result::is_ok));
    fx.own.put("other-key", Bytes::from_static(b"x")).await.unwrap();

    // The server's default page is 1000 keys: this takes two pages.
    let listed = fx.own.list("page-").await.unwrap();
    let names: Vec<&str> = listed.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(names, keys.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(listed.iter().all(|o| o.size == 10));

    // Small pages: many continuation tokens, same answer.
    let paged = BucketClient::new(
        &fx.location,
        "us-east-1",
        fx.server.keys().to_credentials().unwrap(),
        TransferOptions { list_page_size: Some(97), ..opts() },
    )
    .unwrap();
    assert_eq!(paged.list("page-").await.unwrap(), listed);
    assert_eq!(paged.list("").await.unwrap().len(), 1101);

    // A listing over the configured maximum is refused rather than buffered.
    let capped = BucketClient::new(
        &fx.location,
        "us-east-1",
        fx.server.keys().to_credentials().unwrap(),
        TransferOptions { max_list_entries: 500, ..opts() },
    )
    .unwrap();
    assert!(matches!(capped.list("page-").await, Err(StorageError::TooLarge { limit: 500, .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_uploads_all_land() {
    let fx = fixture(opts()).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16u8 {
        let own = fx.own.clone();
        tasks.spawn(async move {
            let body = payload(256 * 1024 + usize::from(i), i);
            own.put(&format!("conc-{i:02}"), body.clone()).await.map(|_| (i, body))
        });
    }
    let mut uploaded = Vec::new();
    while let Some(done) = tasks.join_next().await {
        uploaded.push(done.unwrap().unwrap());
    }
    assert_eq!(uploaded.len(), 16);
    for (i, body) in uploaded {
        let got = fx.own.get_bytes(&format!("conc-{i:02}"), body.len() as u64).await.unwrap();
        assert!(got == body, "object {i} differs");
    }
    assert_eq!(fx.own.list("conc-").await.unwrap().len(), 16);
}

#[tokio::test]
async fn anonymous_reads_work_and_anonymous_writes_are_refused() {
    let fx = fixture(opts()).await;
    let body = payload(4096, 3);
    fx.own.put("public.slice", body.clone()).await.unwrap();

    // A peer only knows the commitment string.
    let commitment = fx.location.to_string();
    let peers = PeerClients::new("us-east-1", opts()).unwrap();
    let peer = peers.client(&commitment.parse().unwrap());
    assert_eq!(peer.get_bytes("public.slice", 4096).await.unwrap(), body);
    let dest = fx.downloads.path().join("public.slice");
    assert_eq!(peer.get_to_file("public.slice", &dest, 4096).await.unwrap(), 4096);
    assert_eq!(peer.list("").await.unwrap().len(), 1);

    let err = peer.put("evil.slice", Bytes::from_static(b"evil")).await.unwrap_err();
    assert!(matches!(err, StorageError::AccessDenied { .. }), "{err}");
    let err = peer.delete("public.slice").await.unwrap_err();
    assert!(matches!(err, StorageError::AccessDenied { .. }), "{err}");
    let names: Vec<String> = fx.own.list("").await.unwrap().into_iter().map(|o| o.key).collect();
    assert_eq!(names, ["public.slice"]);
}

#[tokio::test]
async fn a_wrong_secret_is_access_denied() {
    let fx = fixture(opts()).await;
    fx.own.put("k", Bytes::from_static(b"v")).await.unwrap();
    let wrong = AccessKeys::new(fx.server.keys().access_key.clone(), "not-the-secret");
    let client = BucketClient::new(&fx.location, "us-east-1", wrong.to_credentials().unwrap(), opts()).unwrap();
    for result in [
        client.put("k2", Bytes::from_static(b"v")).await.map(drop),
        client.list("").await.map(drop),
        client.get_bytes("k", 10).await.map(drop),
        client.delete("k").await,
    ] {
        let err = result.unwrap_err();
        assert!(matches!(err, StorageError::AccessDenied { .. }), "{err}");
    }
    let unknown = AccessKeys::random();
    let client = BucketClient::new(&fx.location, "us-east-1", unknown.to_credentials().unwrap(), opts()).unwrap();
    assert!(matches!(client.put("k3", Bytes::from_static(b"v")).await, Err(StorageError::AccessDenied { .. })));
    assert_eq!(fx.own.list("").await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_stopped_mid_download_leaves_no_file_and_restarts_with_its_data() {
    let fx = fixture(opts()).await;
    let body = payload(32 * MIB, 4);
    fx.own.put("large.slice", body.clone()).await.unwrap();
    let (addr, root, keys) = (fx.server.addr(), fx.server.root().to_path_buf(), fx.server.keys().clone());

    // The progress hook holds the download after its first bytes until the server is
    // down, so the stop lands mid-body every time.
    let (first_tx, first_rx) = mpsc::channel::<u64>();
    let (resume_tx, resume_rx) = mpsc::channel::<()>();
    let resume_rx = Mutex::new(resume_rx);
    let fired = AtomicBool::new(false);
    let hook = move |received: u64| {
        if !fired.swap(true, Ordering::SeqCst) {
            let _ = first_tx.send(received);
            let _ = resume_rx.lock().unwrap().recv_timeout(Duration::from_secs(30));
        }
    };
    let own = fx.own.clone();
    let dest = fx.downloads.path().join("large.slice");
    let dest2 = dest.clone();
    let download =
        tokio::spawn(async move { own.get_to_file_with_progress("large.slice", &dest2, 64 << 20, hook).await });

    let received = tokio::task::spawn_blocking(move || first_rx.recv_timeout(Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("the download never started");
    assert!(received > 0 && received < body.len() as u64);
    fx.server.stop().await;
    resume_tx.send(()).unwrap();

    let err = tokio::time::timeout(Duration::from_secs(60), download).await.unwrap().unwrap().unwrap_err();
    assert!(matches!(err, StorageError::Unavailable { .. }), "{err}");
    assert!(dir_entries(fx.downloads.path()).is_empty(), "left behind: {:?}", dir_entries(fx.downloads.path()));

    // While it is down every operation fails fast as Unavailable.
    assert!(matches!(fx.own.list("").await, Err(StorageError::Unavailable { .. })));

    // Same port, same directory: the object is still there.
    let server = EmbeddedS3::start_on(addr, &root, keys).await.unwrap();
    assert_eq!(server.addr(), addr);
    assert_eq!(fx.own.get_to_file("large.slice", &dest, 64 << 20).await.unwrap(), body.len() as u64);
    assert!(std::fs::read(&dest).unwrap() == body[..]);
    server.stop().await;
}

#[tokio::test]
async fn a_peer_object_over_the_cap_is_too_large_and_leaves_no_file() {
    let fx = fixture(opts()).await;
    fx.own.put("fat.slice", payload(2 * MIB, 5)).await.unwrap();
    let peer = PeerClients::new("us-east-1", opts()).unwrap().client(&fx.location);
    let dest = fx.downloads.path().join("fat.slice");
    let err = peer.get_to_file("fat.slice", &dest, MIB as u64).await.unwrap_err();
    match &err {
        StorageError::TooLarge { key, limit, seen, .. } => {
            assert_eq!((key.as_str(), *limit, *seen), ("fat.slice", MIB as u64, 2 * MIB as u64));
        }
        other => panic!("expected TooLarge, got {other}"),
    }
    assert!(dir_entries(fx.downloads.path()).is_empty());
    assert!(matches!(peer.get_bytes("fat.slice", 100).await, Err(StorageError::TooLarge { .. })));
}

/// What a hand-rolled hostile server does with each request.
#[derive(Clone, Copy)]
enum Hostile {
    /// Reads the request and never answers.
    Silent,
    /// Answers 200 with a chunked body that never ends (no Content-Length to check).
    Endless,
    /// Announces 1000 bytes, sends 10, then goes quiet.
    Trickle,
}

async fn hostile_server(behaviour: Hostile) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let _ = socket.read(&mut buf).await;
                match behaviour {
                    Hostile::Silent => {}
                    Hostile::Endless => {
                        let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
                        if socket.write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                        let chunk = [b'A'; 64 * 1024];
                        loop {
                            let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
                            if socket.write_all(&frame).await.is_err() {
                                return;
                            }
                        }
                    }
                    Hostile::Trickle => {
                        let reply = "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789";
                        if socket.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
                // Hold the connection open until the client gives up.
                let _ = socket.read(&mut buf).await;
            });
        }
    });
    addr
}

fn peer_at(addr: SocketAddr, opts: TransferOptions) -> BucketClient {
    let location: BucketLocation = format!("http://{addr}/hostile").parse().unwrap();
    PeerClients::new("us-east-1", opts).unwrap().client(&location)
}

#[tokio::test]
async fn an_endless_body_without_length_is_cut_off_at_the_cap() {
    let addr = hostile_server(Hostile::Endless).await;
    let peer = peer_at(addr, opts());
    let downloads = tempfile::tempdir().unwrap();
    let dest = downloads.path().join("endless.slice");
    let cap = 3 * MIB as u64;
    let err = peer.get_to_file("endless.slice", &dest, cap).await.unwrap_err();
    match err {
        StorageError::TooLarge { limit, seen, .. } => {
            assert_eq!(limit, cap);
            assert!(seen > cap && seen <= cap + 64 * 1024, "read {seen} bytes for a cap of {cap}");
        }
        other => panic!("expected TooLarge, got {other}"),
    }
    assert!(dir_entries(downloads.path()).is_empty());
}

#[tokio::test]
async fn silent_trickling_and_absent_servers_fail_in_bounded_time() {
    let quick = TransferOptions {
        progress_timeout: Duration::from_millis(300),
        transfer_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(2),
        ..opts()
    };
    let downloads = tempfile::tempdir().unwrap();
    let dest = downloads.path().join("x.slice");

    let start = Instant::now();
    let err = peer_at(hostile_server(Hostile::Silent).await, quick.clone())
        .get_to_file("x.slice", &dest, 1 << 20)
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Stalled { received: 0, .. }), "{err}");
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());

    let start = Instant::now();
    let err = peer_at(hostile_server(Hostile::Trickle).await, quick.clone())
        .get_to_file("x.slice", &dest, 1 << 20)
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Stalled { received: 10, .. }), "{err}");
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());

    // A listing against a silent server is bounded by the request deadline.
    let start = Instant::now();
    let err = peer_at(hostile_server(Hostile::Silent).await, quick.clone()).list("").await.unwrap_err();
    assert!(matches!(err, StorageError::Timeout { .. }), "{err}");
    assert!(start.elapsed() < Duration::from_secs(8), "took {:?}", start.elapsed());

    // Nothing listening at all: refused at once.
    let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = free.local_addr().unwrap();
    drop(free);
    let start = Instant::now();
    let err = peer_at(addr, quick).get_bytes("x.slice", 100).await.unwrap_err();
    assert!(matches!(err, StorageError::Unavailable { .. }), "{err}");
    assert!(start.elapsed() < Duration::from_secs(3), "took {:?}", start.elapsed());
    assert!(dir_entries(downloads.path()).is_empty());
}

#[tokio::test]
async fn a_cancelled_download_leaves_no_file() {
    // The caller's own deadline (a window ending) drops the download mid-body.
    let addr = hostile_server(Hostile::Trickle).await;
    let peer = peer_at(addr, opts());
    let downloads = tempfile::tempdir().unwrap();
    let dest = downloads.path().join("x.slice");
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen2 = seen.clone();
    let download = peer.get_to_file_with_progress("x.slice", &dest, 1 << 20, move |n| seen2.store(n, Ordering::SeqCst));
    let mut download = Box::pin(download);
    // Drive the download until its first bytes are on disk (polling, with a deadline),
    // then cancel it by dropping it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "no bytes arrived");
        tokio::select! {
            r = &mut download => panic!("the download ended: {r:?}"),
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
    }
    assert_eq!(seen.load(Ordering::SeqCst), 10);
    assert_eq!(dir_entries(downloads.path()).len(), 1, "the temp file should exist mid-download");
    drop(download);
    assert!(dir_entries(downloads.path()).is_empty(), "left behind: {:?}", dir_entries(downloads.path()));
}

#[tokio::test]
async fn delete_slices_before_deletes_exactly_the_older_slice_names() {
    let fx = fixture(opts()).await;
    let alice = Hotkey([1; 32]);
    let bob = Hotkey([2; 32]);
    let mut expected_kept = Vec::new();
    for window in 5..10u64 {
        for (kind, hotkey) in [(SliceKind::State, alice), (SliceKind::Delta, alice), (SliceKind::Delta, bob)] {
            let key = ObjectKey::new(kind, window, hotkey).to_string();
            fx.own.put(&key, Bytes::from_static(b"s")).await.unwrap();
            if window >= 8 {
                expected_kept.push(key);
            }
        }
    }
    // Another protocol version of an old window is still an old slice.
    let old_v9 = ObjectKey { version: 9, ..ObjectKey::new(SliceKind::State, 1, bob) }.to_string();
    // Not slice names: left alone whatever they look like.
    let foreign = [
        "notes.txt".to_owned(),
        "state-1-garbage.slice".to_owned(),
        format!("delta-01-{alice}-v1.slice"),
        format!("state-2-{alice}-v1.pt"),
    ];
    for key in foreign.iter().chain([&old_v9]) {
        fx.own.put(key, Bytes::from_static(b"x")).await.unwrap();
    }
    expected_kept.extend(foreign.iter().cloned());
    expected_kept.sort();

    let deleted = fx.own.delete_slices_before(8).await.unwrap();
    assert_eq!(deleted, 3 * 3 + 1);
    let remaining: Vec<String> = fx.own.list("").await.unwrap().into_iter().map(|o| o.key).collect();
    assert_eq!(remaining, expected_kept);
    assert_eq!(fx.own.delete_slices_before(8).await.unwrap(), 0);
}

#[tokio::test]
async fn hostile_commitments_are_rejected_and_a_valid_one_reaches_the_bucket() {
    for bad in [
        "",
        "s3://",
        "s3://Bad_Bucket",
        "https://host",
        "https://host/bucket/extra",
        "https://user:pass@host/bucket",
        "gopher://host/bucket",
        "https://host/bucket?x-id=1",
        "http://127.0.0.1:9000/../../etc",
        "https://host/\u{0}bucket",
    ] {
        let err = bad.parse::<BucketLocation>().unwrap_err();
        assert!(err.to_string().contains("invalid bucket location"), "{bad:?}: {err}");
    }
    let fx = fixture(opts()).await;
    fx.own.put("ok", Bytes::from_static(b"ok")).await.unwrap();
    let commitment = format!("{}/{}", fx.server.endpoint().as_str().trim_end_matches('/'), "miner-bucket");
    let location: BucketLocation = commitment.parse().unwrap();
    assert_eq!(location, fx.location);
    let peer = PeerClients::new("us-east-1", opts()).unwrap().client(&location);
    assert_eq!(&peer.get_bytes("ok", 2).await.unwrap()[..], b"ok");
}

/// s3s-fs deletes an object but keeps its `.internal.json`/`.metadata.json` side files; the
/// embedded server's sweep removes those of deleted objects and nothing else.
#[tokio::test]
async fn the_sweep_removes_side_files_of_deleted_objects_only() {
    let fx = fixture(opts()).await;
    let root = fx.server.root().to_path_buf();
    let side_files = || dir_entries(&root).into_iter().filter(|n| n.starts_with(".bucket-")).count();
    fx.own.put("kept.slice", payload(100, 3)).await.unwrap();
    fx.own.put("gone.slice", payload(100, 4)).await.unwrap();
    let before = side_files();
    assert!(before >= 2, "s3s-fs writes side files: {:?}", dir_entries(&root));
    fx.own.delete("gone.slice").await.unwrap();
    assert_eq!(side_files(), before, "s3s-fs leaves the deleted object's side files behind");

    // Too young to be touched: a put in flight may be writing them.
    assert_eq!(tessera_core::storage::sweep_orphans(&root, Duration::from_secs(3600)).unwrap(), 0);
    let removed = tessera_core::storage::sweep_orphans(&root, Duration::ZERO).unwrap();
    assert!(removed >= 1, "the deleted object's side files go");
    assert_eq!(side_files(), before - removed);
    assert_eq!(fx.own.get_bytes("kept.slice", 100).await.unwrap(), payload(100, 3), "the kept object is intact");
    assert_eq!(tessera_core::storage::sweep_orphans(&root, Duration::ZERO).unwrap(), 0, "nothing else is removed");
}
