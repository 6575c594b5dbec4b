//! Training as the seed does it: causal LM loss with padding masked, gradients accumulated
//! over micro-batches of `actual_batch_size`, global-norm clipping, AdamW, and the LR
//! schedule of the hparams; plus the window-bounded loop that stops between micro-batches
//! when the window ends and adapts its sample rate.

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsAccumulator, GradientsParams, Optimizer};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, FloatDType, Int, Tensor, TensorData};
use tessera_core::hparams::{Hparams, HparamsError, LrSchedule};
use thiserror::Error;

use crate::llama::Llama;

mod gradient;

/// Smallest sample rate the window loop goes down to (the seed's floor).
pub const MIN_SAMPLE_RATE: f64 = 0.0001;

#[derive(Debug, Error)]
pub enum TrainError {
    #[error("batch of {batch_size}x{seq_len} needs {expected} tokens and mask entries, got {tokens} and {mask}")]
    BatchShape { batch_size: usize, seq_len: usize, expected: usize, tokens: usize, mask: usize },
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error("sequences must have at least 2 tokens to predict one, got {0}")]
    TooShort(usize),
    #[error("the loss is not finite ({0}); the step was skipped")]
    NonFiniteLoss(f32),
    #[error(transparent)]
    Hparams(#[from] HparamsError),
}

/// One micro-batch: token ids `[batch_size, seq_len]` row-major, and which positions count
/// in the loss (padding does not).
#[derive(Debug, Clone, Copy)]
pub struct TokenBatch<'a> {
    pub tokens: &'a [u32],
    pub loss_mask: &'a [bool],
    pub batch_size: usize,
    pub seq_len: usize,
}

impl TokenBatch<'_> {
    fn check(&self, vocab: usize) -> Result<(), TrainError> {
        let expected = self.batch_size * self.seq_len;
        if self.tokens.len() != expected || self.loss_mask.len() != expected {
            return Err(TrainError::BatchShape {
                batch_size: self.batch_size,
                seq_len: self.seq_len,
                expected,
                tokens: self.tokens.len(),
                mask: self.loss_mask.len(),
            });
        }
        if self.seq_len < 2 {
            return Err(TrainError::TooShort(self.seq_len));
        }
        if let Some(&id) = self.tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(TrainError::TokenOutOfRange { id, vocab });
        }
        Ok(())
    }

    /// Tokens that count in the loss (targets: every position but the first of a row).
    pub fn target_tokens(&self) -> usize {
        self.loss_mask.chunks(self.seq_len.max(1)).map(|row| row.iter().skip(1).filter(|&&m| m).count()).sum()
    }
}

/// Mean next-token negative log-likelihood over the positions whose *target* is unmasked.
pub fn causal_lm_loss<B: ModelBackend>(model: &Llama<B>, batch: TokenBatch<'_>) -> Tensor<B, 1> {
    let device = model.embed_tokens.val().device();
    let (inputs, targets) = batch_tensors::<B>(batch, &device);
    lm_loss(model.forward(inputs), targets)
}

/// A batch's model inputs (every position, as torch's `labels=` path feeds them: the
/// products keep the batch's aligned length, 2048 rather than 2047) `[b, t]`, and its
/// targets with their loss mask; the label shift is in [`lm_loss`]. The last position's
/// logits predict nothing and do not enter the loss (causal attention: no earlier
/// position sees it).
pub(crate) fn batch_tensors<B: Backend>(batch: TokenBatch<'_>, device: &B::Device) -> (Tensor<B, 2, Int>, Targets<B>) {
    let (b, t) = (batch.batch_size, batch.seq_len);
    let ids: Vec<i64> = batch.tokens.iter().map(|&x| i64::from(x)).collect();
    let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, t]), device);
    let mask: Vec<f32> = batch.loss_mask.iter().map(|&m| if m { 1.0 } else { 0.0 }).collect();
    let mask = Tensor::<B, 2>::from_data(TensorData::new(mask, [b, t]), device).slice([0..b, 1..t]);
    let targets = Targets { ids: tokens.clone().slice([0..b, 1..t]), mask };
    (tokens, targets)
}

/// Next tokens `[b, t − 1]` and which of them count (1.0) or are padding (0.0).
pub(crate) struct Targets<B: Backend> {
    ids: Tensor<B, 2, Int>,
    mask: Tensor<B, 2>,
}

