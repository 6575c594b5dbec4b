//! The slice wire format: a small signed header, then the raw little-endian body.
//!
//! ```text
//! 0    8 bytes   MAGIC "TESSLICE"
//! 8    u16 LE    format version (the exchange's protocol version: 1 seed, 2 update, 3 sparseloco)
//! 10   u16 LE    header length H (≤ MAX_HEADER_LEN)
//! 12   H bytes   postcard(SliceHeader)
//! 12+H 64 bytes  sr25519 signature by the header's hotkey over bytes [0, 12+H)
//!      zeros     padding so that the body starts at a multiple of 16
//!      body      value_count values in canonical order, little-endian f32 or bf16;
//!                or (dtype Packed: SparseLoCo's deltas) value_count bytes of a payload
//! ```
//! The signature covers the header, and the header carries BLAKE3 of the body, so every
//! byte is authenticated. Decoding a little-endian f32 body is a cast, not a loop.
//! [`decode`] checks everything before any value is used and never panics on any input.

use std::borrow::Cow;
use std::collections::HashSet;

use half::bf16;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::exchange::Exchange;
use super::key::SliceKind;
use crate::hotkey::{Hotkey, HotkeySigner, verify};
use crate::model::ModelFingerprint;
use crate::window::Window;

pub const MAGIC: [u8; 8] = *b"TESSLICE";
/// Upper bound on the encoded header; real headers are ~130 bytes.
pub const MAX_HEADER_LEN: usize = 512;
const PREFIX_LEN: usize = 12;
const SIGNATURE_LEN: usize = 64;
const BODY_ALIGN: usize = 16;
/// Bodies above this are hashed on all cores.
const PARALLEL_HASH_MIN: usize = 1 << 20;

/// Element type of the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Dtype {
    F32,
    Bf16,
    /// Opaque bytes with a format of their own (a SparseLoCo payload, which checks its own
    /// values); `value_count` counts bytes, at most the reader's expected count.
    Packed,
}

impl Dtype {
    pub fn size(&self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 => 2,
            Dtype::Packed => 1,
        }
    }
}

/// Everything a reader must know about a slice before it touches the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceHeader {
    pub kind: SliceKind,
    pub window: Window,
    pub hotkey: Hotkey,
    pub fingerprint: ModelFingerprint,
    pub compression: u32,
    pub dtype: Dtype,
    pub value_count: u64,
    pub body_hash: [u8; 32],
}

/// What the reader expects of a slice; anything else is rejected.
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    pub kind: SliceKind,
    pub window: Window,
    /// The hotkey named by the object key; `None` accepts any (registered) signer.
    pub hotkey: Option<Hotkey>,
    /// Hotkeys registered on the subnet; `None` skips the check (own bucket, tests).
    pub registered: Option<&'a HashSet<Hotkey>>,
    pub fingerprint: ModelFingerprint,
    pub compression: u32,
    pub value_count: usize,
    /// The protocol version (exchange) the reader follows; others are rejected.
    pub version: u16,
    /// The largest magnitude a value may have: [`MAX_ABS_VALUE`], or less where the kind
    /// of slice implies a tighter bound (an update: [`update_value_bound`]).
    pub max_abs: f32,
}

