use std::collections::HashSet;

use proptest::prelude::*;

use super::*;
use crate::hotkey::dev_keypair;
use crate::model::{ModelShape, ParamLayout};
use crate::slice::indices::SliceIndices;

struct Fixture {
    layout: ParamLayout,
    indices: SliceIndices,
    values: Vec<f32>,
}

fn fixture() -> Fixture {
    let layout = ParamLayout::llama(&ModelShape {
        vocab_size: 101,
        hidden_size: 16,
        intermediate_size: 48,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        max_position_embeddings: 64,
        rope_theta: 10_000.0,
        rms_norm_eps: 1e-6,
    })
    .unwrap();
    let indices = SliceIndices::compute(&layout, 11, 4).unwrap();
    let values = (0..indices.total_len()).map(|i| (i as f32 * 0.37).sin()).collect();
    Fixture { layout, indices, values }
}

impl Fixture {
    fn meta(&self, dtype: Dtype) -> SliceMeta {
        SliceMeta {
            kind: SliceKind::Delta,
            window: 11,
            fingerprint: self.layout.fingerprint(),
            compression: 4,
            dtype,
            version: 1,
        }
    }

    fn expected(&self) -> Expected<'static> {
        Expected {
            kind: SliceKind::Delta,
            window: 11,
            hotkey: Some(dev_keypair("Alice").unwrap().hotkey()),
            registered: None,
            fingerprint: self.layout.fingerprint(),
            compression: 4,
            value_count: self.indices.total_len(),
            version: 1,
            max_abs: crate::slice::MAX_ABS_VALUE,
        }
    }

    fn encoded(&self) -> Vec<u8> {
        encode(self.meta(Dtype::F32), &self.values, &dev_keypair("Alice").unwrap()).unwrap()
    }
}

/// Signs with one key while claiming another's hotkey: a forgery attempt.
struct Impostor {
    claimed: Hotkey,
    real: subxt_signer::sr25519::Keypair,
}

impl HotkeySigner for Impostor {
    fn hotkey(&self) -> Hotkey {
        self.claimed
    }
    fn sign(&self, message: &[u8]) -> [u8; 64] {
        HotkeySigner::sign(&self.real, message)
    }
}

#[test]
fn f32_slices_round_trip_exactly() {
    let f = fixture();
    let bytes = f.encoded();
    let view = decode(&bytes, &f.expected()).unwrap();
    assert_eq!(view.values().as_ref(), f.values.as_slice());
    assert_eq!(view.header.hotkey, dev_keypair("Alice").unwrap().hotkey());
    assert!(bytes.len() <= max_encoded_len(f.indices.total_len()));
}

#[test]
fn bf16_slices_round_trip_within_bf16_precision_at_half_the_size() {
    let f = fixture();
    let alice = dev_keypair("Alice").unwrap();
    let bytes = encode(f.meta(Dtype::Bf16), &f.values, &alice).unwrap();
    let f32_len = f.encoded().len();
    assert!(bytes.len() < f32_len * 6 / 10, "{} vs {f32_len}", bytes.len());
    let view = decode(&bytes, &f.expected()).unwrap();
    for (got, want) in view.values().iter().zip(&f.values) {
        assert!((got - want).abs() <= want.abs() / 128.0 + 1e-6, "{got} vs {want}");
    }
}

#[test]
fn body_starts_aligned_so_f32_decoding_is_a_cast() {
    let f = fixture();
    let bytes = f.encoded();
    let body_start = bytes.len() - f.values.len() * 4;
    assert_eq!(body_start % BODY_ALIGN, 0);
}

#[test]
fn slices_that_do_not_match_expectations_are_rejected_with_the_cause() {
    let f = fixture();
    let bytes = f.encoded();
    let bob = dev_keypair("Bob").unwrap().hotkey();
    let other_model = ParamLayout::llama(&ModelShape::seed_1b2()).unwrap().fingerprint();
    let registered: HashSet<Hotkey> = [bob].into_iter().collect();
    let cases: Vec<(Expected<'_>, &str)> = vec![
        (Expected { kind: SliceKind::State, ..f.expected() }, "wrong_kind"),
        (Expected { window: 12, ..f.expected() }, "wrong_window"),
        (Expected { hotkey: Some(bob), ..f.expected() }, "wrong_hotkey"),
        (Expected { registered: Some(&registered), ..f.expected() }, "unregistered_hotkey"),
        (Expected { fingerprint: other_model, ..f.expected() }, "fingerprint_mismatch"),
        (Expected { compression: 5, ..f.expected() }, "wrong_compression"),
        (Expected { value_count: f.values.len() + 1, ..f.expected() }, "wrong_value_count"),
    ];
    for (expected, reason) in cases {
        let err = decode(&bytes, &expected).unwrap_err();
        assert_eq!(err.reason(), reason, "{err}");
    }
}

