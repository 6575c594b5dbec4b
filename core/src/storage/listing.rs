//! Listing a bucket (ListObjectsV2), bounded in bytes as well as in entries.
//!
//! rust-s3's `list_page` reads a whole response body into memory before anything can
//! look at it, so a hostile endpoint could stream gigabytes at us for one page. Here the
//! request is signed by rust-s3 (anonymous for peers) but sent through the client's own
//! HTTP client ([`super::policy::http_client`]: no redirects, the address policy), and
//! the body is read chunk by chunk and dropped, with the connection, as soon as it passes
//! `max_list_page_bytes`. The XML is parsed into rust-s3's own `ListBucketResult`, so
//! what is accepted is what rust-s3 accepted before.

use s3::command::Command;
use s3::serde_types::ListBucketResult;
use tracing::Instrument;

use super::client::{BucketClient, ObjectInfo, parse_last_modified};
use super::error::StorageError;

/// Where the next page of a listing starts.
#[derive(Debug, Default)]
struct Cursor {
    token: Option<String>,
    start_after: Option<String>,
    /// Consecutive pages without entries.
    empty_pages: u32,
}

impl Cursor {
    /// Moves past a page; `Ok(false)` when the listing is complete. Follows the
    /// continuation token; a server that is truncated without one (or repeats it) is
    /// continued after the last key, and a listing that does not advance is an error
    /// rather than an endless loop.
    fn advance(
        &mut self,
        truncated: bool,
        next_token: Option<String>,
        last_key: Option<String>,
    ) -> Result<bool, &'static str> {
        self.empty_pages = if last_key.is_none() { self.empty_pages + 1 } else { 0 };
        if !truncated {
            return Ok(false);
        }
        if self.empty_pages > 3 {
            return Err("listing is truncated but its pages are empty");
        }
        match next_token {
            Some(next) if self.token.as_ref() != Some(&next) => {
                self.token = Some(next);
                self.start_after = None;
            }
            _ => match last_key {
                Some(last) if self.start_after.as_ref() != Some(&last) => {
                    self.token = None;
                    self.start_after = Some(last);
                }
                _ => return Err("listing is truncated but does not advance"),
            },
        }
        Ok(true)
    }
}

impl BucketClient {
    /// All objects whose key starts with `prefix`, across pages, in key order. Fails as
    /// `TooLarge` past `max_list_entries` entries, a page past `max_list_page_bytes` or
    /// pages past `max_list_bytes` in all, whatever the server sends.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let span = tracing::debug_span!("s3_list", bucket = %self.name(), prefix);
        self.list_inner(prefix).instrument(span).await
    }

    async fn list_inner(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        self.check_allowed()?;
        let opts = self.options();
        let what = format!("?prefix={prefix}");
        let what = what.as_str();
        let mut out: Vec<ObjectInfo> = Vec::new();
        let mut cursor = Cursor::default();
        let (mut entries, mut bytes) = (0usize, 0u64);
        loop {
            let (page, size) = opts
                .retry
                .run(|_| {
                    let (token, start_after) = (cursor.token.clone(), cursor.start_after.clone());
                    self.deadline(what, opts.request_timeout, self.list_page(what, prefix, token, start_after))
                })
                .await?;
            bytes = bytes.saturating_add(size);
            if bytes > opts.max_list_bytes {
                return Err(self.too_large(what, opts.max_list_bytes, bytes));
            }
            entries = entries.saturating_add(page.contents.len());
            if entries > opts.max_list_entries {
                return Err(self.too_large(what, opts.max_list_entries as u64, entries as u64));
            }
            let truncated = page.is_truncated || page.next_continuation_token.is_some();
            let last_key = page.contents.last().map(|o| o.key.clone());
            // A hostile server may answer with keys outside the prefix.
            out.extend(page.contents.into_iter().filter(|o| o.key.starts_with(prefix)).map(|o| ObjectInfo {
                last_modified_ms: parse_last_modified(&o.last_modified),
                key: o.key,
                size: o.size,
            }));
            match cursor.advance(truncated, page.next_continuation_token, last_key) {
                Ok(true) => {}
                Ok(false) => break,
                Err(why) => return Err(self.other(what, why.into())),
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out.dedup_by(|a, b| a.key == b.key);
        Ok(out)
    }

    /// One ListObjectsV2 page and the length of its body.
    async fn list_page(
        &self,
        what: &str,
        prefix: &str,
        token: Option<String>,
        start_after: Option<String>,
    ) -> Result<(ListBucketResult, u64), StorageError> {
        let command = Command::ListObjectsV2 {
            prefix: prefix.to_owned(),
            delimiter: None,
            continuation_token: token,
            start_after,
            max_keys: self.options().list_page_size,
        };
        let response = self.send_signed(what, "/", command).await?;
        let response = self.check_status(what, response).await?;
        let body = self.read_capped(what, response, self.options().max_list_page_bytes).await?;
        let page = quick_xml::de::from_reader(body.as_slice())
            .map_err(|e| self.other(what, format!("the listing is not a ListBucketResult: {e}")))?;
        Ok((page, body.len() as u64))
    }

    /// The whole body, or `TooLarge` as soon as it announces or passes `cap` bytes: the
    /// rest is never read, and dropping the response closes the connection.
    async fn read_capped(
        &self,
        what: &str,
        mut response: reqwest::Response,
        cap: u64,
    ) -> Result<Vec<u8>, StorageError> {
        if let Some(len) = response.content_length()
            && len > cap
        {
            return Err(self.too_large(what, cap, len));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.map_reqwest(what, e))? {
            let seen = (body.len() as u64).saturating_add(chunk.len() as u64);
            if seen > cap {
                return Err(self.too_large(what, cap, seen));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests;
