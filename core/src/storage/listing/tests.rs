//! Listings over real HTTP on 127.0.0.1: the embedded S3 server for the normal paths and
//! hand-rolled servers for hostile ones (an endless body, a redirect).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::Cursor;
use crate::storage::{
    AccessKeys, BucketClient, BucketLocation, EmbeddedS3, PeerClients, RetryPolicy, StorageError, TransferOptions,
};

/// Options for servers on 127.0.0.1: private endpoints allowed, quick retries.
fn local_opts() -> TransferOptions {
    TransferOptions {
        request_timeout: Duration::from_secs(10),
        transfer_timeout: Duration::from_secs(20),
        progress_timeout: Duration::from_secs(5),
        retry: RetryPolicy {
            max_attempts: 2,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(20),
        },
        allow_private_endpoints: true,
        ..TransferOptions::default()
    }
}

fn peer_at(addr: SocketAddr, opts: TransferOptions) -> BucketClient {
    let location: BucketLocation = format!("http://{addr}/hostile").parse().unwrap();
    PeerClients::new("us-east-1", opts).unwrap().client(&location)
}

/// How a hand-rolled server answers every request.
#[derive(Clone)]
enum Reply {
    /// 200 with a chunked body that never ends.
    Endless,
    /// 200 announcing a body of this many bytes, and sending none of it.
    Announced(u64),
    /// 302 to this URL.
    Redirect(String),
    /// 200 with this body.
    Body(&'static str),
}

/// What a hand-rolled server saw: requests, and body bytes it managed to write.
#[derive(Default)]
struct Seen {
    requests: AtomicUsize,
    written: AtomicU64,
}

async fn server(reply: Reply) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let counts = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (reply, seen) = (reply.clone(), counts.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                if socket.read(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
                seen.requests.fetch_add(1, Ordering::SeqCst);
                let head = match &reply {
                    Reply::Endless => "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_owned(),
                    Reply::Announced(len) => format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n"),
                    Reply::Redirect(to) => format!("HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\n\r\n"),
                    Reply::Body(body) => format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()),
                };
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                if let Reply::Endless = reply {
                    let chunk = [b' '; 16 * 1024];
                    let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
                    while socket.write_all(&frame).await.is_ok() {
                        seen.written.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                    }
                    return;
                }
                // Hold the connection open until the client gives up.
                let _ = socket.read(&mut buf).await;
            });
        }
    });
    (addr, seen)
}

const LISTING: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult><Name>hostile</Name>\
    <Prefix></Prefix><KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>\
    <Contents><Key>a.slice</Key><LastModified>2024-11-05T12:00:00.000Z</LastModified><Size>7</Size></Contents>\
    </ListBucketResult>";

#[tokio::test]
async fn a_listing_body_over_the_page_cap_is_cut_off_without_reading_the_rest() {
    let cap = 256 * 1024;
    let opts = TransferOptions { max_list_page_bytes: cap, ..local_opts() };
    let (addr, seen) = server(Reply::Endless).await;
    let start = Instant::now();
    let err = peer_at(addr, opts.clone()).list("").await.unwrap_err();
    match err {
        StorageError::TooLarge { limit, seen, .. } => {
            assert_eq!(limit, cap);
            assert!(seen > cap && seen <= cap + 64 * 1024, "read {seen} bytes for a cap of {cap}");
        }
        other => panic!("expected TooLarge, got {other}"),
    }
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
    assert_eq!(seen.requests.load(Ordering::SeqCst), 1, "TooLarge is not retried");
    // The connection was dropped: the server's writes fail once the socket buffers fill,
    // long before the endless body would have been read.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = u64::MAX;
    loop {
        let written = seen.written.load(Ordering::SeqCst);
        if written == last {
            break;
        }
        assert!(Instant::now() < deadline, "the server is still writing ({written} bytes)");
        last = written;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(last < 64 << 20, "the server wrote {last} bytes");

    // A body announced over the cap is refused before any of it is read.
    let (addr, _) = server(Reply::Announced(1 << 40)).await;
    let err = peer_at(addr, opts).list("").await.unwrap_err();
    assert!(matches!(err, StorageError::TooLarge { limit, seen, .. } if limit == cap && seen == 1 << 40), "{err}");
}

#[tokio::test]
async fn redirects_are_not_followed_by_listings_or_gets() {
    let (target, target_seen) = server(Reply::Body(LISTING)).await;
    // The target is a real listing: without the redirect, it lists.
    assert_eq!(peer_at(target, local_opts()).list("").await.unwrap().len(), 1);
    let before = target_seen.requests.load(Ordering::SeqCst);

    let (redirector, redirector_seen) = server(Reply::Redirect(format!("http://{target}/hostile/a.slice"))).await;
    let peer = peer_at(redirector, local_opts());
    for err in [peer.list("").await.unwrap_err(), peer.get_bytes("a.slice", 1 << 20).await.unwrap_err()] {
        let text = err.to_string();
        assert!(matches!(err, StorageError::Other { .. }), "{text}");
        assert!(text.contains("HTTP 302 Found") && text.contains("not followed"), "{text}");
        assert!(text.contains(&target.to_string()), "the error names the target: {text}");
    }
    assert_eq!(redirector_seen.requests.load(Ordering::SeqCst), 2, "one request each, no retry");
    assert_eq!(target_seen.requests.load(Ordering::SeqCst), before, "the redirect target was contacted");
}

#[tokio::test]
async fn peers_on_private_addresses_are_refused_before_any_request() {
    let (addr, seen) = server(Reply::Body(LISTING)).await;
    let strict = TransferOptions { allow_private_endpoints: false, ..local_opts() };
    let location: BucketLocation = format!("http://{addr}/hostile").parse().unwrap();
    let peers = PeerClients::new("us-east-1", strict.clone()).unwrap().client(&location);
    let single = BucketClient::anonymous(&location, "us-east-1", strict).unwrap();
    for peer in [peers, single] {
        let dest = tempfile::tempdir().unwrap();
        let errors = [
            peer.list("").await.unwrap_err(),
            peer.get_bytes("a.slice", 100).await.unwrap_err(),
            peer.get_to_file("a.slice", &dest.path().join("a.slice"), 100).await.unwrap_err(),
            peer.put("a.slice", Bytes::from_static(b"x")).await.unwrap_err(),
            peer.delete("a.slice").await.unwrap_err(),
        ];
        for err in errors {
            let text = err.to_string();
            assert!(
                matches!(&err, StorageError::Forbidden { location: l, .. } if *l == location.to_string()),
                "{text}"
            );
            assert!(!err.is_retryable());
            assert!(text.contains("127.0.0.1 is a loopback address"), "{text}");
        }
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), 0, "a refused peer was contacted");
    // Allowed, the same peer is read.
    assert_eq!(peer_at(addr, local_opts()).list("").await.unwrap().len(), 1);
}

