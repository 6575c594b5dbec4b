//! Rows to fixed-shape micro-batches, as the seed did: tokenize each row (truncated to `seq_len`), append
//! EOS, concatenate, pad to a multiple of `seq_len`, cut into sequences, group `batch_size` at a time. We
//! pad with the tokenizer's PAD id and mark padding in a loss mask instead of training on it.

use crate::error::DataError;
use crate::tokenizer::TextTokenizer;

/// `batch_size` sequences of `seq_len` tokens, row-major `[B, T]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub batch_size: usize,
    pub seq_len: usize,
    /// `batch_size * seq_len` ids, sequence after sequence.
    pub tokens: Vec<u32>,
    /// Same shape; `false` where the token is padding and must not count in the loss.
    pub loss_mask: Vec<bool>,
}

impl Batch {
    /// Sequence `i`.
    pub fn sequence(&self, i: usize) -> &[u32] {
        &self.tokens[i * self.seq_len..(i + 1) * self.seq_len]
    }

    /// Tokens that are not padding.
    pub fn real_tokens(&self) -> usize {
        self.loss_mask.iter().filter(|&&m| m).count()
    }
}

/// One token stream for `docs`: each truncated to `seq_len` ids, then EOS. Returns the ids.
pub fn tokenize_documents(docs: &[String], tokenizer: &TextTokenizer, seq_len: usize) -> Result<Vec<u32>, DataError> {
    let eos = tokenizer.eos_id();
    let mut stream = Vec::new();
    for doc in docs {
        let mut ids = tokenizer.encode(doc)?;
        ids.truncate(seq_len);
        stream.extend_from_slice(&ids);
        stream.push(eos);
    }
    Ok(stream)
}

/// All micro-batches of `docs`. The last batch keeps its leftover sequences (`batch_size` may be smaller
/// there) rather than dropping them as the seed did; no documents gives no batches.
pub fn build_batches(
    docs: &[String],
    tokenizer: &TextTokenizer,
    seq_len: usize,
    batch_size: usize,
) -> Result<Vec<Batch>, DataError> {
    if seq_len == 0 || batch_size == 0 {
        return Err(DataError::InvalidArgument(format!(
            "sequence length ({seq_len}) and batch size ({batch_size}) must be positive"
        )));
    }
    let mut tokens = tokenize_documents(docs, tokenizer, seq_len)?;
    let real = tokens.len();
    tokens.resize(real.div_ceil(seq_len) * seq_len, tokenizer.pad_id());
    let mask: Vec<bool> = (0..tokens.len()).map(|i| i < real).collect();
    let per_batch = seq_len * batch_size;
    Ok(tokens
        .chunks(per_batch)
        .zip(mask.chunks(per_batch))
        .map(|(t, m)| Batch { batch_size: t.len() / seq_len, seq_len, tokens: t.to_vec(), loss_mask: m.to_vec() })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::{BYTE_EOS_ID, BYTE_PAD_ID};

    fn docs(texts: &[&str]) -> Vec<String> {
        texts.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn batches_have_shapes_eos_padding_and_mask() {
        let tok = TextTokenizer::Bytes;
        // 3+1, 5+1, 2+1 = 13 real tokens; seq_len 5 → 3 sequences (15 slots, 2 pad); batch 2 → [2, 1].
        let batches = build_batches(&docs(&["abc", "hello", "xy"]), &tok, 5, 2).expect("batches");
        assert_eq!(batches.len(), 2);
        assert_eq!((batches[0].batch_size, batches[0].seq_len), (2, 5));
        assert_eq!((batches[1].batch_size, batches[1].seq_len), (1, 5));
        for b in &batches {
            assert_eq!(b.tokens.len(), b.batch_size * b.seq_len);
            assert_eq!(b.loss_mask.len(), b.tokens.len());
        }
        let (e, p) = (BYTE_EOS_ID, BYTE_PAD_ID);
        let a = |c: char| c as u32;
        assert_eq!(batches[0].sequence(0), &[a('a'), a('b'), a('c'), e, a('h')]);
        assert_eq!(batches[0].sequence(1), &[a('e'), a('l'), a('l'), a('o'), e]);
        assert_eq!(batches[1].tokens, vec![a('x'), a('y'), e, p, p]);
        assert_eq!(batches[1].loss_mask, vec![true, true, true, false, false]);
        assert!(batches[0].loss_mask.iter().all(|&m| m));
        assert_eq!(batches.iter().map(Batch::real_tokens).sum::<usize>(), 13);
    }

    #[test]
    fn documents_are_truncated_to_seq_len_before_eos() {
        let tok = TextTokenizer::Bytes;
        let batches = build_batches(&docs(&["abcdefgh", "z"]), &tok, 4, 8).expect("batches");
        assert_eq!(batches.len(), 1);
        let b = &batches[0];
        assert_eq!(b.batch_size, 2);
        assert_eq!(b.sequence(0), &[97, 98, 99, 100]);
        assert_eq!(b.sequence(1), &[BYTE_EOS_ID, 122, BYTE_EOS_ID, BYTE_PAD_ID]);
        assert_eq!(b.tokens.iter().filter(|&&t| t == BYTE_EOS_ID).count(), 2, "one EOS per document");
    }

    #[test]
    fn exact_multiple_has_no_padding_and_empty_input_no_batches() {
        let tok = TextTokenizer::Bytes;
        let batches = build_batches(&docs(&["abc", "def"]), &tok, 4, 2).expect("batches");
        assert_eq!(batches.len(), 1);
        assert!(batches[0].loss_mask.iter().all(|&m| m));
        assert!(!batches[0].tokens.contains(&BYTE_PAD_ID));
        assert!(build_batches(&[], &tok, 4, 2).expect("empty").is_empty());
        assert!(matches!(build_batches(&docs(&["a"]), &tok, 0, 2), Err(DataError::InvalidArgument(_))));
        assert!(matches!(build_batches(&docs(&["a"]), &tok, 4, 0), Err(DataError::InvalidArgument(_))));
    }
}
