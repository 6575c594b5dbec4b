//! Where a bucket is: the string a neuron commits on chain (DESIGN §1).
//!
//! `s3://bucket` names an AWS bucket (region from configuration, virtual-host style);
//! `https://host[:port]/bucket` or `http://host[:port]/bucket` names a bucket on any
//! S3-compatible endpoint, addressed path-style. The string comes from a peer, so parsing
//! is strict, bounded and never panics.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;
use url::Url;

use super::BucketName;

/// Longest commitment accepted; real ones are well under 100 characters.
pub const MAX_LOCATION_LEN: usize = 256;

/// A validated bucket location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketLocation {
    /// An AWS bucket, `s3://bucket`.
    Aws { bucket: BucketName },
    /// A bucket on an S3-compatible endpoint, `scheme://host[:port]/bucket`.
    Endpoint {
        /// `http` or `https`, host and port only (no path, query or credentials).
        endpoint: Url,
        bucket: BucketName,
    },
}

/// Why a commitment string is not a bucket location.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid bucket location {input:?}: {reason}")]
pub struct LocationError {
    /// The input, shortened to a printable prefix when it is long.
    pub input: String,
    pub reason: String,
}

impl BucketLocation {
    /// An AWS bucket.
    pub fn aws(bucket: BucketName) -> Self {
        BucketLocation::Aws { bucket }
    }

    /// A bucket on an S3-compatible endpoint such as `http://127.0.0.1:9000`.
    pub fn endpoint(endpoint: &Url, bucket: BucketName) -> Result<Self, LocationError> {
        let text = format!("{}/{}", endpoint.origin().ascii_serialization(), bucket);
        let parsed: BucketLocation = text.parse()?;
        // The origin drops any path the given URL had; refuse rather than silently ignore it.
        if !matches!(endpoint.path(), "" | "/") || endpoint.query().is_some() {
            return Err(LocationError::new(endpoint.as_str(), "the endpoint must not have a path or query"));
        }
        Ok(parsed)
    }

    pub fn bucket(&self) -> &BucketName {
        match self {
            BucketLocation::Aws { bucket } | BucketLocation::Endpoint { bucket, .. } => bucket,
        }
    }

    /// The endpoint's origin (`http://127.0.0.1:9000`), or `None` for AWS.
    pub fn endpoint_origin(&self) -> Option<String> {
        match self {
            BucketLocation::Aws { .. } => None,
            BucketLocation::Endpoint { endpoint, .. } => Some(endpoint.origin().ascii_serialization()),
        }
    }
}

impl LocationError {
    fn new(input: &str, reason: impl Into<String>) -> Self {
        // A hostile commitment may be huge or full of control characters: keep the message
        // short and printable.
        let mut shown: String = input.chars().take(80).collect();
        if input.chars().count() > 80 {
            shown.push('…');
        }
        Self { input: shown, reason: reason.into() }
    }
}

/// Hashes the canonical string, which equal locations share (a miner keys peers by it).
impl std::hash::Hash for BucketLocation {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.to_string().hash(state);
    }
}

impl fmt::Display for BucketLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BucketLocation::Aws { bucket } => write!(f, "s3://{bucket}"),
            BucketLocation::Endpoint { endpoint, bucket } => {
                write!(f, "{}/{bucket}", endpoint.origin().ascii_serialization())
            }
        }
    }
}

impl FromStr for BucketLocation {
    type Err = LocationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| LocationError::new(input, reason);
        if input.len() > MAX_LOCATION_LEN {
            return Err(err(format!("longer than {MAX_LOCATION_LEN} bytes")));
        }
        if let Some(c) = input.chars().find(|c| c.is_control() || c.is_whitespace()) {
            return Err(err(format!("contains the character {c:?}")));
        }
        let Some((scheme, rest)) = input.split_once("://") else {
            return Err(err("expected s3://bucket or http(s)://host[:port]/bucket".into()));
        };
        match scheme {
            "s3" => {
                if rest.is_empty() {
                    return Err(err("missing bucket name".into()));
                }
                if rest.contains('/') {
                    return Err(err("an s3:// location is only a bucket name, with no path".into()));
                }
                let bucket = BucketName::parse(rest).map_err(|e| err(format!("bucket name {rest:?}: {e}")))?;
                Ok(BucketLocation::Aws { bucket })
            }
            "http" | "https" => {
                // The URL parser would quietly resolve `..`, doubled and back slashes; a
                // commitment has exactly one path separator, before the bucket name.
                if rest.contains('\\') {
                    return Err(err("contains a backslash".into()));
                }
                if rest.matches('/').count() > 1 {
                    return Err(err("extra path segments after the bucket name".into()));
                }
                parse_endpoint(input, &err)
            }
            other => Err(err(format!("unknown scheme {other:?} (expected s3, http or https)"))),
        }
    }
}

