//! Training data: deterministic pages, sources, tokenizer, batches (in progress).
