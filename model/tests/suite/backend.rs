//! Backend selection: `--device cpu` runs generic training code on the build's CPU
//! backend; `--device cuda` without a usable GPU (or without the `cuda` feature) is a clear
//! error, never a panic.

use tessera_core::hparams::LrSchedule;
use tessera_core::model::Device;
use tessera_model::LlamaConfig;
use tessera_model::backend::{
    BackendError, BackendInfo, CPU_BACKEND, CUDA_BUILT, FloatType, MatmulType, WithBackend, dispatch, dispatch_with,
    probe_cuda,
};
use tessera_model::init::initialize;
use tessera_model::ops::TrainBackend;
use tessera_model::train::{OptimSettings, TokenBatch, Trainer};

/// One training step of a tiny model: exercises autodiff and AdamW on the chosen backend.
struct TrainOneStep;

impl WithBackend for TrainOneStep {
    type Output = (BackendInfo, String, f32, u64);

    fn run<B: TrainBackend>(self, device: B::Device, info: &BackendInfo) -> Self::Output {
        let config = LlamaConfig::new(16, 8, 16, 1, 2, 2, 8);
        let model = initialize::<B>(&config, 5, &device).expect("the tiny shape is valid");
        let settings = OptimSettings {
            base_lr: 1e-3,
            schedule: LrSchedule::Cosine { t_max: 10, eta_min: 1e-4, warmup_steps: 0 },
            beta1: 0.9,
            beta2: 0.95,
            weight_decay: 0.0,
            epsilon: 1e-8,
            grad_clip: Some(1.0),
        };
        let mut trainer = Trainer::new(model, settings);
        let tokens: Vec<u32> = (0..16).map(|i| i % 16).collect();
        let mask = vec![true; 16];
        let batch = TokenBatch { tokens: &tokens, loss_mask: &mask, batch_size: 2, seq_len: 8 };
        let loss = trainer.accumulate(batch).expect("a valid batch");
        trainer.step().expect("gradients were pending");
        (info.clone(), B::name(&device), loss, trainer.step_count())
    }
}

#[cfg(any(feature = "ndarray", feature = "flex", feature = "candle"))]
#[test]
fn cpu_dispatch_runs_a_generic_training_step() {
    let (info, burn_name, loss, steps) = dispatch(&Device::Cpu, TrainOneStep).expect("every CPU build can train");
    assert_eq!(info.device, Device::Cpu);
    assert_eq!(info.backend, CPU_BACKEND);
    assert_eq!((info.float, info.matmul), (FloatType::F32, MatmulType::F32));
    assert!(info.gpu.is_none());
    assert!(burn_name.starts_with("autodiff<"), "{burn_name}");
    // Near ln(16) = 2.77 for a freshly initialised model.
    assert!(loss.is_finite() && (2.0..3.5).contains(&loss), "{loss}");
    assert_eq!(steps, 1);
}

#[cfg(any(feature = "ndarray", feature = "flex", feature = "candle"))]
#[test]
fn cpu_rejects_bf16() {
    let err = dispatch_with(&Device::Cpu, FloatType::Bf16, TrainOneStep).unwrap_err();
    assert!(matches!(err, BackendError::FloatTypeUnsupported { device: Device::Cpu, float: FloatType::Bf16, .. }));
}

/// burn fixes a device's float type at its first use, process-wide; dispatch must refuse a
/// device fixed to another type rather than silently train in it. The check runs in a
/// child process (this test binary, this test only), where nothing else touched the CPU.
#[cfg(any(feature = "ndarray", feature = "flex", feature = "candle"))]
#[test]
fn cpu_refuses_a_device_fixed_to_another_float_type() {
    use burn::tensor::{FloatDType, IntDType, set_default_dtypes};
    use tessera_model::backend::CpuBackend;

    const CHILD: &str = "TESSERA_BACKEND_TEST_CHILD";
    // The harness names it by its module in the `suite` binary.
    let name = "backend::cpu_refuses_a_device_fixed_to_another_float_type";
    if std::env::var_os(CHILD).is_some() {
        set_default_dtypes::<CpuBackend>(&Default::default(), FloatDType::F64, IntDType::I64).expect("first use");
        let err = dispatch(&Device::Cpu, TrainOneStep).unwrap_err();
        assert_eq!(
            err,
            BackendError::FloatTypeFixed { device: Device::Cpu, float: FloatType::F32, actual: "f64".into() }
        );
        return;
    }
    let exe = std::env::current_exe().expect("the test binary");
    let out = std::process::Command::new(exe)
        .args(["--exact", name, "--test-threads=1", "--nocapture"])
        .env(CHILD, "1")
        .output()
        .expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("1 passed"), "{stdout}");
}

/// Whether this machine has a usable CUDA GPU 0 (the device machine does; CI does not).
/// What a machine without a usable CUDA setup answers: no driver, a failing one, or
/// NVRTC or CUDA's headers missing.
fn is_missing_cuda(err: &BackendError) -> bool {
    matches!(
        err,
        BackendError::NoDriver { .. }
            | BackendError::DriverError { .. }
            | BackendError::NoNvrtc { .. }
            | BackendError::NoCudaHeaders { .. }
    )
}

fn gpu_here() -> bool {
    probe_cuda(0).is_ok()
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_without_the_feature_names_the_cuda_build() {
    for device in [Device::Cuda(0), Device::Cuda(3)] {
        let err = dispatch(&device, TrainOneStep).unwrap_err();
        assert_eq!(err, BackendError::CudaNotBuilt { device });
        let message = err.to_string();
        eprintln!("{message}");
        assert!(message.contains(&format!("--device {device}")), "{message}");
        assert!(message.contains("--features cuda"), "{message}");
    }
    const { assert!(!CUDA_BUILT) };
}

#[test]
fn probe_without_a_gpu_is_an_error_not_a_panic() {
    if gpu_here() {
        let gpu = probe_cuda(0).expect("probed above");
        assert!(gpu.device_count >= 1 && !gpu.name.is_empty());
        let count = gpu.device_count;
        let err = probe_cuda(count).unwrap_err();
        assert_eq!(err, BackendError::NoSuchGpu { device: Device::Cuda(count), index: count, count });
        return;
    }
    let err = probe_cuda(0).unwrap_err();
    assert!(is_missing_cuda(&err), "{err:?}");
    let message = err.to_string();
    eprintln!("{message}");
    assert!(message.starts_with("--device cuda:0: "), "{message}");
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_dispatch_probes_before_burn_touches_the_driver() {
    const { assert!(CUDA_BUILT) };
    if gpu_here() {
        let (info, burn_name, loss, steps) = dispatch(&Device::Cuda(0), TrainOneStep).expect("a GPU is here");
        assert_eq!((info.backend, info.float), ("cuda", FloatType::F32));
        assert!(info.gpu.is_some());
        assert!(burn_name.contains("cuda"), "{burn_name}");
        assert!(loss.is_finite());
        assert_eq!(steps, 1);
        return;
    }
    // burn-cuda would panic on its device thread here; the probe must answer first.
    for (device, float) in [(Device::Cuda(0), FloatType::F32), (Device::Cuda(1), FloatType::Bf16)] {
        let err = dispatch_with(&device, float, TrainOneStep).unwrap_err();
        assert!(is_missing_cuda(&err), "{err:?}");
        assert!(err.to_string().starts_with(&format!("--device {device}: ")), "{err}");
    }
}
