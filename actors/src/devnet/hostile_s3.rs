//! A hostile peer's own S3 server, for the devnet's adversaries: an HTTP front on
//! 127.0.0.1 that forwards every request to the devnet's S3 server unchanged (signatures
//! included: the `Host` header travels as signed) and misbehaves on what readers see —
//! answering slowly (`slowbucket`) or claiming earlier `LastModified` times in its
//! listings (`timeliar`). Nothing in the production path knows it exists.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::net::TcpListener;
use tracing::debug;

use crate::task::AbortOnDrop;

/// How the front misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostility {
    /// Every peer's read (anonymous GET: listings and objects) answered after this long.
    Slow(Duration),
    /// Every `LastModified` of a listing moved this much earlier.
    EarlierTimes(Duration),
}

/// A running front; dropping it stops it.
pub struct HostileS3 {
    addr: SocketAddr,
    _task: AbortOnDrop,
}

struct Front {
    upstream: SocketAddr,
    hostility: Hostility,
    client: reqwest::Client,
}

impl HostileS3 {
    /// Starts a front for `upstream` on a free port of 127.0.0.1.
    pub async fn start(upstream: SocketAddr, hostility: Hostility) -> std::io::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
        let addr = listener.local_addr()?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(std::io::Error::other)?;
        let front = Arc::new(Front { upstream, hostility, client });
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let front = front.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let front = front.clone();
                        async move { Ok::<_, Infallible>(front.forward(req).await) }
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
                        debug!(error = %e, "hostile S3 connection ended");
                    }
                });
            }
        });
        Ok(Self { addr, _task: AbortOnDrop(task) })
    }

    /// Its endpoint, `http://127.0.0.1:port`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Front {
    async fn forward(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
            return status(StatusCode::BAD_REQUEST);
        };
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let url = format!("http://{}{path}", self.upstream);
        let sent =
            self.client.request(parts.method.clone(), url).headers(parts.headers.clone()).body(body).send().await;
        let Ok(answer) = sent else { return status(StatusCode::BAD_GATEWAY) };
        let (code, headers) = (answer.status(), answer.headers().clone());
        let Ok(mut bytes) = answer.bytes().await else { return status(StatusCode::BAD_GATEWAY) };
        // The owner reads its own bucket with its keys: only the peers (anonymous) are hurt.
        let anonymous = !parts.headers.contains_key(hyper::header::AUTHORIZATION) && !path.contains("X-Amz-Signature");
        match self.hostility {
            Hostility::Slow(delay) if parts.method == Method::GET && anonymous => tokio::time::sleep(delay).await,
            Hostility::EarlierTimes(by) if path.contains("list-type=2") => {
                bytes = Bytes::from(earlier_times(&String::from_utf8_lossy(&bytes), by));
            }
            _ => {}
        }
        let mut response = Response::new(Full::new(bytes.clone()));
        *response.status_mut() = code;
        for (name, value) in &headers {
            if name != hyper::header::CONTENT_LENGTH && name != hyper::header::TRANSFER_ENCODING {
                response.headers_mut().insert(name.clone(), value.clone());
            }
        }
        response
    }
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = code;
    response
}

/// `xml` with every `<LastModified>` moved `by` earlier (times it cannot parse kept).
fn earlier_times(xml: &str, by: Duration) -> String {
    const OPEN: &str = "<LastModified>";
    const CLOSE: &str = "</LastModified>";
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml;
    while let Some(at) = rest.find(OPEN) {
        let (head, tail) = rest.split_at(at + OPEN.len());
        out.push_str(head);
        let Some(end) = tail.find(CLOSE) else {
            rest = tail;
            break;
        };
        let moved = OffsetDateTime::parse(&tail[..end], &Rfc3339)
            .ok()
            .and_then(|t| (t - by).format(&Rfc3339).ok())
            .unwrap_or_else(|| tail[..end].to_owned());
        out.push_str(&moved);
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_times_are_moved_earlier_and_the_rest_kept() {
        let xml = "<a><LastModified>2026-12-04T18:00:10Z</LastModified><Key>k</Key>\
                   <LastModified>garbage</LastModified></a>";
        let moved = earlier_times(xml, Duration::from_secs(10));
        assert_eq!(
            moved,
            "<a><LastModified>2026-12-04T18:00:00Z</LastModified><Key>k</Key><LastModified>garbage</LastModified></a>"
        );
    }
}
