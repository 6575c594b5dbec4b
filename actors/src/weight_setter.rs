//! WeightSetter: the validator's moving scores, as weights, to the chain. It sets them as
//! soon as the subnet's rate limit (`WeightsSetRateLimit`, read from the chain with the
//! UID's `LastUpdate`) allows after new scores, retries a failure with a backoff, and
//! confirms every submission by reading the weights back; a slot is never skipped
//! because a block number was not a multiple of something.
//!
//! Under commit-reveal (`CommitRevealWeightsEnabled`) plain `set_weights` is refused by
//! the runtime, so it commits instead, with the scheme the runtime's metadata offers:
//! a timelock-encrypted commit that the chain reveals itself at the drand round the
//! reveal period implies, or a hash commit (`commit_weights`) that this actor reveals in
//! the reveal epoch. A hash commit's salt and weights are kept in the state directory
//! (atomically) until revealed, so a restart does not lose the reveal.
//!
//! The chain calls run in a task; the handler only decides.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use subxt_signer::sr25519::Keypair;
use tessera_core::chain::{Chain, ChainError, CommitScheme, RevealTiming, WeightsPolicy};
use tessera_core::hotkey::Hotkey;
use tessera_core::validator::{ScoringParams, to_u16_weights};
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::context::{ActorKind, MinerContext, NodeRole, lock};
use crate::messages::{SubmitOutcome, WeightSetterMsg};
use crate::stats::MinerStats;
use crate::supervisor::backoff;

pub struct WeightSetter;

pub struct WeightSetterState {
    ctx: Arc<MinerContext>,
    busy: bool,
    /// New scores since the last weights were set.
    dirty: bool,
    failures: usize,
    next_attempt: Instant,
    /// The score book's last window behind the weights being submitted.
    submitted_from: Option<u64>,
}

/// A hash commit waiting for its reveal epoch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PendingCommit {
    pub netuid: u16,
    pub uids: Vec<u16>,
    pub weights: Vec<u16>,
    pub salt: Vec<u16>,
    pub version_key: u64,
    pub hash: [u8; 32],
    pub commit_block: u64,
}

fn submitter(ctx: &MinerContext) -> WeightsSubmitter<'_> {
    WeightsSubmitter {
        chain: ctx.network.chain.as_ref(),
        netuid: ctx.id.netuid,
        uid: ctx.id.uid,
        signer: ctx.id.hotkey.keypair(),
        hotkey: ctx.own_hotkey(),
        pending_path: match &ctx.id.role {
            NodeRole::Validator { state_dir } => Some(state_dir.join("weights-commit.json")),
            NodeRole::Miner => None,
        },
        block_time: ctx.settings.block_time,
    }
}

impl Actor for WeightSetter {
    type Msg = WeightSetterMsg;
    type State = WeightSetterState;
    type Arguments = Arc<MinerContext>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        ctx: Arc<MinerContext>,
    ) -> Result<Self::State, ActorProcessingErr> {
        ctx.telemetry.stats.record_start(ActorKind::WeightSetter);
        let period = ctx.settings.block_time.clamp(Duration::from_millis(200), Duration::from_secs(12));
        myself.send_interval(period, || WeightSetterMsg::Tick);
        // Scores reloaded from disk are worth setting again after a restart.
        let Some(validator) = ctx.validator.as_ref() else {
            return Err("the WeightSetter runs on validators only".into());
        };
        let dirty = lock(&validator.scores).is_some();
        Ok(WeightSetterState {
            ctx,
            busy: false,
            dirty,
            failures: 0,
            next_attempt: Instant::now(),
            submitted_from: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WeightSetterMsg::ScoresUpdated { window } => {
                debug!(miner = %state.ctx.id.name, window, "new scores");
                state.dirty = true;
                state.maybe_submit(&myself);
            }
            WeightSetterMsg::Tick => {
                state.ctx.faults.maybe_panic(ActorKind::WeightSetter);
                state.maybe_submit(&myself);
            }
            WeightSetterMsg::Done(outcome) => {
                state.busy = false;
                state.finished(outcome);
            }
        }
        Ok(())
    }
}

