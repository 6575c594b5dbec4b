//! Which network addresses a peer's bucket may send us to.
//!
//! A peer commits its bucket location on chain, so it chooses where our requests go. Left
//! alone, it could point them at our own loopback services, the cloud metadata endpoint
//! (169.254.169.254) or machines on our private network, and use our answers (or timing)
//! to probe them. Peers' buckets are therefore only reached on public addresses, unless
//! `TransferOptions::allow_private_endpoints` says otherwise (the devnet and tests, whose
//! servers listen on 127.0.0.1).
//!
//! Two checks enforce it. An endpoint that is an IP literal or the name `localhost` is
//! refused when the client is made ([`check_location`]). A DNS name is checked by the
//! resolver of our HTTP client ([`http_client`]): every address it resolves to must be
//! public, and the connection goes to exactly the addresses checked, so a name that
//! resolves to a public address once and a private one later (DNS rebinding) gains nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use thiserror::Error;
use url::Host;

use super::error::StorageError;
use super::location::BucketLocation;

/// Whether `ip` is an ordinary public unicast address, one a peer's bucket may be on.
///
/// Refused: loopback (127/8, ::1), private (10/8, 172.16/12, 192.168/16, fc00::/7),
/// link-local (169.254/16, fe80::/10), shared CGNAT space (100.64/10), "this network"
/// (0/8, ::), multicast, reserved (240/4, broadcast included), deprecated site-local
/// (fec0::/10) and IPv4-compatible (::/96) addresses. IPv4-mapped (::ffff:0:0/96) and
/// NAT64 (64:ff9b::/96) addresses are judged by the IPv4 address inside them.
pub fn is_public_address(ip: IpAddr) -> bool {
    non_public_kind(ip).is_none()
}

/// What kind of non-public address `ip` is ("a loopback address"), or `None` if public.
pub fn non_public_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    let kind = if ip.is_loopback() {
        "a loopback address"
    } else if ip.is_private() {
        "a private address"
    } else if ip.is_link_local() {
        "a link-local address"
    } else if a == 0 {
        "an unspecified (\"this network\") address"
    } else if a == 100 && (b & 0xc0) == 64 {
        "a carrier-grade NAT (shared) address"
    } else if ip.is_multicast() {
        "a multicast address"
    } else if a >= 240 {
        "a reserved or broadcast address"
    } else {
        return None;
    };
    Some(kind)
}

fn non_public_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return non_public_v4(v4);
    }
    let segments = ip.segments();
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., hi, lo] = segments;
        return non_public_v4(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
    }
    let first = segments[0];
    let kind = if ip.is_loopback() {
        "a loopback address"
    } else if ip.is_unspecified() {
        "an unspecified address"
    } else if segments[..6] == [0; 6] {
        "an IPv4-compatible address"
    } else if (first & 0xfe00) == 0xfc00 {
        "a private (unique local) address"
    } else if (first & 0xffc0) == 0xfe80 {
        "a link-local address"
    } else if (first & 0xffc0) == 0xfec0 {
        "a site-local address"
    } else if ip.is_multicast() {
        "a multicast address"
    } else {
        return None;
    };
    Some(kind)
}

/// Why the address policy refuses `location` without resolving anything: its endpoint is
/// a non-public IP literal or names `localhost`. `Ok` for DNS names, which the resolver of
/// [`http_client`] checks when connecting, and for AWS buckets.
pub(super) fn check_location(location: &BucketLocation) -> Result<(), String> {
    let BucketLocation::Endpoint { endpoint, .. } = location else {
        return Ok(());
    };
    let (shown, ip) = match endpoint.host() {
        Some(Host::Ipv4(v4)) => (v4.to_string(), IpAddr::V4(v4)),
        Some(Host::Ipv6(v6)) => (v6.to_string(), IpAddr::V6(v6)),
        Some(Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            // RFC 6761: `localhost` and every name under it are loopback.
            if name == "localhost" || name.ends_with(".localhost") {
                return Err(format!("the endpoint host {name:?} is {}", refusal_tail("a loopback name")));
            }
            return Ok(());
        }
        None => return Err("the endpoint has no host".into()),
    };
    match non_public_kind(ip) {
        Some(kind) => Err(format!("the endpoint host {shown} is {}", refusal_tail(kind))),
        None => Ok(()),
    }
}

fn refusal_tail(kind: &str) -> String {
    format!("{kind}; a peer's bucket must be on a public address (allow_private_endpoints permits others)")
}

/// A name that resolved to a non-public address, refused by the resolver of
/// [`http_client`]. It travels inside the `reqwest::Error` of the refused request;
/// [`refusal`] finds it there.
#[derive(Debug, Clone, Error)]
#[error("{host} resolves to {addr}, {}", refusal_tail(kind))]
pub(super) struct AddressRefused {
    pub(super) host: String,
    pub(super) addr: IpAddr,
    pub(super) kind: &'static str,
}

/// Resolves with the system resolver and fails unless every address is public. The
/// addresses it returns are those it checked, so the connection cannot go elsewhere.
#[derive(Debug, Clone, Copy)]
struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            screen(&host, &addrs)?;
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// Fails on the first non-public address among those `host` resolved to.
fn screen(host: &str, addrs: &[SocketAddr]) -> Result<(), AddressRefused> {
    match addrs.iter().find_map(|a| non_public_kind(a.ip()).map(|kind| (a.ip(), kind))) {
        Some((addr, kind)) => {
            tracing::warn!(host, %addr, kind, "refused a bucket host that resolves to a non-public address");
            Err(AddressRefused { host: host.to_owned(), addr, kind })
        }
        None => Ok(()),
    }
}