/// Why a slice was rejected. Every variant is a peer's fault or a corruption, never ours.
#[derive(Debug, Error, PartialEq)]
pub enum SliceError {
    #[error("slice is {len} bytes, shorter than the smallest valid slice")]
    TooShort { len: usize },
    #[error("slice is {len} bytes, more than the {max} this window's slice can be")]
    TooLarge { len: usize, max: usize },
    #[error("bad magic: not a tessera slice")]
    BadMagic,
    #[error("slice format version {found}, this build reads version {supported}")]
    UnsupportedVersion { found: u16, supported: u16 },
    #[error("header length {len} exceeds {max} or the file")]
    BadHeaderLength { len: usize, max: usize },
    #[error("malformed header: {0}")]
    MalformedHeader(String),
    #[error("slice is a {found} slice, expected {expected}")]
    WrongKind { expected: SliceKind, found: SliceKind },
    #[error("slice is for window {found}, expected window {expected}")]
    WrongWindow { expected: Window, found: Window },
    #[error("slice is signed for hotkey {found}, but its name says {expected}")]
    WrongHotkey { expected: Hotkey, found: Hotkey },
    #[error("hotkey {hotkey} is not registered on the subnet")]
    UnregisteredHotkey { hotkey: Hotkey },
    #[error("model fingerprint {found} differs from ours ({expected}): another model")]
    FingerprintMismatch { expected: ModelFingerprint, found: ModelFingerprint },
    #[error("slice was made with compression {found}, expected {expected}")]
    WrongCompression { expected: u32, found: u32 },
    #[error("slice has {found} values, this window's slice has {expected}")]
    WrongValueCount { expected: u64, found: u64 },
    #[error("slice body is {found:?}, this exchange's is {expected:?}")]
    WrongDtype { expected: &'static str, found: Dtype },
    #[error("body is {found} bytes, header implies {expected}")]
    BodySizeMismatch { expected: usize, found: usize },
    #[error("non-zero padding between header and body")]
    NonZeroPadding,
    #[error("signature does not verify for hotkey {hotkey}")]
    BadSignature { hotkey: Hotkey },
    #[error("body hash does not match the signed header")]
    BodyHashMismatch,
    #[error("value {index} is not finite ({value})")]
    NonFiniteValue { index: usize, value: f32 },
    #[error("value {index} ({value}) is beyond ±{limit}: no honest slice of this kind holds one that large")]
    ImplausibleValue { index: usize, value: f32, limit: f32 },
}

/// The largest magnitude a slice value may have. Trained parameters and their updates
/// stay orders of magnitude below it; a hostile peer's values near the f32 limit (whose
/// sums overflow to inf) are refused at decode, and the sum of up to 2^24 slices of
/// admissible values stays finite.
pub const MAX_ABS_VALUE: f32 = 1.0e4;

/// The largest parameter magnitude the update bound allows for in AdamW's decoupled weight
/// decay (`lr·wd·θ`): trained weights sit orders of magnitude below it.
const UPDATE_BOUND_PARAM: f64 = 100.0;

/// Steps over which [`update_value_bound`] takes the largest moment ratio (the ratio
/// settles within a few hundred steps for any β2 ≤ 0.999).
const UPDATE_BOUND_STEPS: u32 = 4096;

/// The largest magnitude a value of an update-exchange delta (one AdamW step at a learning
/// rate of at most `lr`) may have; [`MAX_ABS_VALUE`] when the betas give no finite bound
/// (`β1² ≥ β2`).
///
/// One AdamW step moves a parameter by `lr·(m̂/(√v̂+ε) + wd·θ)`. By Cauchy–Schwarz over the
/// moments' exponential sums, after `t` steps
/// `|m̂/√v̂| ≤ (1−β1)/(1−β1^t) · √((1−β2^t)/(1−β2)) · √(Σ_{k<t} (β1²/β2)^k)` (1 at the first
/// step; at most 1.17 at the default β = (0.9, 0.95)); the bound is twice its largest
/// value plus one, plus `wd·`[`UPDATE_BOUND_PARAM`]: 13.3·lr at the defaults, where an
/// honest step is at most ~1.2·lr. Without it a lone hostile update, in a window where no
/// honest update has arrived yet, is the median its own clip is measured by (measured: a
/// real-time devnet whose first window's only non-zero updates were a poisoner's and its
/// echo sent every honest loss to 2.6e7).
pub fn update_value_bound(lr: f64, beta1: f64, beta2: f64, weight_decay: f64) -> f32 {
    let ratio = beta1 * beta1 / beta2;
    let sane = lr.is_finite() && lr > 0.0 && (0.0..1.0).contains(&beta1) && (0.0..1.0).contains(&beta2);
    if !(sane && ratio < 1.0) {
        return MAX_ABS_VALUE;
    }
    let (mut b1t, mut b2t, mut ratio_k, mut sum, mut most) = (1.0f64, 1.0f64, 1.0f64, 0.0f64, 0.0f64);
    for _ in 0..UPDATE_BOUND_STEPS {
        sum += ratio_k;
        ratio_k *= ratio;
        b1t *= beta1;
        b2t *= beta2;
        let moments = (1.0 - beta1) / (1.0 - b1t) * ((1.0 - b2t) / (1.0 - beta2)).sqrt() * sum.sqrt();
        most = most.max(moments);
    }
    let per_lr = 2.0 * most + 1.0 + weight_decay.abs() * UPDATE_BOUND_PARAM;
    ((lr * per_lr) as f32).min(MAX_ABS_VALUE)
}

impl SliceError {
    /// A short stable label for metrics and logs (`slices_rejected{reason=...}`).
    pub fn reason(&self) -> &'static str {
        match self {
            SliceError::TooShort { .. } => "too_short",
            SliceError::TooLarge { .. } => "too_large",
            SliceError::BadMagic => "bad_magic",
            SliceError::UnsupportedVersion { .. } => "unsupported_version",
            SliceError::BadHeaderLength { .. } => "bad_header_length",
            SliceError::MalformedHeader(_) => "malformed_header",
            SliceError::WrongKind { .. } => "wrong_kind",
            SliceError::WrongWindow { .. } => "wrong_window",
            SliceError::WrongHotkey { .. } => "wrong_hotkey",
            SliceError::UnregisteredHotkey { .. } => "unregistered_hotkey",
            SliceError::FingerprintMismatch { .. } => "fingerprint_mismatch",
            SliceError::WrongCompression { .. } => "wrong_compression",
            SliceError::WrongValueCount { .. } => "wrong_value_count",
            SliceError::WrongDtype { .. } => "wrong_dtype",
            SliceError::BodySizeMismatch { .. } => "body_size_mismatch",
            SliceError::NonZeroPadding => "non_zero_padding",
            SliceError::BadSignature { .. } => "bad_signature",
            SliceError::BodyHashMismatch => "body_hash_mismatch",
            SliceError::NonFiniteValue { .. } => "non_finite_value",
            SliceError::ImplausibleValue { .. } => "implausible_value",
        }
    }
}

