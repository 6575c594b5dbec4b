//! Timelock encryption of weights for commit-reveal v3 (`commit_crv3_weights` /
//! `commit_timelocked_weights`): the weights are encrypted to a future drand quicknet
//! round, and the chain decrypts them itself once that round's signature is on chain, so
//! a validator cannot be copied before the reveal and need not come back to reveal.
//!
//! The scheme is the one the subtensor runtime decrypts with (ideal-lab5 `timelock`:
//! Boneh–Franklin IBE on BLS12-381 for a 32-byte key, AES-GCM for the payload; the
//! identity of round `r` is `sha256(r as u64 big-endian)`).
//!
//! Wire format: the runtime is built against `timelock` at git rev 5416406 (ark 0.4),
//! whose IBE ciphertext holds `v` and `w` as `Vec<u8>`; the registry's `timelock` 0.3.0
//! used here holds them as `[u8; 32]`, which ark-serialize writes without the 8-byte
//! length. The bytes are therefore laid out here in the runtime's form — `u` (96 bytes,
//! compressed G2), `v` and `w` each as a u64-LE length 32 then 32 bytes, then `body` and
//! `cipher_suite` as length-prefixed byte vectors — instead of 0.3.0's own
//! `serialize_compressed`, which the runtime would fail to read.

use ark_serialize::{CanonicalDeserialize, CanonicalSerialize};
use parity_scale_codec::Encode;
use rand_core_06::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use thiserror::Error;
use timelock::block_ciphers::AESGCMBlockCipherProvider;
use timelock::engines::EngineBLS;
use timelock::engines::drand::TinyBLS381;
use timelock::ibe::fullident::{Ciphertext as IbeCiphertext, Identity};
use timelock::tlock::{TLECiphertext, tld, tle};

use crate::hotkey::Hotkey;

/// drand quicknet's public key (compressed G2).
pub const DRAND_QUICKNET_PUBLIC_KEY_HEX: &str = "83cf0f2896adee7eb8b5f01fcad3912212c437e0073e911fb90022d3e760183c8c4b450b6a0a6c3ac6a5776a2d1064510d1fec758c921cc22b0e17e63aaf4bcb5ed66304de9cf809bd274ca73bab4af5a6e9c76a4bc09e76eae8991ef5ece45a";
/// Unix time of quicknet's round 1.
pub const DRAND_QUICKNET_GENESIS: u64 = 1_692_803_367;
/// Seconds between quicknet rounds.
pub const DRAND_QUICKNET_PERIOD_SECS: u64 = 3;
/// Rounds by which subtensor's drand pallet lags real time (bittensor-drand's
/// `SUBTENSOR_PULSE_DELAY`): a round this much older is on chain at the reveal time.
pub const SUBTENSOR_PULSE_DELAY: u64 = 24;

type PublicKey = <TinyBLS381 as EngineBLS>::PublicKeyGroup;
type Signature = <TinyBLS381 as EngineBLS>::SignatureGroup;

/// Length ark-serialize gives a `Vec<u8>` of `v`/`w` in the runtime's form.
const IBE_HASH_LEN: usize = 32;

#[derive(Debug, Error)]
pub enum TimelockError {
    #[error("{0}")]
    Invalid(String),
    #[error("no randomness for the encryption key: {0}")]
    Random(String),
    #[error("timelock encryption failed: {0}")]
    Encrypt(String),
    #[error("not a timelock ciphertext: {0}")]
    Ciphertext(String),
    #[error("not a drand signature: {0}")]
    Signature(String),
    /// The signature is not the one of the round the ciphertext was made for (or the
    /// ciphertext was altered).
    #[error("timelock decryption failed: {0}")]
    Decrypt(String),
}

fn quicknet_public_key() -> Result<PublicKey, TimelockError> {
    let bytes = hex::decode(DRAND_QUICKNET_PUBLIC_KEY_HEX)
        .map_err(|e| TimelockError::Encrypt(format!("drand public key: {e}")))?;
    PublicKey::deserialize_compressed(&bytes[..]).map_err(|e| TimelockError::Encrypt(format!("drand public key: {e}")))
}