/// The masked mean negative log-likelihood of `targets` under `logits` `[b, t, vocab]`:
/// position `i`'s logits predict target `i` (the token at `i + 1`); the last position's
/// predict nothing.
pub(crate) fn lm_loss<B: Backend>(logits: Tensor<B, 3>, targets: Targets<B>) -> Tensor<B, 1> {
    let [b, t, vocab] = logits.dims();
    let logits = logits.slice([0..b, 0..t.saturating_sub(1), 0..vocab]);
    let nll = log_softmax(logits, 2).gather(2, targets.ids.unsqueeze_dim::<3>(2)).squeeze_dim::<2>(2).neg();
    let count = targets.mask.clone().sum().clamp_min(1.0);
    (nll * targets.mask).sum() / count
}

/// Optimizer settings from the hparams.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimSettings {
    pub base_lr: f64,
    pub schedule: LrSchedule,
    pub beta1: f64,
    pub beta2: f64,
    pub weight_decay: f64,
    pub epsilon: f64,
    /// Global-norm clipping threshold (`grad_clip`), if any.
    pub grad_clip: Option<f64>,
}

impl OptimSettings {
    pub fn from_hparams(hp: &Hparams) -> Result<Self, TrainError> {
        Ok(Self {
            base_lr: hp.learning_rate,
            schedule: hp.lr_schedule()?,
            beta1: hp.optimizer_beta1,
            beta2: hp.optimizer_beta2,
            weight_decay: hp.optimizer_weight_decay,
            epsilon: 1e-8,
            grad_clip: (hp.grad_clip > 0.0).then_some(hp.grad_clip),
        })
    }
}

/// What one optimizer step did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    pub step: u64,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub clipped: bool,
    pub micro_batches: usize,
}

/// The model, its optimizer and the step counter: the Trainer actor's engine.
pub struct Trainer<B: AutodiffBackend> {
    model: Option<Llama<B>>,
    /// Under bf16-mixed, the model with its linear weights cast once for the current step
    /// ([`Llama::with_bf16_linears`]); dropped whenever the weights change.
    step_casts: Option<Llama<B>>,
    optim: OptimizerAdaptor<AdamW, Llama<B>, B>,
    accum: GradientsAccumulator<Llama<B>>,
    pending: usize,
    step: u64,
    settings: OptimSettings,
    vocab: usize,
}

impl<B: AutodiffBackend> Trainer<B> {
    pub fn new(model: Llama<B>, settings: OptimSettings) -> Self {
        let optim = AdamWConfig::new()
            .with_beta_1(settings.beta1 as f32)
            .with_beta_2(settings.beta2 as f32)
            .with_weight_decay(settings.weight_decay as f32)
            .with_epsilon(settings.epsilon as f32)
            .init::<B, Llama<B>>();
        let vocab = model.embed_tokens.val().dims()[0];
        let accum = GradientsAccumulator::new();
        Self { model: Some(model), step_casts: None, optim, accum, pending: 0, step: 0, settings, vocab }
    }

    pub fn model(&self) -> &Llama<B> {
        self.model.as_ref().expect("the model is only absent inside step()")
    }

    /// Replaces the model (after averaging slices in); gradients pending are kept.
    pub fn replace_model(&mut self, f: impl FnOnce(Llama<B>) -> Llama<B>) {
        self.step_casts = None;
        if let Some(model) = self.model.take() {
            self.model = Some(f(model));
        }
    }

    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Whether the step's bf16 weight copies are held (made at its first micro-batch).
    pub fn holds_step_casts(&self) -> bool {
        self.step_casts.is_some()
    }

    pub fn settings(&self) -> &OptimSettings {
        &self.settings
    }

    /// The learning rate the next step will use.
    pub fn current_lr(&self) -> f64 {
        self.settings.schedule.lr_at(self.settings.base_lr, self.step)
    }

    /// Clips the accumulated gradients to the global norm, applies AdamW at the scheduled
    /// learning rate, and advances the schedule. A step with no pending gradients is a no-op.
    pub fn step(&mut self) -> Option<StepReport> {
        if self.pending == 0 {
            return None;
        }
        let grads = self.accum.grads();
        let pending = self.pending;
        self.apply_step(grads, pending)
    }

    /// Clips `grads` to the global norm and applies AdamW at the scheduled learning rate;
    /// the step counter advances and pending gradients are dropped.
    fn apply_step(&mut self, mut grads: GradientsParams, micro_batches: usize) -> Option<StepReport> {
        self.step_casts = None;
        let model = self.model.take()?;
        let grad_norm = global_norm::<B>(&model, &grads);
        let clipped = match self.settings.grad_clip {
            Some(max) if grad_norm > max && grad_norm.is_finite() => {
                scale_grads::<B>(&model, &mut grads, max / (grad_norm + 1e-6));
                true
            }
            _ => false,
        };
        let lr = self.current_lr();
        self.model = Some(self.optim.step(lr, model, grads));
        let report = StepReport { step: self.step, lr, grad_norm, clipped, micro_batches };
        self.step += 1;
        self.pending = 0;
        self.accum = GradientsAccumulator::new();
        Some(report)
    }