#[test]
fn a_registered_hotkey_passes_the_registration_check() {
    let f = fixture();
    let registered: HashSet<Hotkey> = [dev_keypair("Alice").unwrap().hotkey()].into_iter().collect();
    let expected = Expected { registered: Some(&registered), ..f.expected() };
    assert!(decode(&f.encoded(), &expected).is_ok());
}

#[test]
fn hostile_slice_files_are_rejected_with_reasons() {
    let f = fixture();
    let good = f.encoded();
    let body_start = good.len() - f.values.len() * 4;
    let mut cases: Vec<(Vec<u8>, &str)> = Vec::new();

    cases.push((Vec::new(), "too_short"));
    cases.push((good[..40].to_vec(), "too_short"));
    cases.push((good[..good.len() - 1].to_vec(), "body_size_mismatch"));
    let mut longer = good.clone();
    longer.extend_from_slice(&[0; 4]);
    cases.push((longer, "body_size_mismatch"));
    let mut huge = good.clone();
    huge.resize(max_encoded_len(f.values.len()) + 1, 0);
    cases.push((huge, "too_large"));
    let mut magic = good.clone();
    magic[0] ^= 1;
    cases.push((magic, "bad_magic"));
    let mut version = good.clone();
    version[8] = 2;
    cases.push((version, "unsupported_version"));
    let mut header_len = good.clone();
    header_len[10..12].copy_from_slice(&600u16.to_le_bytes());
    cases.push((header_len, "bad_header_length"));
    let mut body = good.clone();
    body[body_start + 5] ^= 0x40;
    cases.push((body, "body_hash_mismatch"));
    let mut signature = good.clone();
    let header_len = usize::from(u16::from_le_bytes([good[10], good[11]]));
    signature[PREFIX_LEN + header_len + 3] ^= 1;
    cases.push((signature, "bad_signature"));
    let mut padding = good.clone();
    padding[body_start - 1] = 7;
    cases.push((padding, "non_zero_padding"));
    // Bob signs a slice that claims to be Alice's.
    let alice = dev_keypair("Alice").unwrap();
    let impostor = Impostor { claimed: alice.hotkey(), real: dev_keypair("Bob").unwrap() };
    cases.push((encode(f.meta(Dtype::F32), &f.values, &impostor).unwrap(), "bad_signature"));
    // A correctly signed slice whose values are not finite (a broken or hostile peer).
    let mut nan_values = f.values.clone();
    nan_values[3] = f32::NAN;
    let nan_body: Vec<u8> = nan_values.iter().flat_map(|v| v.to_le_bytes()).collect();
    cases.push((
        assemble(f.meta(Dtype::F32), f.values.len() as u64, &alice, |out| {
            out.extend_from_slice(&nan_body);
            Ok(())
        })
        .unwrap(),
        "non_finite_value",
    ));
    let mut inf_values = f.values.clone();
    inf_values[f.values.len() - 1] = f32::NEG_INFINITY;
    let inf_body: Vec<u8> = inf_values.iter().flat_map(|v| v.to_le_bytes()).collect();
    cases.push((
        assemble(f.meta(Dtype::F32), f.values.len() as u64, &alice, |out| {
            out.extend_from_slice(&inf_body);
            Ok(())
        })
        .unwrap(),
        "non_finite_value",
    ));
    // A valid header followed by garbage where the header should be.
    let mut garbage_header = good.clone();
    garbage_header[PREFIX_LEN..PREFIX_LEN + 4].copy_from_slice(&[0xff; 4]);
    cases.push((garbage_header, "malformed_header"));

    for (bytes, reason) in cases {
        let err = decode(&bytes, &f.expected()).unwrap_err();
        assert_eq!(err.reason(), reason, "{err}");
    }
}

#[test]
fn non_finite_value_errors_point_at_the_value() {
    let f = fixture();
    let alice = dev_keypair("Alice").unwrap();
    let mut values = f.values.clone();
    values[7] = f32::INFINITY;
    let body: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let bytes = assemble(f.meta(Dtype::F32), values.len() as u64, &alice, |out| {
        out.extend_from_slice(&body);
        Ok(())
    })
    .unwrap();
    let err = decode(&bytes, &f.expected()).unwrap_err();
    assert!(matches!(err, SliceError::NonFiniteValue { index: 7, .. }), "{err}");
}

