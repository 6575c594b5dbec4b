//! The miner's link to the subtensor chain: the block clock, the metagraph, bucket
//! commitments and weights (with the subnet's rate limit and commit-reveal), behind one [`Chain`] trait with two implementations — the real
//! chain over subxt ([`SubtensorChain`]) and an in-process [`DevChain`] for the devnet and
//! fast tests.

mod blocks;
mod dev;
mod network;
mod neuron;
mod subtensor;
pub mod timelock;
pub mod weights;

use std::collections::HashSet;
use std::fmt;

use async_trait::async_trait;
use futures::stream::BoxStream;
use subxt_signer::sr25519::Keypair;
use thiserror::Error;

use crate::hotkey::Hotkey;

pub use blocks::{BlockEvent, BlockStreamOptions, resilient_blocks};
pub use dev::{DevChain, DevChainOptions};
pub use network::{FINNEY_ENDPOINT, LOCAL_ENDPOINT, Network, TEST_ENDPOINT, is_ws_url};
pub use neuron::{CommitmentChange, ensure_commitment, find_uid};
pub use subtensor::SubtensorChain;
pub use weights::{CommitScheme, RevealTiming, WeightCommit, WeightsPolicy};

/// A block hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockHash(pub [u8; 32]);

impl fmt::Debug for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{}", hex::encode(self.0))
    }
}

/// A finalized block: all the miner needs of it is its place on the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockInfo {
    pub number: u64,
    pub hash: BlockHash,
}

/// A subnet's registered neurons, `neurons[uid]` being that UID's hotkey.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metagraph {
    pub netuid: u16,
    /// Block the metagraph was read at.
    pub block: u64,
    pub neurons: Vec<Hotkey>,
}

impl Metagraph {
    pub fn size(&self) -> usize {
        self.neurons.len()
    }

    pub fn uid_of(&self, hotkey: &Hotkey) -> Option<u16> {
        self.neurons.iter().position(|h| h == hotkey).map(|u| u as u16)
    }

    pub fn hotkey_of(&self, uid: u16) -> Option<&Hotkey> {
        self.neurons.get(usize::from(uid))
    }

    /// The registered hotkeys, for slice validation.
    pub fn hotkeys(&self) -> HashSet<Hotkey> {
        self.neurons.iter().copied().collect()
    }
}

#[derive(Debug, Error)]
pub enum ChainError {
    #[error("cannot connect to the chain at {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("chain request failed: {0}")]
    Rpc(String),
    #[error("the runtime has no {what}: is this a subtensor chain?")]
    Metadata { what: String },
    #[error("cannot decode {what} from the chain: {reason}")]
    Decode { what: String, reason: String },
    #[error("transaction {call} failed: {reason}")]
    Transaction { call: String, reason: String },
    #[error("subnet {netuid} does not exist")]
    NoSuchSubnet { netuid: u16 },
    #[error("{0}")]
    Invalid(String),
}

/// A stream of finalized blocks from one subscription. It ends, or yields an error, when
/// the connection drops; [`resilient_blocks`] turns it into one that never ends.
pub type RawBlockStream = BoxStream<'static, Result<BlockInfo, ChainError>>;

/// What the miner and validator need of the chain.
#[async_trait]
pub trait Chain: Send + Sync + 'static {
    /// Where this chain is, for logs.
    fn describe(&self) -> String;

    /// One subscription to new finalized blocks.
    async fn subscribe_blocks(&self) -> Result<RawBlockStream, ChainError>;

    /// Drops and re-establishes the connection (a no-op in process).
    async fn reconnect(&self) -> Result<(), ChainError>;

    async fn latest_block(&self) -> Result<BlockInfo, ChainError>;

    async fn block_hash(&self, number: u64) -> Result<Option<BlockHash>, ChainError>;

    async fn metagraph(&self, netuid: u16) -> Result<Metagraph, ChainError>;

    /// The raw commitment string of one hotkey (e.g. its bucket URL), if any.
    async fn commitment(&self, netuid: u16, hotkey: &Hotkey) -> Result<Option<String>, ChainError>;

    /// Every commitment on the subnet, by hotkey. Entries that are not text are skipped.
    async fn commitments(&self, netuid: u16) -> Result<Vec<(Hotkey, String)>, ChainError>;

    /// Commits `data` for the signer's hotkey (`Commitments.set_commitment`).
    async fn set_commitment(&self, netuid: u16, signer: &Keypair, data: &str) -> Result<(), ChainError>;

    /// Sets the signer's weights on the subnet.
    async fn set_weights(
        &self,
        netuid: u16,
        signer: &Keypair,
        uids: &[u16],
        weights: &[u16],
        version_key: u64,
    ) -> Result<(), ChainError>;

    /// The weights UID `uid` has set on the subnet, as `(uid, weight)` pairs.
    async fn weights(&self, netuid: u16, uid: u16) -> Result<Vec<(u16, u16)>, ChainError>;

    /// Registers `hotkey` on the subnet, paid by `coldkey` (dev tooling); returns its UID.
    async fn register(&self, netuid: u16, coldkey: &Keypair, hotkey: &Hotkey) -> Result<u16, ChainError>;

    /// How the subnet lets a validator set weights: rate limit, commit-reveal, version key.
    async fn weights_policy(&self, netuid: u16) -> Result<WeightsPolicy, ChainError>;

    /// The block at which `uid` last set weights (`LastUpdate(netuid)[uid]`), 0 if never.
    /// Registration and weight commits set it too: it is what the rate limit counts from.
    async fn last_weights_block(&self, netuid: u16, uid: u16) -> Result<u64, ChainError>;

    /// Commits the hash of weights to reveal later ([`weights::commit_hash`]).
    async fn commit_weights(&self, netuid: u16, signer: &Keypair, commit_hash: [u8; 32]) -> Result<(), ChainError>;

    /// Reveals weights committed with [`Chain::commit_weights`]; the chain checks the hash
    /// and the reveal epoch ([`weights::reveal_timing`]) and then sets them.
    async fn reveal_weights(
        &self,
        netuid: u16,
        signer: &Keypair,
        uids: &[u16],
        weights: &[u16],
        salt: &[u16],
        version_key: u64,
    ) -> Result<(), ChainError>;

    /// Commits timelock-encrypted weights ([`timelock::encrypt_weights`]) that the chain
    /// reveals itself at drand round `reveal_round`. `ChainError::Metadata` when the
    /// runtime has no timelocked commit call.
    async fn commit_timelocked_weights(
        &self,
        netuid: u16,
        signer: &Keypair,
        ciphertext: &[u8],
        reveal_round: u64,
    ) -> Result<(), ChainError>;

    /// The hotkey's pending hash commits on the subnet, oldest first.
    async fn weight_commits(&self, netuid: u16, hotkey: &Hotkey) -> Result<Vec<WeightCommit>, ChainError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metagraph_maps_uids_and_hotkeys_both_ways() {
        let a: Hotkey = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY".parse().unwrap();
        let b: Hotkey = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty".parse().unwrap();
        let m = Metagraph { netuid: 3, block: 9, neurons: vec![a, b] };
        assert_eq!(m.size(), 2);
        assert_eq!(m.uid_of(&b), Some(1));
        assert_eq!(m.hotkey_of(0), Some(&a));
        assert_eq!(m.hotkey_of(2), None);
        assert!(m.hotkeys().contains(&a));
    }
}