    /// The optimizer's state, for checkpoints.
    pub fn optimizer_record(&self) -> <OptimizerAdaptor<AdamW, Llama<B>, B> as Optimizer<Llama<B>, B>>::Record {
        self.optim.to_record()
    }

    /// Restores a checkpoint's optimizer state and step.
    pub fn restore(
        &mut self,
        record: <OptimizerAdaptor<AdamW, Llama<B>, B> as Optimizer<Llama<B>, B>>::Record,
        step: u64,
    ) {
        let optim = std::mem::replace(&mut self.optim, AdamWConfig::new().init::<B, Llama<B>>());
        self.optim = optim.load_record(record);
        self.step_casts = None;
        self.step = step;
        self.pending = 0;
        self.accum = GradientsAccumulator::new();
    }
}

impl<B: TrainBackend> Trainer<B> {
    /// Forward and backward on one micro-batch; gradients add up until [`Self::step`].
    /// Returns the micro-batch's mean loss.
    pub fn accumulate(&mut self, batch: TokenBatch<'_>) -> Result<f32, TrainError> {
        batch.check(self.vocab)?;
        let Some(model) = self.model.as_ref() else { return Ok(f32::NAN) };
        // The model the forward runs: under bf16-mixed, the step's cast copy.
        let forward = if model.compute().bf16_matmul {
            &*self.step_casts.get_or_insert_with(|| model.with_bf16_linears())
        } else {
            model
        };
        let accum = &mut self.accum;
        let mut add = |mut grads: GradientsParams| {
            grads_to_f32::<B>(model, &mut grads);
            accum.accumulate(model, grads);
        };
        if model.compute().recompute_activations {
            // Gradients by stage (head, each block from the last, embedding), each
            // checked and added as it comes.
            let value = crate::recompute::loss_and_grads(
                forward,
                batch,
                |loss| {
                    let value = loss.into_scalar().elem::<f32>();
                    if value.is_finite() { Ok(value) } else { Err(TrainError::NonFiniteLoss(value)) }
                },
                add,
            )?;
            self.pending += 1;
            return Ok(value);
        }
        let loss = causal_lm_loss(forward, batch);
        // The backward is queued before the loss is read back, so a GPU does not sit idle
        // waiting for the host between the two; a non-finite loss's gradients are dropped.
        let backward = loss.backward();
        let value = loss.into_scalar().elem::<f32>();
        if !value.is_finite() {
            return Err(TrainError::NonFiniteLoss(value));
        }
        add(GradientsParams::from_grads(backward, forward));
        self.pending += 1;
        Ok(value)
    }
}

/// Gradients of bf16 weight copies ([`Llama::with_bf16_linears`]) cast to f32 for the f32
/// masters, as the backward of a per-use cast would have; others are left as they are.
pub(crate) fn grads_to_f32<B: AutodiffBackend>(model: &Llama<B>, grads: &mut GradientsParams) {
    for (id, rank) in param_ids(model) {
        if rank != 2 {
            continue;
        }
        if let Some(grad) = grads.remove::<B::InnerBackend, 2>(id) {
            let grad = if grad.dtype() == DType::F32 { grad } else { grad.cast(FloatDType::F32) };
            grads.register(id, grad);
        }
    }
}

use crate::ops::{ModelBackend, TrainBackend};
use burn::tensor::ElementConversion;

/// Collects the ids and ranks of a module's float parameters.
struct ParamIds(Vec<(ParamId, usize)>);

impl<B: Backend> ModuleVisitor<B> for ParamIds {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.push((param.id, D));
    }
}

pub(crate) fn param_ids<B: AutodiffBackend>(model: &Llama<B>) -> Vec<(ParamId, usize)> {
    let mut ids = ParamIds(Vec::new());
    model.visit(&mut ids);
    ids.0
}

/// sqrt of the sum of squares of every gradient (torch's `clip_grad_norm_` total norm),
/// summed on the device and read back once (a read-back per tensor was ~147 host syncs
/// a step at the seed's shape).
fn global_norm<B: AutodiffBackend>(model: &Llama<B>, grads: &GradientsParams) -> f64 {
    let mut total: Option<Tensor<B::InnerBackend, 1>> = None;
    for (id, rank) in param_ids(model) {
        let sq = match rank {
            1 => grads.get::<B::InnerBackend, 1>(id).map(|g| g.square().sum()),
            2 => grads.get::<B::InnerBackend, 2>(id).map(|g| g.square().sum()),
            _ => None,
        };
        if let Some(sq) = sq {
            total = Some(match total {
                Some(t) => t + sq,
                None => sq,
            });
        }
    }
    total.map_or(0.0, |t| t.into_scalar().elem::<f64>()).sqrt()
}