#[test]
fn encoder_refuses_to_publish_non_finite_values() {
    let f = fixture();
    let alice = dev_keypair("Alice").unwrap();
    let mut values = f.values.clone();
    values[2] = f32::NAN;
    assert!(matches!(encode(f.meta(Dtype::F32), &values, &alice), Err(EncodeError::NonFiniteValue { index: 2, .. })));
    // Finite in f32, infinite once rounded to bf16.
    values[2] = f32::MAX;
    assert!(matches!(encode(f.meta(Dtype::Bf16), &values, &alice), Err(EncodeError::NonFiniteValue { index: 2, .. })));
}

#[test]
fn misaligned_input_still_decodes_by_copying() {
    let f = fixture();
    let bytes = f.encoded();
    let mut shifted = vec![0u8; bytes.len() + 1];
    shifted[1..].copy_from_slice(&bytes);
    let view = decode(&shifted[1..], &f.expected()).unwrap();
    assert_eq!(view.values().as_ref(), f.values.as_slice());
}

#[test]
fn header_layout_is_pinned() {
    // The header's encoding is part of the protocol; pin its size and leading bytes.
    let f = fixture();
    let bytes = f.encoded();
    assert_eq!(&bytes[..8], b"TESSLICE");
    assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), 1);
    let header_len = u16::from_le_bytes([bytes[10], bytes[11]]);
    // kind(1) + window(1) + hotkey(32) + fingerprint(32) + compression(1) + dtype(1)
    // + value_count(varint) + body_hash(32)
    assert_eq!(header_len, 1 + 1 + 32 + 32 + 1 + 1 + 2 + 32);
    assert_eq!(bytes[12], 1, "Delta is the second SliceKind variant");
    assert_eq!(bytes[13], 11, "window 11 as a varint");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decode_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let f = fixture();
        prop_assert!(decode(&bytes, &f.expected()).is_err());
    }

    #[test]
    fn decode_never_panics_on_random_bytes_after_a_valid_prefix(
        tail in proptest::collection::vec(any::<u8>(), 0..1024),
        cut in 0usize..200,
    ) {
        let f = fixture();
        let mut bytes = f.encoded();
        bytes.truncate(cut.min(bytes.len()));
        bytes.extend_from_slice(&tail);
        let _ = decode(&bytes, &f.expected());
    }

    #[test]
    fn any_single_byte_change_is_rejected(pos in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let f = fixture();
        let mut bytes = f.encoded();
        let i = pos.index(bytes.len());
        bytes[i] ^= flip;
        prop_assert!(decode(&bytes, &f.expected()).is_err(), "byte {} flipped by {:#x} was accepted", i, flip);
    }
}

#[test]
fn non_finite_bf16_values_are_rejected() {
    let f = fixture();
    let alice = dev_keypair("Alice").unwrap();
    let mut body: Vec<u8> = f.values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect();
    // bf16 NaN at value 5.
    body[10..12].copy_from_slice(&0x7fc0u16.to_le_bytes());
    let meta = f.meta(Dtype::Bf16);
    let bytes = assemble(meta, f.values.len() as u64, &alice, |out| {
        out.extend_from_slice(&body);
        Ok(())
    })
    .unwrap();
    let err = decode(&bytes, &f.expected()).unwrap_err();
    assert!(matches!(err, SliceError::NonFiniteValue { index: 5, .. }), "{err}");
}

#[test]
fn values_beyond_the_plausible_magnitude_are_refused_in_both_dtypes() {
    let f = fixture();
    let alice = dev_keypair("Alice").unwrap();
    for (dtype, poison) in [(Dtype::F32, 3.0e38f32), (Dtype::F32, -2.0 * MAX_ABS_VALUE), (Dtype::Bf16, 1.0e30)] {
        let mut values = f.values.clone();
        values[5] = poison;
        let bytes = encode(f.meta(dtype), &values, &alice).unwrap();
        let err = decode(&bytes, &f.expected()).unwrap_err();
        assert!(matches!(err, SliceError::ImplausibleValue { index: 5, .. }), "{dtype:?} {poison}: {err}");
        assert_eq!(err.reason(), "implausible_value");
    }
    let mut values = f.values.clone();
    values[5] = MAX_ABS_VALUE;
    let bytes = encode(f.meta(Dtype::F32), &values, &alice).unwrap();
    assert!(decode(&bytes, &f.expected()).is_ok(), "the bound itself is admissible");
}