/// The HTTP client for GETs and listings. It never follows a redirect: a bucket answers
/// for itself, and a redirect would let a peer send us (with our signature, for the own
/// bucket) to any address after the checks. With `public_only`, names are resolved by a
/// resolver that refuses non-public addresses (see the module documentation).
///
/// With an HTTP proxy configured in the environment (`HTTP_PROXY`, `HTTPS_PROXY`), the
/// proxy resolves names, so only [`check_location`] applies to peers' endpoints.
pub(super) fn http_client(public_only: bool) -> Result<reqwest::Client, StorageError> {
    let mut builder = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
    if public_only {
        builder = builder.dns_resolver(Arc::new(PublicOnly));
    }
    builder.build().map_err(|e| StorageError::Config(format!("building the HTTP client: {e}")))
}

/// The resolver's refusal inside a failed request's error chain, if that is why it failed.
pub(super) fn refusal(error: &reqwest::Error) -> Option<&AddressRefused> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(refused) = e.downcast_ref::<AddressRefused>() {
            return Some(refused);
        }
        source = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn public_addresses_pass_and_every_special_range_is_refused() {
        for public in ["8.8.8.8", "1.1.1.1", "100.63.255.255", "100.128.0.1", "172.32.0.1", "2606:4700::1111"] {
            assert!(is_public_address(ip(public)), "{public}");
        }
        for (addr, kind) in [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.254", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("100.64.0.1", "carrier-grade"),
            ("100.127.255.255", "carrier-grade"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("240.0.0.1", "reserved"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("::10.0.0.1", "IPv4-compatible"),
            ("fc00::1", "unique local"),
            ("fd12:3456::1", "unique local"),
            ("fe80::1", "link-local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:192.168.0.1", "private"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
        ] {
            let got = non_public_kind(ip(addr));
            assert!(got.is_some_and(|k| k.contains(kind)), "{addr}: {got:?}");
            assert!(!is_public_address(ip(addr)), "{addr}");
        }
        assert!(is_public_address(ip("::ffff:8.8.8.8")));
        assert!(is_public_address(ip("64:ff9b::808:808")));
    }

    #[test]
    fn locations_on_private_literals_and_localhost_are_refused_and_public_ones_pass() {
        let check = |text: &str| check_location(&text.parse().unwrap());
        for refused in [
            "http://127.0.0.1:9000/bucket",
            "http://10.0.0.7/bucket",
            "https://[::1]:9000/bucket",
            "http://[::ffff:10.0.0.1]/bucket",
            "http://localhost:9000/bucket",
            "http://LocalHost./bucket",
            "http://minio.localhost/bucket",
            "http://169.254.169.254/bucket",
            // The URL parser reads these as 127.0.0.1.
            "http://2130706433/bucket",
            "http://0x7f.1/bucket",
        ] {
            let reason = check(refused).unwrap_err();
            assert!(reason.contains("allow_private_endpoints"), "{refused}: {reason}");
        }
        assert!(check("http://127.0.0.1:9000/bucket").unwrap_err().contains("127.0.0.1 is a loopback address"));
        for allowed in ["http://8.8.8.8:9000/bucket", "https://[2606:4700::1111]/bucket", "https://s3.example.com/b-1"]
        {
            assert_eq!(check(allowed), Ok(()), "{allowed}");
        }
        assert_eq!(check("s3://bucket"), Ok(()));
    }

    #[test]
    fn the_screen_refuses_a_name_if_any_address_is_private() {
        let public: SocketAddr = "8.8.8.8:0".parse().unwrap();
        let private: SocketAddr = "10.0.0.1:0".parse().unwrap();
        assert!(screen("bucket.example", &[public]).is_ok());
        let err = screen("bucket.example", &[public, private]).unwrap_err();
        assert_eq!(err.addr, private.ip());
        assert!(err.to_string().starts_with("bucket.example resolves to 10.0.0.1, a private address"), "{err}");
    }

    /// Through reqwest: `localhost` resolves (from the hosts file, no network) to loopback,
    /// the public-only resolver refuses it, no connection is made, and the refusal is
    /// found in the error chain.
    #[tokio::test]
    async fn the_public_only_client_refuses_a_name_resolving_to_loopback_without_connecting() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = tokio::spawn(async move { listener.accept().await.is_ok() });

        let client = http_client(true).unwrap();
        let err = client.get(format!("http://localhost:{port}/bucket")).send().await.unwrap_err();
        let refused = refusal(&err).unwrap_or_else(|| panic!("no refusal in {err:?}"));
        assert_eq!(refused.host, "localhost");
        assert!(refused.addr.is_loopback(), "{refused}");

        // The unrestricted client reaches the same server by the same name.
        let open = http_client(false).unwrap();
        let connect = tokio::spawn(async move { open.get(format!("http://localhost:{port}/bucket")).send().await });
        let reached = tokio::time::timeout(std::time::Duration::from_secs(5), accepted).await;
        assert!(matches!(reached, Ok(Ok(true))), "the unrestricted client did not connect");
        connect.abort();
    }
}