impl WeightSetterState {
    fn maybe_submit(&mut self, myself: &ActorRef<WeightSetterMsg>) {
        if self.busy || Instant::now() < self.next_attempt || self.ctx.is_stopping() {
            return;
        }
        let ctx = self.ctx.clone();
        let me = myself.clone();
        if let Some(pending) = submitter(&ctx).pending() {
            self.busy = true;
            tokio::spawn(async move {
                let outcome =
                    submitter(&ctx).reveal(pending).await.unwrap_or_else(|e| SubmitOutcome::Failed(e.to_string()));
                let _ = me.cast(WeightSetterMsg::Done(outcome));
            });
            return;
        }
        if !self.dirty {
            return;
        }
        let params = ScoringParams::from_hparams(&ctx.network.hparams);
        let (from_window, weights) = ctx
            .validator
            .as_ref()
            .and_then(|v| lock(&v.scores).as_ref().map(|b| (b.window, b.weights(&params))))
            .unwrap_or_default();
        let (uids, values) = to_u16_weights(&weights);
        if uids.is_empty() {
            return; // nobody has earned anything yet: nothing worth a transaction
        }
        self.busy = true;
        self.dirty = false;
        self.submitted_from = from_window;
        tokio::spawn(async move {
            let outcome =
                submitter(&ctx).submit(uids, values).await.unwrap_or_else(|e| SubmitOutcome::Failed(e.to_string()));
            let _ = me.cast(WeightSetterMsg::Done(outcome));
        });
    }

    fn finished(&mut self, outcome: SubmitOutcome) {
        let ctx = &self.ctx;
        let Some(validator) = ctx.validator.as_ref() else { return };
        let stats = &validator.stats;
        match &outcome {
            SubmitOutcome::Set { block, weights } | SubmitOutcome::Revealed { block, weights } => {
                self.failures = 0;
                if matches!(outcome, SubmitOutcome::Revealed { .. }) {
                    MinerStats::add(&stats.weights_revealed, 1);
                }
                MinerStats::add(&stats.weights_set, 1);
                stats.record_weights(*block, weights.clone());
                if let (SubmitOutcome::Set { .. }, Some(window)) = (&outcome, self.submitted_from) {
                    stats.record_weights_from_window(window);
                }
                info!(miner = %ctx.id.name, block, "weights set and confirmed on chain");
            }
            SubmitOutcome::Committed { block } => {
                self.failures = 0;
                MinerStats::add(&stats.weights_committed, 1);
                info!(miner = %ctx.id.name, block, "weights committed (commit-reveal)");
            }
            SubmitOutcome::RateLimited { until } => {
                MinerStats::add(&stats.weights_rate_limited, 1);
                self.dirty = true;
                debug!(miner = %ctx.id.name, until, "weights wait for the subnet's rate limit");
            }
            SubmitOutcome::Waiting { until } => {
                debug!(miner = %ctx.id.name, until, "a weight commit waits for its reveal")
            }
            SubmitOutcome::Idle => {}
            SubmitOutcome::Failed(reason) => {
                MinerStats::add(&stats.weights_refused, 1);
                self.failures += 1;
                self.dirty = true;
                let delay = backoff(
                    ctx.settings.restart_backoff.max(Duration::from_millis(500)),
                    Duration::from_secs(120),
                    self.failures,
                );
                self.next_attempt = Instant::now() + delay;
                warn!(miner = %ctx.id.name, reason, retry_in_ms = delay.as_millis() as u64, "setting weights failed; retrying");
            }
        }
    }
}