fn parse_endpoint(input: &str, err: &dyn Fn(String) -> LocationError) -> Result<BucketLocation, LocationError> {
    let url = Url::parse(input).map_err(|e| err(format!("not a URL: {e}")))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(err("must not contain credentials".into()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(err("must not have a query or fragment".into()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(err("missing host".into()));
    }
    let segments: Vec<&str> = url.path_segments().map(|s| s.collect()).unwrap_or_default();
    let bucket = match segments.as_slice() {
        [] | [""] => {
            return Err(err("missing bucket name (expected scheme://host[:port]/bucket)".into()));
        }
        [bucket] => *bucket,
        _ => return Err(err("extra path segments after the bucket name".into())),
    };
    let bucket = BucketName::parse(bucket).map_err(|e| err(format!("bucket name {bucket:?}: {e}")))?;
    let mut endpoint = url;
    endpoint.set_path("");
    Ok(BucketLocation::Endpoint { endpoint, bucket })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<BucketLocation, LocationError> {
        s.parse()
    }

    #[test]
    fn canonical_locations_round_trip() {
        for s in [
            "s3://my-bucket",
            "s3://a.b.c",
            "https://s3.example.com/bucket-1",
            "https://s3.example.com:8443/bucket-1",
            "http://127.0.0.1:9000/devnet",
            "http://[::1]:9000/devnet",
            "http://localhost/abc",
        ] {
            let loc = parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(loc.to_string(), s);
            assert_eq!(parse(&loc.to_string()).unwrap(), loc);
        }
    }

    #[test]
    fn parts_are_exposed() {
        let loc = parse("http://127.0.0.1:9000/devnet").unwrap();
        assert_eq!(loc.bucket().as_str(), "devnet");
        assert_eq!(loc.endpoint_origin().as_deref(), Some("http://127.0.0.1:9000"));
        let aws = parse("s3://devnet").unwrap();
        assert_eq!(aws.endpoint_origin(), None);
        assert_eq!(aws, BucketLocation::aws(BucketName::parse("devnet").unwrap()));
    }

    #[test]
    fn equivalent_spellings_normalise() {
        // Default ports and host case are normalised by the URL parser; both denote the
        // same bucket, so both are accepted and print one way.
        assert_eq!(parse("https://S3.Example.com:443/bkt").unwrap().to_string(), "https://s3.example.com/bkt");
        assert_eq!(
            parse("https://s3.example.com/bkt/").unwrap_err().reason,
            "extra path segments after the bucket name"
        );
    }

    #[test]
    fn endpoint_constructor_checks_its_url() {
        let url = Url::parse("http://127.0.0.1:9000").unwrap();
        let loc = BucketLocation::endpoint(&url, BucketName::parse("abc").unwrap()).unwrap();
        assert_eq!(loc.to_string(), "http://127.0.0.1:9000/abc");
        let with_path = Url::parse("http://127.0.0.1:9000/x").unwrap();
        assert!(BucketLocation::endpoint(&with_path, BucketName::parse("abc").unwrap()).is_err());
    }

    #[test]
    fn hostile_and_malformed_commitments_are_rejected_with_reasons() {
        let long = format!("s3://{}", "a".repeat(400));
        for (input, why) in [
            ("", "expected s3://"),
            ("bucket", "expected s3://"),
            ("s3://", "missing bucket"),
            ("s3://UPPER", "bucket name"),
            ("s3://ab", "bucket name"),
            ("s3://a..b", "bucket name"),
            ("s3://192.168.1.1", "bucket name"),
            ("s3://bucket/key", "no path"),
            ("ftp://host/bucket", "unknown scheme"),
            ("file:///etc/passwd", "unknown scheme"),
            ("file://host/bucket", "unknown scheme"),
            ("S3://bucket", "unknown scheme"),
            ("https://host", "missing bucket"),
            ("https://host/", "missing bucket"),
            ("https://host/bucket/extra", "extra path"),
            ("https://host/bucket?x=1", "query"),
            ("https://host/bucket#frag", "fragment"),
            ("https://user:pw@host/bucket", "credentials"),
            ("https:///bucket", "missing bucket"),
            ("https://host/bu%2Fcket", "bucket name"),
            ("https://host/../bucket", "extra path"),
            ("https://host\\bucket", "backslash"),
            ("https://host//bucket", "extra path"),
            ("https://host:99999/bucket", "not a URL"),
            ("https://host/bucket name", "character"),
            ("https://host/bucket\n", "character"),
            ("s3://bucket\0", "character"),
            (" s3://bucket", "character"),
            (&long, "longer than"),
            ("https://hóst.example/bucket", ""),
            ("s3://bücket", "bucket name"),
        ] {
            match parse(input) {
                Err(e) => {
                    let text = e.to_string();
                    assert!(text.contains(why), "{input:?}: {text}");
                    assert!(text.len() < 400, "{input:?}: message too long");
                }
                // An IDN host is a legal endpoint (punycoded); anything else must fail.
                Ok(loc) => assert!(input.contains('ó'), "{input:?} was accepted as {loc}"),
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz over printable and odd characters.
        let alphabet: Vec<char> = "s3:/htpw.[]@%?#-_aZ09\u{0}\u{7f}é€ ".chars().collect();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            let len = (state % 40) as usize;
            let s: String = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    alphabet[(state % alphabet.len() as u64) as usize]
                })
                .collect();
            if let Ok(loc) = parse(&s) {
                assert_eq!(parse(&loc.to_string()).unwrap(), loc, "{s:?}");
            }
        }
    }
}