#[derive(Debug, Error, PartialEq)]
pub enum EncodeError {
    #[error("refusing to publish a slice with non-finite value {index} ({value})")]
    NonFiniteValue { index: usize, value: f32 },
    #[error("header encoding failed: {0}")]
    Header(String),
}

/// The largest a valid slice of `value_count` values can be: storage caps downloads here.
pub fn max_encoded_len(value_count: usize) -> usize {
    body_offset(MAX_HEADER_LEN) + value_count * Dtype::F32.size()
}

fn body_offset(header_len: usize) -> usize {
    (PREFIX_LEN + header_len + SIGNATURE_LEN).next_multiple_of(BODY_ALIGN)
}

fn hash_body(body: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    if body.len() >= PARALLEL_HASH_MIN {
        h.update_rayon(body);
    } else {
        h.update(body);
    }
    *h.finalize().as_bytes()
}

/// Identity of a slice to publish; the signer supplies the hotkey.
#[derive(Debug, Clone, Copy)]
pub struct SliceMeta {
    pub kind: SliceKind,
    pub window: Window,
    pub fingerprint: ModelFingerprint,
    pub compression: u32,
    pub dtype: Dtype,
    /// The protocol version of the exchange the slice belongs to.
    pub version: u16,
}

/// Encodes and signs a slice of `values` (canonical order, see `extract`).
pub fn encode(meta: SliceMeta, values: &[f32], signer: &dyn HotkeySigner) -> Result<Vec<u8>, EncodeError> {
    if let Some((index, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(EncodeError::NonFiniteValue { index, value });
    }
    assemble(meta, values.len() as u64, signer, |out| write_body(out, values, meta.dtype))
}

/// Encodes and signs an opaque body (`meta.dtype` is [`Dtype::Packed`]): a payload whose
/// format checks its own values.
pub fn encode_packed(meta: SliceMeta, body: &[u8], signer: &dyn HotkeySigner) -> Result<Vec<u8>, EncodeError> {
    if meta.dtype != Dtype::Packed {
        return Err(EncodeError::Header(format!("a packed body needs dtype Packed, not {:?}", meta.dtype)));
    }
    assemble(meta, body.len() as u64, signer, |out| {
        out.extend_from_slice(body);
        Ok(())
    })
}

/// Encodes and signs `values` *without* refusing non-finite ones: what a broken or hostile
/// peer can publish. For tests of the readers' defences and for fuzzing; a miner uses
/// [`encode`].
pub fn encode_unchecked(meta: SliceMeta, values: &[f32], signer: &dyn HotkeySigner) -> Result<Vec<u8>, EncodeError> {
    assemble(meta, values.len() as u64, signer, |out| {
        out.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        Ok(())
    })
}

/// Appends the little-endian body to `out` (the body is written once, in place).
fn write_body(out: &mut Vec<u8>, values: &[f32], dtype: Dtype) -> Result<(), EncodeError> {
    match dtype {
        Dtype::F32 => {
            #[cfg(target_endian = "little")]
            out.extend_from_slice(bytemuck::cast_slice::<f32, u8>(values));
            #[cfg(not(target_endian = "little"))]
            values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
        Dtype::Bf16 => {
            for (index, &v) in values.iter().enumerate() {
                let b = bf16::from_f32(v);
                if !b.is_finite() {
                    // Finite in f32 but rounds to ±inf in bf16.
                    return Err(EncodeError::NonFiniteValue { index, value: v });
                }
                out.extend_from_slice(&b.to_le_bytes());
            }
        }
        Dtype::Packed => {
            return Err(EncodeError::Header("values cannot be written as a packed body (encode_packed)".into()));
        }
    }
    Ok(())
}

/// Lays out prefix, header, signature and padding around a body written by `body`.
///
/// The header's length does not depend on the body hash (a fixed 32 bytes), so the body
/// can be written at its final offset first and hashed in place.
fn assemble(
    meta: SliceMeta,
    value_count: u64,
    signer: &dyn HotkeySigner,
    body: impl FnOnce(&mut Vec<u8>) -> Result<(), EncodeError>,
) -> Result<Vec<u8>, EncodeError> {
    let mut header = SliceHeader {
        kind: meta.kind,
        window: meta.window,
        hotkey: signer.hotkey(),
        fingerprint: meta.fingerprint,
        compression: meta.compression,
        dtype: meta.dtype,
        value_count,
        body_hash: [0; 32],
    };
    let header_len = postcard::to_allocvec(&header).map_err(|e| EncodeError::Header(e.to_string()))?.len();
    if header_len > MAX_HEADER_LEN {
        return Err(EncodeError::Header(format!("{header_len} bytes exceeds {MAX_HEADER_LEN}")));
    }
    let offset = body_offset(header_len);
    let body_len = usize::try_from(value_count).unwrap_or(usize::MAX).saturating_mul(meta.dtype.size());
    let mut out = Vec::with_capacity(offset.saturating_add(body_len));
    out.resize(offset, 0);
    body(&mut out)?;
    header.body_hash = hash_body(&out[offset..]);
    out[..8].copy_from_slice(&MAGIC);
    out[8..10].copy_from_slice(&meta.version.to_le_bytes());
    out[10..12].copy_from_slice(&(header_len as u16).to_le_bytes());
    let header_end = PREFIX_LEN + header_len;
    postcard::to_slice(&header, &mut out[PREFIX_LEN..header_end]).map_err(|e| EncodeError::Header(e.to_string()))?;
    let signature = signer.sign(&out[..header_end]);
    out[header_end..header_end + SIGNATURE_LEN].copy_from_slice(&signature);
    Ok(out)
}

/// A validated slice borrowing its body from the input bytes.
#[derive(Debug, Clone)]
pub struct SliceView<'a> {
    pub header: SliceHeader,
    body: &'a [u8],
}

impl<'a> SliceView<'a> {
    /// The values as f32: borrowed without copying for an aligned f32 body.
    pub fn values(&self) -> Cow<'a, [f32]> {
        match self.header.dtype {
            Dtype::F32 => {
                #[cfg(target_endian = "little")]
                if let Ok(values) = bytemuck::try_cast_slice::<u8, f32>(self.body) {
                    return Cow::Borrowed(values);
                }
                Cow::Owned(self.body.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
            }
            Dtype::Bf16 => {
                Cow::Owned(self.body.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect())
            }
            // Not values: the reader decodes the body with its own format ([`Self::packed`]).
            Dtype::Packed => Cow::Owned(Vec::new()),
        }
    }

    /// The opaque body of a [`Dtype::Packed`] slice; `None` for values.
    pub fn packed(&self) -> Option<&'a [u8]> {
        (self.header.dtype == Dtype::Packed).then_some(self.body)
    }

    /// Adds the values into `acc` (same length), without materialising them.
    pub(crate) fn add_into(&self, acc: &mut [f32]) {
        use rayon::prelude::*;
        const CHUNK: usize = 1 << 16;
        match self.header.dtype {
            Dtype::F32 => {
                let values = self.values();
                acc.par_chunks_mut(CHUNK).zip(values.par_chunks(CHUNK)).for_each(|(a, v)| {
                    a.iter_mut().zip(v).for_each(|(a, v)| *a += v);
                });
            }
            Dtype::Bf16 => {
                acc.par_chunks_mut(CHUNK).zip(self.body.par_chunks(CHUNK * 2)).for_each(|(a, b)| {
                    a.iter_mut()
                        .zip(b.chunks_exact(2))
                        .for_each(|(a, c)| *a += bf16::from_le_bytes([c[0], c[1]]).to_f32());
                });
            }
            Dtype::Packed => {}
        }
    }

    pub fn body_len(&self) -> usize {
        self.body.len()
    }
}

