//! ChainListener: the block stream (reconnecting on its own), forwarded to the
//! WindowClock with each block's arrival time recorded; and every `refresh_period` the
//! metagraph and the peers' bucket commitments.

use std::sync::Arc;

use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::sync::atomic::Ordering;
use tessera_core::chain::{BlockEvent, BlockStreamOptions, resilient_blocks};
use tessera_core::storage::BucketLocation;

use tessera_core::hparams::{Hparams, HparamsSource, load_hparams};
use tracing::{debug, error, info, warn};

use crate::context::{ActorKind, MinerContext, Peer, PeerView, lock, lookup, unix_ms};
use crate::messages::{ChainListenerMsg, WindowClockMsg};
use crate::stats::MinerStats;
use crate::task::AbortOnDrop;

pub struct ChainListener;

pub struct ChainListenerState {
    ctx: Arc<MinerContext>,
    _blocks: AbortOnDrop,
    refreshing: Option<AbortOnDrop>,
    /// The last hparams change reported, so it is logged once, not every refresh.
    reported_change: Option<Hparams>,
}

impl Actor for ChainListener {
    type Msg = ChainListenerMsg;
    type State = ChainListenerState;
    type Arguments = Arc<MinerContext>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        ctx: Arc<MinerContext>,
    ) -> Result<Self::State, ActorProcessingErr> {
        ctx.telemetry.stats.record_start(ActorKind::ChainListener);
        let opts = BlockStreamOptions { stall_timeout: ctx.settings.stall_timeout, ..BlockStreamOptions::default() };
        let mut stream = resilient_blocks(ctx.network.chain.clone(), opts);
        let me = myself.clone();
        let blocks = tokio::spawn(async move {
            while let Some(event) = stream.next().await {
                if me.cast(ChainListenerMsg::Event(event)).is_err() {
                    break;
                }
            }
        });
        myself.send_interval(ctx.settings.refresh_period, || ChainListenerMsg::Refresh);
        myself.cast(ChainListenerMsg::Refresh)?;
        Ok(ChainListenerState { ctx, _blocks: AbortOnDrop(blocks), refreshing: None, reported_change: None })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let ctx = &state.ctx;
        match msg {
            ChainListenerMsg::Event(BlockEvent::Block(block)) => {
                ctx.faults.maybe_panic(ActorKind::ChainListener);
                lock(&ctx.network.block_times).record(block.number, unix_ms());
                if let Some(clock) = lookup::<WindowClockMsg>(&ctx.id.name, ActorKind::WindowClock) {
                    let _ = clock.cast(WindowClockMsg::Block(block));
                }
            }
            ChainListenerMsg::Event(BlockEvent::Lost { reason }) => {
                MinerStats::add(&ctx.telemetry.stats.block_stream_losses, 1);
                warn!(miner = %ctx.id.name, %reason, "block stream lost; reconnecting");
            }
            ChainListenerMsg::Event(BlockEvent::Reconnected { attempts }) => {
                MinerStats::add(&ctx.telemetry.stats.reconnects, 1);
                info!(miner = %ctx.id.name, attempts, "block stream reconnected");
            }
            ChainListenerMsg::Refresh => {
                if state.refreshing.as_ref().is_some_and(|t| !t.0.is_finished()) {
                    return Ok(());
                }
                let ctx = ctx.clone();
                let me = myself.clone();
                let task = tokio::spawn(async move {
                    let result = read_peer_view(&ctx).await;
                    let _ = me.cast(ChainListenerMsg::Refreshed(result));
                    if let Some(settings) =
                        ctx.network.hparams_refresh.as_ref().filter(|s| s.source != HparamsSource::BuiltIn)
                    {
                        let loaded = load_hparams(&settings.source, &settings.cache_path)
                            .await
                            .map(|l| Box::new(l.hparams))
                            .map_err(|e| e.to_string());
                        let _ = me.cast(ChainListenerMsg::HparamsLoaded(loaded));
                    }
                });
                state.refreshing = Some(AbortOnDrop(task));
            }
            ChainListenerMsg::Refreshed(Ok(view)) => {
                debug!(miner = %ctx.id.name, neurons = view.metagraph.size(), peers = view.peers.len(), "peer view refreshed");
                ctx.network.peers.send_replace(Arc::new(view));
            }
            ChainListenerMsg::HparamsLoaded(Ok(hparams)) => state.follow_hparams(*hparams),
            ChainListenerMsg::HparamsLoaded(Err(e)) => {
                warn!(miner = %ctx.id.name, error = %e, "hparams refresh failed; keeping the current ones");
            }
            ChainListenerMsg::Refreshed(Err(e)) => {
                warn!(miner = %ctx.id.name, error = %e, "metagraph refresh failed; keeping the previous view");
            }
        }
        Ok(())
    }
}

impl ChainListenerState {
    /// Follows `max_history`; a change the running miner cannot follow (model, slices,
    /// clock) or that takes effect at the next start (optimizer) is reported once.
    fn follow_hparams(&mut self, new: Hparams) {
        let ctx = &self.ctx;
        let old_history = ctx.network.max_history.swap(new.max_history, Ordering::Relaxed);
        if old_history != new.max_history {
            info!(miner = %ctx.id.name, from = old_history, to = new.max_history, "hparams: max_history changed");
        }
        let mut rest = new.clone();
        rest.max_history = ctx.network.hparams.max_history;
        if rest == ctx.network.hparams || self.reported_change.as_ref() == Some(&new) {
            return;
        }
        let protocol = ctx.network.hparams.protocol_differences(&new);
        if protocol.is_empty() {
            warn!(miner = %ctx.id.name, "the network's hparams changed (optimizer or data settings); they apply at the next start");
        } else {
            error!(
                miner = %ctx.id.name,
                changed = protocol.join(", "),
                "the network's hparams changed the protocol; restart the miner to follow them (until then peers reject its slices)"
            );
        }
        self.reported_change = Some(new);
    }
}

/// The metagraph and every registered hotkey's committed bucket. Commitments that are not
/// a valid bucket location are skipped with a log line: a peer cannot break the miner.
async fn read_peer_view(ctx: &MinerContext) -> Result<PeerView, String> {
    let metagraph = ctx.network.chain.metagraph(ctx.id.netuid).await.map_err(|e| e.to_string())?;
    let commitments = ctx.network.chain.commitments(ctx.id.netuid).await.map_err(|e| e.to_string())?;
    let registered = metagraph.hotkeys();
    let mut peers = Vec::new();
    for (hotkey, text) in commitments {
        let Some(uid) = metagraph.uid_of(&hotkey) else { continue };
        match text.parse::<BucketLocation>() {
            Ok(bucket) => peers.push(Peer { uid, hotkey, bucket }),
            Err(e) => debug!(miner = %ctx.id.name, uid, error = %e, "ignoring a commitment that is not a bucket"),
        }
    }
    Ok(PeerView { metagraph, peers, registered, refreshed_ms: unix_ms() })
}
