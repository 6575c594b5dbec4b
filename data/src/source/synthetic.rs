//! Offline text with structure a tiny model learns in a few dozen steps: templated sentences over a small
//! vocabulary, sums, counting runs and repeated words. Row `r` of config `c` is a pure function of
//! `(seed, c, r)`, so any page is available, overlapping pages agree, and every run sees the same data.

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use super::PageSource;
use crate::error::DataError;
use crate::pages::{ConfigInfo, DatasetInfo, Page, below};

/// BLAKE3 `derive_key` context for synthetic rows.
const SYNTHETIC_DOMAIN: &str = "tessera-data 2024-11 synthetic rows v1";
const SPLIT: &str = "train";
/// The reserved split of held-out rows: rows after the training range, which page
/// selection never reaches (it draws offsets from [`PageSource::info`]'s row counts).
const HELD_OUT_SPLIT: &str = "heldout";
/// Rows per config in the held-out split.
const HELD_OUT_ROWS: u64 = 100_000;

const ADJECTIVES: [&str; 8] = ["red", "small", "quick", "old", "bright", "quiet", "green", "heavy"];
const NOUNS: [&str; 8] = ["cat", "dog", "bird", "tree", "river", "stone", "house", "ship"];
const VERBS: [&str; 8] = ["sees", "finds", "follows", "likes", "moves", "hears", "pulls", "helps"];
const NUMBER_WORDS: [&str; 10] = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"];

/// [`PageSource`] of generated documents, `configs` configs of `rows_per_config` rows each.
#[derive(Debug, Clone)]
pub struct SyntheticSource {
    seed: u64,
    configs: u32,
    rows_per_config: u64,
}

impl SyntheticSource {
    /// Eight configs of a million rows: plenty of distinct pages for any devnet.
    pub fn new(seed: u64) -> Self {
        Self::with_shape(seed, 8, 1_000_000)
    }

    pub fn with_shape(seed: u64, configs: u32, rows_per_config: u64) -> Self {
        Self { seed, configs, rows_per_config }
    }

    fn config_name(index: u32) -> String {
        format!("synthetic-{index:02}")
    }

    /// The document at `row` of config number `config`.
    pub fn document(&self, config: u32, row: u64) -> String {
        let mut material = [0u8; 20];
        material[..8].copy_from_slice(&self.seed.to_le_bytes());
        material[8..12].copy_from_slice(&config.to_le_bytes());
        material[12..].copy_from_slice(&row.to_le_bytes());
        let mut rng = ChaCha8Rng::from_seed(blake3::derive_key(SYNTHETIC_DOMAIN, &material));
        let sentences = 3 + below(&mut rng, 5);
        (0..sentences).map(|_| sentence(&mut rng)).collect::<Vec<_>>().join(" ")
    }
}

fn pick<'a>(rng: &mut impl Rng, words: &[&'a str]) -> &'a str {
    words[below(rng, words.len() as u64) as usize]
}

fn sentence(rng: &mut impl Rng) -> String {
    match below(rng, 5) {
        0 => {
            let (a1, n1, v) = (pick(rng, &ADJECTIVES), pick(rng, &NOUNS), pick(rng, &VERBS));
            let (a2, n2) = (pick(rng, &ADJECTIVES), pick(rng, &NOUNS));
            format!("the {a1} {n1} {v} the {a2} {n2}.")
        }
        1 => {
            let (a, b) = (below(rng, 50), below(rng, 50));
            format!("{a} plus {b} is {}.", a + b)
        }
        2 => {
            let len = 3 + below(rng, 4) as usize;
            let start = below(rng, (NUMBER_WORDS.len() - len + 1) as u64) as usize;
            format!("count {}.", NUMBER_WORDS[start..start + len].join(" "))
        }
        3 => {
            let word = pick(rng, &NOUNS);
            format!("{word} {word} {word}, always {word}.")
        }
        _ => {
            let n = pick(rng, &NOUNS);
            format!("a {n} is a {n} and the {n} is {}.", pick(rng, &ADJECTIVES))
        }
    }
}

#[async_trait::async_trait]
impl PageSource for SyntheticSource {
    async fn info(&self) -> Result<DatasetInfo, DataError> {
        let configs = (0..self.configs)
            .map(|i| ConfigInfo { name: Self::config_name(i), split: SPLIT.to_owned(), num_rows: self.rows_per_config })
            .collect();
        Ok(DatasetInfo { configs })
    }

    async fn rows(&self, page: &Page) -> Result<Vec<String>, DataError> {
        let bad = |message: &str| DataError::BadPage {
            config: page.config.clone(),
            split: page.split.clone(),
            offset: page.offset,
            rows: page.rows,
            message: message.to_owned(),
        };
        let (first_row, rows) = match page.split.as_str() {
            SPLIT => (0, self.rows_per_config),
            HELD_OUT_SPLIT => (self.rows_per_config, HELD_OUT_ROWS),
            _ => return Err(bad("no such synthetic split")),
        };
        let index = page
            .config
            .strip_prefix("synthetic-")
            .and_then(|s| s.parse::<u32>().ok())
            .filter(|&i| i < self.configs && Self::config_name(i) == page.config)
            .ok_or_else(|| bad("no such synthetic config"))?;
        let end = page.offset.checked_add(u64::from(page.rows)).filter(|&e| e <= rows);
        let end = end.ok_or_else(|| bad("past the end of the synthetic config"))?;
        Ok((page.offset..end).map(|row| self.document(index, first_row + row)).collect())
    }

