//! The subtensor chain over subxt's dynamic API.
//!
//! Shapes are read from the runtime's metadata, not compiled in, so one build follows
//! runtime upgrades (e.g. `register_network` gained and lost a `mechid` argument). The
//! LegacyBackend is used: it is what every node serves (chopsticks, which the tests run,
//! does not serve the newer chainHead API correctly).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use subxt::backend::LegacyBackend;
use subxt::dynamic::{self, Value};
use subxt::ext::scale_value::Composite;
use subxt::{OnlineClient, PolkadotConfig};
use subxt_rpcs::{RpcClient, rpc_params};
use subxt_signer::sr25519::Keypair;
use tokio::sync::RwLock;
use tracing::{debug, info};

mod runtime;

use runtime::{
    SUBTENSOR, TIMELOCK_CALLS, as_u128, call_fields, commit_scheme, commitment_text, commitment_value, ensure_subnet,
    has_call, read_or, u16_list,
};

use super::dev::MAX_COMMITMENT_LEN;
use super::{BlockHash, BlockInfo, Chain, ChainError, Metagraph, RawBlockStream, WeightCommit, WeightsPolicy};
use crate::hotkey::Hotkey;

/// How long one chain request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a transaction may take to be finalized.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(120);

/// `CommitRevealWeightsVersion`'s default where the runtime has the storage but no value.
const DEFAULT_COMMIT_REVEAL_VERSION: u16 = 4;

struct Connection {
    client: OnlineClient<PolkadotConfig>,
    rpc: RpcClient,
}

/// A connection to a subtensor node that reconnects when asked (see `resilient_blocks`)
/// and retries a request once over a fresh connection when it fails.
pub struct SubtensorChain {
    endpoint: String,
    conn: RwLock<Arc<Connection>>,
}

pub(super) fn rpc_err(e: impl fmt::Display) -> ChainError {
    ChainError::Rpc(e.to_string())
}

async fn timed<T>(what: &str, fut: impl Future<Output = Result<T, ChainError>>) -> Result<T, ChainError> {
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .map_err(|_| ChainError::Rpc(format!("{what}: no answer within {REQUEST_TIMEOUT:?}")))?
}

fn parse_hash(hex_str: &str) -> Result<BlockHash, ChainError> {
    let bytes = hex::decode(hex_str.trim_start_matches("0x"))
        .map_err(|e| ChainError::Decode { what: "block hash".into(), reason: e.to_string() })?;
    let hash: [u8; 32] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| ChainError::Decode { what: "block hash".into(), reason: format!("{} bytes", b.len()) })?;
    Ok(BlockHash(hash))
}

fn parse_number(v: &serde_json::Value) -> Result<u64, ChainError> {
    let s = v.as_str().ok_or_else(|| ChainError::Decode { what: "block number".into(), reason: format!("{v}") })?;
    u64::from_str_radix(s.trim_start_matches("0x"), 16)
        .map_err(|e| ChainError::Decode { what: "block number".into(), reason: e.to_string() })
}

impl SubtensorChain {
    /// Connects to `endpoint` (`ws://` or `wss://`).
    pub async fn connect(endpoint: &str) -> Result<Self, ChainError> {
        let conn = Self::open(endpoint).await?;
        info!(endpoint, "connected to subtensor");
        Ok(Self { endpoint: endpoint.to_owned(), conn: RwLock::new(Arc::new(conn)) })
    }

