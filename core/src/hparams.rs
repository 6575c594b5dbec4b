//! Hyperparameters (in progress).