/// The IBE identity drand signs in round `round`.
fn round_identity(round: u64) -> Identity {
    let message = Sha256::digest(round.to_be_bytes());
    Identity::new(b"", &message)
}

/// Encrypts `plaintext` so that it opens with drand quicknet's signature of `round`.
pub fn encrypt(plaintext: &[u8], round: u64) -> Result<Vec<u8>, TimelockError> {
    let public_key = quicknet_public_key()?;
    // The AES key; the ciphertext hides it under the round's identity.
    let mut key = [0u8; 32];
    OsRng.try_fill_bytes(&mut key).map_err(|e| TimelockError::Random(e.to_string()))?;
    let ct =
        tle::<TinyBLS381, AESGCMBlockCipherProvider, OsRng>(public_key, key, plaintext, round_identity(round), OsRng)
            .map_err(|e| TimelockError::Encrypt(format!("{e:?}")))?;
    to_runtime_bytes(&ct)
}

/// The payload the runtime's CR-v3 reveal decodes first-generation commits with
/// (`LegacyWeightsTlockPayload { uids, values, version_key }`), encrypted for `round`.
/// Runtimes with `commit_crv3_weights` read this; for `commit_timelocked_weights` use
/// [`encrypt_weights_for_hotkey`].
pub fn encrypt_weights(uids: &[u16], values: &[u16], version_key: u64, round: u64) -> Result<Vec<u8>, TimelockError> {
    check_lengths(uids, values)?;
    encrypt(&(uids, values, version_key).encode(), round)
}

/// The payload of `commit_timelocked_weights` runtimes (`WeightsTlockPayload { hotkey,
/// uids, values, version_key }`, `hotkey` being the SCALE bytes of the committing account),
/// encrypted for `round`. Those runtimes fall back to the legacy payload only when the
/// first field does not read as an account, which a legacy payload of 32 or more UIDs
/// can; so commit this one there.
pub fn encrypt_weights_for_hotkey(
    hotkey: &Hotkey,
    uids: &[u16],
    values: &[u16],
    version_key: u64,
    round: u64,
) -> Result<Vec<u8>, TimelockError> {
    check_lengths(uids, values)?;
    encrypt(&(hotkey.0.to_vec(), uids, values, version_key).encode(), round)
}

fn check_lengths(uids: &[u16], values: &[u16]) -> Result<(), TimelockError> {
    if uids.len() != values.len() {
        return Err(TimelockError::Invalid(format!("{} uids but {} values", uids.len(), values.len())));
    }
    Ok(())
}

/// Opens a ciphertext of [`encrypt`] with the drand signature (48 bytes, compressed G1)
/// of the round it was made for, as the chain does at reveal time.
pub fn decrypt(ciphertext: &[u8], signature: &[u8]) -> Result<Vec<u8>, TimelockError> {
    let ct = from_runtime_bytes(ciphertext)?;
    let signature =
        Signature::deserialize_compressed(signature).map_err(|e| TimelockError::Signature(e.to_string()))?;
    tld::<TinyBLS381, AESGCMBlockCipherProvider>(ct, signature).map_err(|e| TimelockError::Decrypt(format!("{e:?}")))
}

/// The drand round to encrypt a commit for, so that the chain can open it when the
/// reveal is due `blocks_until_reveal` blocks of `block_time_secs` from `now_unix_secs`.
///
/// As bittensor-drand's `generate_commit`: `ceil((reveal_time - genesis) / 3) - 24`, where
/// 24 is [`SUBTENSOR_PULSE_DELAY`] (the chain's drand pulses lag real time, so an earlier
/// round is what is there at the reveal). Never below round 1.
pub fn reveal_round(now_unix_secs: u64, blocks_until_reveal: u64, block_time_secs: f64) -> u64 {
    let reveal_time = now_unix_secs as f64 + blocks_until_reveal as f64 * block_time_secs;
    let since_genesis = reveal_time - DRAND_QUICKNET_GENESIS as f64;
    // `as` saturates (and maps NaN to 0), so a nonsense block time cannot wrap.
    let round = (since_genesis / DRAND_QUICKNET_PERIOD_SECS as f64).ceil().max(0.0) as u64;
    round.saturating_sub(SUBTENSOR_PULSE_DELAY).max(1)
}

