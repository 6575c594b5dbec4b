//! The data pipeline feeding the trainer, window after window, as a miner does: the
//! synthetic source (the devnet's), the byte tokenizer, the seed's batching, and the
//! window-bounded loop. The loss must fall.

use burn::backend::{Autodiff, NdArray};
use tessera_core::hparams::LrSchedule;
use tessera_data::{PageSelection, SyntheticSource, TextTokenizer, WindowData, WindowSpec};
use tessera_model::LlamaConfig;
use tessera_model::init::initialize;
use tessera_model::train::{OptimSettings, SampleRate, TokenBatch, Trainer, train_window};

type B = Autodiff<NdArray<f32>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_llama_learns_the_synthetic_source_window_after_window() {
    let tokenizer = TextTokenizer::load("bytes").unwrap();
    let source = SyntheticSource::new(1);
    let config = LlamaConfig::new(tokenizer.vocab_size(), 64, 128, 2, 4, 2, 64);
    let model = initialize::<B>(&config, 1, &Default::default()).unwrap();
    let settings = OptimSettings {
        base_lr: 3e-3,
        schedule: LrSchedule::Cosine { t_max: 100, eta_min: 3e-4, warmup_steps: 2 },
        beta1: 0.9,
        beta2: 0.95,
        weight_decay: 0.1,
        epsilon: 1e-8,
        grad_clip: Some(1.0),
    };
    let mut trainer = Trainer::new(model, settings);
    let mut rate = SampleRate::default();
    let mut losses = Vec::new();
    for window in 0..12 {
        let spec = WindowSpec {
            selection: PageSelection::Uid(7),
            window,
            n_pages: 1,
            seq_len: 48,
            batch_size: 4,
            max_concurrent_fetches: 2,
        };
        let data = WindowData::load(&source, &tokenizer, &spec).await.unwrap();
        assert!(!data.batches.is_empty());
        // A few micro-batches a window keeps the test quick in a debug build.
        let batches = data.batches.iter().take(3).map(|b| TokenBatch {
            tokens: &b.tokens,
            loss_mask: &b.loss_mask,
            batch_size: b.batch_size,
            seq_len: b.seq_len,
        });
        let report = train_window(&mut trainer, batches, &mut rate, || 0.0, || false).unwrap();
        assert!(report.step.is_some() && report.tokens > 0);
        losses.push(report.mean_loss);
    }
    let first = losses[0];
    let last = losses[losses.len() - 2..].iter().sum::<f32>() / 2.0;
    assert!(first > 4.5, "an untrained byte model starts near ln(258) = 5.55: {first}");
    assert!(last < 0.7 * first, "loss did not fall: {losses:?}");
}