    fn describe(&self) -> String {
        format!("synthetic text (seed {})", self.seed)
    }

    /// Pages of the reserved `heldout` split: rows no miner is ever assigned.
    async fn held_out_pages(&self, n_pages: usize) -> Result<Vec<Page>, DataError> {
        let configs = (0..self.configs)
            .map(|i| ConfigInfo {
                name: Self::config_name(i),
                split: HELD_OUT_SPLIT.to_owned(),
                num_rows: HELD_OUT_ROWS,
            })
            .collect();
        let seed = blake3::derive_key(crate::source::HELD_OUT_DOMAIN, &self.seed.to_le_bytes());
        Ok(crate::pages::pages_from_seed(seed, n_pages, &DatasetInfo { configs }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(config: &str, offset: u64, rows: u32) -> Page {
        Page { config: config.into(), split: SPLIT.into(), offset, rows }
    }

    #[tokio::test]
    async fn synthetic_is_deterministic_and_page_consistent() {
        let src = SyntheticSource::new(7);
        let info = src.info().await.expect("info");
        assert_eq!(info.configs.len(), 8);
        assert_eq!(info.configs[3].name, "synthetic-03");
        let a = src.rows(&page("synthetic-03", 10, 5)).await.expect("rows");
        assert_eq!(a, SyntheticSource::new(7).rows(&page("synthetic-03", 10, 5)).await.expect("again"));
        // Overlapping pages agree on shared rows; other seeds and configs differ.
        assert_eq!(a[2..], src.rows(&page("synthetic-03", 12, 3)).await.expect("overlap")[..]);
        assert_ne!(a, SyntheticSource::new(8).rows(&page("synthetic-03", 10, 5)).await.expect("seed 8"));
        assert_ne!(a, src.rows(&page("synthetic-04", 10, 5)).await.expect("config 4"));
        assert!(a.iter().all(|d| !d.is_empty() && d.is_ascii()));

        let held_out = src.held_out_pages(3).await.expect("held-out pages");
        assert_eq!(held_out.len(), 3);
        assert_eq!(held_out, SyntheticSource::new(7).held_out_pages(3).await.expect("again"), "fixed for a run");
        for p in &held_out {
            assert_eq!(p.split, HELD_OUT_SPLIT);
            let rows = src.rows(p).await.expect("held-out rows");
            // The held-out rows are the ones after the training range: no miner's page reaches them.
            let index: u32 = p.config["synthetic-".len()..].parse().unwrap();
            assert_eq!(rows[0], src.document(index, 1_000_000 + p.offset));
        }
        // Every page a miner can be assigned is in the training split.
        let info = src.info().await.unwrap();
        for uid in 0..20 {
            assert!(crate::pages::pages_for(uid, 5, 4, &info).iter().all(|p| p.split == SPLIT));
        }

        for bad in [
            page("synthetic-08", 0, 1),
            page("synthetic-3", 0, 1),
            page("synthetic-00", 999_950, 100),
            Page { config: "synthetic-00".into(), split: HELD_OUT_SPLIT.into(), offset: 99_990, rows: 20 },
            Page { config: "synthetic-00".into(), split: "test".into(), offset: 0, rows: 1 },
        ] {
            assert!(matches!(src.rows(&bad).await, Err(DataError::BadPage { .. })), "{bad}");
        }
    }

    #[test]
    fn synthetic_text_has_low_bigram_entropy() {
        let src = SyntheticSource::new(1);
        let text: String = (0..2000).map(|r| src.document(0, r) + "\n").collect();
        let bytes = text.as_bytes();
        let mut pair = vec![0u64; 256 * 256];
        let mut first = [0u64; 256];
        for w in bytes.windows(2) {
            pair[usize::from(w[0]) * 256 + usize::from(w[1])] += 1;
            first[usize::from(w[0])] += 1;
        }
        let total = (bytes.len() - 1) as f64;
        // H(next byte | byte) in bits: uniform bytes would give 8.
        let conditional: f64 = pair
            .iter()
            .enumerate()
            .filter(|&(_, &c)| c > 0)
            .map(|(i, &c)| -(c as f64 / total) * (c as f64 / first[i / 256] as f64).log2())
            .sum();
        assert!(conditional < 3.0, "conditional bigram entropy {conditional:.2} bits");
        assert!(conditional > 0.5, "not degenerate: {conditional:.2} bits");
        let distinct = first.iter().filter(|&&c| c > 0).count();
        assert!(distinct < 45, "small alphabet: {distinct}");
    }
}
