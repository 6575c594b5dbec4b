//! A block stream that survives dropped connections and stalls.
//!
//! The chain is the miner's clock: if blocks stop arriving, the miner must notice (no block
//! within `stall_timeout`), reconnect with backoff, and carry on — without a restart.

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{BlockInfo, Chain};

/// Tunables of [`resilient_blocks`].
#[derive(Debug, Clone, Copy)]
pub struct BlockStreamOptions {
    /// No block for this long means the subscription is dead (subtensor: 12 s blocks).
    pub stall_timeout: Duration,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for BlockStreamOptions {
    fn default() -> Self {
        Self {
            stall_timeout: Duration::from_secs(60),
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// What the block stream reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockEvent {
    Block(BlockInfo),
    /// The subscription was lost (error, end or stall); a reconnect follows.
    Lost {
        reason: String,
    },
    /// A new subscription is delivering blocks again.
    Reconnected {
        attempts: u32,
    },
}

/// Blocks from `chain`, forever: resubscribes (reconnecting the client) with exponential
/// backoff whenever the subscription errors, ends or stalls. Stops when the receiver is
/// dropped.
pub fn resilient_blocks(
    chain: Arc<dyn Chain>,
    opts: BlockStreamOptions,
) -> impl Stream<Item = BlockEvent> + Send + 'static {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(drive(chain, opts, tx));
    tokio_stream_from(rx)
}

fn tokio_stream_from(mut rx: mpsc::Receiver<BlockEvent>) -> impl Stream<Item = BlockEvent> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn drive(chain: Arc<dyn Chain>, opts: BlockStreamOptions, tx: mpsc::Sender<BlockEvent>) {
    let mut failures: u32 = 0;
    loop {
        if failures > 0 {
            let backoff =
                opts.min_backoff.saturating_mul(1 << failures.min(16).saturating_sub(1)).min(opts.max_backoff);
            tokio::time::sleep(backoff).await;
            if let Err(e) = chain.reconnect().await {
                warn!(chain = %chain.describe(), error = %e, attempt = failures, "chain reconnect failed");
                failures = failures.saturating_add(1);
                if tx.is_closed() {
                    return;
                }
                continue;
            }
        }
        let mut stream = match chain.subscribe_blocks().await {
            Ok(s) => s,
            Err(e) => {
                warn!(chain = %chain.describe(), error = %e, attempt = failures, "block subscription failed");
                failures = failures.saturating_add(1);
                if tx.is_closed() {
                    return;
                }
                continue;
            }
        };
        let reason = loop {
            match tokio::time::timeout(opts.stall_timeout, stream.next()).await {
                Ok(Some(Ok(block))) => {
                    if failures > 0 {
                        info!(chain = %chain.describe(), attempts = failures, block = block.number, "block stream restored");
                        if tx.send(BlockEvent::Reconnected { attempts: failures }).await.is_err() {
                            return;
                        }
                        failures = 0;
                    }
                    if tx.send(BlockEvent::Block(block)).await.is_err() {
                        return;
                    }
                }
                Ok(Some(Err(e))) => break format!("subscription error: {e}"),
                Ok(None) => break "subscription ended".to_string(),
                Err(_) => break format!("no block for {:?}", opts.stall_timeout),
            }
        };
        warn!(chain = %chain.describe(), %reason, "block stream lost; reconnecting");
        if tx.send(BlockEvent::Lost { reason }).await.is_err() {
            return;
        }
        failures = failures.saturating_add(1);
    }
}
