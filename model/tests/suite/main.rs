//! The model crate's f32 integration tests, in one binary: each test binary links the
//! workspace and instantiates burn's generics again at the crate's opt-level 2, so five
//! binaries were four more compiles and links in every CI run (docs/DESIGN.md §15).
//! `exact` and `grad_check` keep their own binaries: they compute in f64, and burn fixes a
//! device's float type for the whole process at its first use.

mod backend;
mod checkpoint;
mod hf;
mod model;
mod train;
