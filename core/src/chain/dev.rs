//! An in-process chain with the subtensor semantics the miner relies on — a block clock,
//! registration, commitments and weights with their rate limit — for the devnet and fast
//! tests. It has no commit-reveal: its policy says so, and weights are set directly. It
//! also injects the faults a real node shows: dropped subscriptions, stalls, unreachability.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use subxt_signer::sr25519::Keypair;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use super::{BlockHash, BlockInfo, Chain, ChainError, Metagraph, RawBlockStream, WeightCommit, WeightsPolicy};
use crate::hotkey::{Hotkey, HotkeySigner};

/// Longest commitment the subtensor runtime stores (`Data::Raw128`).
pub const MAX_COMMITMENT_LEN: usize = 128;

/// The tempo the dev chain reports: subtensor's default for a new subnet.
pub const DEV_TEMPO: u16 = 360;

const NO_COMMIT_REVEAL: &str = "the dev chain has no commit-reveal";

#[derive(Debug, Clone)]
pub struct DevChainOptions {
    /// Time between blocks; `None` builds blocks only on [`DevChain::produce_block`].
    pub block_time: Option<Duration>,
    /// Number of the current block at start.
    pub first_block: u64,
}

impl Default for DevChainOptions {
    fn default() -> Self {
        Self { block_time: Some(Duration::from_millis(250)), first_block: 0 }
    }
}

#[derive(Default)]
struct Subnet {
    neurons: Vec<Hotkey>,
    commitments: HashMap<Hotkey, String>,
    weights: HashMap<Hotkey, Vec<(u16, u16)>>,
    /// `LastUpdate`: the block of each UID's registration or last weight setting.
    last_update: HashMap<u16, u64>,
}

struct State {
    head: u64,
    subnets: BTreeMap<u16, Subnet>,
    /// `WeightsSetRateLimit` of every subnet.
    weights_rate_limit: u64,
}

/// The in-process chain. Cheap to clone through `Arc`.
pub struct DevChain {
    state: Mutex<State>,
    blocks: broadcast::Sender<BlockInfo>,
    /// Bumped to end every open subscription (a dropped connection).
    generation: watch::Sender<u64>,
    paused: AtomicBool,
    unreachable: AtomicBool,
    producer: Mutex<Option<JoinHandle<()>>>,
}

fn dev_hash(number: u64) -> BlockHash {
    let mut h = blake3::Hasher::new_derive_key("tessera devchain block hash v1");
    h.update(&number.to_le_bytes());
    BlockHash(*h.finalize().as_bytes())
}

impl DevChain {
    /// Starts the chain; with a block time, a task on the current tokio runtime builds blocks.
    pub fn start(opts: DevChainOptions) -> Arc<Self> {
        let (blocks, _) = broadcast::channel(256);
        let (generation, _) = watch::channel(0);
        let chain = Arc::new(Self {
            state: Mutex::new(State { head: opts.first_block, subnets: BTreeMap::new(), weights_rate_limit: 0 }),
            blocks,
            generation,
            paused: AtomicBool::new(false),
            unreachable: AtomicBool::new(false),
            producer: Mutex::new(None),
        });
        if let Some(block_time) = opts.block_time {
            let weak = Arc::downgrade(&chain);
            let handle = tokio::spawn(async move {
                let mut tick = tokio::time::interval(block_time);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(chain) = weak.upgrade() else { return };
                    if !chain.paused.load(Ordering::Relaxed) {
                        chain.produce_block();
                    }
                }
            });
            *lock(&chain.producer) = Some(handle);
        }
        chain
    }

    /// Builds the next block and announces it; returns it.
    pub fn produce_block(&self) -> BlockInfo {
        let block = {
            let mut state = lock(&self.state);
            state.head += 1;
            BlockInfo { number: state.head, hash: dev_hash(state.head) }
        };
        // No subscribers is fine.
        let _ = self.blocks.send(block);
        block
    }

    /// Creates a subnet (devnet set-up).
    pub fn create_subnet(&self, netuid: u16) {
        lock(&self.state).subnets.entry(netuid).or_default();
    }

    /// Sets every subnet's weights rate limit (`WeightsSetRateLimit`, blocks between two
    /// weight settings of one UID; 0, the default, for none). As on subtensor, the count
    /// starts at a UID's registration as well as at its last weight setting.
    pub fn set_weights_rate_limit(&self, blocks: u64) {
        lock(&self.state).weights_rate_limit = blocks;
    }

    /// Fault: ends every open block subscription, as a dropped websocket does.
    pub fn drop_connections(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Fault: stops (or restarts) block production; subscribers see a stall.
    pub fn pause_blocks(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }

    /// Fault: every request fails as if the node were down.
    pub fn set_unreachable(&self, unreachable: bool) {
        self.unreachable.store(unreachable, Ordering::Relaxed);
        if unreachable {
            self.drop_connections();
        }
    }

    fn reachable(&self) -> Result<(), ChainError> {
        if self.unreachable.load(Ordering::Relaxed) {
            return Err(ChainError::Connect { endpoint: self.describe(), reason: "dev chain set unreachable".into() });
        }
        Ok(())
    }

    fn with_subnet<R>(
        &self,
        netuid: u16,
        f: impl FnOnce(u64, &mut Subnet) -> Result<R, ChainError>,
    ) -> Result<R, ChainError> {
        self.with_subnet_limit(netuid, |head, _, subnet| f(head, subnet))
    }

    /// As `with_subnet`, with the weights rate limit.
    fn with_subnet_limit<R>(
        &self,
        netuid: u16,
        f: impl FnOnce(u64, u64, &mut Subnet) -> Result<R, ChainError>,
    ) -> Result<R, ChainError> {
        self.reachable()?;
        let mut state = lock(&self.state);
        let (head, limit) = (state.head, state.weights_rate_limit);
        let subnet = state.subnets.get_mut(&netuid).ok_or(ChainError::NoSuchSubnet { netuid })?;
        f(head, limit, subnet)
    }
}

