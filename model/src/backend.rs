//! Backend selection: the trainer is generic over `B: AutodiffBackend`; the miner picks the
//! concrete backend once, at start-up, from `--device`, and runs its generic code with it
//! through [`dispatch`] and a [`WithBackend`] job.
//!
//! - `cpu` → `Autodiff<`[`CpuBackend`]`>`, the CPU backend chosen by cargo feature
//!   ([`CPU_BACKEND`]; `ndarray` by default: see the crate's `Cargo.toml`).
//! - `cuda:N` → `Autodiff<burn::backend::Cuda>` on GPU `N`, in builds with the `cuda`
//!   feature. burn-cuda 0.21 *panics* when it cannot load the driver, so the GPU is probed
//!   first ([`probe_cuda`]: `dlopen("libcuda.so.1")`, `cuInit`, `cuDeviceGetCount`, and
//!   NVRTC, which burn-cuda compiles its kernels with) and a missing GPU is a
//!   [`BackendError`], never a panic.
//!
//! Precision ([`FloatType`], [`MatmulType`]). The seed trains with torch autocast: fp32
//! master weights and optimizer state, bf16 matmuls. burn 0.21 has no autocast: a
//! backend's float type is the type of every float tensor, parameters and AdamW moments
//! included. So:
//! - by default every backend stores fp32; on CUDA GPUs of compute capability ≥ 8.0,
//!   burn's tensor-core matmul kernels (cubek-matmul's `adjust_dtypes`) take fp32 inputs
//!   as TF32 with fp32 accumulation — like torch with `allow_tf32`: reduced-precision
//!   products (10-bit mantissa, finer than bf16's 7), fp32 everything else. This is
//!   [`MatmulType::Tf32`], what `--device cuda` gets (autotune may still pick a plain
//!   fp32 kernel for a shape);
//! - [`FloatType::Bf16`] (`Cuda<bf16>`, opt-in through [`dispatch_with`], sm_80+) stores
//!   *everything* in bf16: half the memory and half the bytes moved, but with no fp32
//!   master copy AdamW updates smaller than half a bf16 step are lost and the slices
//!   carry bf16-rounded values. It is for measurement, not the network's default.
//!
//! True autocast (fp32 parameters, bf16 products) would cast inside the model's `linear`
//! (`Tensor::cast(FloatDType::BF16)`, which burn's autodiff differentiates); that is a
//! model change, not a backend choice.
//!
//! burn 0.21 keeps each device's default float type in a process-wide registry, fixed by
//! the first backend that touches the device (`Cuda<f32>` and `Cuda<bf16>` share
//! `CudaDevice`; `NdArray<f32>` and `NdArray<f64>` share the CPU): a later backend with
//! another float type silently gets the first one's. [`dispatch_with`] checks the
//! device's setting and returns [`BackendError::FloatTypeFixed`] instead.

use std::fmt;

use crate::ops::{ModelBackend, TrainBackend};
#[cfg(any(feature = "ndarray", feature = "flex", feature = "candle", feature = "cuda"))]
use burn::tensor::backend::Backend;
#[cfg(any(feature = "ndarray", feature = "flex", feature = "candle", feature = "cuda"))]
use burn::tensor::{FloatDType, get_device_settings};
use tessera_core::model::BackendCaps;
use tessera_core::model::Device;
use thiserror::Error;

/// The CPU backend of this build: the one of the enabled CPU features that is not the
/// default (`flex`, then `candle`), else `ndarray` (the default; with system OpenBLAS
/// matmuls under the `openblas` feature). A non-default feature wins so that
/// `--features flex` selects flex without `--no-default-features`.
#[cfg(feature = "flex")]
pub type CpuBackend = burn::backend::Flex<f32>;
/// (burn 0.21 deprecates burn-candle; it stays selectable for comparison only.)
#[cfg(all(feature = "candle", not(feature = "flex")))]
#[allow(deprecated)]
pub type CpuBackend = burn::backend::Candle<f32>;
#[cfg(all(feature = "ndarray", not(any(feature = "flex", feature = "candle"))))]
pub type CpuBackend = burn::backend::NdArray<f32>;