#[tokio::test]
async fn the_embedded_server_lists_through_the_bounded_path_page_by_page() {
    let dir = tempfile::tempdir().unwrap();
    let server = EmbeddedS3::start(dir.path().join("s3"), AccessKeys::random()).await.unwrap();
    let location = server.create_bucket("list-bucket").await.unwrap();
    let credentials = || server.keys().to_credentials().unwrap();
    // The own bucket is trusted: the policy does not apply even with the default options.
    let own = BucketClient::new(&location, "us-east-1", credentials(), TransferOptions::default()).unwrap();
    let mut keys: Vec<String> = (0..230).map(|i| format!("page-{i:04}")).collect();
    for key in &keys {
        own.put(key, Bytes::from_static(b"0123456789")).await.unwrap();
    }
    own.put("other", Bytes::from_static(b"x")).await.unwrap();
    keys.sort();

    let listed = own.list("page-").await.unwrap();
    assert_eq!(listed.iter().map(|o| o.key.clone()).collect::<Vec<_>>(), keys);
    assert!(listed.iter().all(|o| o.size == 10 && o.last_modified_ms.is_some()));

    // Pages of 17 keys: fourteen continuation tokens, same answer, for the own client and
    // for an anonymous peer.
    let paged = TransferOptions { list_page_size: Some(17), ..local_opts() };
    let own_paged = BucketClient::new(&location, "us-east-1", credentials(), paged.clone()).unwrap();
    assert_eq!(own_paged.list("page-").await.unwrap(), listed);
    let peer = PeerClients::new("us-east-1", paged.clone()).unwrap().client(&location);
    assert_eq!(peer.list("page-").await.unwrap(), listed);
    assert_eq!(peer.list("").await.unwrap().len(), 231);

    // Each bound holds against a real server too.
    let tiny_page = TransferOptions { max_list_page_bytes: 1024, ..paged.clone() };
    let err = PeerClients::new("us-east-1", tiny_page).unwrap().client(&location).list("").await.unwrap_err();
    assert!(matches!(err, StorageError::TooLarge { limit: 1024, .. }), "{err}");
    let few_bytes = TransferOptions { max_list_bytes: 20_000, ..paged.clone() };
    let err = PeerClients::new("us-east-1", few_bytes).unwrap().client(&location).list("").await.unwrap_err();
    assert!(matches!(err, StorageError::TooLarge { limit: 20_000, .. }), "{err}");
    let few_entries = TransferOptions { max_list_entries: 100, ..paged };
    let err = PeerClients::new("us-east-1", few_entries).unwrap().client(&location).list("").await.unwrap_err();
    assert!(matches!(err, StorageError::TooLarge { limit: 100, seen: 102, .. }), "{err}");
    server.stop().await;
}

#[test]
fn the_cursor_follows_tokens_then_keys_and_refuses_a_listing_that_does_not_advance() {
    let mut cursor = Cursor::default();
    let s = |t: &str| Some(t.to_owned());
    assert_eq!(cursor.advance(true, s("t1"), s("a")), Ok(true));
    assert_eq!((cursor.token.as_deref(), cursor.start_after.as_deref()), (Some("t1"), None));
    // The same token again: continue after the last key instead.
    assert_eq!(cursor.advance(true, s("t1"), s("b")), Ok(true));
    assert_eq!((cursor.token.as_deref(), cursor.start_after.as_deref()), (None, Some("b")));
    // Neither a new token nor a new key: stuck.
    assert_eq!(cursor.advance(true, None, s("b")), Err("listing is truncated but does not advance"));

    // Three empty truncated pages in a row are tolerated; the fourth is not.
    let mut cursor = Cursor::default();
    for i in 0..3 {
        assert_eq!(cursor.advance(true, Some(format!("t{i}")), None), Ok(true));
    }
    assert_eq!(cursor.advance(true, s("t9"), None), Err("listing is truncated but its pages are empty"));
    assert_eq!(Cursor::default().advance(false, s("ignored"), None), Ok(false));
}
