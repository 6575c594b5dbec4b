//! Which rows of the dataset a miner trains on in a window.
//!
//! The seed drew `n_pages` pages of 100 rows from a generator seeded by the miner's uid and advanced by the
//! window, so that a validator could recompute them. We keep that contract but pin the generator: ChaCha8
//! keyed by BLAKE3 `derive_key` over `(uid, window)`, with hand-written unbiased bounded sampling, so the
//! pages never change with a `rand` upgrade.

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Rows per page, as in the seed (`num_rows_per_page = 100`, also the datasets-server's maximum `length`).
pub const ROWS_PER_PAGE: u32 = 100;

/// BLAKE3 `derive_key` context for page selection; changing it changes every miner's pages.
pub const PAGES_DOMAIN: &str = "tessera-data 2024-11 pages v1";
/// BLAKE3 context of [`keyed_pages`].
pub const KEYED_PAGES_DOMAIN: &str = "tessera-data 2026-12 keyed pages v1";

/// A contiguous run of rows in one config (shard) of the dataset.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Page {
    pub config: String,
    pub split: String,
    pub offset: u64,
    pub rows: u32,
}

impl std::fmt::Display for Page {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}@{}+{}", self.config, self.split, self.offset, self.rows)
    }
}

/// One config (HF) or shard (local files) and how many rows it has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigInfo {
    pub name: String,
    pub split: String,
    pub num_rows: u64,
}

/// The shape of a dataset: enough to choose pages without touching the rows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetInfo {
    pub configs: Vec<ConfigInfo>,
}

impl DatasetInfo {
    /// Total rows over all configs.
    pub fn total_rows(&self) -> u64 {
        self.configs.iter().map(|c| c.num_rows).sum()
    }
}

/// How a node picks its pages: from a miner's uid (validators can check), from fresh OS
/// randomness, or from a key only the node holds (`--random` miners and a validator's
/// random pages: nobody else can predict them, and the node draws the same ones again for
/// the same window).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageSelection {
    Uid(u16),
    Random,
    Keyed([u8; 32]),
}

impl PageSelection {
    /// The pages for `window` under this selection.
    pub fn pages(&self, window: u64, n_pages: usize, dataset: &DatasetInfo) -> Vec<Page> {
        match *self {
            PageSelection::Uid(uid) => pages_for(uid, window, n_pages, dataset),
            PageSelection::Random => random_pages(n_pages, dataset),
            PageSelection::Keyed(key) => keyed_pages(&key, window, n_pages, dataset),
        }
    }
}

/// The pages miner `uid` trains on in `window`: a pure function, so a validator gets the same answer.
///
/// Configs are taken in `(name, split)` order whatever order `dataset` lists them in, and configs with no
/// rows are skipped; an empty dataset gives no pages.
pub fn pages_for(uid: u16, window: u64, n_pages: usize, dataset: &DatasetInfo) -> Vec<Page> {
    let mut material = [0u8; 10];
    material[..2].copy_from_slice(&uid.to_le_bytes());
    material[2..].copy_from_slice(&window.to_le_bytes());
    pages_from_seed(blake3::derive_key(PAGES_DOMAIN, &material), n_pages, dataset)
}

/// The pages `key` gives for `window`: a pure function of both, which nobody without the
/// key can compute.
pub fn keyed_pages(key: &[u8; 32], window: u64, n_pages: usize, dataset: &DatasetInfo) -> Vec<Page> {
    let mut material = [0u8; 40];
    material[..32].copy_from_slice(key);
    material[32..].copy_from_slice(&window.to_le_bytes());
    pages_from_seed(blake3::derive_key(KEYED_PAGES_DOMAIN, &material), n_pages, dataset)
}

/// Pages from a fresh OS-random seed (not reproducible by design).
pub fn random_pages(n_pages: usize, dataset: &DatasetInfo) -> Vec<Page> {
    pages_from_seed(rand::random::<[u8; 32]>(), n_pages, dataset)
}

/// Pages drawn from ChaCha8 seeded with `seed`: each draws a config uniformly (as the seed did), then an
/// offset uniformly among those whose `ROWS_PER_PAGE` rows fit in the config (fewer rows if it is smaller).
pub fn pages_from_seed(seed: [u8; 32], n_pages: usize, dataset: &DatasetInfo) -> Vec<Page> {
    let mut configs: Vec<&ConfigInfo> = dataset.configs.iter().filter(|c| c.num_rows > 0).collect();
    configs.sort_by(|a, b| (&a.name, &a.split).cmp(&(&b.name, &b.split)));
    configs.dedup_by(|a, b| a.name == b.name && a.split == b.split);
    if configs.is_empty() {
        return Vec::new();
    }
    let mut rng = ChaCha8Rng::from_seed(seed);
    (0..n_pages)
        .map(|_| {
            let config = configs[below(&mut rng, configs.len() as u64) as usize];
            let rows = config.num_rows.min(u64::from(ROWS_PER_PAGE));
            let offset = below(&mut rng, config.num_rows - rows + 1);
            Page { config: config.name.clone(), split: config.split.clone(), offset, rows: rows as u32 }
        })
        .collect()
}