/// Name of [`CpuBackend`], for logs and the benchmark.
#[cfg(feature = "flex")]
pub const CPU_BACKEND: &str = "flex";
#[cfg(all(feature = "candle", not(feature = "flex")))]
pub const CPU_BACKEND: &str = "candle";
#[cfg(all(feature = "ndarray", feature = "openblas", not(any(feature = "flex", feature = "candle"))))]
pub const CPU_BACKEND: &str = "ndarray+openblas";
#[cfg(all(feature = "ndarray", not(feature = "openblas"), not(any(feature = "flex", feature = "candle"))))]
pub const CPU_BACKEND: &str = "ndarray";
/// This build has no CPU backend (built with `--no-default-features` and no CPU feature).
#[cfg(not(any(feature = "ndarray", feature = "flex", feature = "candle")))]
pub const CPU_BACKEND: &str = "none";

/// Whether this build can train on a CUDA GPU (the `cuda` feature).
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// How a build gets CUDA, for error messages.
pub const CUDA_BUILD_HINT: &str = "a build made with `cargo build --release --features cuda` (the CUDA build; it \
                                   compiles without CUDA installed and needs the NVIDIA driver and NVRTC at run time)";

/// The float type every float tensor of the backend is stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatType {
    /// fp32 parameters, gradients and optimizer state (the default everywhere).
    F32,
    /// bf16 everything (`Cuda<bf16>`), CUDA sm_80+ only; see the module docs.
    Bf16,
}

/// The precision the backend's matmuls multiply in (accumulation is fp32 in all cases).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatmulType {
    F32,
    /// fp32 in memory, TF32 on the tensor cores (CUDA sm_80+ with fp32 storage).
    Tf32,
    Bf16,
}

impl fmt::Display for FloatType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        })
    }
}

impl fmt::Display for MatmulType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Tf32 => "tf32",
            Self::Bf16 => "bf16",
        })
    }
}

/// A CUDA GPU as the driver reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    pub index: u32,
    pub name: String,
    /// `(major, minor)`, e.g. `(9, 0)` for Hopper.
    pub compute_capability: (i32, i32),
    pub total_memory_bytes: u64,
    /// GPUs the driver sees (after `CUDA_VISIBLE_DEVICES`).
    pub device_count: u32,
    /// The driver's CUDA version, `1000 * major + 10 * minor` (12080 = 12.8).
    pub driver_version: i32,
}

impl GpuInfo {
    /// bf16 tensor cores (and TF32) arrived with Ampere, compute capability 8.0.
    pub fn has_bf16(&self) -> bool {
        self.compute_capability.0 >= 8
    }
}

/// What [`dispatch`] chose; handed to the job with the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendInfo {
    pub device: Device,
    /// `ndarray`, `flex`, `candle`, `ndarray+openblas` or `cuda`.
    pub backend: &'static str,
    pub float: FloatType,
    pub matmul: MatmulType,
    pub gpu: Option<GpuInfo>,
}

impl fmt::Display for BackendInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {} (storage {}, matmul {})", self.backend, self.device, self.float, self.matmul)?;
        if let Some(gpu) = &self.gpu {
            let (major, minor) = gpu.compute_capability;
            write!(
                f,
                ": {}, sm_{major}{minor}, {:.1} GiB, driver CUDA {}.{}",
                gpu.name,
                gpu.total_memory_bytes as f64 / f64::from(1u32 << 30),
                gpu.driver_version / 1000,
                gpu.driver_version % 1000 / 10
            )?;
        }
        Ok(())
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BackendError {
    #[error("--device {device}: this tessera was built without CUDA support; use {CUDA_BUILD_HINT}, or --device cpu")]
    CudaNotBuilt { device: Device },
    #[error("--device cpu: this tessera was built without a CPU backend (features ndarray, flex or candle)")]
    NoCpuBackend,
    #[error("--device {device}: no usable NVIDIA driver: {reason}")]
    NoDriver { device: Device, reason: String },
    #[error("--device {device}: the NVIDIA driver failed to start ({call} returned CUresult {code}): {reason}")]
    DriverError { device: Device, call: &'static str, code: i32, reason: String },
    #[error("--device {device}: there is no GPU {index}; the driver sees {count} (indices 0..{count})")]
    NoSuchGpu { device: Device, index: u32, count: u32 },
    #[error(
        "--device {device}: NVRTC (libnvrtc.so) did not load; burn's CUDA backend compiles its kernels with it at run \
         time: {hint}"
    )]
    NoNvrtc { device: Device, hint: String },
    #[error("--device {device}: burn's CUDA kernels are compiled at run time and include CUDA's headers: {reason}")]
    NoCudaHeaders { device: Device, reason: String },
    #[error("--device {device}: {float} storage is not supported here: {reason}")]
    FloatTypeUnsupported { device: Device, float: FloatType, reason: String },
    #[error(
        "--device {device}: {float} storage was asked for, but this process already uses the device with {actual} \
         (burn fixes a device's float type at its first use)"
    )]
    FloatTypeFixed { device: Device, float: FloatType, actual: String },
}