#[test]
fn an_update_bound_sits_above_any_adamw_step_and_is_enforced_at_decode() {
    let lr = 1e-4;
    let bound = f64::from(update_value_bound(lr, 0.9, 0.95, 0.1));
    // 2 × 1.165 (the moment ratio's limit) + 1 + 0.1 × 100.
    assert!((bound / lr - 13.33).abs() < 0.01, "{}", bound / lr);
    let slow = f64::from(update_value_bound(lr, 0.9, 0.999, 0.0));
    assert!(slow / lr > 14.0 && slow / lr < 16.0, "β2 0.999: {}", slow / lr);
    for (b1, b2) in [(0.99, 0.95), (0.9, 1.0), (f64::NAN, 0.9)] {
        assert_eq!(update_value_bound(lr, b1, b2, 0.1), MAX_ABS_VALUE, "no finite bound for {b1}, {b2}");
    }
    assert_eq!(update_value_bound(0.0, 0.9, 0.95, 0.1), MAX_ABS_VALUE);

    let f = fixture();
    let alice = dev_keypair("Alice").unwrap();
    let limit = 0.5;
    let expected = Expected { max_abs: limit, ..f.expected() };
    let mut values = f.values.clone();
    values.iter_mut().for_each(|v| *v = v.clamp(-limit, limit));
    values[7] = -0.75;
    let bytes = encode(f.meta(Dtype::F32), &values, &alice).unwrap();
    let err = decode(&bytes, &expected).unwrap_err();
    assert!(matches!(err, SliceError::ImplausibleValue { index: 7, limit: 0.5, .. }), "{err}");
    values[7] = -limit;
    let bytes = encode(f.meta(Dtype::F32), &values, &alice).unwrap();
    assert!(decode(&bytes, &expected).is_ok(), "the bound itself is admissible");
}

/// A compressed exchange's delta carries a packed body of at most the expected bytes; a
/// values slice cannot pose as one, nor the reverse.
#[test]
fn packed_bodies_are_signed_bounded_and_only_for_compressed_deltas() {
    let f = fixture();
    let alice = dev_keypair("Alice").unwrap();
    let version = Exchange::SparseLoco.protocol_version();
    let meta = SliceMeta { version, ..f.meta(Dtype::Packed) };
    let body: Vec<u8> = (0..300u32).map(|i| (i * 7 % 251) as u8).collect();
    let bytes = encode_packed(meta, &body, &alice).unwrap();
    let expected = Expected { version, value_count: 1000, ..f.expected() };
    let view = decode(&bytes, &expected).unwrap();
    assert_eq!(view.packed(), Some(body.as_slice()));
    assert!(view.values().is_empty(), "a packed body has no values of its own");
    // Longer than the reader's bound.
    let short = Expected { value_count: 299, ..expected.clone() };
    assert!(matches!(decode(&bytes, &short), Err(SliceError::WrongValueCount { expected: 299, found: 300 })));
    // A tampered body fails the signed hash.
    let mut tampered = bytes.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert_eq!(decode(&tampered, &expected).unwrap_err(), SliceError::BodyHashMismatch);
    // Values where a packed body is expected, and a packed body under the update exchange.
    let values = encode(SliceMeta { version, ..f.meta(Dtype::F32) }, &f.values, &alice).unwrap();
    let wide = Expected { value_count: f.values.len() * 4, ..expected.clone() };
    assert!(matches!(decode(&values, &wide), Err(SliceError::WrongDtype { expected: "packed", .. })));
    let update = Exchange::Update.protocol_version();
    let packed_update = encode_packed(SliceMeta { version: update, ..meta }, &body, &alice).unwrap();
    let as_update = Expected { version: update, ..f.expected() };
    assert!(matches!(decode(&packed_update, &as_update), Err(SliceError::WrongDtype { expected: "values", .. })));
    // A state slice of a compressed exchange holds values, as every state does.
    let state = Expected { kind: SliceKind::State, ..expected };
    let packed_state = encode_packed(SliceMeta { kind: SliceKind::State, ..meta }, &body, &alice).unwrap();
    assert!(matches!(decode(&packed_state, &state), Err(SliceError::WrongDtype { expected: "values", .. })));
    assert!(encode_packed(f.meta(Dtype::F32), &body, &alice).is_err(), "encode_packed needs dtype Packed");
    assert!(encode(meta, &f.values, &alice).is_err(), "values cannot be written as packed");
}