fn scale_grads<B: AutodiffBackend>(model: &Llama<B>, grads: &mut GradientsParams, factor: f64) {
    for (id, rank) in param_ids(model) {
        match rank {
            1 => {
                if let Some(g) = grads.remove::<B::InnerBackend, 1>(id) {
                    grads.register::<B::InnerBackend, 1>(id, g * factor);
                }
            }
            2 => {
                if let Some(g) = grads.remove::<B::InnerBackend, 2>(id) {
                    grads.register::<B::InnerBackend, 2>(id, g * factor);
                }
            }
            _ => {}
        }
    }
}

/// The seed's adaptive sample rate: the share of a window's micro-batches actually trained.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleRate(pub f64);

impl Default for SampleRate {
    fn default() -> Self {
        Self(1.0)
    }
}

impl SampleRate {
    /// After a window: ×0.95 (floor 0.0001) if the window ran out before the batches did,
    /// else ×1.05 (cap 1).
    pub fn adapt(&mut self, window_exhausted: bool) {
        self.0 = if window_exhausted { (self.0 * 0.95).max(MIN_SAMPLE_RATE) } else { (self.0 * 1.05).min(1.0) };
    }
}

/// What a window's training did.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowReport {
    pub micro_batches: usize,
    pub skipped: usize,
    /// Mean loss over trained micro-batches (NaN when none trained).
    pub mean_loss: f32,
    pub tokens: usize,
    /// The window ended before the batches did.
    pub exhausted: bool,
    pub step: Option<StepReport>,
    pub sample_rate: f64,
}

/// Trains on `batches` until they run out or `window_ended()` says so (checked between
/// micro-batches — cheap, never mid-batch), sampling each batch with the current rate
/// (`coin()` in [0, 1)), then takes one optimizer step and adapts the sample rate.
pub fn train_window<'a, B: TrainBackend>(
    trainer: &mut Trainer<B>,
    batches: impl IntoIterator<Item = TokenBatch<'a>>,
    sample_rate: &mut SampleRate,
    coin: impl FnMut() -> f64,
    window_ended: impl Fn() -> bool,
) -> Result<WindowReport, TrainError> {
    let mut report = accumulate_window(trainer, batches, sample_rate, coin, window_ended)?;
    report.step = trainer.step();
    Ok(report)
}

/// [`train_window`] without the step: the gradients stay accumulated in the trainer (the
/// gradient exchange sends them; [`Trainer::take_gradient`]).
pub fn accumulate_window<'a, B: TrainBackend>(
    trainer: &mut Trainer<B>,
    batches: impl IntoIterator<Item = TokenBatch<'a>>,
    sample_rate: &mut SampleRate,
    mut coin: impl FnMut() -> f64,
    window_ended: impl Fn() -> bool,
) -> Result<WindowReport, TrainError> {
    let (mut trained, mut skipped, mut tokens, mut loss_sum) = (0usize, 0usize, 0usize, 0f64);
    let mut exhausted = false;
    for batch in batches {
        if window_ended() {
            exhausted = true;
            break;
        }
        if coin() >= sample_rate.0 {
            skipped += 1;
            continue;
        }
        loss_sum += f64::from(trainer.accumulate(batch)?);
        tokens += batch.target_tokens();
        trained += 1;
    }
    sample_rate.adapt(exhausted);
    Ok(WindowReport {
        micro_batches: trained,
        skipped,
        mean_loss: if trained > 0 { (loss_sum / trained as f64) as f32 } else { f32::NAN },
        tokens,
        exhausted,
        step: None,
        sample_rate: sample_rate.0,
    })
}

/// Mean loss per target token over `batches` on the inner (non-autodiff) model: the
/// held-out evaluation. Every batch is checked as in training; NaN when nothing counts.
pub fn evaluate<B: TrainBackend>(model: &Llama<B>, batches: &[TokenBatch<'_>]) -> Result<f32, TrainError> {
    let vocab = model.embed_tokens.val().dims()[0];
    let valid = inner(model).for_inference();
    let (mut sum, mut count) = (0f64, 0usize);
    for batch in batches {
        batch.check(vocab)?;
        let targets = batch.target_tokens();
        if targets == 0 {
            continue;
        }
        let loss = causal_lm_loss(&valid, *batch).into_scalar().elem::<f32>();
        sum += f64::from(loss) * targets as f64;
        count += targets;
    }
    Ok(if count == 0 { f32::NAN } else { (sum / count as f64) as f32 })
}

/// Autodiff model to its inner backend (evaluation, checkpoints).
pub fn inner<B: AutodiffBackend>(model: &Llama<B>) -> Llama<B::InnerBackend> {
    model.valid()
}
