//! The engine: one thread that owns the burn model, its optimizer and the step counter.
//! The Trainer actor sends it jobs and awaits their results, so its own message loop stays
//! free (window ends, shutdown) while a window trains. The thread outlives a crash of the
//! Trainer actor; a panic inside a job ends the thread, and with it the model, which the
//! next Trainer rebuilds from the last checkpoint.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use burn::tensor::backend::AutodiffBackend;
use tessera_core::config::Device;
use tessera_core::slice::SliceIndices;
use tessera_data::Batch;
use tessera_model::LlamaConfig;
use tessera_model::backend::{BackendError, BackendInfo, WithBackend, dispatch};
use tessera_model::checkpoint::{CheckpointError, CheckpointMeta, CheckpointStore};
use tessera_model::init::initialize;
use tessera_model::train::{OptimSettings, SampleRate, TokenBatch, TrainError, Trainer, WindowReport, train_window};
use thiserror::Error;
use tokio::sync::oneshot;
use tracing::{error, info};

/// Every miner starts from the same weights: the network agrees on them by this seed.
pub const MODEL_INIT_SEED: u64 = 0;

#[derive(Debug, Error)]
pub enum EngineError {
    #[error("the training engine stopped (a panic while computing); the model will be rebuilt from the checkpoint")]
    Died,
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error("building the model: {0}")]
    Model(String),
    #[error("training: {0}")]
    Train(#[from] TrainError),
    #[error("slice of {found} values does not fit this window's {expected} positions")]
    SliceLength { expected: usize, found: usize },
    #[error("the model's parameters: {0}")]
    Param(String),
}

/// The model operations the rest of the miner may ask for; none exposes the backend type.
pub trait ModelOps {
    /// Sets the model's values at `indices` (an average of slices).
    fn apply(&mut self, indices: &SliceIndices, values: &[f32]) -> Result<(), EngineError>;
    /// The model's values at `indices` (a slice to publish).
    fn gather(&self, indices: &SliceIndices) -> Result<Vec<f32>, EngineError>;
    /// One window of training: micro-batches until the data or the window ends, then a step.
    fn train(
        &mut self,
        batches: &[Batch],
        rate: &mut SampleRate,
        coin: &mut dyn FnMut() -> f64,
        window_ended: &dyn Fn() -> bool,
    ) -> Result<WindowReport, EngineError>;
    fn checkpoint(&self, window: u64) -> Result<CheckpointMeta, EngineError>;
    fn step_count(&self) -> u64;
    fn current_lr(&self) -> f64;
}

struct Engine<B: AutodiffBackend> {
    trainer: Trainer<B>,
    config: LlamaConfig,
    store: CheckpointStore,
}

impl<B: AutodiffBackend> ModelOps for Engine<B> {
    fn apply(&mut self, indices: &SliceIndices, values: &[f32]) -> Result<(), EngineError> {
        if values.len() != indices.total_len() {
            return Err(EngineError::SliceLength { expected: indices.total_len(), found: values.len() });
        }
        if indices.num_params() != self.trainer.model().num_params() {
            return Err(EngineError::Param("slice indices are for another model".into()));
        }
        // Lengths and layout are checked above, which are scatter's only failure cases.
        self.trainer.replace_model(|m| match m.scatter(indices, values) {
            Ok(m) => m,
            Err(e) => panic!("scatter failed after its inputs were checked: {e}"),
        });
        Ok(())
    }

    fn gather(&self, indices: &SliceIndices) -> Result<Vec<f32>, EngineError> {
        self.trainer.model().gather(indices).map_err(|e| EngineError::Param(e.to_string()))
    }

    fn train(
        &mut self,
        batches: &[Batch],
        rate: &mut SampleRate,
        coin: &mut dyn FnMut() -> f64,
        window_ended: &dyn Fn() -> bool,
    ) -> Result<WindowReport, EngineError> {
        let batches = batches.iter().map(|b| TokenBatch {
            tokens: &b.tokens,
            loss_mask: &b.loss_mask,
            batch_size: b.batch_size,
            seq_len: b.seq_len,
        });
        Ok(train_window(&mut self.trainer, batches, rate, coin, window_ended)?)
    }

    fn checkpoint(&self, window: u64) -> Result<CheckpointMeta, EngineError> {
        Ok(self.store.save(&self.trainer, &self.config, window)?)
    }

    fn step_count(&self) -> u64 {
        self.trainer.step_count()
    }

    fn current_lr(&self) -> f64 {
        self.trainer.current_lr()
    }
}

type Job = Box<dyn FnOnce(&mut dyn ModelOps) + Send>;

/// What the engine needs to build or resume the model.
#[derive(Clone)]
pub struct EngineSpec {
    pub miner: String,
    pub device: Device,
    pub config: LlamaConfig,
    pub settings: OptimSettings,
    pub checkpoints: CheckpointStore,
}

/// How the engine started.
#[derive(Debug, Clone)]
pub struct EngineStart {
    /// The checkpoint resumed from, if any.
    pub resumed: Option<CheckpointMeta>,
    pub backend: String,
}

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
        let device = spec.device;
        let name = format!("engine-{}", spec.miner);
        let spawned = std::thread::Builder::new().name(name).spawn(move || {
            let miner = spec.miner.clone();
            let main = EngineMain { spec, jobs: rx, ready: Some(ready_tx), alive: thread_alive.clone() };
            if let Err(e) = dispatch(&device, main) {
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

struct EngineMain {
    spec: EngineSpec,
    jobs: mpsc::Receiver<Job>,
    ready: Option<oneshot::Sender<Result<EngineStart, EngineError>>>,
    alive: Arc<AtomicBool>,
}

impl EngineMain {
    fn build<B: AutodiffBackend>(
        &self,
        device: &B::Device,
    ) -> Result<(Engine<B>, Option<CheckpointMeta>), EngineError> {
        let spec = &self.spec;
        let loaded = spec.checkpoints.load::<B>(&spec.config, spec.settings.clone(), device)?;
        let (trainer, resumed) = match loaded {
            Some((trainer, meta)) => (trainer, Some(meta)),
            None => {
                let model = initialize::<B>(&spec.config, MODEL_INIT_SEED, device)
                    .map_err(|e| EngineError::Model(e.to_string()))?;
                (Trainer::new(model, spec.settings.clone()), None)
            }
        };
        Ok((Engine { trainer, config: spec.config.clone(), store: spec.checkpoints.clone() }, resumed))
    }
}

impl WithBackend for EngineMain {
    type Output = ();

    fn run<B: AutodiffBackend>(mut self, device: B::Device, info: &BackendInfo) {
        let built = std::panic::catch_unwind(AssertUnwindSafe(|| self.build::<B>(&device)))
            .unwrap_or_else(|_| Err(EngineError::Model("panic while building the model".into())));
        let ready = self.ready.take();
        let mut engine = match built {
            Ok((engine, resumed)) => {
                if let Some(meta) = &resumed {
                    info!(miner = %self.spec.miner, window = meta.window, step = meta.step, "resumed from checkpoint");
                }
                let start = EngineStart { resumed, backend: info.to_string() };
                if let Some(ready) = ready {
                    let _ = ready.send(Ok(start));
                }
                engine
            }
            Err(e) => {
                if let Some(ready) = ready {
                    let _ = ready.send(Err(e));
                }
                return;
            }
        };
        while let Ok(job) = self.jobs.recv() {
            if std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut engine))).is_err() {
                error!(miner = %self.spec.miner, "a panic in the training engine; dropping the model");
                self.alive.store(false, Ordering::Release);
                return;
            }
        }
    }
}