/// Fails unless burn's default float type for `device` is `float` (see the module docs).
#[cfg(any(feature = "ndarray", feature = "flex", feature = "candle", feature = "cuda"))]
fn check_float_type<B: Backend>(device: &B::Device, at: Device, float: FloatType) -> Result<(), BackendError> {
    let expected = match float {
        FloatType::F32 => FloatDType::F32,
        FloatType::Bf16 => FloatDType::BF16,
    };
    let actual = get_device_settings::<B>(device).float_dtype;
    if actual == expected {
        Ok(())
    } else {
        Err(BackendError::FloatTypeFixed { device: at, float, actual: format!("{actual:?}").to_lowercase() })
    }
}

/// Generic work to run on the backend [`dispatch`] picks: the miner's whole training
/// side is one such job, monomorphised once per backend compiled in.
pub trait WithBackend {
    type Output;
    fn run<B: TrainBackend>(self, device: B::Device, info: &BackendInfo) -> Self::Output;
}

/// What `device` trains on, or why it cannot (no CUDA in this build, no driver, no such
/// GPU): a cheap check at start-up, before any model is built.
pub fn describe_device(device: &Device) -> Result<String, BackendError> {
    struct Describe;
    impl WithBackend for Describe {
        type Output = String;
        fn run<B: TrainBackend>(self, _device: B::Device, info: &BackendInfo) -> String {
            info.to_string()
        }
    }
    dispatch(device, Describe)
}

/// What `B` offers the compute settings on `device`: bf16 tensors, whether bf16 products
/// are the fast ones (tensor cores: CUDA sm_80+), and the fused attention kernels.
pub fn compute_caps<B: ModelBackend>(info: &BackendInfo, device: &B::Device) -> BackendCaps {
    BackendCaps {
        bf16: B::supports_dtype(device, burn::tensor::DType::BF16),
        fast_bf16: info.gpu.as_ref().is_some_and(GpuInfo::has_bf16),
        fused_attention: B::has_fused_attention(),
    }
}

/// Runs `job` on the backend for `device`, in fp32 ([`FloatType::F32`]).
pub fn dispatch<W: WithBackend>(device: &Device, job: W) -> Result<W::Output, BackendError> {
    dispatch_with(device, FloatType::F32, job)
}

/// Runs `job` on the backend for `device` storing floats as `float`.
pub fn dispatch_with<W: WithBackend>(device: &Device, float: FloatType, job: W) -> Result<W::Output, BackendError> {
    match *device {
        Device::Cpu => run_cpu(float, job),
        Device::Cuda(index) => run_cuda(index, float, job),
    }
}

#[cfg(any(feature = "ndarray", feature = "flex", feature = "candle"))]
fn run_cpu<W: WithBackend>(float: FloatType, job: W) -> Result<W::Output, BackendError> {
    use burn::backend::Autodiff;
    if float != FloatType::F32 {
        return Err(BackendError::FloatTypeUnsupported {
            device: Device::Cpu,
            float,
            reason: "the CPU backends train in f32".into(),
        });
    }
    let device = Default::default();
    check_float_type::<Autodiff<CpuBackend>>(&device, Device::Cpu, float)?;
    let info = BackendInfo { device: Device::Cpu, backend: CPU_BACKEND, float, matmul: MatmulType::F32, gpu: None };
    Ok(job.run::<Autodiff<CpuBackend>>(device, &info))
}