/// Parses and validates a slice against what the reader expects.
///
/// Checks in order of cost: size, magic, version, header, expectations, body size,
/// padding, signature, body hash, finiteness of every value.
pub fn decode<'a>(bytes: &'a [u8], expected: &Expected<'_>) -> Result<SliceView<'a>, SliceError> {
    let max = max_encoded_len(expected.value_count);
    if bytes.len() > max {
        return Err(SliceError::TooLarge { len: bytes.len(), max });
    }
    if bytes.len() < PREFIX_LEN + SIGNATURE_LEN {
        return Err(SliceError::TooShort { len: bytes.len() });
    }
    if bytes[..8] != MAGIC {
        return Err(SliceError::BadMagic);
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version != expected.version {
        return Err(SliceError::UnsupportedVersion { found: version, supported: expected.version });
    }
    let header_len = usize::from(u16::from_le_bytes([bytes[10], bytes[11]]));
    let offset = body_offset(header_len);
    if header_len > MAX_HEADER_LEN || offset > bytes.len() {
        return Err(SliceError::BadHeaderLength { len: header_len, max: MAX_HEADER_LEN });
    }
    let header_end = PREFIX_LEN + header_len;
    let (header, rest) = postcard::take_from_bytes::<SliceHeader>(&bytes[PREFIX_LEN..header_end])
        .map_err(|e| SliceError::MalformedHeader(e.to_string()))?;
    if !rest.is_empty() {
        return Err(SliceError::MalformedHeader(format!("{} trailing header bytes", rest.len())));
    }
    check_expectations(&header, expected)?;
    let body = &bytes[offset..];
    let want_body = usize::try_from(header.value_count)
        .ok()
        .and_then(|n| n.checked_mul(header.dtype.size()))
        .ok_or(SliceError::WrongValueCount { expected: expected.value_count as u64, found: header.value_count })?;
    if body.len() != want_body {
        return Err(SliceError::BodySizeMismatch { expected: want_body, found: body.len() });
    }
    let sig_end = header_end + SIGNATURE_LEN;
    if bytes[sig_end..offset].iter().any(|&b| b != 0) {
        return Err(SliceError::NonZeroPadding);
    }
    let mut signature = [0u8; SIGNATURE_LEN];
    signature.copy_from_slice(&bytes[header_end..sig_end]);
    if !verify(&header.hotkey, &bytes[..header_end], &signature) {
        return Err(SliceError::BadSignature { hotkey: header.hotkey });
    }
    if hash_body(body) != header.body_hash {
        return Err(SliceError::BodyHashMismatch);
    }
    let view = SliceView { header, body };
    check_values(&view, expected.max_abs.min(MAX_ABS_VALUE))?;
    Ok(view)
}

fn check_expectations(header: &SliceHeader, expected: &Expected<'_>) -> Result<(), SliceError> {
    if header.kind != expected.kind {
        return Err(SliceError::WrongKind { expected: expected.kind, found: header.kind });
    }
    if header.window != expected.window {
        return Err(SliceError::WrongWindow { expected: expected.window, found: header.window });
    }
    if let Some(hotkey) = expected.hotkey
        && header.hotkey != hotkey
    {
        return Err(SliceError::WrongHotkey { expected: hotkey, found: header.hotkey });
    }
    if let Some(registered) = expected.registered
        && !registered.contains(&header.hotkey)
    {
        return Err(SliceError::UnregisteredHotkey { hotkey: header.hotkey });
    }
    if header.fingerprint != expected.fingerprint {
        return Err(SliceError::FingerprintMismatch { expected: expected.fingerprint, found: header.fingerprint });
    }
    if header.compression != expected.compression {
        return Err(SliceError::WrongCompression { expected: expected.compression, found: header.compression });
    }
    // A packed body (SparseLoCo's delta) is of the exchange's own length, at most the
    // expected count; every other slice holds exactly the window's values.
    let packed = expected.kind == SliceKind::Delta
        && Exchange::from_protocol_version(expected.version).is_some_and(Exchange::is_compressed);
    match (packed, header.dtype) {
        (true, Dtype::Packed) if header.value_count <= expected.value_count as u64 => Ok(()),
        (true, Dtype::Packed) => {
            Err(SliceError::WrongValueCount { expected: expected.value_count as u64, found: header.value_count })
        }
        (true, found) => Err(SliceError::WrongDtype { expected: "packed", found }),
        (false, Dtype::Packed) => Err(SliceError::WrongDtype { expected: "values", found: Dtype::Packed }),
        (false, _) if header.value_count != expected.value_count as u64 => {
            Err(SliceError::WrongValueCount { expected: expected.value_count as u64, found: header.value_count })
        }
        (false, _) => Ok(()),
    }
}

/// Every value finite and within `limit`.
fn check_values(view: &SliceView<'_>, limit: f32) -> Result<(), SliceError> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    let admissible = |v: f32| v.is_finite() && v.abs() <= limit;
    // Fast parallel scan; locate the first offender only when there is one.
    let all_admissible = match view.header.dtype {
        // Its own format bounds its values when it is decoded.
        Dtype::Packed => true,
        Dtype::F32 => view.values().par_chunks(CHUNK).all(|c| c.iter().all(|v| admissible(*v))),
        // A bf16 value is the upper half of an f32.
        Dtype::Bf16 => view.body.par_chunks(CHUNK * 2).all(|c| {
            c.chunks_exact(2).all(|b| admissible(f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)))
        }),
    };
    if all_admissible {
        return Ok(());
    }
    let values = view.values();
    let (index, &value) = values.iter().enumerate().find(|(_, v)| !admissible(**v)).unwrap_or((0, &f32::NAN));
    if value.is_finite() {
        return Err(SliceError::ImplausibleValue { index, value, limit });
    }
    Err(SliceError::NonFiniteValue { index, value })
}

#[cfg(test)]
mod tests;
