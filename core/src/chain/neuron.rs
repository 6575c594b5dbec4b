//! What a neuron checks about itself at start-up: that its hotkey is registered, and that
//! the chain points peers at its bucket.

use subxt_signer::sr25519::Keypair;
use tracing::info;

use super::{Chain, ChainError, Metagraph};
use crate::hotkey::{Hotkey, HotkeySigner};

/// The neuron's place on the subnet, or `None` when its hotkey is not registered.
pub async fn find_uid(chain: &dyn Chain, netuid: u16, hotkey: &Hotkey) -> Result<(Option<u16>, Metagraph), ChainError> {
    let metagraph = chain.metagraph(netuid).await?;
    Ok((metagraph.uid_of(hotkey), metagraph))
}

/// What [`ensure_commitment`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitmentChange {
    /// The chain already held this commitment.
    Unchanged,
    /// The commitment was written; `previous` is what the chain held before.
    Committed { previous: Option<String> },
}

/// Makes the chain hold `wanted` as the signer's commitment, writing only when it differs
/// (commitments are rate-limited and cost a fee).
pub async fn ensure_commitment(
    chain: &dyn Chain,
    netuid: u16,
    signer: &Keypair,
    wanted: &str,
) -> Result<CommitmentChange, ChainError> {
    let previous = chain.commitment(netuid, &signer.hotkey()).await?;
    if previous.as_deref() == Some(wanted) {
        return Ok(CommitmentChange::Unchanged);
    }
    info!(netuid, hotkey = %signer.hotkey(), ?previous, wanted, "committing the bucket location");
    chain.set_commitment(netuid, signer, wanted).await?;
    Ok(CommitmentChange::Committed { previous })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{DevChain, DevChainOptions};
    use crate::hotkey::dev_keypair;

    #[tokio::test]
    async fn commitment_is_written_only_when_it_differs() {
        let chain = DevChain::start(DevChainOptions { block_time: None, first_block: 1 });
        chain.create_subnet(7);
        let alice = dev_keypair("Alice").unwrap();
        let (uid, _) = find_uid(chain.as_ref(), 7, &alice.hotkey()).await.unwrap();
        assert_eq!(uid, None);
        chain.register(7, &alice, &alice.hotkey()).await.unwrap();
        let (uid, metagraph) = find_uid(chain.as_ref(), 7, &alice.hotkey()).await.unwrap();
        assert_eq!((uid, metagraph.size()), (Some(0), 1));

        let first = ensure_commitment(chain.as_ref(), 7, &alice, "s3://a").await.unwrap();
        assert_eq!(first, CommitmentChange::Committed { previous: None });
        assert_eq!(ensure_commitment(chain.as_ref(), 7, &alice, "s3://a").await.unwrap(), CommitmentChange::Unchanged);
        let moved = ensure_commitment(chain.as_ref(), 7, &alice, "https://s3.example/a").await.unwrap();
        assert_eq!(moved, CommitmentChange::Committed { previous: Some("s3://a".into()) });
        assert_eq!(chain.commitment(7, &alice.hotkey()).await.unwrap().as_deref(), Some("https://s3.example/a"));
    }
}