/// A uniform integer in `0..n` (`n > 0`) by Lemire's multiply-and-reject: unbiased, and fixed forever
/// (unlike `rand`'s `gen_range`, whose output may change between versions).
pub(crate) fn below(rng: &mut impl Rng, n: u64) -> u64 {
    debug_assert!(n > 0);
    let threshold = n.wrapping_neg() % n;
    loop {
        let product = u128::from(rng.next_u64()) * u128::from(n);
        if (product as u64) >= threshold {
            return (product >> 64) as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset() -> DatasetInfo {
        DatasetInfo {
            configs: vec![
                ConfigInfo { name: "CC-MAIN-2013-20".into(), split: "train".into(), num_rows: 1_000_000 },
                ConfigInfo { name: "CC-MAIN-2019-04".into(), split: "train".into(), num_rows: 250_000 },
                ConfigInfo { name: "CC-MAIN-2024-10".into(), split: "train".into(), num_rows: 5_000_000 },
                ConfigInfo { name: "tiny".into(), split: "train".into(), num_rows: 42 },
                ConfigInfo { name: "empty".into(), split: "train".into(), num_rows: 0 },
            ],
        }
    }

    #[test]
    fn pages_are_deterministic_and_order_independent() {
        let ds = dataset();
        let mut shuffled = ds.clone();
        shuffled.configs.reverse();
        let a = pages_for(7, 1234, 16, &ds);
        assert_eq!(a.len(), 16);
        assert_eq!(a, pages_for(7, 1234, 16, &ds));
        assert_eq!(a, pages_for(7, 1234, 16, &shuffled));
        // A prefix of a longer draw: n_pages only decides how many are taken.
        assert_eq!(a[..4], pages_for(7, 1234, 4, &ds)[..]);
    }

    #[test]
    fn pages_pinned_vector() {
        let got: Vec<String> = pages_for(3, 100, 4, &dataset()).iter().map(ToString::to_string).collect();
        assert_eq!(got, PINNED);
    }
    const PINNED: [&str; 4] = [
        "CC-MAIN-2019-04/train@238487+100",
        "CC-MAIN-2019-04/train@178327+100",
        "CC-MAIN-2013-20/train@775182+100",
        "CC-MAIN-2013-20/train@578771+100",
    ];

    #[test]
    fn pages_differ_per_uid_and_window() {
        let ds = dataset();
        let base = pages_for(1, 10, 8, &ds);
        assert_ne!(base, pages_for(2, 10, 8, &ds));
        assert_ne!(base, pages_for(1, 11, 8, &ds));
        assert_ne!(pages_for(1, 11, 8, &ds), pages_for(2, 10, 8, &ds));
    }

    #[test]
    fn pages_stay_in_range_and_skip_empty_configs() {
        let ds = dataset();
        let mut seen = std::collections::HashSet::new();
        for uid in 0..20u16 {
            for window in [0u64, 1, 99, u64::MAX] {
                for page in pages_for(uid, window, 10, &ds) {
                    let cfg = ds.configs.iter().find(|c| c.name == page.config).expect("known config");
                    assert!(cfg.num_rows > 0, "drew from an empty config");
                    assert_eq!(u64::from(page.rows), cfg.num_rows.min(u64::from(ROWS_PER_PAGE)));
                    assert!(page.offset + u64::from(page.rows) <= cfg.num_rows, "{page} runs past {}", cfg.num_rows);
                    seen.insert(page.config);
                }
            }
        }
        assert_eq!(seen.len(), 4, "every non-empty config gets drawn: {seen:?}");
    }

    #[test]
    fn empty_dataset_gives_no_pages() {
        assert!(pages_for(1, 1, 5, &DatasetInfo::default()).is_empty());
        let zero = DatasetInfo { configs: vec![ConfigInfo { name: "a".into(), split: "train".into(), num_rows: 0 }] };
        assert!(random_pages(5, &zero).is_empty());
    }

    #[test]
    fn random_pages_vary() {
        let ds = dataset();
        assert_ne!(random_pages(8, &ds), random_pages(8, &ds));
        assert_eq!(PageSelection::Uid(5).pages(9, 3, &ds), pages_for(5, 9, 3, &ds));
    }

    #[test]
    fn keyed_pages_repeat_per_key_and_window_and_differ_from_every_uid() {
        let ds = dataset();
        let key = [3u8; 32];
        let a = PageSelection::Keyed(key).pages(9, 8, &ds);
        assert_eq!(a, keyed_pages(&key, 9, 8, &ds));
        assert_eq!(a.len(), 8);
        assert_ne!(a, keyed_pages(&key, 10, 8, &ds));
        assert_ne!(a, keyed_pages(&[4u8; 32], 9, 8, &ds));
        assert!((0..64).all(|uid| pages_for(uid, 9, 8, &ds) != a));
    }

    #[test]
    fn below_is_in_range_and_roughly_uniform() {
        let mut rng = ChaCha8Rng::from_seed([9; 32]);
        let mut counts = [0u32; 6];
        for _ in 0..60_000 {
            counts[below(&mut rng, 6) as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
        assert_eq!(below(&mut rng, 1), 0);
        assert!(below(&mut rng, u64::MAX) < u64::MAX);
    }
}
