//! The model behind an object-safe interface: [`ModelOps`] is everything the rest of the
//! system may ask of the model (average slices in, read slices out, train a window,
//! evaluate, checkpoint), and [`run_engine`] builds the model for a device and hands it to
//! a non-generic body. Every burn generic is instantiated here, in this crate, so that this
//! crate alone needs an optimised dev profile for the devnet and the tests to train at
//! near-release speed while the crates above rebuild quickly.

use std::panic::AssertUnwindSafe;

use tessera_core::model::ComputeOptions;
use tessera_core::model::Device;
use tessera_core::slice::SliceIndices;
use thiserror::Error;

use crate::backend::{BackendError, BackendInfo, WithBackend, compute_caps, dispatch};
use crate::checkpoint::{CheckpointError, CheckpointMeta, CheckpointStore};
use crate::init::initialize;
use crate::ops::TrainBackend;
use crate::train::{
    OptimSettings, SampleRate, StepReport, TokenBatch, TrainError, Trainer, WindowReport, accumulate_window, evaluate,
    train_window,
};
use crate::{Llama, LlamaConfig};

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
    #[error("a slice to write holds a non-finite value ({value} at position {position}); the model is unchanged")]
    NonFinite { position: usize, value: f32 },
}

/// The model operations the rest of the system may ask for; none exposes the backend type.
pub trait ModelOps {
    /// Sets the model's values at `indices` (an average of slices).
    fn apply(&mut self, indices: &SliceIndices, values: &[f32]) -> Result<(), EngineError>;
    /// Adds `deltas` to the model's values at `indices` (an update exchanged by peers).
    fn add(&mut self, indices: &SliceIndices, deltas: &[f32]) -> Result<(), EngineError>;
    /// The model's values at `indices` (a slice to publish).
    fn gather(&self, indices: &SliceIndices) -> Result<Vec<f32>, EngineError>;
    /// One window of training: micro-batches until the data or the window ends, then a step.
    fn train(
        &mut self,
        batches: &[TokenBatch<'_>],
        rate: &mut SampleRate,
        coin: &mut dyn FnMut() -> f64,
        window_ended: &dyn Fn() -> bool,
    ) -> Result<WindowReport, EngineError>;
    /// [`Self::train`] without the step: the gradients stay accumulated (gradient exchange).
    fn accumulate(
        &mut self,
        batches: &[TokenBatch<'_>],
        rate: &mut SampleRate,
        coin: &mut dyn FnMut() -> f64,
        window_ended: &dyn Fn() -> bool,
    ) -> Result<WindowReport, EngineError>;
    /// The gradient accumulated since the last step (every parameter, canonical order),
    /// emptied; `None` when nothing is pending.
    fn take_gradient(&mut self) -> Option<Vec<f32>>;
    /// One optimizer step on `gradient` (an aggregate of the peers' gradients).
    fn step_with(&mut self, gradient: &[f32], micro_batches: usize) -> Result<StepReport, EngineError>;
    /// Mean loss per target token on `batches`, without gradients or any change.
    fn eval(&self, batches: &[TokenBatch<'_>]) -> Result<f32, EngineError>;
    fn checkpoint(&self, window: u64) -> Result<CheckpointMeta, EngineError>;
    fn step_count(&self) -> u64;
    fn current_lr(&self) -> f64;
}

/// `Llama::scatter` or `Llama::scatter_add`.
type Scatter<B> = fn(Llama<B>, &SliceIndices, &[f32]) -> Result<Llama<B>, crate::ParamError>;

struct Engine<B: TrainBackend> {
    trainer: Trainer<B>,
    config: LlamaConfig,
    store: CheckpointStore,
}

impl<B: TrainBackend> Engine<B> {
    fn check(&self, indices: &SliceIndices, values: &[f32]) -> Result<(), EngineError> {
        if values.len() != indices.total_len() {
            return Err(EngineError::SliceLength { expected: indices.total_len(), found: values.len() });
        }
        if indices.num_params() != self.trainer.model().num_params() {
            return Err(EngineError::Param("slice indices are for another model".into()));
        }
        // A non-finite value would spread through every later step: refused before any write.
        if let Some(position) = values.iter().position(|v| !v.is_finite()) {
            return Err(EngineError::NonFinite { position, value: values[position] });
        }
        Ok(())
    }

    /// Checks a slice against the model, then writes it with `scatter` (set or add).
    fn edit(&mut self, indices: &SliceIndices, values: &[f32], scatter: Scatter<B>) -> Result<(), EngineError> {
        self.check(indices, values)?;
        // Lengths, layout and finiteness are checked above, which are scatter's only failure cases.
        self.trainer.replace_model(|m| match scatter(m, indices, values) {
            Ok(m) => m,
            Err(e) => panic!("writing a slice failed after its inputs were checked: {e}"),
        });
        Ok(())
    }
}

impl<B: TrainBackend> ModelOps for Engine<B> {
    fn apply(&mut self, indices: &SliceIndices, values: &[f32]) -> Result<(), EngineError> {
        self.edit(indices, values, Llama::scatter)
    }

    fn add(&mut self, indices: &SliceIndices, deltas: &[f32]) -> Result<(), EngineError> {
        self.edit(indices, deltas, Llama::scatter_add)
    }

    fn gather(&self, indices: &SliceIndices) -> Result<Vec<f32>, EngineError> {
        self.trainer.model().gather(indices).map_err(|e| EngineError::Param(e.to_string()))
    }

    fn train(
        &mut self,
        batches: &[TokenBatch<'_>],
        rate: &mut SampleRate,
        coin: &mut dyn FnMut() -> f64,
        window_ended: &dyn Fn() -> bool,
    ) -> Result<WindowReport, EngineError> {
        Ok(train_window(&mut self.trainer, batches.iter().copied(), rate, coin, window_ended)?)
    }

    fn accumulate(
        &mut self,
        batches: &[TokenBatch<'_>],
        rate: &mut SampleRate,
        coin: &mut dyn FnMut() -> f64,
        window_ended: &dyn Fn() -> bool,
    ) -> Result<WindowReport, EngineError> {
        Ok(accumulate_window(&mut self.trainer, batches.iter().copied(), rate, coin, window_ended)?)
    }

    fn take_gradient(&mut self) -> Option<Vec<f32>> {
        self.trainer.take_gradient().map(|(gradient, _)| gradient)
    }

    fn step_with(&mut self, gradient: &[f32], micro_batches: usize) -> Result<StepReport, EngineError> {
        self.trainer.step_with_gradient(gradient, micro_batches).map_err(|e| EngineError::Param(e.to_string()))
    }

    fn eval(&self, batches: &[TokenBatch<'_>]) -> Result<f32, EngineError> {
        Ok(evaluate(self.trainer.model(), batches)?)
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

/// What the engine needs to build or resume the model.
#[derive(Clone)]
pub struct EngineSpec {
    pub miner: String,
    pub device: Device,
    /// Precision, attention kernel and recomputation on `device`.
    pub compute: ComputeOptions,
    pub config: LlamaConfig,
    pub settings: OptimSettings,
    pub checkpoints: CheckpointStore,
    /// The seed every node of the network initialises the model from.
    pub init_seed: u64,
}

/// How the engine started.
#[derive(Debug, Clone)]
pub struct EngineStart {
    /// The checkpoint resumed from, if any.
    pub resumed: Option<CheckpointMeta>,
    pub backend: String,
}

/// What runs with the model once it is built (or with the reason it could not be).
pub type EngineBody = Box<dyn FnOnce(Result<(&mut dyn ModelOps, EngineStart), EngineError>) + Send>;

/// Builds the model for `spec.device` (seeded, or resumed from the newest loadable
/// checkpoint) and runs `body` with it on the calling thread. A panic while building is
/// reported to `body` as an error; the caller owns panics inside `body`.
pub fn run_engine(spec: EngineSpec, body: EngineBody) -> Result<(), BackendError> {
    let device = spec.device;
    dispatch(&device, EngineMain { spec, body })
}

struct EngineMain {
    spec: EngineSpec,
    body: EngineBody,
}

impl EngineMain {
    fn build<B: TrainBackend>(
        spec: &EngineSpec,
        device: &B::Device,
        info: &BackendInfo,
    ) -> Result<(Engine<B>, Option<CheckpointMeta>), EngineError> {
        let compute = spec
            .compute
            .resolve(info.backend, compute_caps::<B>(info, device))
            .map_err(|e| EngineError::Model(e.to_string()))?;
        let loaded = spec.checkpoints.load::<B>(&spec.config, spec.settings.clone(), device)?;
        let (trainer, resumed) = match loaded {
            Some((trainer, meta)) => (trainer, Some(meta)),
            None => {
                let model = initialize::<B>(&spec.config, spec.init_seed, device)
                    .map_err(|e| EngineError::Model(e.to_string()))?;
                (Trainer::new(model, spec.settings.clone()), None)
            }
        };
        let mut trainer = trainer;
        trainer.replace_model(|model| model.with_compute(compute));
        Ok((Engine { trainer, config: spec.config.clone(), store: spec.checkpoints.clone() }, resumed))
    }
}

impl WithBackend for EngineMain {
    type Output = ();

    fn run<B: TrainBackend>(self, device: B::Device, info: &BackendInfo) {
        let EngineMain { spec, body } = self;
        let built = std::panic::catch_unwind(AssertUnwindSafe(|| Self::build::<B>(&spec, &device, info)))
            .unwrap_or_else(|_| Err(EngineError::Model("panic while building the model".into())));
        match built {
            Ok((mut engine, resumed)) => {
                let compute = engine.trainer.model().compute();
                let start = EngineStart { resumed, backend: format!("{info}, {compute}") };
                body(Ok((&mut engine, start)));
            }
            Err(e) => body(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::hparams::Hparams;
    use tessera_core::model::ParamLayout;

    fn tiny() -> (LlamaConfig, ParamLayout, OptimSettings) {
        let mut hp = Hparams::builtin().unwrap();
        hp.vocab_size = 32;
        hp.hidden_size = 16;
        hp.intermediate_size = 32;
        hp.num_hidden_layers = 1;
        hp.num_attention_heads = 2;
        hp.num_key_value_heads = 1;
        hp.max_position_embeddings = 16;
        hp.sequence_length = 8;
        hp.compression = 4;
        let shape = hp.model_shape();
        (LlamaConfig::from(&shape), ParamLayout::llama(&shape).unwrap(), OptimSettings::from_hparams(&hp).unwrap())
    }

    #[test]
    fn add_moves_only_the_slice_positions_and_eval_changes_nothing() {
        let (config, layout, settings) = tiny();
        let dir = tempfile::tempdir().unwrap();
        let spec = EngineSpec {
            miner: "t".into(),
            device: Device::Cpu,
            compute: Default::default(),
            config,
            settings,
            checkpoints: CheckpointStore::new(dir.path()),
            init_seed: 7,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        run_engine(
            spec,
            Box::new(move |built| {
                let (ops, start) = built.unwrap();
                assert!(start.resumed.is_none());
                let indices = SliceIndices::compute(&layout, 3, 4).unwrap();
                let before = ops.gather(&indices).unwrap();
                let tokens: Vec<u32> = (0..16).map(|i| i % 32).collect();
                let mask = vec![true; 16];
                let batch = TokenBatch { tokens: &tokens, loss_mask: &mask, batch_size: 2, seq_len: 8 };
                let loss = ops.eval(&[batch]).unwrap();
                assert!(loss.is_finite() && loss > 0.0);
                assert_eq!(ops.eval(&[batch]).unwrap(), loss, "evaluation must not change the model");
                let deltas = vec![0.5f32; before.len()];
                ops.add(&indices, &deltas).unwrap();
                let after = ops.gather(&indices).unwrap();
                for (a, b) in after.iter().zip(&before) {
                    assert!((a - b - 0.5).abs() < 1e-6);
                }
                let other = SliceIndices::compute(&layout, 4, 4).unwrap();
                assert!(ops.add(&other, &deltas[..1]).is_err(), "a wrong length is refused");
                tx.send(()).unwrap();
            }),
        )
        .unwrap();
        rx.recv().unwrap();
    }
}