/// Why a weight submission failed, by cause.
#[derive(Debug, Error)]
pub enum WeightsError {
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error("keeping the weight commit at {path}: {source}")]
    PendingFile { path: PathBuf, source: std::io::Error },
    #[error("encoding the weight commit: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("encrypting the timelocked weights: {0}")]
    Timelock(#[from] tessera_core::chain::timelock::TimelockError),
    #[error("the weights read back ({on_chain:?}) are not those sent ({sent:?})")]
    NotConfirmed { on_chain: Vec<(u16, u16)>, sent: Vec<(u16, u16)> },
    #[error("the subnet has commit-reveal enabled but the runtime offers no commit call this validator knows")]
    NoCommitCall,
}

/// What a weight submission needs: the chain, the validator's identity, where a pending
/// hash commit is kept. The WeightSetter's chain side, usable on its own (tests drive it
/// against the real runtime).
pub struct WeightsSubmitter<'a> {
    pub chain: &'a dyn Chain,
    pub netuid: u16,
    pub uid: u16,
    pub signer: &'a Keypair,
    pub hotkey: Hotkey,
    /// Where a hash commit waits for its reveal (`None`: kept in no file).
    pub pending_path: Option<PathBuf>,
    /// Nominal block time, for the drand round of a timelocked commit.
    pub block_time: Duration,
}

