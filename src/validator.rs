//! `tessera validator`: the checks that differ from a miner's start. The rest — wallet,
//! registration, bucket, the actor tree — is the miner's (see `miner.rs`).

use std::sync::Arc;

use anyhow::{Result, bail};
use tessera_actors::MinerContext;
use tessera_core::chain::CommitScheme;
use tessera_core::config::{MinerConfig, MinerInstance};
use tracing::info;

/// A validator runs one hotkey and does not take the miner-only switches.
pub fn check_config(config: &MinerConfig, instances: &[MinerInstance]) -> Result<()> {
    if instances.len() != 1 {
        bail!(
            "a validator process runs one hotkey, but the configuration has {} [[miners]] entries: \
             run one `tessera validator` per hotkey",
            instances.len()
        );
    }
    for (set, flag) in [(config.random, "--random"), (config.baseline, "--baseline")] {
        if set {
            bail!("{flag} is a miner's switch; a validator does not train (leave it out)");
        }
    }
    Ok(())
}

/// Reads how the subnet takes weights and refuses to run without effect: on a subnet
/// with commit-reveal whose runtime offers no commit call this build knows, plain
/// `set_weights` would be refused forever.
pub async fn check_weights_policy(ctx: &Arc<MinerContext>) -> Result<()> {
    let policy = ctx.network.chain.weights_policy(ctx.id.netuid).await?;
    info!(
        validator = %ctx.id.name,
        rate_limit_blocks = policy.rate_limit_blocks,
        commit_reveal = policy.commit_reveal,
        reveal_period_epochs = policy.reveal_period_epochs,
        tempo = policy.tempo,
        version_key = policy.version_key,
        scheme = ?policy.commit_scheme,
        "weights policy of the subnet"
    );
    if policy.commit_reveal {
        match policy.commit_scheme {
            Some(CommitScheme::Hash) => {
                info!("commit-reveal: weights are committed as a hash and revealed in the reveal epoch")
            }
            Some(CommitScheme::Timelock { call }) => {
                info!(call, "commit-reveal: weights are committed timelock-encrypted; the chain reveals them")
            }
            None => bail!(
                "subnet {} has commit-reveal enabled (CommitRevealWeightsEnabled) but the chain's runtime offers \
                 no commit call this validator knows (commit_weights, commit_crv3_weights, \
                 commit_timelocked_weights): its weights could never be set, so it does not start",
                ctx.id.netuid
            ),
        }
    }
    Ok(())
}