    async fn open(endpoint: &str) -> Result<Connection, ChainError> {
        let connect = |reason: String| ChainError::Connect { endpoint: endpoint.to_owned(), reason };
        let opened = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let rpc = RpcClient::from_insecure_url(endpoint).await.map_err(|e| connect(e.to_string()))?;
            let backend = LegacyBackend::<PolkadotConfig>::builder().build(rpc.clone());
            let client = OnlineClient::<PolkadotConfig>::from_backend(Arc::new(backend))
                .await
                .map_err(|e| connect(e.to_string()))?;
            Ok::<_, ChainError>(Connection { client, rpc })
        })
        .await;
        opened.map_err(|_| connect(format!("no answer within {REQUEST_TIMEOUT:?}")))?
    }

    async fn current(&self) -> Arc<Connection> {
        self.conn.read().await.clone()
    }

    /// Runs `op` on the current connection; on failure reconnects once and retries, so a
    /// node restart costs one failed request rather than the process.
    async fn with_retry<T, F, Fut>(&self, what: &str, op: F) -> Result<T, ChainError>
    where
        F: Fn(Arc<Connection>) -> Fut,
        Fut: Future<Output = Result<T, ChainError>>,
    {
        match timed(what, op(self.current().await)).await {
            Ok(v) => Ok(v),
            Err(first) => {
                debug!(endpoint = %self.endpoint, what, error = %first, "chain request failed; reconnecting once");
                if self.reconnect().await.is_err() {
                    return Err(first);
                }
                timed(what, op(self.current().await)).await
            }
        }
    }

    /// A raw JSON-RPC call (chopsticks' `dev_*` methods in tests and dev tooling).
    pub async fn raw_request(&self, method: &str, params: serde_json::Value) -> Result<serde_json::Value, ChainError> {
        let conn = self.current().await;
        let params = match params {
            serde_json::Value::Array(items) => {
                let mut p = subxt_rpcs::client::RpcParams::new();
                for item in items {
                    p.push(item).map_err(rpc_err)?;
                }
                p
            }
            serde_json::Value::Null => subxt_rpcs::client::RpcParams::new(),
            other => return Err(ChainError::Invalid(format!("params must be an array, got {other}"))),
        };
        timed(method, async { conn.rpc.request(method, params).await.map_err(rpc_err) }).await
    }

    /// Creates a subnet owned by `coldkey` with `hotkey` (dev tooling; costs the lock).
    pub async fn register_network(&self, coldkey: &Keypair, hotkey: &Hotkey) -> Result<u16, ChainError> {
        let conn = self.current().await;
        let at = conn.client.at_current_block().await.map_err(rpc_err)?;
        let fields = call_fields(&at.metadata(), "SubtensorModule", "register_network")?;
        let mut args = vec![Value::from_bytes(hotkey.0)];
        if fields > 1 {
            // spec ≤ 2xx: (hotkey, mechid); mechanism 1 is the default (Yuma).
            args.push(Value::u128(1));
        }
        let tx = dynamic::tx("SubtensorModule", "register_network", args);
        let events = submit(&conn, &tx, coldkey, "SubtensorModule.register_network").await?;
        for event in events.iter() {
            let event = event.map_err(rpc_err)?;
            if event.pallet_name() == "SubtensorModule" && event.event_name() == "NetworkAdded" {
                let fields: Composite<()> = event.decode_fields_unchecked_as().map_err(rpc_err)?;
                let netuid = fields.values().next().and_then(as_u128).ok_or_else(|| ChainError::Decode {
                    what: "NetworkAdded event".into(),
                    reason: "no netuid field".into(),
                })?;
                return u16::try_from(netuid)
                    .map_err(|e| ChainError::Decode { what: "netuid".into(), reason: e.to_string() });
            }
        }
        Err(ChainError::Decode { what: "register_network events".into(), reason: "no NetworkAdded event".into() })
    }
}

async fn submit(
    conn: &Connection,
    tx: &subxt::transactions::DynamicPayload<Vec<Value>>,
    signer: &Keypair,
    call: &str,
) -> Result<subxt::extrinsics::ExtrinsicEvents<PolkadotConfig>, ChainError> {
    let fail = |reason: String| ChainError::Transaction { call: call.to_owned(), reason };
    let run = async {
        let at = conn.client.at_current_block().await.map_err(|e| fail(e.to_string()))?;
        let progress = at.tx().sign_and_submit_then_watch_default(tx, signer).await.map_err(|e| fail(e.to_string()))?;
        progress.wait_for_finalized_success().await.map_err(|e| fail(e.to_string()))
    };
    tokio::time::timeout(TRANSACTION_TIMEOUT, run)
        .await
        .map_err(|_| fail(format!("not finalized within {TRANSACTION_TIMEOUT:?}")))?
}

#[async_trait]
impl Chain for SubtensorChain {
    fn describe(&self) -> String {
        self.endpoint.clone()
    }

    async fn subscribe_blocks(&self) -> Result<RawBlockStream, ChainError> {
        let conn = self.current().await;
        let blocks = timed("subscribe blocks", async { conn.client.stream_blocks().await.map_err(rpc_err) }).await?;
        Ok(blocks
            .map(|b| b.map(|b| BlockInfo { number: b.number(), hash: BlockHash(b.hash().0) }).map_err(rpc_err))
            .boxed())
    }

