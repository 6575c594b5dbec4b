//! The engine: one thread that owns the burn model, its optimizer and the step counter.
//! The Trainer actor sends it jobs and awaits their results, so its own message loop stays
//! free (window ends, shutdown) while a window trains. The thread outlives a crash of the
//! Trainer actor; a panic inside a job ends the thread, and with it the model, which the
//! next Trainer rebuilds from the last checkpoint.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use tessera_model::engine::run_engine;
pub use tessera_model::engine::{EngineError, EngineSpec, EngineStart, ModelOps};
use tokio::sync::oneshot;
use tracing::error;

/// Every miner starts from the same weights: the network agrees on them by this seed.
pub const MODEL_INIT_SEED: u64 = 0;

type Job = Box<dyn FnOnce(&mut dyn ModelOps) + Send>;

/// A handle on the engine thread; cloning shares it.
#[derive(Clone)]
pub struct EngineHandle {
    jobs: mpsc::Sender<Job>,
    alive: Arc<AtomicBool>,
    pub start: EngineStart,
}

impl EngineHandle {
    /// Starts the engine thread: builds the model (seeded), resumes from the newest
    /// loadable checkpoint, and returns once it is ready for jobs.
    pub async fn start(spec: EngineSpec) -> Result<Self, EngineError> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let alive = Arc::new(AtomicBool::new(true));
        let thread_alive = alive.clone();
        let name = format!("engine-{}", spec.miner);
        let spawned = std::thread::Builder::new().name(name).spawn(move || {
            let miner = spec.miner.clone();
            let body_alive = thread_alive.clone();
            let body_miner = miner.clone();
            let body = Box::new(move |built: Result<(&mut dyn ModelOps, EngineStart), EngineError>| {
                let ops = match built {
                    Ok((ops, start)) => {
                        if let Some(meta) = &start.resumed {
                            tracing::info!(miner = %body_miner, window = meta.window, step = meta.step, "resumed from checkpoint");
                        }
                        let _ = ready_tx.send(Ok(start));
                        ops
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(job) = rx.recv() {
                    if std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut *ops))).is_err() {
                        error!(miner = %body_miner, "a panic in the training engine; dropping the model");
                        body_alive.store(false, Ordering::Release);
                        return;
                    }
                }
            });
            if let Err(e) = run_engine(spec, body) {
                error!(miner = %miner, error = %e, "the training engine could not start");
            }
            thread_alive.store(false, Ordering::Release);
        });
        if let Err(e) = spawned {
            return Err(EngineError::Model(format!("cannot start the engine thread: {e}")));
        }
        let start = ready_rx.await.map_err(|_| EngineError::Died)??;
        Ok(Self { jobs, alive, start })
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Runs `job` on the engine thread; the future resolves with its result. The job is
    /// boxed before the future is built, so the future is `Send` whatever the closure.
    pub fn run<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut dyn ModelOps) -> R + Send + 'static,
    ) -> impl Future<Output = Result<R, EngineError>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let boxed: Job = Box::new(move |ops| {
            let _ = tx.send(job(ops));
        });
        let sent = self.jobs.send(boxed).map_err(|_| EngineError::Died);
        async move {
            sent?;
            rx.await.map_err(|_| EngineError::Died)
        }
    }
}
