//! The names that address a bucket: its name under S3's rules and the S3-compatible
//! endpoint that serves it. Both come from operators' configuration and, inside a
//! [`super::BucketLocation`], from peers, so both are checked strictly.

use std::fmt;

use thiserror::Error;

/// An S3 bucket name that follows AWS's naming rules (as the seed checked at start).
/// `Default` is the empty name of a configuration whose bucket is not resolved yet; a
/// loaded configuration always has a valid one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BucketName(String);

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BucketNameError {
    #[error("it has {0} characters")]
    Length(usize),
    #[error("{0:?} is not allowed")]
    Char(char),
    #[error("it starts or ends with '.' or '-'")]
    Edge,
    #[error("it contains \"..\"")]
    DoubleDot,
    #[error("it looks like an IP address")]
    IpAddress,
}

impl BucketNameError {
    /// The rules, for error messages.
    pub const RULES: &str = "3-63 lowercase letters, digits, '.' and '-', starting and ending with a \
                             letter or digit, no \"..\", not an IP address";
}

impl BucketName {
    /// 3–63 characters of lowercase letters, digits, `.` and `-`, starting and ending with
    /// a letter or digit, no `..`, not an IPv4 address.
    pub fn parse(name: &str) -> Result<Self, BucketNameError> {
        let len = name.chars().count();
        if !(3..=63).contains(&len) {
            return Err(BucketNameError::Length(len));
        }
        if let Some(c) = name.chars().find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-')) {
            return Err(BucketNameError::Char(c));
        }
        let alnum = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !alnum(name.bytes().next()) || !alnum(name.bytes().last()) {
            return Err(BucketNameError::Edge);
        }
        if name.contains("..") {
            return Err(BucketNameError::DoubleDot);
        }
        if name.parse::<std::net::Ipv4Addr>().is_ok() {
            return Err(BucketNameError::IpAddress);
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn is_unset(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for BucketName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An S3-compatible endpoint: `http(s)://host[:port]`, nothing else.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint(pub url::Url);

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Endpoint {
    pub const EXPECTED: &str = "an http:// or https:// URL of an S3-compatible endpoint, scheme://host[:port] with no path, query or user name";

    /// Checks an endpoint; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        // The URL parser silently drops tabs and newlines; a pasted value with them is a mistake.
        if let Some(c) = text.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("it contains {c:?}"));
        }
        let url = url::Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("the scheme is {:?}", url.scheme()));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("it has no host".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("it has a user name or password; keys go in s3.access_key_id and s3.secret_access_key".into());
        }
        if url.path() != "/" {
            return Err(format!("it has the path {:?}; the bucket is not part of the endpoint", url.path()));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err("it has a query or fragment".into());
        }
        Ok(Self(url))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
