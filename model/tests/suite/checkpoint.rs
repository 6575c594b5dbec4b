//! Checkpoints: resuming is bit-identical to never stopping, damaged or foreign files are
//! refused with their own error, and a failed write never costs the checkpoint before it.

use std::path::Path;

use burn::backend::{Autodiff, NdArray};
use tessera_core::hparams::LrSchedule;
use tessera_model::LlamaConfig;
use tessera_model::checkpoint::{
    CheckpointError, CheckpointStore, FORMAT_VERSION, HEADER_LEN, inspect_checkpoint, load_checkpoint,
    read_checkpoint_meta, save_checkpoint,
};
use tessera_model::init::initialize;
use tessera_model::train::{OptimSettings, TokenBatch, Trainer};

type B = Autodiff<NdArray<f32>>;

fn config() -> LlamaConfig {
    LlamaConfig::new(32, 16, 32, 2, 4, 2, 32)
}

/// Warm-up then cosine, weight decay and clipping: every piece of state matters.
fn settings() -> OptimSettings {
    OptimSettings {
        base_lr: 3e-3,
        schedule: LrSchedule::Cosine { t_max: 20, eta_min: 3e-4, warmup_steps: 3 },
        beta1: 0.9,
        beta2: 0.95,
        weight_decay: 0.1,
        epsilon: 1e-8,
        grad_clip: Some(0.5),
    }
}

fn trainer() -> Trainer<B> {
    Trainer::new(initialize::<B>(&config(), 11, &Default::default()).unwrap(), settings())
}

/// Step `step`'s two micro-batches of 2x8 tokens.
fn batches(step: u64) -> Vec<Vec<u32>> {
    (0..2u64).map(|m| (0..16u64).map(|i| ((step * 13 + m * 7 + i * (step % 3 + 1)) % 32) as u32).collect()).collect()
}

/// Trains steps `from..to`; returns each micro-batch's loss.
fn train(trainer: &mut Trainer<B>, from: u64, to: u64) -> Vec<f32> {
    let mask = vec![true; 16];
    let mut losses = Vec::new();
    for step in from..to {
        assert_eq!(trainer.step_count(), step);
        for tokens in batches(step) {
            let batch = TokenBatch { tokens: &tokens, loss_mask: &mask, batch_size: 2, seq_len: 8 };
            losses.push(trainer.accumulate(batch).unwrap());
        }
        trainer.step().unwrap();
    }
    losses
}

fn param_bits(trainer: &Trainer<B>) -> Vec<Vec<u32>> {
    let model = trainer.model();
    (0..model.num_params()).map(|i| model.param_values(i).unwrap().iter().map(|v| v.to_bits()).collect()).collect()
}

fn bits(losses: &[f32]) -> Vec<u32> {
    losses.iter().map(|v| v.to_bits()).collect()
}

fn load(path: &Path) -> Result<(Trainer<B>, tessera_model::checkpoint::CheckpointMeta), CheckpointError> {
    load_checkpoint::<B>(path, &config(), settings(), &Default::default())
}

/// A checkpoint of a trainer that has taken 3 steps, in a fresh directory.
fn saved() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt");
    let mut t = trainer();
    train(&mut t, 0, 3);
    save_checkpoint(&path, &t, &config(), 42).unwrap();
    (dir, path)
}

#[test]
fn resuming_from_a_checkpoint_is_bit_identical_to_never_stopping() {
    let (n, m) = (4, 4);
    let mut straight = trainer();
    train(&mut straight, 0, n);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt");
    let meta = save_checkpoint(&path, &straight, &config(), 7).unwrap();
    assert_eq!((meta.step, meta.window, meta.format_version), (n, 7, FORMAT_VERSION));
    let lr_at_n = straight.current_lr();
    // Saving does not disturb the trainer: `straight` goes on as if nothing happened.
    let straight_losses = train(&mut straight, n, n + m);

    let (mut resumed, meta) = load(&path).unwrap();
    assert_eq!((meta.step, meta.window), (n, 7));
    assert_eq!(meta.config, config());
    assert_eq!(resumed.step_count(), n);
    assert_eq!(resumed.current_lr(), lr_at_n, "the LR schedule resumes at step {n}");
    let resumed_losses = train(&mut resumed, n, n + m);

    assert_eq!(bits(&resumed_losses), bits(&straight_losses), "losses differ after resuming");
    assert_eq!(param_bits(&resumed), param_bits(&straight), "parameters differ after resuming");
}