impl WeightsSubmitter<'_> {
    /// Sets (or commits) the weights if the rate limit allows.
    pub async fn submit(&self, uids: Vec<u16>, weights: Vec<u16>) -> Result<SubmitOutcome, WeightsError> {
        let (chain, netuid) = (self.chain, self.netuid);
        let policy = chain.weights_policy(netuid).await?;
        let now = chain.latest_block().await?.number;
        let last = chain.last_weights_block(netuid, self.uid).await?;
        let wait = tessera_core::chain::weights::blocks_until_allowed(&policy, last, now);
        if wait > 0 {
            return Ok(SubmitOutcome::RateLimited { until: now + wait });
        }
        if !policy.commit_reveal {
            chain.set_weights(netuid, self.signer, &uids, &weights, policy.version_key).await?;
            self.confirm(&uids, &weights).await?;
            let block = chain.latest_block().await?.number;
            return Ok(SubmitOutcome::Set { block, weights: uids.into_iter().zip(weights).collect() });
        }
        match policy.commit_scheme {
            Some(CommitScheme::Hash) => self.commit_hash(&policy, uids, weights, now).await,
            Some(CommitScheme::Timelock { call }) => {
                let blocks = reveal_blocks(&policy);
                let unix = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                let round = tessera_core::chain::timelock::reveal_round(unix, blocks, self.block_time.as_secs_f64());
                // `commit_timelocked_weights` reads a payload that names the hotkey first;
                // the older `commit_crv3_weights` one without it.
                let ciphertext = if call == "commit_timelocked_weights" {
                    tessera_core::chain::timelock::encrypt_weights_for_hotkey(
                        &self.hotkey,
                        &uids,
                        &weights,
                        policy.version_key,
                        round,
                    )
                } else {
                    tessera_core::chain::timelock::encrypt_weights(&uids, &weights, policy.version_key, round)
                }?;
                chain.commit_timelocked_weights(netuid, self.signer, &ciphertext, round).await?;
                Ok(SubmitOutcome::Committed { block: now })
            }
            None => Err(WeightsError::NoCommitCall),
        }
    }

    async fn commit_hash(
        &self,
        policy: &WeightsPolicy,
        uids: Vec<u16>,
        weights: Vec<u16>,
        now: u64,
    ) -> Result<SubmitOutcome, WeightsError> {
        let (chain, netuid) = (self.chain, self.netuid);
        let salt: Vec<u16> = (0..8).map(|_| rand::random::<u16>()).collect();
        let hash =
            tessera_core::chain::weights::commit_hash(&self.hotkey, netuid, &uids, &weights, &salt, policy.version_key);
        let mut pending =
            PendingCommit { netuid, uids, weights, salt, version_key: policy.version_key, hash, commit_block: now };
        // Kept before it is sent: a crash after the commit must not lose its reveal.
        self.save_pending(&pending)?;
        if let Err(e) = chain.commit_weights(netuid, self.signer, hash).await {
            self.remove_pending();
            return Err(e.into());
        }
        let commits = chain.weight_commits(netuid, &self.hotkey).await?;
        if let Some(found) = commits.iter().find(|c| c.hash == hash) {
            pending.commit_block = found.commit_block;
            self.save_pending(&pending)?;
        } else {
            warn!(netuid, "the weight commit is not in the chain's commit storage yet");
        }
        Ok(SubmitOutcome::Committed { block: pending.commit_block })
    }

    /// The hash commit waiting for its reveal, if one is kept.
    pub fn pending(&self) -> Option<PendingCommit> {
        let path = self.pending_path.as_ref()?;
        let bytes = std::fs::read(path).ok()?;
        match serde_json::from_slice::<PendingCommit>(&bytes) {
            Ok(p) if p.netuid == self.netuid => Some(p),
            Ok(_) => None,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "unreadable pending weight commit; ignored");
                None
            }
        }
    }

    /// Reveals a pending hash commit in its reveal epoch, then confirms the weights.
    pub async fn reveal(&self, pending: PendingCommit) -> Result<SubmitOutcome, WeightsError> {
        let (chain, netuid) = (self.chain, self.netuid);
        let policy = chain.weights_policy(netuid).await?;
        let now = chain.latest_block().await?.number;
        // The reveal lands in the next block: judge the timing there.
        match tessera_core::chain::weights::reveal_timing(&policy, netuid, pending.commit_block, now + 1) {
            RevealTiming::TooEarly { reveal_from_block } => Ok(SubmitOutcome::Waiting { until: reveal_from_block }),
            RevealTiming::Expired => {
                self.remove_pending();
                Ok(SubmitOutcome::Failed(format!(
                    "the weight commit of block {} expired before it was revealed",
                    pending.commit_block
                )))
            }
            RevealTiming::Now => {
                chain
                    .reveal_weights(
                        netuid,
                        self.signer,
                        &pending.uids,
                        &pending.weights,
                        &pending.salt,
                        pending.version_key,
                    )
                    .await?;
                self.remove_pending();
                self.confirm(&pending.uids, &pending.weights).await?;
                let weights = pending.uids.iter().copied().zip(pending.weights.iter().copied()).collect();
                Ok(SubmitOutcome::Revealed { block: now, weights })
            }
        }
    }

    /// Reads the weights back: the chain holds what was sent (it may rescale so that the
    /// largest is 65535, which ours already is).
    async fn confirm(&self, uids: &[u16], weights: &[u16]) -> Result<(), WeightsError> {
        let mut on_chain = self.chain.weights(self.netuid, self.uid).await?;
        on_chain.sort_unstable();
        let mut sent: Vec<(u16, u16)> = uids.iter().copied().zip(weights.iter().copied()).collect();
        sent.sort_unstable();
        let close = on_chain.len() == sent.len()
            && on_chain.iter().zip(&sent).all(|(a, b)| a.0 == b.0 && a.1.abs_diff(b.1) <= 1);
        if close { Ok(()) } else { Err(WeightsError::NotConfirmed { on_chain, sent }) }
    }

    fn save_pending(&self, pending: &PendingCommit) -> Result<(), WeightsError> {
        let Some(path) = &self.pending_path else { return Ok(()) };
        let json = serde_json::to_vec_pretty(pending)?;
        tessera_core::fsutil::write_atomic(path, &json)
            .map_err(|source| WeightsError::PendingFile { path: path.clone(), source })
    }

    fn remove_pending(&self) {
        if let Some(path) = &self.pending_path
            && let Err(e) = std::fs::remove_file(path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(path = %path.display(), error = %e, "could not remove the revealed weight commit");
        }
    }
}

/// Blocks from a commit to its reveal: the subnet's reveal period in epochs of `tempo + 1`.
fn reveal_blocks(policy: &WeightsPolicy) -> u64 {
    policy.reveal_period_epochs.max(1) * (u64::from(policy.tempo) + 1)
}
