//! Runs the real subtensor runtime (spec 218, `tools/chain/`) offline with chopsticks,
//! so the subxt client is tested against the chain it will meet, not a stand-in.
//!
//! The binary comes from `tools/chopsticks` (`npm ci --prefix tools/chopsticks`; the
//! README's test command does it) or `$TESSERA_CHOPSTICKS`; the chain spec from
//! `$TESSERA_CHAIN_DIR` or the repository's `tools/chain/`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_core::chain::SubtensorChain;
use tokio::process::{Child, Command};

/// The workspace root (the directory with `Cargo.lock`), whichever package includes this.
fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.ancestors().find(|d| d.join("Cargo.lock").exists()).unwrap_or(manifest).to_path_buf()
}

fn chopsticks_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TESSERA_CHOPSTICKS") {
        return PathBuf::from(p);
    }
    let bin = workspace_root().join("tools/chopsticks/node_modules/.bin/chopsticks");
    assert!(
        bin.exists(),
        "chopsticks is not installed at {}: run `npm ci --prefix tools/chopsticks` (scripts/test does it)",
        bin.display()
    );
    bin
}

fn chain_dir() -> PathBuf {
    let dir =
        std::env::var("TESSERA_CHAIN_DIR").map(PathBuf::from).unwrap_or_else(|_| workspace_root().join("tools/chain"));
    assert!(
        dir.join("subtensor-raonet-spec218.json").exists(),
        "chain spec not found in {} (set TESSERA_CHAIN_DIR)",
        dir.display()
    );
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// One chopsticks process; killed on drop.
pub struct Chopsticks {
    child: Option<Child>,
    pub port: u16,
    workdir: Arc<tempfile::TempDir>,
}

impl Chopsticks {
    /// Starts a fresh chain on a free port, blocks built on demand (`dev_newBlock`).
    pub async fn start() -> Self {
        let workdir = Arc::new(tempfile::tempdir().expect("tempdir"));
        Self::spawn(free_port(), workdir, false).await
    }

    /// Starts again on the same port and database, resuming from the last block.
    pub async fn restart(mut self) -> Self {
        self.kill().await;
        let (port, workdir) = (self.port, self.workdir.clone());
        Self::spawn(port, workdir, true).await
    }

    async fn spawn(port: u16, workdir: Arc<tempfile::TempDir>, resume: bool) -> Self {
        let dir = chain_dir();
        let template = std::fs::read_to_string(dir.join("chopsticks.yml")).expect("chopsticks.yml");
        let genesis = dir.join("subtensor-raonet-spec218.json");
        let mut config = template
            .lines()
            .map(|l| if l.starts_with("genesis:") { format!("genesis: {}", genesis.display()) } else { l.to_owned() })
            .collect::<Vec<_>>()
            .join("\n");
        if resume {
            // Only the config file's boolean form is accepted (the flag wants a hash or number).
            config.push_str("\nresume: true\n");
        }
        let config_path = workdir.path().join("chopsticks.yml");
        std::fs::write(&config_path, config).expect("write config");
        let db = workdir.path().join("chain.sqlite");
        let mut cmd = Command::new(chopsticks_bin());
        cmd.arg("--config")
            .arg(&config_path)
            .arg("--port")
            .arg(port.to_string())
            .arg("--build-block-mode")
            .arg("Manual")
            .arg("--db")
            .arg(&db)
            .current_dir(workdir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(workdir.path().join("chopsticks.log")).expect("log")))
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let child = cmd.spawn().expect("spawn chopsticks");
        let me = Self { child: Some(child), port, workdir };
        me.wait_ready().await;
        me
    }

    pub fn endpoint(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(("127.0.0.1", self.port)))
                    .await
                && SubtensorChain::connect(&self.endpoint()).await.is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "chopsticks did not become ready on port {}; log: {}",
                self.port,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.workdir.path().join("chopsticks.log")).unwrap_or_default()
    }

    /// SIGKILL, as a crashed node.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

/// Builds blocks like a live chain would, until dropped.
pub struct BlockProducer {
    task: tokio::task::JoinHandle<()>,
}

impl BlockProducer {
    pub async fn start(endpoint: String, interval: Duration) -> Self {
        let task = tokio::spawn(async move {
            let mut chain = None;
            loop {
                if chain.is_none() {
                    chain = SubtensorChain::connect(&endpoint).await.ok();
                }
                if let Some(c) = &chain
                    && c.raw_request("dev_newBlock", serde_json::json!([{ "count": 1 }])).await.is_err()
                {
                    chain = None;
                }
                tokio::time::sleep(interval).await;
            }
        });
        Self { task }
    }
}

impl Drop for BlockProducer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Builds one block at `height` (chopsticks' `unsafeBlockHeight`): past rate limits and
/// into reveal epochs without building every block in between.
pub async fn jump_to(chain: &SubtensorChain, height: u64) {
    chain.raw_request("dev_newBlock", serde_json::json!([{ "unsafeBlockHeight": height }])).await.expect("jump");
}

/// A new subnet on the node: //Alice owns it (and pays), //Bob is its owner hotkey,
/// //Charlie and //Dave are registered on it.
pub struct DevSubnet {
    pub alice: tessera_core::hotkey::Keypair,
    pub bob: tessera_core::hotkey::Keypair,
    pub charlie: tessera_core::hotkey::Keypair,
    pub dave: tessera_core::hotkey::Keypair,
    pub netuid: u16,
    pub uid_charlie: u16,
    pub uid_dave: u16,
}

impl DevSubnet {
    pub async fn register(chain: &SubtensorChain) -> Self {
        use tessera_core::chain::Chain;
        use tessera_core::hotkey::{HotkeySigner, dev_keypair};
        let key = |name: &str| dev_keypair(name).expect("dev key");
        let (alice, bob, charlie, dave) = (key("Alice"), key("Bob"), key("Charlie"), key("Dave"));
        let netuid = chain.register_network(&alice, &bob.hotkey()).await.expect("register_network");
        let uid_charlie = chain.register(netuid, &alice, &charlie.hotkey()).await.expect("register charlie");
        let uid_dave = chain.register(netuid, &alice, &dave.hotkey()).await.expect("register dave");
        Self { alice, bob, charlie, dave, netuid, uid_charlie, uid_dave }
    }
}