fn trainer_at(step: u64) -> Trainer<B> {
    let mut t = trainer();
    train(&mut t, 0, step);
    t
}

#[test]
fn resuming_without_the_optimizer_state_would_differ() {
    // Guards the test above: a model-only restore (fresh AdamW at the same step) diverges,
    // so bit-identity there really comes from the moments being restored.
    let (_dir, path) = saved();
    let (restored, _) = load(&path).unwrap();
    let mut with_state = restored;
    let mut fresh_optimizer = Trainer::new(with_state.model().clone(), settings());
    fresh_optimizer.restore(fresh_optimizer.optimizer_record(), 3);
    train(&mut with_state, 3, 4);
    train(&mut fresh_optimizer, 3, 4);
    assert_ne!(param_bits(&with_state), param_bits(&fresh_optimizer));
}

#[test]
fn a_truncated_file_is_rejected_as_truncated() {
    let (_dir, path) = saved();
    let bytes = std::fs::read(&path).unwrap();
    for keep in [bytes.len() - 1, bytes.len() / 2, HEADER_LEN as usize, 50, 3] {
        std::fs::write(&path, &bytes[..keep]).unwrap();
        let err = load(&path).err().unwrap();
        assert!(matches!(err, CheckpointError::Truncated { .. }), "kept {keep} bytes: {err}");
    }
}

#[test]
fn a_flipped_bit_anywhere_is_rejected_as_corrupt() {
    let (_dir, path) = saved();
    let bytes = std::fs::read(&path).unwrap();
    // In the header's lengths, a parameter, AdamW's moments (mid-file), and the manifest.
    for at in [20, HEADER_LEN as usize + 5, bytes.len() / 2, bytes.len() - 10] {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x10;
        std::fs::write(&path, &damaged).unwrap();
        let err = load(&path).err().unwrap();
        assert!(matches!(err, CheckpointError::Corrupt { .. }), "bit flipped at {at}: {err}");
    }
}