fn to_runtime_bytes(ct: &TLECiphertext<TinyBLS381>) -> Result<Vec<u8>, TimelockError> {
    let mut out = Vec::new();
    let ser = |e: ark_serialize::SerializationError| TimelockError::Encrypt(e.to_string());
    ct.header.u.serialize_compressed(&mut out).map_err(ser)?;
    ct.header.v.to_vec().serialize_compressed(&mut out).map_err(ser)?;
    ct.header.w.to_vec().serialize_compressed(&mut out).map_err(ser)?;
    ct.body.serialize_compressed(&mut out).map_err(ser)?;
    ct.cipher_suite.serialize_compressed(&mut out).map_err(ser)?;
    Ok(out)
}

fn from_runtime_bytes(bytes: &[u8]) -> Result<TLECiphertext<TinyBLS381>, TimelockError> {
    let bad = |what: &str, e: String| TimelockError::Ciphertext(format!("{what}: {e}"));
    let mut reader = bytes;
    let u = PublicKey::deserialize_compressed(&mut reader).map_err(|e| bad("header u", e.to_string()))?;
    let mut hash = |what: &str| -> Result<[u8; IBE_HASH_LEN], TimelockError> {
        let v = Vec::<u8>::deserialize_compressed(&mut reader).map_err(|e| bad(what, e.to_string()))?;
        v.try_into().map_err(|v: Vec<u8>| bad(what, format!("{} bytes, not {IBE_HASH_LEN}", v.len())))
    };
    let v = hash("header v")?;
    let w = hash("header w")?;
    let body = Vec::<u8>::deserialize_compressed(&mut reader).map_err(|e| bad("body", e.to_string()))?;
    let cipher_suite =
        Vec::<u8>::deserialize_compressed(&mut reader).map_err(|e| bad("cipher suite", e.to_string()))?;
    Ok(TLECiphertext { header: IbeCiphertext { u, v, w }, body, cipher_suite })
}

#[cfg(test)]
mod tests {
    use super::*;
    use parity_scale_codec::Decode;

    /// drand quicknet's signatures of rounds 1000 and 1001
    /// (api.drand.sh/52db9ba7…/public/1000, /1001).
    const ROUND_1000_SIGNATURE: &str =
        "b44679b9a59af2ec876b1a6b1ad52ea9b1615fc3982b19576350f93447cb1125e342b73a8dd2bacbe47e4b6b63ed5e39";
    const ROUND_1001_SIGNATURE: &str =
        "b33bf3667cbd5a82de3a24b4e0e9fe5513cc1a0e840368c6e31f5fcfa79bea03f73896b25883abf2853d10337fb8fa41";

    #[test]
    fn weights_open_with_the_real_drand_signature_of_their_round_only() {
        let ct = encrypt_weights(&[0, 3, 7], &[65535, 100, 0], 42, 1000).unwrap();
        let sig_1000 = hex::decode(ROUND_1000_SIGNATURE).unwrap();
        let plain = decrypt(&ct, &sig_1000).unwrap();
        let (uids, values, version_key) = <(Vec<u16>, Vec<u16>, u64)>::decode(&mut &plain[..]).unwrap();
        assert_eq!((uids, values, version_key), (vec![0, 3, 7], vec![65535, 100, 0], 42));

        let sig_1001 = hex::decode(ROUND_1001_SIGNATURE).unwrap();
        assert!(matches!(decrypt(&ct, &sig_1001), Err(TimelockError::Decrypt(_))));
        // A ciphertext for round 1001 opens with 1001's signature, not 1000's.
        let ct_1001 = encrypt(b"later", 1001).unwrap();
        assert_eq!(decrypt(&ct_1001, &sig_1001).unwrap(), b"later");
        assert!(decrypt(&ct_1001, &sig_1000).is_err());
    }

