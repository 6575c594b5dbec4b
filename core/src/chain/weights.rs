//! How a subnet lets a validator set weights — rate limit, commit-reveal — and the
//! arithmetic the subtensor runtime applies to it, so the validator can tell *before* it
//! submits whether the chain will accept a transaction.
//!
//! The formulas are those of the subtensor pallet of the spec-218 era
//! (`pallets/subtensor/src/subnets/weights.rs`, early 2025): `get_epoch_index`,
//! `get_reveal_blocks`, `is_reveal_block_range`, `is_commit_expired`, `check_rate_limit`
//! and the hash `do_reveal_weights` checks. Later runtimes key commits by a stateful epoch
//! counter instead; these block formulas do not describe them.

use parity_scale_codec::Encode;

use crate::hotkey::Hotkey;

/// How the subnet lets a validator set weights, read from the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightsPolicy {
    /// `WeightsSetRateLimit(netuid)`: blocks between two weight settings of one UID.
    pub rate_limit_blocks: u64,
    /// `CommitRevealWeightsEnabled(netuid)`.
    pub commit_reveal: bool,
    /// `RevealPeriodEpochs(netuid)` (1 when the runtime has no such storage).
    pub reveal_period_epochs: u64,
    /// `Tempo(netuid)`.
    pub tempo: u16,
    /// `WeightsVersionKey(netuid)`.
    pub version_key: u64,
    /// Which commit extrinsic the runtime offers (from metadata), if any.
    pub commit_scheme: Option<CommitScheme>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitScheme {
    /// `commit_weights(netuid, commit_hash)` then `reveal_weights(netuid, uids, values, salt, version_key)` (spec 218 has these).
    Hash,
    /// A timelock-encrypted commit the chain reveals itself: `commit_crv3_weights(netuid, commit, reveal_round)` or
    /// `commit_timelocked_weights(netuid, commit, reveal_round, commit_reveal_version)` (newer runtimes); `call` is
    /// the call's name.
    Timelock { call: &'static str },
}

/// A pending hash commit of one hotkey, as the chain stores it (`WeightCommits(netuid, account)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightCommit {
    pub hash: [u8; 32],
    pub commit_block: u64,
    pub first_reveal_block: u64,
    pub last_reveal_block: u64,
}

/// Where a hash commit stands against the reveal window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevealTiming {
    /// The runtime answers `RevealTooEarly` until `reveal_from_block`.
    TooEarly { reveal_from_block: u64 },
    /// A reveal landing in this block is accepted.
    Now,
    /// The window has passed (`ExpiredWeightCommit`); commit again.
    Expired,
}

/// The hash `commit_weights` takes and `reveal_weights` checks: BlakeTwo256 of the SCALE
/// encoding of `(account, netuid, uids, values, salt, version_key)` — the runtime's
/// `BlakeTwo256::hash_of(&(who, netuid, uids, values, salt, version_key))`.
pub fn commit_hash(
    account: &Hotkey,
    netuid: u16,
    uids: &[u16],
    values: &[u16],
    salt: &[u16],
    version_key: u64,
) -> [u8; 32] {
    // Slices encode as `Vec<u16>` does (compact length, then items); `[u8; 32]` as the
    // AccountId32 it stands for.
    let encoded = (account.0, netuid, uids, values, salt, version_key).encode();
    sp_crypto_hashing::blake2_256(&encoded)
}

/// The subnet's epoch a block belongs to: `(block + netuid + 1) / (tempo + 1)`. The
/// netuid offset staggers subnets so that they do not all run their epoch in one block.
pub fn epoch_of(netuid: u16, tempo: u16, block: u64) -> u64 {
    block.saturating_add(u64::from(netuid) + 1) / (u64::from(tempo) + 1)
}

/// First block of an epoch (the inverse of [`epoch_of`]).
pub fn epoch_start(netuid: u16, tempo: u16, epoch: u64) -> u64 {
    epoch.saturating_mul(u64::from(tempo) + 1).saturating_sub(u64::from(netuid) + 1)
}

/// The window in which a hash commit made at `commit_block` may be revealed, as the
/// runtime records it in `WeightCommits`: the whole epoch `commit_epoch + reveal_period`,
/// `(first_block, last_block)` inclusive.
pub fn reveal_window(policy: &WeightsPolicy, netuid: u16, commit_block: u64) -> (u64, u64) {
    let reveal_epoch = epoch_of(netuid, policy.tempo, commit_block).saturating_add(policy.reveal_period_epochs);
    let first = epoch_start(netuid, policy.tempo, reveal_epoch);
    (first, first.saturating_add(u64::from(policy.tempo)))
}

/// Whether a reveal of a commit made at `commit_block` is accepted in block `now` (pass
/// the block the reveal will land in, i.e. the head + 1). Only the one epoch
/// `commit_epoch + reveal_period_epochs` is accepted: before it the runtime says
/// `RevealTooEarly`, after it the commit has expired.
pub fn reveal_timing(policy: &WeightsPolicy, netuid: u16, commit_block: u64, now: u64) -> RevealTiming {
    let reveal_epoch = epoch_of(netuid, policy.tempo, commit_block).saturating_add(policy.reveal_period_epochs);
    let current = epoch_of(netuid, policy.tempo, now);
    match current.cmp(&reveal_epoch) {
        std::cmp::Ordering::Less => {
            RevealTiming::TooEarly { reveal_from_block: epoch_start(netuid, policy.tempo, reveal_epoch) }
        }
        std::cmp::Ordering::Equal => RevealTiming::Now,
        std::cmp::Ordering::Greater => RevealTiming::Expired,
    }
}