#[cfg(not(any(feature = "ndarray", feature = "flex", feature = "candle")))]
fn run_cpu<W: WithBackend>(_float: FloatType, _job: W) -> Result<W::Output, BackendError> {
    Err(BackendError::NoCpuBackend)
}

#[cfg(feature = "cuda")]
fn run_cuda<W: WithBackend>(index: u32, float: FloatType, job: W) -> Result<W::Output, BackendError> {
    use burn::backend::Autodiff;
    use burn::backend::cuda::{Cuda, CudaDevice};
    use burn::tensor::bf16;

    let gpu = probe_cuda(index)?;
    let device = Device::Cuda(index);
    let cuda_device = CudaDevice::new(index as usize);
    match float {
        FloatType::F32 => {
            let matmul = if gpu.has_bf16() { MatmulType::Tf32 } else { MatmulType::F32 };
            check_float_type::<Autodiff<Cuda<f32>>>(&cuda_device, device, float)?;
            let info = BackendInfo { device, backend: "cuda", float, matmul, gpu: Some(gpu) };
            Ok(job.run::<Autodiff<Cuda<f32>>>(cuda_device, &info))
        }
        FloatType::Bf16 if gpu.has_bf16() => {
            check_float_type::<Autodiff<Cuda<bf16>>>(&cuda_device, device, float)?;
            let info = BackendInfo { device, backend: "cuda", float, matmul: MatmulType::Bf16, gpu: Some(gpu) };
            Ok(job.run::<Autodiff<Cuda<bf16>>>(cuda_device, &info))
        }
        FloatType::Bf16 => {
            let (major, minor) = gpu.compute_capability;
            Err(BackendError::FloatTypeUnsupported {
                device,
                float,
                reason: format!("{} is sm_{major}{minor}; bf16 needs compute capability 8.0 or newer", gpu.name),
            })
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn run_cuda<W: WithBackend>(index: u32, _float: FloatType, _job: W) -> Result<W::Output, BackendError> {
    Err(BackendError::CudaNotBuilt { device: Device::Cuda(index) })
}

/// The CPU backend's matrix products (matrixmultiply, under burn-ndarray) take
/// `MATMUL_NUM_THREADS` threads, by default as many as the machine has *physical* cores —
/// one on a 2-vCPU virtual machine, where a training step then used one of its two CPUs.
/// Sets it to every core the process may use, unless the operator set it. Call it before
/// any thread starts (it changes the environment); products stay bit-identical whatever
/// the count (each output block is one thread's, in one order).
pub fn use_every_core_for_cpu_matmuls() {
    const VAR: &str = "MATMUL_NUM_THREADS";
    if std::env::var_os(VAR).is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: called first thing in `main`, before any other thread exists, so nothing
    // reads the environment concurrently.
    unsafe { std::env::set_var(VAR, cores.to_string()) };
}

/// Checks, without touching burn, that CUDA GPU `index` can be used: loads the driver
/// library, initialises it, counts the GPUs, reads the GPU's name, compute capability and
/// memory, and checks that NVRTC can be loaded. Safe to call on any machine (and in any
/// build): everything missing is an error.
pub fn probe_cuda(index: u32) -> Result<GpuInfo, BackendError> {
    cuda_probe::probe(index)
}

#[cfg(target_os = "linux")]
mod cuda_probe {
    //! The CUDA driver API through `dlopen`, as cudarc (burn-cuda's driver binding) loads
    //! it, but returning errors where cudarc panics. The library is left loaded: burn opens
    //! it again right after, and unloading an initialised driver is not supported.

    use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
    use std::path::Path;

    use super::{BackendError, Device, GpuInfo};

    unsafe extern "C" {
        fn dlopen(filename: *const c_char, flags: c_int) -> *mut c_void;
        fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
        fn dlerror() -> *mut c_char;
    }

    const RTLD_NOW: c_int = 2;
    const CUDA_SUCCESS: c_int = 0;
    const CUDA_ERROR_NO_DEVICE: c_int = 100;
    const COMPUTE_CAPABILITY_MAJOR: c_int = 75;
    const COMPUTE_CAPABILITY_MINOR: c_int = 76;

    /// The names cudarc tries, most specific first.
    const CUDA_LIBS: &[&CStr] = &[c"libcuda.so.1", c"libcuda.so"];
    const NVRTC_LIBS: &[&CStr] =
        &[c"libnvrtc.so", c"libnvrtc.so.13", c"libnvrtc.so.12", c"libnvrtc.so.11", c"libnvrtc.so.10", c"libnvrtc.so.1"];

    type CuInit = unsafe extern "C" fn(c_uint) -> c_int;
    type CuIntOut = unsafe extern "C" fn(*mut c_int) -> c_int;
    type CuDeviceGet = unsafe extern "C" fn(*mut c_int, c_int) -> c_int;
    type CuDeviceGetName = unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int;
    type CuDeviceGetAttribute = unsafe extern "C" fn(*mut c_int, c_int, c_int) -> c_int;
    type CuDeviceTotalMem = unsafe extern "C" fn(*mut usize, c_int) -> c_int;

    fn last_dl_error() -> String {
        // SAFETY: dlerror returns null or a NUL-terminated string valid until the next dl call.
        let message = unsafe { dlerror() };
        if message.is_null() {
            "unknown error".to_owned()
        } else {
            // SAFETY: non-null, NUL-terminated (see above).
            unsafe { CStr::from_ptr(message) }.to_string_lossy().into_owned()
        }
    }

    /// The first of `names` that loads, or the loader's error for the first name.
    fn open_first(names: &[&CStr]) -> Result<*mut c_void, String> {
        let mut first_error = None;
        for name in names {
            // SAFETY: a NUL-terminated name; loading runs the library's initialisers, which
            // is what using the driver at all requires.
            let handle = unsafe { dlopen(name.as_ptr(), RTLD_NOW) };
            if !handle.is_null() {
                return Ok(handle);
            }
            let error = last_dl_error();
            first_error.get_or_insert(error);
        }
        Err(first_error.unwrap_or_default())
    }

    struct Driver {
        handle: *mut c_void,
        device: Device,
    }

    impl Driver {
        /// Symbol `name` as a function pointer of type `F`.
        ///
        /// # Safety
        /// `F` must be the symbol's C signature.
        unsafe fn symbol<F: Copy>(&self, name: &'static CStr) -> Result<F, BackendError> {
            // SAFETY: handle came from dlopen; name is NUL-terminated.
            let ptr = unsafe { dlsym(self.handle, name.as_ptr()) };
            if ptr.is_null() {
                return Err(BackendError::NoDriver {
                    device: self.device,
                    reason: format!("the driver library lacks {} (driver too old?)", name.to_string_lossy()),
                });
            }
            debug_assert_eq!(size_of::<F>(), size_of::<*mut c_void>());
            // SAFETY: a non-null code address, typed by the caller (see # Safety).
            Ok(unsafe { std::mem::transmute_copy::<*mut c_void, F>(&ptr) })
        }

        fn check(&self, call: &'static str, code: c_int) -> Result<(), BackendError> {
            if code == CUDA_SUCCESS {
                return Ok(());
            }
            let reason = match code {
                CUDA_ERROR_NO_DEVICE => "no CUDA-capable GPU is visible (check CUDA_VISIBLE_DEVICES, or run the \
                                         container with --gpus)"
                    .to_owned(),
                35 => "the driver is older than the CUDA runtime needs".to_owned(),
                3 => "the driver is not initialised".to_owned(),
                999 => "unknown driver error (is the GPU in a bad state? see nvidia-smi)".to_owned(),
                _ => "see the CUDA driver API's CUresult list".to_owned(),
            };
            Err(BackendError::DriverError { device: self.device, call, code, reason })
        }
    }

    pub(super) fn probe(index: u32) -> Result<GpuInfo, BackendError> {
        let device = Device::Cuda(index);
        let handle = open_first(CUDA_LIBS).map_err(|error| {
            let kernel = if Path::new("/proc/driver/nvidia/version").exists() {
                "the NVIDIA kernel driver is loaded, but its user-space library is not on the loader path \
                 (LD_LIBRARY_PATH; in a container, the NVIDIA container toolkit mounts it)"
            } else {
                "no NVIDIA kernel driver is loaded on this machine (no /proc/driver/nvidia)"
            };
            BackendError::NoDriver { device, reason: format!("cannot load libcuda.so.1 ({error}); {kernel}") }
        })?;
        let driver = Driver { handle, device };
        // SAFETY: the signatures are those of cuda.h (CUdevice is an int, size_t is usize).
        let (init, driver_version, count, get, get_name, get_attribute, total_mem) = unsafe {
            (
                driver.symbol::<CuInit>(c"cuInit")?,
                driver.symbol::<CuIntOut>(c"cuDriverGetVersion")?,
                driver.symbol::<CuIntOut>(c"cuDeviceGetCount")?,
                driver.symbol::<CuDeviceGet>(c"cuDeviceGet")?,
                driver.symbol::<CuDeviceGetName>(c"cuDeviceGetName")?,
                driver.symbol::<CuDeviceGetAttribute>(c"cuDeviceGetAttribute")?,
                driver.symbol::<CuDeviceTotalMem>(c"cuDeviceTotalMem_v2")?,
            )
        };
        let mut version: c_int = 0;
        let mut devices: c_int = 0;
        // SAFETY: driver calls with valid out-pointers, in the documented order (cuInit first).
        unsafe {
            driver.check("cuInit", init(0))?;
            driver.check("cuDriverGetVersion", driver_version(&mut version))?;
            driver.check("cuDeviceGetCount", count(&mut devices))?;
        }
        let count = u32::try_from(devices).unwrap_or(0);
        if index >= count {
            return Err(BackendError::NoSuchGpu { device, index, count });
        }
        let ordinal = c_int::try_from(index).map_err(|_| BackendError::NoSuchGpu { device, index, count })?;
        let mut cu_device: c_int = 0;
        let mut name = [0 as c_char; 256];
        let (mut major, mut minor, mut bytes) = (0, 0, 0usize);
        // SAFETY: valid out-pointers; the name buffer's length is passed.
        unsafe {
            driver.check("cuDeviceGet", get(&mut cu_device, ordinal))?;
            driver.check("cuDeviceGetName", get_name(name.as_mut_ptr(), name.len() as c_int - 1, cu_device))?;
            driver.check("cuDeviceGetAttribute", get_attribute(&mut major, COMPUTE_CAPABILITY_MAJOR, cu_device))?;
            driver.check("cuDeviceGetAttribute", get_attribute(&mut minor, COMPUTE_CAPABILITY_MINOR, cu_device))?;
            driver.check("cuDeviceTotalMem_v2", total_mem(&mut bytes, cu_device))?;
        }
        // SAFETY: the buffer is zeroed and the driver wrote at most len - 1 bytes, so it ends in NUL.
        let name = unsafe { CStr::from_ptr(name.as_ptr()) }.to_string_lossy().into_owned();
        let lookup = crate::cuda_env::Lookup::from_env();
        open_first(NVRTC_LIBS).map_err(|_| BackendError::NoNvrtc { device, hint: lookup.nvrtc_hint() })?;
        lookup.headers().map_err(|reason| BackendError::NoCudaHeaders { device, reason })?;
        Ok(GpuInfo {
            index,
            name,
            compute_capability: (major, minor),
            total_memory_bytes: bytes as u64,
            device_count: count,
            driver_version: version,
        })
    }
}

#[cfg(not(target_os = "linux"))]
mod cuda_probe {
    use super::{BackendError, Device, GpuInfo};

    pub(super) fn probe(index: u32) -> Result<GpuInfo, BackendError> {
        Err(BackendError::NoDriver {
            device: Device::Cuda(index),
            reason: "tessera probes CUDA GPUs on Linux only".to_owned(),
        })
    }
}