#[test]
fn wrong_magic_and_unknown_versions_are_rejected() {
    let (dir, path) = saved();
    let bytes = std::fs::read(&path).unwrap();
    let mut damaged = bytes.clone();
    damaged[0] = b'X';
    std::fs::write(&path, &damaged).unwrap();
    assert!(matches!(load(&path).err().unwrap(), CheckpointError::BadMagic { .. }));

    let other = dir.path().join("not-a-checkpoint");
    std::fs::write(&other, b"{\"hello\": \"world\"}").unwrap();
    assert!(matches!(load(&other).err().unwrap(), CheckpointError::BadMagic { .. }));

    let mut newer = bytes;
    newer[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    std::fs::write(&path, &newer).unwrap();
    let err = load(&path).err().unwrap();
    assert!(matches!(err, CheckpointError::UnsupportedVersion { found: 2, supported: 1, .. }), "{err}");
}

#[test]
fn a_checkpoint_of_another_model_is_rejected_by_fingerprint() {
    let (_dir, path) = saved();
    // Same parameter shapes, another function: only the fingerprint tells them apart.
    let other = LlamaConfig { rope_theta: 500_000.0, ..config() };
    let err = load_checkpoint::<B>(&path, &other, settings(), &Default::default()).err().unwrap();
    assert!(matches!(err, CheckpointError::FingerprintMismatch { .. }), "{err}");
    let err = read_checkpoint_meta(&path, &LlamaConfig { num_hidden_layers: 1, ..config() }).err().unwrap();
    assert!(matches!(err, CheckpointError::FingerprintMismatch { .. }), "{err}");
    assert_eq!(read_checkpoint_meta(&path, &config()).unwrap().step, 3);
}

#[test]
fn a_failed_write_leaves_the_previous_checkpoint_intact() {
    // A directory in the way of the target: the rename fails, the directory is untouched
    // and no temp file is left behind.
    let dir = tempfile::tempdir().unwrap();
    let blocked = dir.path().join("ckpt");
    std::fs::create_dir(&blocked).unwrap();
    std::fs::write(blocked.join("keep"), b"x").unwrap();
    let err = save_checkpoint(&blocked, &trainer_at(1), &config(), 1).err().unwrap();
    assert!(matches!(err, CheckpointError::Io { .. }), "{err}");
    assert_eq!(std::fs::read(blocked.join("keep")).unwrap(), b"x");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "a temp file was left behind");

    // In a store: a save that cannot rotate leaves `latest` as it was, still loadable.
    let store_dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::new(store_dir.path());
    let first = trainer_at(2);
    store.save(&first, &config(), 5).unwrap();
    let before = std::fs::read(store.latest_path()).unwrap();
    std::fs::create_dir(store.previous_path()).unwrap();
    std::fs::write(store.previous_path().join("in-the-way"), b"x").unwrap();
    assert!(store.save(&trainer_at(3), &config(), 6).is_err());
    assert_eq!(std::fs::read(store.latest_path()).unwrap(), before);
    let (loaded, meta) = store.load::<B>(&config(), settings(), &Default::default()).unwrap().unwrap();
    assert_eq!((meta.step, meta.window), (2, 5));
    assert_eq!(param_bits(&loaded), param_bits(&first));
    let leftovers: Vec<_> = std::fs::read_dir(store_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A store whose directory cannot be created (a file in the way) writes nothing.
    let file_in_the_way = store_dir.path().join("file");
    std::fs::write(&file_in_the_way, b"x").unwrap();
    let err = CheckpointStore::new(&file_in_the_way).save(&first, &config(), 7).err().unwrap();
    assert!(matches!(err, CheckpointError::Io { .. }), "{err}");
    assert_eq!(std::fs::read(&file_in_the_way).unwrap(), b"x");
}

#[test]
fn the_store_keeps_the_previous_checkpoint_and_falls_back_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::new(dir.path().join("ckpts"));
    let load = || store.load::<B>(&config(), settings(), &Default::default());
    assert!(load().unwrap().is_none(), "an empty store has nothing to resume");

    let mut t = trainer();
    train(&mut t, 0, 1);
    store.save(&t, &config(), 100).unwrap();
    let at_one = param_bits(&t);
    train(&mut t, 1, 2);
    store.save(&t, &config(), 101).unwrap();
    assert_eq!(load().unwrap().unwrap().1.window, 101);
    assert_eq!(read_checkpoint_meta(&store.previous_path(), &config()).unwrap().window, 100);

    // The latest is damaged: resume from the previous one.
    let mut bytes = std::fs::read(store.latest_path()).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(store.latest_path(), &bytes).unwrap();
    let (resumed, meta) = load().unwrap().unwrap();
    assert_eq!((meta.step, meta.window), (1, 100));
    assert_eq!(param_bits(&resumed), at_one);

    // Both damaged: the latest's error, never a silent load.
    std::fs::write(store.previous_path(), b"TSRACKPT").unwrap();
    assert!(matches!(load().err().unwrap(), CheckpointError::Corrupt { .. }));

    // Only `previous` (a crash between the two renames of a save): it is used.
    std::fs::remove_file(store.latest_path()).unwrap();
    save_checkpoint(&store.previous_path(), &t, &config(), 101).unwrap();
    assert_eq!(load().unwrap().unwrap().1.step, 2);
}

