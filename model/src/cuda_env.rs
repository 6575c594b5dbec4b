//! Where CUDA's headers and NVRTC are, found as burn-cuda will look for them, so that a
//! machine without them fails at start with what is missing and what to set — not with a
//! panic at the first kernel compile.
//!
//! burn-cuda compiles its kernels at run time with NVRTC (`libnvrtc.so`, loaded by name
//! through the loader path), and the kernels include CUDA's headers (`cuda_runtime.h`,
//! `cuda_fp16.h`, `cuda_bf16.h`) from `$CUDA_PATH/include`, else `/usr/local/cuda`,
//! `/opt/cuda`, or `/usr` when `/usr/bin/nvcc` exists (cubecl-cuda 0.10's `cuda_path`,
//! which panics when none is found). A pip-installed PyTorch brings both inside its
//! `site-packages/nvidia/` (`cu13/` for CUDA 13; `cuda_runtime/` and `cuda_nvrtc/` for
//! CUDA 12), where neither lookup finds them: the errors name that folder and the setting.

use std::path::{Path, PathBuf};

/// The headers every kernel compile includes.
const REQUIRED_HEADERS: [&str; 3] = ["cuda_runtime.h", "cuda_fp16.h", "cuda_bf16.h"];
/// Fixed roots cubecl-cuda tries after `CUDA_PATH`, in its order.
const DEFAULT_ROOTS: [&str; 2] = ["/usr/local/cuda", "/opt/cuda"];
/// Inside a Python environment: pip's CUDA packages, newest layout first (the headers'
/// root, and the folder holding libnvrtc).
const PIP_LAYOUTS: [(&str, &str); 3] = [
    ("nvidia/cu13", "nvidia/cu13/lib"),
    ("nvidia/cu12", "nvidia/cu12/lib"),
    ("nvidia/cuda_runtime", "nvidia/cuda_nvrtc/lib"),
];

/// What the lookup reads: the environment and where Python packages may be.
#[derive(Debug, Clone, Default)]
pub struct Lookup {
    /// `CUDA_PATH`, if set.
    pub cuda_path: Option<PathBuf>,
    /// Folders to search for pip's CUDA packages (`site-packages`, `dist-packages`).
    pub python_dirs: Vec<PathBuf>,
    /// Fixed roots to try after `CUDA_PATH` (cubecl's).
    pub default_roots: Vec<PathBuf>,
    /// Whether `/usr/bin/nvcc` exists (cubecl then uses `/usr`).
    pub usr_nvcc: bool,
}

impl Lookup {
    /// This process's environment and the usual Python folders.
    pub fn from_env() -> Self {
        let mut python_dirs = Vec::new();
        let mut globs: Vec<PathBuf> =
            ["/usr/local/lib", "/usr/lib", "/opt/conda/lib"].iter().map(PathBuf::from).collect();
        for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
            if let Some(prefix) = std::env::var_os(var) {
                globs.push(Path::new(&prefix).join("lib"));
            }
        }
        if let Some(home) = std::env::var_os("HOME") {
            globs.push(Path::new(&home).join(".local/lib"));
        }
        for lib in globs {
            let Ok(entries) = std::fs::read_dir(&lib) else { continue };
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with("python3") {
                    python_dirs.extend(["site-packages", "dist-packages"].map(|d| entry.path().join(d)));
                }
            }
        }
        python_dirs.extend(std::env::var_os("PYTHONPATH").iter().flat_map(std::env::split_paths));
        Self {
            cuda_path: std::env::var_os("CUDA_PATH").map(PathBuf::from),
            python_dirs,
            default_roots: DEFAULT_ROOTS.iter().map(PathBuf::from).collect(),
            usr_nvcc: Path::new("/usr/bin/nvcc").exists(),
        }
    }

    /// The root burn-cuda will take its headers from, as cubecl-cuda chooses it.
    pub fn cuda_root(&self) -> Option<PathBuf> {
        if let Some(path) = &self.cuda_path {
            return Some(path.clone());
        }
        self.default_roots.iter().find(|r| r.exists()).cloned().or_else(|| self.usr_nvcc.then(|| PathBuf::from("/usr")))
    }

    /// pip's CUDA packages found: (headers' root, NVRTC's folder).
    pub fn pip_cuda(&self) -> Option<(PathBuf, PathBuf)> {
        self.python_dirs.iter().find_map(|dir| {
            PIP_LAYOUTS.iter().find_map(|(root, lib)| {
                let root = dir.join(root);
                has_headers(&root).then(|| (root, dir.join(lib)))
            })
        })
    }

    /// The headers' root, or what is wrong and what to set.
    pub fn headers(&self) -> Result<PathBuf, String> {
        let pip_hint = || match self.pip_cuda() {
            Some((root, _)) => format!("; a Python package has them: set CUDA_PATH={}", root.display()),
            None => "; install CUDA's headers (the toolkit, or pip's nvidia-cuda-runtime) and set CUDA_PATH".into(),
        };
        let Some(root) = self.cuda_root() else {
            return Err(format!(
                "CUDA's headers were not found (CUDA_PATH is unset and none of {}, /usr with /usr/bin/nvcc exists){}",
                self.default_roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", "),
                pip_hint()
            ));
        };
        let Some(header) = missing_header(&root) else { return Ok(root) };
        let named = match self.cuda_path {
            Some(_) => format!("CUDA_PATH={}", root.display()),
            None => format!("{} (found without CUDA_PATH)", root.display()),
        };
        Err(format!("{named} has no include/{header}{}", pip_hint()))
    }

    /// Why NVRTC did not load, and where it is if a Python package has it.
    pub fn nvrtc_hint(&self) -> String {
        let found = self
            .pip_cuda()
            .map(|(_, lib)| lib)
            .filter(|lib| has_nvrtc(lib))
            .or_else(|| self.cuda_root().map(|r| r.join("lib64")).filter(|lib| has_nvrtc(lib)));
        match found {
            Some(lib) => format!("it is at {}: add that folder to LD_LIBRARY_PATH", lib.display()),
            None => "install the CUDA runtime's NVRTC (e.g. the cuda-nvrtc package, or pip's nvidia-cuda-nvrtc) \
                     and put its folder on LD_LIBRARY_PATH"
                .into(),
        }
    }
}

