//! `tessera eval`: a model on disk against the held-out pages, with a progress bar.

use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use tessera_core::config::DataSourceSpec;
use tessera_core::hparams::Hparams;
use tessera_core::model::Device;
use tessera_data::{
    BYTE_VOCAB_SIZE, HfRowsConfig, HfRowsSource, LocalFilesSource, PageSelection, PageSource, SyntheticSource,
    TextTokenizer, WindowData, WindowSpec,
};
use tessera_model::evaluate::{ModelFile, evaluate_file, model_config};

use crate::cli::EvalArgs;

pub async fn run(args: EvalArgs) -> Result<()> {
    let file = match (&args.checkpoint, &args.hf) {
        (Some(path), _) => ModelFile::Checkpoint(path.clone()),
        (None, Some(dir)) => ModelFile::Hf(dir.clone()),
        (None, None) => bail!("pass --checkpoint PATH or --hf DIR"),
    };
    let device = Device::parse(&args.device)
        .ok_or_else(|| anyhow!("--device {:?}: expected cpu, cuda or cuda:N", args.device))?;
    match &file {
        ModelFile::Checkpoint(path) if !path.exists() => {
            bail!("{}: no such file (a miner keeps its checkpoints in <state_dir>/checkpoints/)", path.display())
        }
        ModelFile::Hf(dir) if !dir.join("config.json").is_file() => {
            bail!("{}: not a Hugging Face model directory (no config.json)", dir.display())
        }
        _ => {}
    }
    let described = match &file {
        ModelFile::Checkpoint(p) | ModelFile::Hf(p) => p.display().to_string(),
    };
    let config = {
        let file = file.clone();
        tokio::task::spawn_blocking(move || model_config(&file)).await??
    };
    let hparams = Hparams::builtin()?;
    let shape = config.shape();
    let tokenizer_spec = args.tokenizer.clone().unwrap_or_else(|| {
        if shape.vocab_size == BYTE_VOCAB_SIZE { "bytes".to_owned() } else { hparams.tokenizer_name.clone() }
    });
    let tokenizer =
        TextTokenizer::load(&tokenizer_spec).with_context(|| format!("the tokenizer {tokenizer_spec:?}"))?;
    if tokenizer.vocab_size() > shape.vocab_size {
        bail!(
            "the tokenizer {tokenizer_spec:?} has {} tokens but the model's vocabulary is {}: pass the model's --tokenizer",
            tokenizer.vocab_size(),
            shape.vocab_size
        );
    }
    let source: Arc<dyn PageSource> = match DataSourceSpec::parse(&args.data) {
        Some(DataSourceSpec::Synthetic) => Arc::new(SyntheticSource::new(args.data_seed)),
        Some(DataSourceSpec::HuggingFace) => Arc::new(HfRowsSource::new(HfRowsConfig::default())?),
        Some(DataSourceSpec::Local(path)) => Arc::new(LocalFilesSource::new(path)),
        None => bail!("--data {:?}: expected huggingface, synthetic or a path", args.data),
    };
    let seq_len = args.seq_len.unwrap_or(hparams.sequence_length).min(shape.max_position_embeddings).max(2);
    let pages = source.held_out_pages(args.pages.max(1)).await.context("the held-out pages")?;
    let spec = WindowSpec {
        selection: PageSelection::Random,
        window: 0,
        n_pages: pages.len(),
        seq_len,
        batch_size: args.batch_size.max(1),
        max_concurrent_fetches: 4,
    };
    let mut data = WindowData::load_pages(source.as_ref(), &tokenizer, &spec, pages).await?;
    if args.max_batches > 0 {
        data.batches.truncate(args.max_batches);
    }
    if data.batches.is_empty() {
        bail!("the held-out pages of {:?} gave no micro-batch of {seq_len} tokens", args.data);
    }
    let n_batches = data.batches.len();
    let tokens: usize = data.batches.iter().map(|b| b.real_tokens()).sum();
    let bar = tessera_actors::progress::bar(n_batches as u64, format!("evaluating {described}"), false);
    let worker_bar = bar.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let batches = tessera_actors::window::token_batches(&data.batches);
        evaluate_file(&file, &device, &batches, &mut |done| worker_bar.set_position(done as u64))
    })
    .await??;
    bar.finish_and_clear();
    let perplexity = outcome.loss.exp();
    if args.json {
        let report = serde_json::json!({
            "model": described,
            "loss": outcome.loss,
            "perplexity": perplexity,
            "tokens": tokens,
            "micro_batches": n_batches,
            "pages": args.pages,
            "seq_len": seq_len,
            "data": args.data,
            "tokenizer": tokenizer_spec,
            "backend": outcome.backend,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{described}: held-out loss {:.4} (perplexity {perplexity:.2}) over {tokens} tokens in {n_batches} micro-batches of {} x {seq_len} from {} held-out pages of {} ({})",
            outcome.loss,
            args.batch_size.max(1),
            args.pages.max(1),
            args.data,
            outcome.backend
        );
    }
    Ok(())
}
