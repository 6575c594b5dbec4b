//! Hotkey identities (sr25519 public keys, shown as SS58 addresses) and the signatures
//! that bind a slice to the hotkey that produced it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use subxt_signer::sr25519;
use subxt_utils_accountid32::AccountId32;
use thiserror::Error;

/// An sr25519 public key: a neuron's hotkey on the subnet.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Hotkey(pub [u8; 32]);

#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid hotkey address {address:?}: {reason}")]
pub struct HotkeyParseError {
    pub address: String,
    pub reason: String,
}

impl Hotkey {
    /// The SS58 address (generic substrate prefix 42, as btcli shows it).
    pub fn to_ss58(&self) -> String {
        AccountId32(self.0).to_string()
    }
}

impl fmt::Display for Hotkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_ss58())
    }
}

impl fmt::Debug for Hotkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hotkey({})", self.to_ss58())
    }
}

impl FromStr for Hotkey {
    type Err = HotkeyParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AccountId32::from_str(s)
            .map(|a| Hotkey(a.0))
            .map_err(|e| HotkeyParseError { address: s.to_owned(), reason: e.to_string() })
    }
}

/// Something that can sign with a hotkey: the miner's own keypair, or a test key.
pub trait HotkeySigner: Send + Sync {
    fn hotkey(&self) -> Hotkey;
    fn sign(&self, message: &[u8]) -> [u8; 64];
}

impl HotkeySigner for sr25519::Keypair {
    fn hotkey(&self) -> Hotkey {
        Hotkey(self.public_key().0)
    }
    fn sign(&self, message: &[u8]) -> [u8; 64] {
        sr25519::Keypair::sign(self, message).0
    }
}

/// Verifies an sr25519 signature (substrate signing context) by `hotkey` over `message`.
pub fn verify(hotkey: &Hotkey, message: &[u8], signature: &[u8; 64]) -> bool {
    sr25519::verify(&sr25519::Signature(*signature), message, &sr25519::PublicKey(hotkey.0))
}

/// The sr25519 key pair the chain API signs with (re-exported: it is part of the `Chain` trait).
pub use subxt_signer::sr25519::Keypair;

/// A development keypair (`//Alice`, `//Bob`, …, or any `//Name`), for the devnet and tests.
pub fn dev_keypair(name: &str) -> Result<sr25519::Keypair, String> {
    let uri = format!("//{}", name.trim_start_matches("//"));
    let uri = subxt_signer::SecretUri::from_str(&uri).map_err(|e| e.to_string())?;
    sr25519::Keypair::from_uri(&uri).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// //Alice's well-known address: pins our SS58 encoding and dev-key derivation.
    const ALICE: &str = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";

    #[test]
    fn alice_dev_key_has_the_well_known_address() {
        let alice = dev_keypair("Alice").unwrap();
        assert_eq!(alice.hotkey().to_ss58(), ALICE);
        assert_eq!(ALICE.parse::<Hotkey>().unwrap(), alice.hotkey());
    }

    #[test]
    fn signature_verifies_only_for_its_message_and_key() {
        let alice = dev_keypair("Alice").unwrap();
        let bob = dev_keypair("//Bob").unwrap();
        let sig = HotkeySigner::sign(&alice, b"header");
        assert!(verify(&alice.hotkey(), b"header", &sig));
        assert!(!verify(&alice.hotkey(), b"headex", &sig));
        assert!(!verify(&bob.hotkey(), b"header", &sig));
    }

    #[test]
    fn malformed_address_is_a_clear_error() {
        let err = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQZ".parse::<Hotkey>().unwrap_err();
        assert!(err.to_string().contains("invalid hotkey address"), "{err}");
        assert!("not-an-address".parse::<Hotkey>().is_err());
    }
}
