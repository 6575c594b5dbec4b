//! The WeightSetter's chain side against the real subtensor runtime (spec 218, run
//! offline by chopsticks): weights set and confirmed, the rate limit waited for rather
//! than hit, and under commit-reveal a hash commit kept on disk, revealed in its epoch and
//! confirmed — the path a validator takes on such a subnet.

#[path = "../../core/tests/support/mod.rs"]
mod support;

use std::time::Duration;

use support::chopsticks::{BlockProducer, Chopsticks, DevSubnet, jump_to};
use tessera_actors::messages::SubmitOutcome;
use tessera_actors::weight_setter::WeightsSubmitter;
use tessera_core::chain::{Chain, SubtensorChain};
use tessera_core::hotkey::HotkeySigner;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_are_set_within_the_rate_limit_and_committed_then_revealed_under_commit_reveal() {
    let node = Chopsticks::start().await;
    let chain = SubtensorChain::connect(&node.endpoint()).await.expect("connect");
    let _producer = BlockProducer::start(node.endpoint(), Duration::from_millis(100)).await;
    // Charlie validates, Dave mines.
    let DevSubnet { charlie, netuid, uid_charlie: uid, uid_dave: miner, .. } = DevSubnet::register(&chain).await;
    let dir = tempfile::tempdir().unwrap();
    let pending_path = dir.path().join("weights-commit.json");
    let submitter = WeightsSubmitter {
        chain: &chain,
        netuid,
        uid,
        signer: &charlie,
        hotkey: charlie.hotkey(),
        pending_path: Some(pending_path.clone()),
        block_time: Duration::from_secs(12),
    };

    // Just registered: the rate limit counts from registration, so the setter waits.
    let outcome = submitter.submit(vec![miner], vec![65535]).await.expect("submit");
    let SubmitOutcome::RateLimited { until } = outcome else { panic!("expected a wait, got {outcome:?}") };
    jump_to(&chain, until).await;
    let outcome = submitter.submit(vec![uid, miner], vec![20000, 65535]).await.expect("submit");
    assert!(matches!(outcome, SubmitOutcome::Set { .. }), "{outcome:?}");
    let on_chain = chain.weights(netuid, uid).await.unwrap();
    assert!(on_chain.contains(&(miner, 65535)), "{on_chain:?}");
    // At once again: held back by the setter, not refused by the chain.
    let again = submitter.submit(vec![miner], vec![65535]).await.expect("submit");
    assert!(matches!(again, SubmitOutcome::RateLimited { .. }), "{again:?}");

    // Commit-reveal on: a hash commit, kept on disk until revealed.
    chain
        .raw_request(
            "dev_setStorage",
            serde_json::json!([{ "SubtensorModule": { "CommitRevealWeightsEnabled": [[[netuid], true]] } }]),
        )
        .await
        .expect("enable commit-reveal");
    let head = chain.latest_block().await.unwrap().number;
    jump_to(&chain, head + 120).await;
    let outcome = submitter.submit(vec![uid, miner], vec![65535, 10000]).await.expect("commit");
    assert!(matches!(outcome, SubmitOutcome::Committed { .. }), "{outcome:?}");
    let pending = submitter.pending().expect("the commit is kept for its reveal");
    let commits = chain.weight_commits(netuid, &charlie.hotkey()).await.unwrap();
    assert_eq!(commits.iter().map(|c| c.hash).collect::<Vec<_>>(), vec![pending.hash], "the commit is on chain");
    assert_eq!(commits[0].commit_block, pending.commit_block);

    // Too early: the setter waits for the reveal epoch, then reveals and confirms.
    let early = submitter.reveal(pending.clone()).await.expect("reveal too early");
    let SubmitOutcome::Waiting { until } = early else { panic!("expected a wait, got {early:?}") };
    jump_to(&chain, until.saturating_sub(1)).await;
    let revealed = submitter.reveal(pending).await.expect("reveal");
    assert!(matches!(revealed, SubmitOutcome::Revealed { .. }), "{revealed:?}");
    let on_chain = chain.weights(netuid, uid).await.unwrap();
    assert!(on_chain.contains(&(uid, 65535)) && on_chain.contains(&(miner, 10000)), "{on_chain:?}");
    assert!(submitter.pending().is_none(), "the revealed commit is no longer kept");
    assert!(!pending_path.exists());
}
