//! tessera's miner runtime: the supervised actor tree of DESIGN §3 on ractor.
//!
//! ```text
//! HostSupervisor                      one per process; several miners per host
//! └── MinerSupervisor (per miner)     ractor-supervisor, one-for-one, backoff, restart limit
//!     ├── ChainListener    block stream (reconnects), metagraph + commitments refresh
//!     ├── WindowClock      block -> window; tells the Trainer when a window starts
//!     ├── StateSyncer      validated means of a window's slices
//!     ├── SliceDownloader  lists/fetches peers' slices into the host's cache
//!     ├── SliceUploader    publishes own slices with retries; deletes old history
//!     └── Trainer          the window loop; the only writer of the model (engine thread)
//!
//! ValidatorSupervisor (per validator hotkey): ChainListener, WindowClock, StateSyncer,
//!     SliceDownloader as above, then
//!     ├── Evaluator        the Trainer's actor without training: scores each window's
//!     │                    deltas on its model copy, then steps the model forward
//!     └── WeightSetter     weights from the moving scores to the chain (rate limit,
//!                          commit-reveal), confirmed by reading them back
//! ```
//! Actors find their siblings by registry name at each use (`{miner}/{kind}`), so a
//! restarted actor is found without rewiring.

pub mod bounds;
pub mod chain_listener;
pub mod context;
pub mod deadlines;
pub mod devnet;
pub mod engine;
pub mod error;
pub mod faults;
pub mod first_seen;
pub mod host;
pub mod messages;
pub mod observe;
pub mod progress;
pub mod slice_downloader;
pub mod slice_uploader;
pub mod sparse;
pub mod state_syncer;
pub mod stats;
pub mod supervisor;
pub mod task;
pub mod trainer;
pub mod weight_setter;
pub mod window;
pub mod window_clock;

pub use context::{ActorKind, ClockState, MinerContext, MinerParts, ModelSpec, NodeRole, PeerView, RuntimeSettings};
pub use engine::{EngineError, EngineHandle};
pub use error::RuntimeError;
pub use faults::Fault;
pub use host::{Host, MinerShutdown};
pub use stats::{MinerStats, UidOutcome, WindowSummary};
pub use supervisor::HostStatus;
pub use tessera_core as core;
pub use window::{Misbehaviour, WindowPlan};