    async fn reconnect(&self) -> Result<(), ChainError> {
        let fresh = Self::open(&self.endpoint).await?;
        *self.conn.write().await = Arc::new(fresh);
        info!(endpoint = %self.endpoint, "reconnected to subtensor");
        Ok(())
    }

    async fn latest_block(&self) -> Result<BlockInfo, ChainError> {
        self.with_retry("latest block", |conn| async move {
            let hash: String = conn.rpc.request("chain_getFinalizedHead", rpc_params![]).await.map_err(rpc_err)?;
            let header: serde_json::Value =
                conn.rpc.request("chain_getHeader", rpc_params![hash.clone()]).await.map_err(rpc_err)?;
            Ok(BlockInfo { number: parse_number(&header["number"])?, hash: parse_hash(&hash)? })
        })
        .await
    }

    async fn block_hash(&self, number: u64) -> Result<Option<BlockHash>, ChainError> {
        self.with_retry("block hash", |conn| async move {
            let hash: Option<String> =
                conn.rpc.request("chain_getBlockHash", rpc_params![number]).await.map_err(rpc_err)?;
            hash.as_deref().map(parse_hash).transpose()
        })
        .await
    }

    async fn metagraph(&self, netuid: u16) -> Result<Metagraph, ChainError> {
        self.with_retry("metagraph", |conn| async move {
            let at = conn.client.at_current_block().await.map_err(rpc_err)?;
            ensure_subnet(&at, netuid).await?;
            let n = at
                .storage()
                .fetch(dynamic::storage::<(u16,), u16>("SubtensorModule", "SubnetworkN"), (netuid,))
                .await
                .map_err(rpc_err)?
                .decode()
                .map_err(|e| ChainError::Decode { what: "SubnetworkN".into(), reason: e.to_string() })?;
            let mut neurons = vec![None; usize::from(n)];
            let mut keys = at
                .storage()
                .iter(dynamic::storage::<(u16, u16), [u8; 32]>("SubtensorModule", "Keys"), (netuid,))
                .await
                .map_err(rpc_err)?;
            while let Some(kv) = keys.next().await {
                let kv = kv.map_err(rpc_err)?;
                let decode = |what: &str, e: String| ChainError::Decode { what: what.into(), reason: e };
                let (_, uid) = kv
                    .key()
                    .map_err(|e| decode("Keys key", e.to_string()))?
                    .decode()
                    .map_err(|e| decode("Keys key", e.to_string()))?;
                let hotkey = kv.value().decode().map_err(|e| decode("Keys value", e.to_string()))?;
                if let Some(slot) = neurons.get_mut(usize::from(uid)) {
                    *slot = Some(Hotkey(hotkey));
                }
            }
            let neurons = neurons
                .into_iter()
                .enumerate()
                .map(|(uid, h)| {
                    h.ok_or_else(|| ChainError::Decode {
                        what: "metagraph".into(),
                        reason: format!("uid {uid} has no hotkey"),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Metagraph { netuid, block: at.block_number(), neurons })
        })
        .await
    }

    async fn commitment(&self, netuid: u16, hotkey: &Hotkey) -> Result<Option<String>, ChainError> {
        let account = hotkey.0;
        self.with_retry("commitment", |conn| async move {
            let at = conn.client.at_current_block().await.map_err(rpc_err)?;
            let value = at
                .storage()
                .try_fetch(dynamic::storage::<(u16, [u8; 32]), Value>("Commitments", "CommitmentOf"), (netuid, account))
                .await
                .map_err(rpc_err)?;
            match value {
                None => Ok(None),
                Some(v) => {
                    let v = v
                        .decode()
                        .map_err(|e| ChainError::Decode { what: "CommitmentOf".into(), reason: e.to_string() })?;
                    Ok(commitment_text(&v))
                }
            }
        })
        .await
    }

    async fn commitments(&self, netuid: u16) -> Result<Vec<(Hotkey, String)>, ChainError> {
        self.with_retry("commitments", |conn| async move {
            let at = conn.client.at_current_block().await.map_err(rpc_err)?;
            let mut entries = at
                .storage()
                .iter(dynamic::storage::<(u16, [u8; 32]), Value>("Commitments", "CommitmentOf"), (netuid,))
                .await
                .map_err(rpc_err)?;
            let mut out = Vec::new();
            while let Some(kv) = entries.next().await {
                let kv = kv.map_err(rpc_err)?;
                let decode = |what: &str, e: String| ChainError::Decode { what: what.into(), reason: e };
                let (_, account) = kv
                    .key()
                    .map_err(|e| decode("CommitmentOf key", e.to_string()))?
                    .decode()
                    .map_err(|e| decode("CommitmentOf key", e.to_string()))?;
                let value = kv.value().decode().map_err(|e| decode("CommitmentOf", e.to_string()))?;
                // A peer's unreadable commitment is its problem, not ours.
                match commitment_text(&value) {
                    Some(text) => out.push((Hotkey(account), text)),
                    None => debug!(hotkey = %Hotkey(account), "skipping a non-text commitment"),
                }
            }
            Ok(out)
        })
        .await
    }

    async fn set_commitment(&self, netuid: u16, signer: &Keypair, data: &str) -> Result<(), ChainError> {
        if data.is_empty() || data.len() > MAX_COMMITMENT_LEN {
            return Err(ChainError::Invalid(format!(
                "commitment is {} bytes; the chain stores 1 to {MAX_COMMITMENT_LEN}",
                data.len()
            )));
        }
        let conn = self.current().await;
        let tx =
            dynamic::tx("Commitments", "set_commitment", vec![Value::u128(u128::from(netuid)), commitment_value(data)]);
        submit(&conn, &tx, signer, "Commitments.set_commitment").await.map(|_| ())
    }

    async fn set_weights(
        &self,
        netuid: u16,
        signer: &Keypair,
        uids: &[u16],
        weights: &[u16],
        version_key: u64,
    ) -> Result<(), ChainError> {
        if uids.len() != weights.len() {
            return Err(ChainError::Invalid(format!("{} uids but {} weights", uids.len(), weights.len())));
        }
        let conn = self.current().await;
        let tx = dynamic::tx(
            "SubtensorModule",
            "set_weights",
            vec![
                Value::u128(u128::from(netuid)),
                u16_list(uids),
                u16_list(weights),
                Value::u128(u128::from(version_key)),
            ],
        );
        submit(&conn, &tx, signer, "SubtensorModule.set_weights").await.map(|_| ())
    }

    async fn weights(&self, netuid: u16, uid: u16) -> Result<Vec<(u16, u16)>, ChainError> {
        self.with_retry("weights", |conn| async move {
            let at = conn.client.at_current_block().await.map_err(rpc_err)?;
            let value = at
                .storage()
                .fetch(dynamic::storage::<(u16, u16), Vec<(u16, u16)>>("SubtensorModule", "Weights"), (netuid, uid))
                .await
                .map_err(rpc_err)?;
            value.decode().map_err(|e| ChainError::Decode { what: "Weights".into(), reason: e.to_string() })
        })
        .await
    }

    async fn register(&self, netuid: u16, coldkey: &Keypair, hotkey: &Hotkey) -> Result<u16, ChainError> {
        let conn = self.current().await;
        let tx = dynamic::tx(
            "SubtensorModule",
            "burned_register",
            vec![Value::u128(u128::from(netuid)), Value::from_bytes(hotkey.0)],
        );
        submit(&conn, &tx, coldkey, "SubtensorModule.burned_register").await?;
        let account = hotkey.0;
        let uid = self
            .with_retry("uid", |conn| async move {
                let at = conn.client.at_current_block().await.map_err(rpc_err)?;
                let uid = at
                    .storage()
                    .try_fetch(dynamic::storage::<(u16, [u8; 32]), u16>("SubtensorModule", "Uids"), (netuid, account))
                    .await
                    .map_err(rpc_err)?;
                uid.map(|v| v.decode().map_err(rpc_err)).transpose()
            })
            .await?;
        uid.ok_or_else(|| ChainError::Transaction {
            call: "SubtensorModule.burned_register".into(),
            reason: format!("{hotkey} has no UID after registration"),
        })
    }

    async fn weights_policy(&self, netuid: u16) -> Result<WeightsPolicy, ChainError> {
        self.with_retry("weights policy", |conn| async move {
            let at = conn.client.at_current_block().await.map_err(rpc_err)?;
            ensure_subnet(&at, netuid).await?;
            Ok(WeightsPolicy {
                rate_limit_blocks: read_or(&at, "WeightsSetRateLimit", (netuid,), 0u64).await?,
                commit_reveal: read_or(&at, "CommitRevealWeightsEnabled", (netuid,), false).await?,
                reveal_period_epochs: read_or(&at, "RevealPeriodEpochs", (netuid,), 1u64).await?,
                tempo: read_or(&at, "Tempo", (netuid,), super::dev::DEV_TEMPO).await?,
                version_key: read_or(&at, "WeightsVersionKey", (netuid,), 0u64).await?,
                commit_scheme: commit_scheme(&at.metadata()),
            })
        })
        .await
    }

    async fn last_weights_block(&self, netuid: u16, uid: u16) -> Result<u64, ChainError> {
        self.with_retry("last update", |conn| async move {
            let at = conn.client.at_current_block().await.map_err(rpc_err)?;
            let last: Vec<u64> = read_or(&at, "LastUpdate", (netuid,), Vec::new()).await?;
            Ok(last.get(usize::from(uid)).copied().unwrap_or(0))
        })
        .await
    }

    async fn commit_weights(&self, netuid: u16, signer: &Keypair, commit_hash: [u8; 32]) -> Result<(), ChainError> {
        let conn = self.current().await;
        let tx = dynamic::tx(
            SUBTENSOR,
            "commit_weights",
            vec![Value::u128(u128::from(netuid)), Value::from_bytes(commit_hash)],
        );
        submit(&conn, &tx, signer, "SubtensorModule.commit_weights").await.map(|_| ())
    }

    async fn reveal_weights(
        &self,
        netuid: u16,
        signer: &Keypair,
        uids: &[u16],
        weights: &[u16],
        salt: &[u16],
        version_key: u64,
    ) -> Result<(), ChainError> {
        if uids.len() != weights.len() {
            return Err(ChainError::Invalid(format!("{} uids but {} weights", uids.len(), weights.len())));
        }
        let conn = self.current().await;
        let tx = dynamic::tx(
            SUBTENSOR,
            "reveal_weights",
            vec![
                Value::u128(u128::from(netuid)),
                u16_list(uids),
                u16_list(weights),
                u16_list(salt),
                Value::u128(u128::from(version_key)),
            ],
        );
        submit(&conn, &tx, signer, "SubtensorModule.reveal_weights").await.map(|_| ())
    }

    async fn commit_timelocked_weights(
        &self,
        netuid: u16,
        signer: &Keypair,
        ciphertext: &[u8],
        reveal_round: u64,
    ) -> Result<(), ChainError> {
        let conn = self.current().await;
        let at = conn.client.at_current_block().await.map_err(rpc_err)?;
        let metadata = at.metadata();
        let call = TIMELOCK_CALLS.into_iter().find(|c| has_call(&metadata, c)).ok_or_else(|| ChainError::Metadata {
            what: format!("call {SUBTENSOR}.{} (or {})", TIMELOCK_CALLS[0], TIMELOCK_CALLS[1]),
        })?;
        let mut args =
            vec![Value::u128(u128::from(netuid)), Value::from_bytes(ciphertext), Value::u128(u128::from(reveal_round))];
        if call_fields(&metadata, SUBTENSOR, call)? > 3 {
            // `commit_timelocked_weights` names the payload format the client speaks; the
            // runtime accepts only its own (`CommitRevealWeightsVersion`).
            let version = read_or(&at, "CommitRevealWeightsVersion", (), DEFAULT_COMMIT_REVEAL_VERSION).await?;
            args.push(Value::u128(u128::from(version)));
        }
        let tx = dynamic::tx(SUBTENSOR, call, args);
        submit(&conn, &tx, signer, &format!("{SUBTENSOR}.{call}")).await.map(|_| ())
    }

    async fn weight_commits(&self, netuid: u16, hotkey: &Hotkey) -> Result<Vec<WeightCommit>, ChainError> {
        let account = hotkey.0;
        self.with_retry("weight commits", |conn| async move {
            let at = conn.client.at_current_block().await.map_err(rpc_err)?;
            // A VecDeque<(H256, commit_block, first_reveal_block, last_reveal_block)> up to
            // the spec-218 era; later runtimes keep the shape but store
            // (hash, commit_epoch, commit_block, 0), which this does not interpret.
            let commits: Vec<([u8; 32], u64, u64, u64)> =
                read_or(&at, "WeightCommits", (netuid, account), Vec::new()).await?;
            Ok(commits
                .into_iter()
                .map(|(hash, commit_block, first_reveal_block, last_reveal_block)| WeightCommit {
                    hash,
                    commit_block,
                    first_reveal_block,
                    last_reveal_block,
                })
                .collect())
        })
        .await
    }
}