impl Drop for DevChain {
    fn drop(&mut self) {
        if let Some(handle) = lock(&self.producer).take() {
            handle.abort();
        }
    }
}

/// A poisoned lock only means another thread panicked mid-update of plain data; the data
/// is still usable for a dev chain.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[async_trait]
impl Chain for DevChain {
    fn describe(&self) -> String {
        "dev chain (in process)".into()
    }

    async fn subscribe_blocks(&self) -> Result<RawBlockStream, ChainError> {
        self.reachable()?;
        let rx = self.blocks.subscribe();
        let mut generation = self.generation.subscribe();
        generation.borrow_and_update();
        let blocks = futures::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(b) => return Some((Ok(b), rx)),
                    // A slow reader skips blocks, as a node's subscription would.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        // End the stream when the connection is "dropped".
        let dropped = Box::pin(async move {
            let _ = generation.changed().await;
        });
        Ok(blocks.take_until(dropped).boxed())
    }

    async fn reconnect(&self) -> Result<(), ChainError> {
        self.reachable()
    }

    async fn latest_block(&self) -> Result<BlockInfo, ChainError> {
        self.reachable()?;
        let head = lock(&self.state).head;
        Ok(BlockInfo { number: head, hash: dev_hash(head) })
    }

    async fn block_hash(&self, number: u64) -> Result<Option<BlockHash>, ChainError> {
        self.reachable()?;
        Ok((number <= lock(&self.state).head).then(|| dev_hash(number)))
    }

    async fn metagraph(&self, netuid: u16) -> Result<Metagraph, ChainError> {
        self.with_subnet(netuid, |head, s| Ok(Metagraph { netuid, block: head, neurons: s.neurons.clone() }))
    }

    async fn commitment(&self, netuid: u16, hotkey: &Hotkey) -> Result<Option<String>, ChainError> {
        self.with_subnet(netuid, |_, s| Ok(s.commitments.get(hotkey).cloned()))
    }

    async fn commitments(&self, netuid: u16) -> Result<Vec<(Hotkey, String)>, ChainError> {
        self.with_subnet(netuid, |_, s| Ok(s.commitments.iter().map(|(h, c)| (*h, c.clone())).collect()))
    }

    async fn set_commitment(&self, netuid: u16, signer: &Keypair, data: &str) -> Result<(), ChainError> {
        let hotkey = signer.hotkey();
        if data.len() > MAX_COMMITMENT_LEN {
            return Err(ChainError::Invalid(format!(
                "commitment is {} bytes; the chain stores at most {MAX_COMMITMENT_LEN}",
                data.len()
            )));
        }
        self.with_subnet(netuid, |_, s| {
            if !s.neurons.contains(&hotkey) {
                return Err(ChainError::Transaction {
                    call: "Commitments.set_commitment".into(),
                    reason: format!("hotkey {hotkey} is not registered on subnet {netuid}"),
                });
            }
            s.commitments.insert(hotkey, data.to_owned());
            Ok(())
        })
    }