    #[test]
    fn hotkey_payload_carries_the_account_first() {
        let alice: Hotkey = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY".parse().unwrap();
        let ct = encrypt_weights_for_hotkey(&alice, &[1], &[9], 7, 1000).unwrap();
        let plain = decrypt(&ct, &hex::decode(ROUND_1000_SIGNATURE).unwrap()).unwrap();
        let (hotkey, uids, values, version_key) =
            <(Vec<u8>, Vec<u16>, Vec<u16>, u64)>::decode(&mut &plain[..]).unwrap();
        assert_eq!(hotkey, alice.0.to_vec());
        assert_eq!((uids, values, version_key), (vec![1], vec![9], 7));
        assert!(matches!(encrypt_weights(&[1, 2], &[3], 0, 1000), Err(TimelockError::Invalid(_))));
    }

    #[test]
    fn ciphertext_is_laid_out_as_the_runtime_reads_it() {
        let ct = encrypt(b"abc", 1000).unwrap();
        // u (96) | 32u64 v | 32u64 w | len body | len suite "AES_GCM_".
        assert_eq!(&ct[96..104], &32u64.to_le_bytes());
        assert_eq!(&ct[136..144], &32u64.to_le_bytes());
        let body_len = u64::from_le_bytes(ct[176..184].try_into().unwrap()) as usize;
        let suite_at = 184 + body_len;
        assert_eq!(&ct[suite_at..suite_at + 8], &8u64.to_le_bytes());
        assert_eq!(&ct[suite_at + 8..], b"AES_GCM_");
        // timelock 0.3.0's own encoding is the same minus the two v/w lengths.
        let native = from_runtime_bytes(&ct).unwrap();
        let mut own = Vec::new();
        native.serialize_compressed(&mut own).unwrap();
        assert_eq!(own.len() + 16, ct.len());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let sig = hex::decode(ROUND_1000_SIGNATURE).unwrap();
        assert!(matches!(decrypt(&[], &sig), Err(TimelockError::Ciphertext(_))));
        assert!(matches!(decrypt(&[0u8; 300], &sig), Err(TimelockError::Ciphertext(_))));
        let ct = encrypt(b"abc", 1000).unwrap();
        assert!(matches!(decrypt(&ct, &[1, 2, 3]), Err(TimelockError::Signature(_))));
        let mut truncated = ct.clone();
        truncated.truncate(150);
        assert!(matches!(decrypt(&truncated, &sig), Err(TimelockError::Ciphertext(_))));
        // The body's last byte sits before the suite's length and text (16 bytes).
        let mut flipped = ct;
        let last_of_body = flipped.len() - 17;
        flipped[last_of_body] ^= 1;
        assert!(matches!(decrypt(&flipped, &sig), Err(TimelockError::Decrypt(_))));
    }

    #[test]
    fn reveal_round_is_the_pulse_delayed_round_of_the_reveal_time() {
        // 100 blocks of 12 s after genesis + 3000 s: (3000 + 1200) / 3 = 1400, minus 24.
        assert_eq!(reveal_round(DRAND_QUICKNET_GENESIS + 3000, 100, 12.0), 1376);
        // A partial period rounds up.
        assert_eq!(reveal_round(DRAND_QUICKNET_GENESIS + 3001, 100, 12.0), 1377);
        // Before genesis (a wrong clock) still yields a round, not an underflow.
        assert_eq!(reveal_round(0, 0, 12.0), 1);
        assert_eq!(reveal_round(DRAND_QUICKNET_GENESIS, 10, f64::NAN), 1);
    }
}