fn missing_header(root: &Path) -> Option<&'static str> {
    REQUIRED_HEADERS.into_iter().find(|h| !root.join("include").join(h).is_file())
}

fn has_headers(root: &Path) -> bool {
    missing_header(root).is_none()
}

fn has_nvrtc(lib: &Path) -> bool {
    std::fs::read_dir(lib)
        .map(|entries| entries.flatten().any(|e| e.file_name().to_string_lossy().starts_with("libnvrtc.so")))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"").unwrap();
    }

    fn toolkit(root: &Path) {
        for h in REQUIRED_HEADERS {
            touch(&root.join("include").join(h));
        }
    }

    #[test]
    fn cuda_path_wins_and_must_hold_the_headers() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cuda");
        let lookup = Lookup { cuda_path: Some(root.clone()), ..Default::default() };
        let err = lookup.headers().unwrap_err();
        assert!(err.contains("has no include/cuda_runtime.h") && err.contains("CUDA_PATH"), "{err}");
        toolkit(&root);
        assert_eq!(lookup.headers().unwrap(), root);
    }

    #[test]
    fn without_cuda_path_the_default_roots_then_usr_are_taken_as_cubecl_does() {
        let dir = tempfile::tempdir().unwrap();
        let (absent, present) = (dir.path().join("absent"), dir.path().join("opt-cuda"));
        std::fs::create_dir_all(&present).unwrap();
        let lookup = Lookup { default_roots: vec![absent.clone(), present.clone()], ..Default::default() };
        assert_eq!(lookup.cuda_root(), Some(present.clone()));
        let err = lookup.headers().unwrap_err();
        assert!(err.contains("opt-cuda (found without CUDA_PATH) has no include/cuda_runtime.h"), "{err}");
        let none = Lookup { default_roots: vec![absent.clone()], ..Default::default() };
        assert_eq!(none.cuda_root(), None);
        assert!(none.headers().unwrap_err().contains("CUDA_PATH is unset"));
        let usr = Lookup { default_roots: vec![absent], usr_nvcc: true, ..Default::default() };
        assert_eq!(usr.cuda_root(), Some(PathBuf::from("/usr")));
    }

    #[test]
    fn a_pip_installed_cuda_is_named_with_the_settings_that_use_it() {
        let dir = tempfile::tempdir().unwrap();
        let site = dir.path().join("site-packages");
        toolkit(&site.join("nvidia/cu13"));
        touch(&site.join("nvidia/cu13/lib/libnvrtc.so.13"));
        let lookup = Lookup { python_dirs: vec![dir.path().join("elsewhere"), site.clone()], ..Default::default() };
        let err = lookup.headers().unwrap_err();
        assert!(err.contains(&format!("set CUDA_PATH={}", site.join("nvidia/cu13").display())), "{err}");
        let hint = lookup.nvrtc_hint();
        assert!(
            hint.contains(&format!("{}: add that folder to LD_LIBRARY_PATH", site.join("nvidia/cu13/lib").display()))
        );
        // CUDA 12's layout: headers and NVRTC in two packages.
        let old = dir.path().join("old");
        toolkit(&old.join("nvidia/cuda_runtime"));
        touch(&old.join("nvidia/cuda_nvrtc/lib/libnvrtc.so.12"));
        let lookup = Lookup { python_dirs: vec![old.clone()], ..Default::default() };
        assert_eq!(lookup.pip_cuda(), Some((old.join("nvidia/cuda_runtime"), old.join("nvidia/cuda_nvrtc/lib"))));
        assert!(Lookup::default().nvrtc_hint().contains("install the CUDA runtime's NVRTC"));
    }
}