    async fn set_weights(
        &self,
        netuid: u16,
        signer: &Keypair,
        uids: &[u16],
        weights: &[u16],
        _version_key: u64,
    ) -> Result<(), ChainError> {
        let hotkey = signer.hotkey();
        self.with_subnet_limit(netuid, |head, limit, s| {
            let reject =
                |reason: String| ChainError::Transaction { call: "SubtensorModule.set_weights".into(), reason };
            let Some(own_uid) = s.neurons.iter().position(|h| *h == hotkey).map(|u| u as u16) else {
                return Err(reject(format!("hotkey {hotkey} is not registered on subnet {netuid}")));
            };
            if uids.len() != weights.len() {
                return Err(reject(format!("{} uids but {} weights", uids.len(), weights.len())));
            }
            if let Some(uid) = uids.iter().find(|&&u| usize::from(u) >= s.neurons.len()) {
                return Err(reject(format!("uid {uid} does not exist")));
            }
            // The runtime's `check_rate_limit` (a last update at block 0 counts as never,
            // as there), with the runtime's error name.
            if let Some(&last) = s.last_update.get(&own_uid)
                && last > 0
                && head.saturating_sub(last) < limit
            {
                return Err(reject(format!(
                    "SettingWeightsTooFast: uid {own_uid} last set weights at block {last}; the subnet's rate limit is \
                     one setting every {limit} blocks (now {head})"
                )));
            }
            s.weights.insert(hotkey, uids.iter().copied().zip(weights.iter().copied()).collect());
            s.last_update.insert(own_uid, head);
            Ok(())
        })
    }

    async fn weights(&self, netuid: u16, uid: u16) -> Result<Vec<(u16, u16)>, ChainError> {
        self.with_subnet(netuid, |_, s| {
            Ok(s.neurons.get(usize::from(uid)).and_then(|h| s.weights.get(h)).cloned().unwrap_or_default())
        })
    }

    async fn register(&self, netuid: u16, _coldkey: &Keypair, hotkey: &Hotkey) -> Result<u16, ChainError> {
        self.with_subnet(netuid, |head, s| {
            if let Some(uid) = s.neurons.iter().position(|h| h == hotkey) {
                return Ok(uid as u16);
            }
            s.neurons.push(*hotkey);
            let uid = (s.neurons.len() - 1) as u16;
            s.last_update.insert(uid, head);
            Ok(uid)
        })
    }

    async fn weights_policy(&self, netuid: u16) -> Result<WeightsPolicy, ChainError> {
        self.with_subnet_limit(netuid, |_, limit, _| {
            Ok(WeightsPolicy {
                rate_limit_blocks: limit,
                commit_reveal: false,
                reveal_period_epochs: 1,
                tempo: DEV_TEMPO,
                version_key: 0,
                commit_scheme: None,
            })
        })
    }

    async fn last_weights_block(&self, netuid: u16, uid: u16) -> Result<u64, ChainError> {
        self.with_subnet(netuid, |_, s| Ok(s.last_update.get(&uid).copied().unwrap_or(0)))
    }

    async fn commit_weights(&self, _netuid: u16, _signer: &Keypair, _commit_hash: [u8; 32]) -> Result<(), ChainError> {
        self.reachable()?;
        Err(ChainError::Invalid(NO_COMMIT_REVEAL.into()))
    }

    async fn reveal_weights(
        &self,
        _netuid: u16,
        _signer: &Keypair,
        _uids: &[u16],
        _weights: &[u16],
        _salt: &[u16],
        _version_key: u64,
    ) -> Result<(), ChainError> {
        self.reachable()?;
        Err(ChainError::Invalid(NO_COMMIT_REVEAL.into()))
    }

    async fn commit_timelocked_weights(
        &self,
        _netuid: u16,
        _signer: &Keypair,
        _ciphertext: &[u8],
        _reveal_round: u64,
    ) -> Result<(), ChainError> {
        self.reachable()?;
        Err(ChainError::Invalid(NO_COMMIT_REVEAL.into()))
    }

