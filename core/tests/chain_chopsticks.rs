//! The subxt client against the real subtensor runtime (spec 218) run offline by
//! chopsticks: blocks, subnet and registrations, commitments, weights (rate limit and
//! commit-reveal), and recovery from a killed-and-restarted node.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use support::chopsticks::{BlockProducer, Chopsticks, DevSubnet, jump_to};
use tessera_core::chain::weights::{self, RevealTiming};
use tessera_core::chain::{
    BlockEvent, BlockInfo, BlockStreamOptions, Chain, CommitScheme, SubtensorChain, resilient_blocks,
};
use tessera_core::hotkey::{HotkeySigner, dev_keypair};

async fn next_block(events: &mut (impl Stream<Item = BlockEvent> + Unpin), within: Duration) -> BlockInfo {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.next()).await {
            Ok(Some(BlockEvent::Block(b))) => return b,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("block stream ended"),
            Err(_) => panic!("no block within {within:?}"),
        }
    }
}

async fn new_blocks(chain: &SubtensorChain, count: u32) {
    chain.raw_request("dev_newBlock", serde_json::json!([{ "count": count }])).await.expect("dev_newBlock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subnet_registration_commitments_and_weights_on_the_real_runtime() {
    let node = Chopsticks::start().await;
    let chain = Arc::new(SubtensorChain::connect(&node.endpoint()).await.expect("connect"));

    // Blocks are delivered while they are built, with the hashes the chain reports.
    let mut events = Box::pin(resilient_blocks(chain.clone(), BlockStreamOptions::default()));
    let start = chain.latest_block().await.unwrap();
    new_blocks(&chain, 3).await;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let b = next_block(&mut events, Duration::from_secs(60)).await;
        if b.number > start.number {
            seen.push(b);
        }
    }
    for pair in seen.windows(2) {
        assert_eq!(pair[1].number, pair[0].number + 1);
    }
    for b in &seen {
        assert_eq!(chain.block_hash(b.number).await.unwrap(), Some(b.hash));
    }
    assert_eq!(chain.block_hash(seen[2].number + 1000).await.unwrap(), None);

    // Transactions need blocks: build them as a live chain would.
    let _producer = BlockProducer::start(node.endpoint(), Duration::from_millis(100)).await;
    let (alice, bob, charlie, dave) = (
        dev_keypair("Alice").unwrap(),
        dev_keypair("Bob").unwrap(),
        dev_keypair("Charlie").unwrap(),
        dev_keypair("Dave").unwrap(),
    );

    let netuid = chain.register_network(&alice, &bob.hotkey()).await.expect("register_network");
    assert!(matches!(chain.metagraph(netuid + 50).await, Err(tessera_core::chain::ChainError::NoSuchSubnet { .. })));
    let uid_charlie = chain.register(netuid, &alice, &charlie.hotkey()).await.expect("register charlie");
    let uid_dave = chain.register(netuid, &alice, &dave.hotkey()).await.expect("register dave");
    assert_ne!(uid_charlie, uid_dave);
    let metagraph = chain.metagraph(netuid).await.unwrap();
    assert_eq!(metagraph.uid_of(&charlie.hotkey()), Some(uid_charlie));
    assert_eq!(metagraph.uid_of(&dave.hotkey()), Some(uid_dave));

    // Each registered hotkey commits its bucket; every UID's commitment reads back.
    chain.set_commitment(netuid, &charlie, "http://127.0.0.1:9000/charlie").await.expect("commit charlie");
    chain.set_commitment(netuid, &dave, "s3://dave-bucket").await.expect("commit dave");
    assert_eq!(
        chain.commitment(netuid, &charlie.hotkey()).await.unwrap().as_deref(),
        Some("http://127.0.0.1:9000/charlie")
    );
    assert_eq!(chain.commitment(netuid, &bob.hotkey()).await.unwrap(), None);
    let all = chain.commitments(netuid).await.unwrap();
    let by_uid: std::collections::BTreeMap<u16, String> =
        all.into_iter().filter_map(|(hotkey, text)| metagraph.uid_of(&hotkey).map(|uid| (uid, text))).collect();
    assert_eq!(by_uid.get(&uid_charlie).map(String::as_str), Some("http://127.0.0.1:9000/charlie"));
    assert_eq!(by_uid.get(&uid_dave).map(String::as_str), Some("s3://dave-bucket"));
    assert_eq!(by_uid.len(), 2);

    // Weights: past the rate limit since registration, then read back from storage.
    let head = chain.latest_block().await.unwrap().number;
    chain.raw_request("dev_newBlock", serde_json::json!([{ "unsafeBlockHeight": head + 150 }])).await.expect("jump");
    chain.set_weights(netuid, &charlie, &[uid_charlie, uid_dave], &[100, 300], 0).await.expect("set_weights");
    let weights = chain.weights(netuid, uid_charlie).await.unwrap();
    assert_eq!(weights.len(), 2, "{weights:?}");
    assert!(
        weights.iter().find(|(u, _)| *u == uid_dave).map(|(_, w)| *w)
            > weights.iter().find(|(u, _)| *u == uid_charlie).map(|(_, w)| *w)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_rate_limit_and_commit_reveal_on_the_real_runtime() {
    let node = Chopsticks::start().await;
    let chain = SubtensorChain::connect(&node.endpoint()).await.expect("connect");
    let _producer = BlockProducer::start(node.endpoint(), Duration::from_millis(100)).await;
    let DevSubnet { charlie, dave, netuid, uid_charlie, uid_dave, .. } = DevSubnet::register(&chain).await;

    // The subnet's policy as a new subnet gets it.
    let policy = chain.weights_policy(netuid).await.expect("policy");
    eprintln!("policy of a new subnet {netuid}: {policy:?}");
    assert_eq!(policy.rate_limit_blocks, 100);
    assert!(!policy.commit_reveal);
    assert_eq!(policy.version_key, 0);
    assert_eq!(policy.reveal_period_epochs, 1);
    assert_eq!(policy.commit_scheme, Some(CommitScheme::Hash), "spec 218 offers commit_weights only");
    assert!(matches!(
        chain.weights_policy(netuid + 50).await,
        Err(tessera_core::chain::ChainError::NoSuchSubnet { .. })
    ));
    // Registration starts the rate-limit count.
    let registered_at = chain.last_weights_block(netuid, uid_charlie).await.unwrap();
    let head = chain.latest_block().await.unwrap().number;
    assert!(registered_at > 0 && registered_at <= head, "LastUpdate {registered_at} at head {head}");
    assert!(weights::blocks_until_allowed(&policy, registered_at, head + 1) > 0);

    // Past the rate limit: weights are set, read back, and LastUpdate is their block.
    jump_to(&chain, head + 150).await;
    chain.set_weights(netuid, &charlie, &[uid_charlie, uid_dave], &[100, 300], 0).await.expect("set_weights");
    let head = chain.latest_block().await.unwrap().number;
    let set_at = chain.last_weights_block(netuid, uid_charlie).await.unwrap();
    assert!(set_at > registered_at + 150 && set_at <= head, "LastUpdate {set_at}, head {head}");
    let w = chain.weights(netuid, uid_charlie).await.unwrap();
    assert!(
        w.iter().find(|(u, _)| *u == uid_dave).map(|(_, w)| *w)
            > w.iter().find(|(u, _)| *u == uid_charlie).map(|(_, w)| *w)
    );
    // Dave set nothing: his count still starts at his registration.
    let dave_at = chain.last_weights_block(netuid, uid_dave).await.unwrap();
    assert!(dave_at >= registered_at && dave_at < set_at, "dave's LastUpdate {dave_at}");

    // At once again: refused by the rate limit.
    assert!(weights::blocks_until_allowed(&policy, set_at, head + 1) > 0);
    let too_fast = chain
        .set_weights(netuid, &charlie, &[uid_charlie, uid_dave], &[300, 100], 0)
        .await
        .expect_err("a second setting within the rate limit");
    eprintln!("second set_weights: {too_fast}");
    assert!(too_fast.to_string().contains("SettingWeightsTooFast"), "{too_fast}");
    assert_eq!(chain.last_weights_block(netuid, uid_charlie).await.unwrap(), set_at);

    // Commit-reveal on: plain set_weights is refused, a hash commit and its reveal work.
    chain
        .raw_request(
            "dev_setStorage",
            serde_json::json!([{ "SubtensorModule": { "CommitRevealWeightsEnabled": [[[netuid], true]] } }]),
        )
        .await
        .expect("enable commit-reveal");
    let policy = chain.weights_policy(netuid).await.unwrap();
    assert!(policy.commit_reveal);
    assert_eq!(policy.commit_scheme, Some(CommitScheme::Hash));
    // Past the rate limit, at the start of an epoch, so that a whole epoch separates the
    // commit from its reveal window (tempo is 30 here).
    let epoch = weights::epoch_of(netuid, policy.tempo, set_at + policy.rate_limit_blocks) + 1;
    jump_to(&chain, weights::epoch_start(netuid, policy.tempo, epoch)).await;
    let cr_on = chain.set_weights(netuid, &charlie, &[uid_charlie], &[1], 0).await.expect_err("commit-reveal is on");
    eprintln!("set_weights with commit-reveal: {cr_on}");
    assert!(cr_on.to_string().contains("CommitRevealEnabled"), "{cr_on}");

    let (uids, values, salt) = ([uid_charlie, uid_dave], [300u16, 100], [7u16, 1, 2, 3, 4, 5, 6, 8]);
    let hash = weights::commit_hash(&charlie.hotkey(), netuid, &uids, &values, &salt, policy.version_key);
    chain.commit_weights(netuid, &charlie, hash).await.expect("commit_weights");
    let commits = chain.weight_commits(netuid, &charlie.hotkey()).await.unwrap();
    eprintln!("commits: {commits:?}");
    assert_eq!(commits.len(), 1);
    let commit = &commits[0];
    assert_eq!(commit.hash, hash);
    assert_eq!(
        (commit.first_reveal_block, commit.last_reveal_block),
        weights::reveal_window(&policy, netuid, commit.commit_block),
        "the runtime's reveal window is the one computed here"
    );
    assert!(chain.weight_commits(netuid, &dave.hotkey()).await.unwrap().is_empty());
    // The commit counts as a weight setting for the rate limit.
    assert_eq!(chain.last_weights_block(netuid, uid_charlie).await.unwrap(), commit.commit_block);

    let head = chain.latest_block().await.unwrap().number;
    let RevealTiming::TooEarly { reveal_from_block } =
        weights::reveal_timing(&policy, netuid, commit.commit_block, head + 1)
    else {
        panic!("a fresh commit is not revealable yet");
    };
    assert_eq!(reveal_from_block, commit.first_reveal_block);
    let early =
        chain.reveal_weights(netuid, &charlie, &uids, &values, &salt, policy.version_key).await.expect_err("too early");
    eprintln!("early reveal: {early}");
    assert!(early.to_string().contains("RevealTooEarly"), "{early}");

    // In the reveal epoch: a wrong salt does not match, the right one sets the weights.
    jump_to(&chain, reveal_from_block).await;
    let head = chain.latest_block().await.unwrap().number;
    assert_eq!(weights::reveal_timing(&policy, netuid, commit.commit_block, head + 1), RevealTiming::Now);
    let wrong = chain
        .reveal_weights(netuid, &charlie, &uids, &values, &salt[1..], policy.version_key)
        .await
        .expect_err("wrong salt");
    eprintln!("reveal with a wrong salt: {wrong}");
    assert!(wrong.to_string().contains("InvalidRevealCommitHashNotMatch"), "{wrong}");
    chain.reveal_weights(netuid, &charlie, &uids, &values, &salt, policy.version_key).await.expect("reveal_weights");
    let w = chain.weights(netuid, uid_charlie).await.unwrap();
    assert!(
        w.iter().find(|(u, _)| *u == uid_charlie).map(|(_, w)| *w)
            > w.iter().find(|(u, _)| *u == uid_dave).map(|(_, w)| *w),
        "the revealed weights (charlie 300, dave 100) are set: {w:?}"
    );
    assert!(chain.weight_commits(netuid, &charlie.hotkey()).await.unwrap().is_empty());

    // This runtime has no timelocked commit.
    let no_tlock = chain.commit_timelocked_weights(netuid, &charlie, &[1, 2, 3], 1000).await.expect_err("no CR-v3");
    assert!(matches!(no_tlock, tessera_core::chain::ChainError::Metadata { .. }), "{no_tlock}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_stream_and_queries_recover_from_a_killed_and_restarted_node() {
    let node = Chopsticks::start().await;
    let chain = Arc::new(SubtensorChain::connect(&node.endpoint()).await.expect("connect"));
    let opts = BlockStreamOptions {
        stall_timeout: Duration::from_secs(10),
        min_backoff: Duration::from_millis(200),
        max_backoff: Duration::from_secs(2),
    };
    let mut events = Box::pin(resilient_blocks(chain.clone(), opts));
    let producer = BlockProducer::start(node.endpoint(), Duration::from_millis(200)).await;
    let before = next_block(&mut events, Duration::from_secs(60)).await;

    let restarted_at = Instant::now();
    let node = node.restart().await;
    let mut lost = false;
    let mut reconnected = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    let after = loop {
        assert!(
            Instant::now() < deadline,
            "no block after restart; lost={lost} reconnected={reconnected}; log: {}",
            node.log()
        );
        match tokio::time::timeout(Duration::from_secs(5), events.next()).await {
            Ok(Some(BlockEvent::Lost { .. })) => lost = true,
            Ok(Some(BlockEvent::Reconnected { .. })) => reconnected = true,
            // The resumed node first re-announces its head (possibly the block seen before
            // the kill); the stream must go on to deliver blocks built after the restart.
            Ok(Some(BlockEvent::Block(b))) if reconnected && b.number > before.number => break b,
            _ => {}
        }
    };
    assert!(lost, "the dropped connection was not reported");
    eprintln!("block stream back {:?} after the kill", restarted_at.elapsed());

    // Plain queries recover too (one reconnect inside the call).
    let latest = chain.latest_block().await.expect("query after restart");
    assert!(latest.number >= after.number);
    drop(producer);
}
