//! Bit packing: 12-bit indices two per 3 bytes, 2-bit codes four per byte.
//!
//! A pair of indices (a, b) is `[a & 0xff, a >> 8 | (b & 0xf) << 4, b >> 4]`; an odd last
//! index takes 2 bytes with a zero high nibble. Code j sits at bits `2·(j mod 4)` of byte
//! `j / 4`. Unused bits are zero, so every list has exactly one encoding.

use super::SparseError;

/// Bytes that hold `n` packed indices: ⌈3n/2⌉.
pub fn packed_indices_len(n: usize) -> usize {
    n + n.div_ceil(2)
}

/// Bytes that hold `n` packed codes: ⌈n/4⌉.
pub fn packed_codes_len(n: usize) -> usize {
    n.div_ceil(4)
}

/// Packs indices, keeping their low 12 bits (callers pass indices < 4096).
pub fn pack_indices(indices: &[u16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(packed_indices_len(indices.len()));
    let mut pairs = indices.chunks_exact(2);
    for pair in &mut pairs {
        let (a, b) = (pair[0] & 0xfff, pair[1] & 0xfff);
        out.extend_from_slice(&[a as u8, (a >> 8) as u8 | ((b & 0xf) << 4) as u8, (b >> 4) as u8]);
    }
    if let [a] = pairs.remainder() {
        let a = a & 0xfff;
        out.extend_from_slice(&[a as u8, (a >> 8) as u8]);
    }
    out
}

/// Packs 2-bit codes (callers pass codes < 4; higher bits are dropped).
pub fn pack_codes(codes: &[u8]) -> Vec<u8> {
    codes.chunks(4).map(|q| q.iter().enumerate().fold(0u8, |byte, (j, c)| byte | ((c & 3) << (2 * j)))).collect()
}

/// Index `j` of a packed list; `bytes` must hold at least `j + 1` indices.
#[inline]
pub(crate) fn index_at(bytes: &[u8], j: usize) -> usize {
    let p = (j / 2) * 3;
    if j.is_multiple_of(2) {
        usize::from(bytes[p]) | (usize::from(bytes[p + 1] & 0xf) << 8)
    } else {
        usize::from(bytes[p + 1] >> 4) | (usize::from(bytes[p + 2]) << 4)
    }
}

/// Code `j` of a packed list; `bytes` must hold at least `j + 1` codes.
#[inline]
pub(crate) fn code_at(bytes: &[u8], j: usize) -> usize {
    usize::from((bytes[j / 4] >> (2 * (j % 4))) & 3)
}

/// Whether the bits after `n` packed indices are zero (`bytes` of the exact length).
pub(crate) fn indices_padding_clear(bytes: &[u8], n: usize) -> bool {
    n.is_multiple_of(2) || bytes.last().is_none_or(|b| b & 0xf0 == 0)
}

/// Whether the bits after `n` packed codes are zero (`bytes` of the exact length).
pub(crate) fn codes_padding_clear(bytes: &[u8], n: usize) -> bool {
    let used = n % 4;
    used == 0 || bytes.last().is_none_or(|b| b >> (2 * used) == 0)
}

fn check_len(what: &'static str, bytes: &[u8], count: usize, expected: usize) -> Result<(), SparseError> {
    if bytes.len() == expected { Ok(()) } else { Err(SparseError::PackedLength { what, len: bytes.len(), count }) }
}

/// Unpacks `n` indices from exactly [`packed_indices_len`]`(n)` bytes with clear padding.
pub fn unpack_indices(bytes: &[u8], n: usize) -> Result<Vec<u16>, SparseError> {
    check_len("indices", bytes, n, packed_indices_len(n))?;
    if !indices_padding_clear(bytes, n) {
        return Err(SparseError::Padding { tensor: 0, what: "indices" });
    }
    Ok((0..n).map(|j| index_at(bytes, j) as u16).collect())
}

/// Unpacks `n` codes from exactly [`packed_codes_len`]`(n)` bytes with clear padding.
pub fn unpack_codes(bytes: &[u8], n: usize) -> Result<Vec<u8>, SparseError> {
    check_len("codes", bytes, n, packed_codes_len(n))?;
    if !codes_padding_clear(bytes, n) {
        return Err(SparseError::Padding { tensor: 0, what: "codes" });
    }
    Ok((0..n).map(|j| code_at(bytes, j) as u8).collect())
}