    async fn weight_commits(&self, netuid: u16, _hotkey: &Hotkey) -> Result<Vec<WeightCommit>, ChainError> {
        self.with_subnet(netuid, |_, _| Ok(Vec::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{BlockEvent, BlockStreamOptions, resilient_blocks};
    use crate::hotkey::dev_keypair;
    use std::time::Instant;

    async fn next_block(stream: &mut (impl futures::Stream<Item = BlockEvent> + Unpin)) -> BlockInfo {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, stream.next()).await {
                Ok(Some(BlockEvent::Block(b))) => return b,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("stream ended"),
                Err(_) => panic!("no block before the deadline"),
            }
        }
    }

    #[tokio::test]
    async fn registration_commitments_and_weights_behave_like_subtensor() {
        let chain = DevChain::start(DevChainOptions { block_time: None, first_block: 100 });
        let alice = dev_keypair("Alice").unwrap();
        let bob = dev_keypair("Bob").unwrap();
        assert!(matches!(chain.metagraph(3).await, Err(ChainError::NoSuchSubnet { netuid: 3 })));
        chain.create_subnet(3);
        assert_eq!(chain.register(3, &alice, &alice.hotkey()).await.unwrap(), 0);
        assert_eq!(chain.register(3, &alice, &bob.hotkey()).await.unwrap(), 1);
        assert_eq!(chain.register(3, &alice, &bob.hotkey()).await.unwrap(), 1, "re-registering keeps the UID");
        let m = chain.metagraph(3).await.unwrap();
        assert_eq!((m.size(), m.block), (2, 100));
        assert_eq!(m.uid_of(&bob.hotkey()), Some(1));

        chain.set_commitment(3, &bob, "http://127.0.0.1:9000/bob").await.unwrap();
        assert_eq!(chain.commitment(3, &bob.hotkey()).await.unwrap().as_deref(), Some("http://127.0.0.1:9000/bob"));
        assert_eq!(chain.commitment(3, &alice.hotkey()).await.unwrap(), None);
        assert_eq!(chain.commitments(3).await.unwrap().len(), 1);
        let long = "x".repeat(129);
        assert!(matches!(chain.set_commitment(3, &bob, &long).await, Err(ChainError::Invalid(_))));
        let carol = dev_keypair("Charlie").unwrap();
        assert!(matches!(chain.set_commitment(3, &carol, "s3://c").await, Err(ChainError::Transaction { .. })));

        chain.set_weights(3, &alice, &[0, 1], &[10, 20], 0).await.unwrap();
        assert_eq!(chain.weights(3, 0).await.unwrap(), vec![(0, 10), (1, 20)]);
        assert_eq!(chain.weights(3, 1).await.unwrap(), vec![]);
        assert!(chain.set_weights(3, &alice, &[5], &[1], 0).await.is_err());
        assert!(chain.set_weights(3, &alice, &[0, 1], &[1], 0).await.is_err());
    }

    #[tokio::test]
    async fn weights_honour_the_rate_limit_and_record_last_update() {
        let chain = DevChain::start(DevChainOptions { block_time: None, first_block: 10 });
        let alice = dev_keypair("Alice").unwrap();
        let bob = dev_keypair("Bob").unwrap();
        chain.create_subnet(1);
        chain.set_weights_rate_limit(5);
        assert_eq!(chain.register(1, &alice, &alice.hotkey()).await.unwrap(), 0);
        chain.produce_block();
        assert_eq!(chain.register(1, &alice, &bob.hotkey()).await.unwrap(), 1);
        // Registration starts the count, as on subtensor.
        assert_eq!(chain.last_weights_block(1, 0).await.unwrap(), 10);
        assert_eq!(chain.last_weights_block(1, 1).await.unwrap(), 11);
        assert_eq!(chain.last_weights_block(1, 7).await.unwrap(), 0);
        let policy = chain.weights_policy(1).await.unwrap();
        assert_eq!(policy.rate_limit_blocks, 5);
        assert!(!policy.commit_reveal);
        assert_eq!(policy.commit_scheme, None);
        assert!(matches!(chain.weights_policy(9).await, Err(ChainError::NoSuchSubnet { netuid: 9 })));

        // As on subtensor, a last update at block 0 reads as "never set".
        let genesis = DevChain::start(DevChainOptions { block_time: None, first_block: 0 });
        genesis.create_subnet(1);
        genesis.set_weights_rate_limit(5);
        genesis.register(1, &alice, &alice.hotkey()).await.unwrap();
        assert_eq!(genesis.last_weights_block(1, 0).await.unwrap(), 0);
        genesis.set_weights(1, &alice, &[0], &[1], 0).await.unwrap();

        let too_fast = chain.set_weights(1, &alice, &[1], &[1], 0).await.unwrap_err();
        assert!(too_fast.to_string().contains("SettingWeightsTooFast"), "{too_fast}");
        for _ in 0..4 {
            chain.produce_block();
        }
        // Block 15: 15 - 10 >= 5.
        chain.set_weights(1, &alice, &[1], &[1], 0).await.unwrap();
        assert_eq!(chain.last_weights_block(1, 0).await.unwrap(), 15);
        let err = chain.set_weights(1, &alice, &[1], &[2], 0).await.unwrap_err();
        assert!(err.to_string().contains("rate limit"), "{err}");
        assert_eq!(chain.weights(1, 0).await.unwrap(), vec![(1, 1)], "a refused setting changes nothing");
        // Bob's own count is separate.
        for _ in 0..5 {
            chain.produce_block();
        }
        chain.set_weights(1, &bob, &[0], &[1], 0).await.unwrap();
        chain.set_weights(1, &alice, &[1], &[2], 0).await.unwrap();

        let no_cr = chain.commit_weights(1, &alice, [0; 32]).await.unwrap_err();
        assert!(matches!(no_cr, ChainError::Invalid(ref m) if m.contains("commit-reveal")));
        assert!(chain.reveal_weights(1, &alice, &[1], &[1], &[0], 0).await.is_err());
        assert!(chain.commit_timelocked_weights(1, &alice, &[1, 2], 5).await.is_err());
        assert!(chain.weight_commits(1, &alice.hotkey()).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn blocks_advance_on_the_configured_clock() {
        let chain = DevChain::start(DevChainOptions { block_time: Some(Duration::from_millis(20)), first_block: 0 });
        let mut blocks = Box::pin(resilient_blocks(chain.clone(), BlockStreamOptions::default()));
        let first = next_block(&mut blocks).await;
        let second = next_block(&mut blocks).await;
        assert_eq!(second.number, first.number + 1);
        assert_eq!(chain.block_hash(second.number).await.unwrap(), Some(second.hash));
        assert_ne!(first.hash, second.hash);
        assert_eq!(chain.block_hash(second.number + 1000).await.unwrap(), None);
    }

    #[tokio::test]
    async fn block_stream_survives_dropped_connections_stalls_and_outages() {
        let chain = DevChain::start(DevChainOptions { block_time: Some(Duration::from_millis(20)), first_block: 0 });
        let opts = BlockStreamOptions {
            stall_timeout: Duration::from_millis(300),
            min_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
        };
        let mut events = Box::pin(resilient_blocks(chain.clone(), opts));
        let before = next_block(&mut events).await;

        // A dropped connection: the stream reports it and resubscribes.
        chain.drop_connections();
        let after_drop = next_block(&mut events).await;
        assert!(after_drop.number > before.number);

        // A stall: no block for longer than the stall timeout.
        chain.pause_blocks(true);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut saw_stall = false;
        while !saw_stall && Instant::now() < deadline {
            if let Ok(Some(BlockEvent::Lost { reason })) =
                tokio::time::timeout(Duration::from_secs(2), events.next()).await
            {
                saw_stall = reason.contains("no block");
            }
        }
        assert!(saw_stall, "stall was not detected");
        chain.pause_blocks(false);
        let after_stall = next_block(&mut events).await;
        assert!(after_stall.number > after_drop.number);

        // An outage: the node is unreachable for a while, then comes back.
        chain.set_unreachable(true);
        assert!(chain.latest_block().await.is_err());
        chain.set_unreachable(false);
        let mut reconnected = false;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(2), events.next()).await {
                Ok(Some(BlockEvent::Reconnected { .. })) => reconnected = true,
                Ok(Some(BlockEvent::Block(b))) if b.number > after_stall.number && reconnected => break,
                _ => {}
            }
        }
        assert!(reconnected, "no Reconnected event after the outage");
    }
}
