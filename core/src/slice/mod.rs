//! The slice protocol (`DESIGN.md` §1): which positions a window exchanges ([`indices`]),
//! how a slice is named ([`key`]) and encoded ([`wire`]), how a model's values are read
//! and written at those positions ([`extract`]), and how many slices are averaged
//! ([`aggregate`]).

pub mod aggregate;
pub mod exchange;
pub mod extract;
pub mod indices;
pub mod key;
pub mod wire;

pub use aggregate::{
    AggregateError, CENTRED_RADIUS_CAP, CLIP_FACTOR, CLIP_QUORUM, FAULT_RADII, MeanAccumulator, Zeros, centred_cap,
    centred_radius, clip_radius, clip_scales, deviation_norm, far_beyond, scales_within,
};
pub use exchange::{
    Exchange, IN_STEP_SAMPLE, IN_STEP_STATE_VALUES, ObjectBytes, download_bytes_per_window, is_snapshot_window,
    snapshot_candidates, snapshot_every, state_compression,
};
pub use extract::{ExtractError, apply, extract};
pub use indices::{IndexError, SliceIndices, param_indices, slice_len};
pub use key::{KeyParseError, ObjectKey, PROTOCOL_VERSION, SliceKind};
pub use wire::{
    Dtype, EncodeError, Expected, MAX_ABS_VALUE, SliceError, SliceHeader, SliceMeta, SliceView, decode, encode,
    encode_packed, encode_unchecked, max_encoded_len, update_value_bound,
};