#[test]
fn inspection_describes_a_checkpoint_and_names_a_damaged_section() {
    let (dir, path) = saved();
    let report = inspect_checkpoint(&path).unwrap();
    assert_eq!((report.step, report.window, report.format_version), (3, 42, FORMAT_VERSION));
    assert_eq!(report.config, config());
    let layout = tessera_core::model::ParamLayout::llama(&config().shape()).unwrap();
    assert_eq!((report.tensors, report.parameters), (layout.len(), layout.total_numel()));
    assert_eq!(report.fingerprint, layout.fingerprint().to_string());
    assert_eq!(report.tensors_with_optimizer_state, layout.len(), "every tensor has stepped");
    // Values and two moments per tensor, each 4 bytes a value.
    assert_eq!(report.sections_verified, 3 * layout.len());
    assert_eq!(report.section_bytes, 3 * 4 * layout.total_numel() as u64);
    assert_eq!(report.file_bytes, std::fs::metadata(&path).unwrap().len());

    // A flipped bit in a section is found and named; the header and manifest still read.
    let bytes = std::fs::read(&path).unwrap();
    let mut damaged = bytes.clone();
    damaged[HEADER_LEN as usize + 5] ^= 0x10;
    std::fs::write(&path, &damaged).unwrap();
    let err = inspect_checkpoint(&path).unwrap_err().to_string();
    assert!(err.contains("is corrupt") && err.contains("values") && err.contains("ckpt"), "{err}");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(inspect_checkpoint(&path), Err(CheckpointError::Truncated { .. })));
    let missing = dir.path().join("missing.ckpt");
    let err = inspect_checkpoint(&missing).unwrap_err().to_string();
    assert!(err.contains("missing.ckpt"), "{err}");
}

#[test]
fn a_checkpoint_exports_to_an_hf_directory_in_f32_exactly_and_in_bf16_rounded() {
    use tessera_model::checkpoint::export_checkpoint;
    use tessera_model::hf::{ExportDtype, import_hf};
    let (dir, path) = saved();
    let (expected, _) = load(&path).unwrap();
    let expected = param_bits(&expected);

    let f32_dir = dir.path().join("hf-f32");
    let report = export_checkpoint(&path, &f32_dir, ExportDtype::F32).unwrap();
    assert_eq!(report.window, 42);
    let (model, imported_config) = import_hf::<NdArray<f32>>(&f32_dir, &Default::default()).unwrap();
    assert_eq!(imported_config, config());
    let got: Vec<Vec<u32>> =
        (0..model.num_params()).map(|i| model.param_values(i).unwrap().iter().map(|v| v.to_bits()).collect()).collect();
    assert_eq!(got, expected, "f32 export is exact");

    let bf16_dir = dir.path().join("hf-bf16");
    export_checkpoint(&path, &bf16_dir, ExportDtype::Bf16).unwrap();
    let config_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bf16_dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config_json["torch_dtype"], "bfloat16");
    let f32_len = std::fs::metadata(f32_dir.join("model.safetensors")).unwrap().len();
    let bf16_len = std::fs::metadata(bf16_dir.join("model.safetensors")).unwrap().len();
    assert!(bf16_len < f32_len * 6 / 10, "half the bytes: {bf16_len} vs {f32_len}");
    let (model, _) = import_hf::<NdArray<f32>>(&bf16_dir, &Default::default()).unwrap();
    for (i, want) in expected.iter().enumerate() {
        for (got, want) in model.param_values(i).unwrap().iter().zip(want) {
            let want = f32::from_bits(*want);
            assert!((got - want).abs() <= want.abs() / 128.0 + 1e-30, "param {i}: {got} vs {want}");
        }
    }

    // A damaged checkpoint is not exported.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[HEADER_LEN as usize + 5] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    let err = export_checkpoint(&path, &dir.path().join("hf-bad"), ExportDtype::F32).unwrap_err();
    assert!(err.to_string().contains("is corrupt"), "{err}");
}