/// Blocks to wait before a `set_weights` or `commit_weights` landing in block `now` (the
/// head + 1) passes the runtime's `check_rate_limit`: it accepts when
/// `now - last_update >= rate_limit`, and always when `last_update` is 0 (never set).
/// 0 means "allowed now". `last_update` is `LastUpdate(netuid)[uid]`, which registration,
/// `set_weights`, `commit_weights` and a successful reveal all set.
pub fn blocks_until_allowed(policy: &WeightsPolicy, last_update: u64, now: u64) -> u64 {
    if last_update == 0 {
        return 0;
    }
    last_update.saturating_add(policy.rate_limit_blocks).saturating_sub(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(tempo: u16, reveal_period_epochs: u64, rate_limit_blocks: u64) -> WeightsPolicy {
        WeightsPolicy {
            rate_limit_blocks,
            commit_reveal: true,
            reveal_period_epochs,
            tempo,
            version_key: 0,
            commit_scheme: Some(CommitScheme::Hash),
        }
    }

    #[test]
    fn commit_hash_is_blake2_256_of_the_scale_tuple() {
        // //Alice's account.
        let alice: Hotkey = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY".parse().unwrap();
        let h = commit_hash(&alice, 1, &[0, 1], &[100, 300], &[7, 8, 9], 5);
        // The SCALE bytes spelled out: account, u16 LE, compact-length vectors, u64 LE.
        let mut bytes = alice.0.to_vec();
        bytes.extend_from_slice(&[1, 0]);
        bytes.extend_from_slice(&[2 << 2, 0, 0, 1, 0]);
        bytes.extend_from_slice(&[2 << 2, 100, 0, 0x2c, 0x01]);
        bytes.extend_from_slice(&[3 << 2, 7, 0, 8, 0, 9, 0]);
        bytes.extend_from_slice(&5u64.to_le_bytes());
        assert_eq!(h, sp_crypto_hashing::blake2_256(&bytes));
        // Pinned once; the chopsticks test proves the runtime accepts a reveal of it.
        assert_eq!(hex::encode(h), PINNED_COMMIT_HASH);
        assert_ne!(h, commit_hash(&alice, 1, &[0, 1], &[100, 300], &[7, 8, 9], 6));
    }

    /// Computed once (and cross-checked with Python's `hashlib.blake2b(digest_size=32)`).
    const PINNED_COMMIT_HASH: &str = "2daa96466aa66ea99f6a4b166acaac2989d4ad7178db179346ef367ca2864bf8";

    #[test]
    fn epochs_follow_the_runtime_formula() {
        // tempo 360, netuid 1: blocks 0..=358 are epoch 0, 359 starts epoch 1.
        assert_eq!(epoch_of(1, 360, 0), 0);
        assert_eq!(epoch_of(1, 360, 358), 0);
        assert_eq!(epoch_of(1, 360, 359), 1);
        assert_eq!(epoch_start(1, 360, 1), 359);
        assert_eq!(epoch_start(1, 360, 0), 0);
        for block in [0u64, 17, 358, 359, 1000, 123_456] {
            let e = epoch_of(3, 99, block);
            assert!(epoch_start(3, 99, e) <= block && block < epoch_start(3, 99, e + 1));
        }
    }

    #[test]
    fn reveal_is_accepted_in_exactly_one_epoch() {
        let p = policy(10, 1, 100);
        let netuid = 2;
        // Epoch length 11; block 30 is epoch (30+3)/11 = 3; reveal epoch 4 = blocks 41..=51.
        let commit_block = 30;
        assert_eq!(reveal_window(&p, netuid, commit_block), (41, 51));
        assert_eq!(reveal_timing(&p, netuid, commit_block, 31), RevealTiming::TooEarly { reveal_from_block: 41 });
        assert_eq!(reveal_timing(&p, netuid, commit_block, 40), RevealTiming::TooEarly { reveal_from_block: 41 });
        assert_eq!(reveal_timing(&p, netuid, commit_block, 41), RevealTiming::Now);
        assert_eq!(reveal_timing(&p, netuid, commit_block, 51), RevealTiming::Now);
        assert_eq!(reveal_timing(&p, netuid, commit_block, 52), RevealTiming::Expired);
        // A longer reveal period pushes the window out by whole epochs.
        let p3 = policy(10, 3, 100);
        assert_eq!(reveal_window(&p3, netuid, commit_block), (63, 73));
        assert_eq!(reveal_timing(&p3, netuid, commit_block, 63), RevealTiming::Now);
    }

    #[test]
    fn rate_limit_matches_check_rate_limit() {
        let p = policy(360, 1, 100);
        assert_eq!(blocks_until_allowed(&p, 0, 5), 0, "never set: allowed");
        assert_eq!(blocks_until_allowed(&p, 1000, 1001), 99);
        assert_eq!(blocks_until_allowed(&p, 1000, 1099), 1);
        assert_eq!(blocks_until_allowed(&p, 1000, 1100), 0, "now - last == limit is allowed");
        assert_eq!(blocks_until_allowed(&p, 1000, 5000), 0);
        let unlimited = policy(360, 1, 0);
        assert_eq!(blocks_until_allowed(&unlimited, 1000, 1000), 0);
    }
}
