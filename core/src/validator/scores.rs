//! Moving scores per UID, the weights they imply, and their file (written atomically with
//! the window they were computed for, so a restarted validator loses nothing).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::ScoringParams;
use crate::hotkey::Hotkey;
use crate::window::Window;

/// The losses measured for one miner's update of one window, before and after applying
/// it to the validator's model, on the miner's own data and on random data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    pub own_before: f64,
    pub own_after: f64,
    pub random_before: f64,
    pub random_after: f64,
}

impl Evaluation {
    pub fn own_improvement(&self) -> f64 {
        self.own_before - self.own_after
    }

    pub fn random_improvement(&self) -> f64 {
        self.random_before - self.random_after
    }
}

/// What the validator learnt of one miner in one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WindowOutcome {
    Scored(Evaluation),
    /// No valid delta: none uploaded, uploaded outside the window's time, or rejected.
    Missing,
    /// Its delta copies UID `original`'s and was uploaded later.
    Copier {
        original: u16,
    },
}

/// A window score is a loss difference; one update cannot honestly move the loss by more
/// than this, so larger values (or non-finite ones) are clamped rather than allowed to
/// dominate the moving average.
const SCORE_LIMIT: f64 = 1.0;

/// One UID's standing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UidScore {
    #[serde(with = "ss58")]
    pub hotkey: Hotkey,
    /// Moving average of the window scores (loss improvement on own data).
    pub moving: f64,
    /// How much more the miner's updates improve its own data than random data, relative
    /// to both, in [−1, 1]: `specific_diff / specific_scale`, the ratio of two moving
    /// averages (a ratio of averages, so windows with small improvements do not swing
    /// it; a copier's window counts as −1 at the usual scale).
    pub indicator: f64,
    /// Moving average of `own − random` improvement.
    #[serde(default)]
    pub specific_diff: f64,
    /// Moving average of `|own| + |random|` improvement.
    #[serde(default)]
    pub specific_scale: f64,
    /// The last window score and the window it was for.
    pub last_score: Option<f64>,
    pub last_scored: Option<Window>,
    pub windows_scored: u64,
    pub windows_missing: u64,
    pub windows_copied: u64,
}

impl UidScore {
    fn new(hotkey: Hotkey) -> Self {
        Self {
            hotkey,
            moving: 0.0,
            indicator: 0.0,
            specific_diff: 0.0,
            specific_scale: 0.0,
            last_score: None,
            last_scored: None,
            windows_scored: 0,
            windows_missing: 0,
            windows_copied: 0,
        }
    }

    /// `max(moving, 0) · gate(indicator)`: the moving improvement, in full for a miner
    /// whose updates are as specific to its own data as is typical of the network, in
    /// proportion between `lo` and `hi`, nothing at or below `lo` ([`Gate`]).
    pub fn final_score(&self, gate: Gate) -> f64 {
        let span = (gate.hi - gate.lo).max(f64::EPSILON);
        let g = ((self.indicator - gate.lo) / span).clamp(0.0, 1.0);
        let v = self.moving.max(0.0) * g;
        if v.is_finite() { v } else { 0.0 }
    }
}

/// Where the indicator gate opens (`lo`) and is fully open (`hi`). With `m` the (lower)
/// median indicator of the UIDs that improve the model (at most `20 · f`, `f` =
/// `specificity_full`): from `m ≥ 4f` the gate is `[m/4, m/2]`, so honest miners (the
/// typical ones) count in full and share by improvement while a miner near 0 (not
/// trained on its pages) gets nothing; at `m = 0` (no measurable signal) it is
/// `[−2f, −f]`, shutting out only the clearly negative (copiers); linear in between.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gate {
    pub lo: f64,
    pub hi: f64,
}

impl Gate {
    pub fn of(book: &ScoreBook, params: &ScoringParams) -> Self {
        let mut typical: Vec<f64> =
            book.uids.values().filter(|s| s.moving > 0.0 && s.indicator > 0.0).map(|s| s.indicator).collect();
        typical.sort_by(f64::total_cmp);
        // The lower median: with two groups, the less specific one sets the bar.
        let median = typical.get(typical.len().saturating_sub(1) / 2).copied().unwrap_or(0.0);
        let floor = params.specificity_full;
        // Weak or no measurable specificity in the network (e.g. many micro-batches per
        // window of which few are scored): the indicator cannot tell honest miners from
        // ones that trained elsewhere, and gating on its noise would hand the weight to
        // whoever is luckiest; it then only shuts out the clearly negative (copiers). The
        // gate moves continuously from that to [m/4, m/2] as the median m reaches 4·floor.
        let m = median.min(20.0 * floor);
        let weak = (1.0 - m / (4.0 * floor)).clamp(0.0, 1.0);
        Gate { lo: 0.25 * m - 2.0 * floor * weak, hi: 0.5 * m - floor * weak }
    }
}

#[derive(Debug, Error)]
pub enum ScoreError {
    #[error("cannot read the validator's scores at {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("the validator's scores at {path} are not a scores file of this version: {reason}")]
    Format { path: String, reason: String },
    #[error("cannot write the validator's scores at {path}: {reason}")]
    Write { path: String, reason: String },
}

const FORMAT: u32 = 1;

/// Every UID's moving score; the validator's persistent state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreBook {
    pub format: u32,
    pub netuid: u16,
    /// The last window folded in.
    pub window: Option<Window>,
    pub uids: BTreeMap<u16, UidScore>,
}

impl ScoreBook {
    pub fn new(netuid: u16) -> Self {
        Self { format: FORMAT, netuid, window: None, uids: BTreeMap::new() }
    }

    /// Follows the metagraph: a UID whose hotkey changed (deregistered and taken by
    /// another) starts from zero; UIDs past the subnet's size are dropped. Returns the
    /// UIDs that were reset.
    pub fn sync_metagraph(&mut self, neurons: &[Hotkey]) -> Vec<u16> {
        self.uids.retain(|&uid, _| usize::from(uid) < neurons.len());
        let mut reset = Vec::new();
        for (uid, hotkey) in neurons.iter().enumerate() {
            let uid = uid as u16;
            match self.uids.get_mut(&uid) {
                Some(entry) if entry.hotkey == *hotkey => {}
                Some(entry) => {
                    *entry = UidScore::new(*hotkey);
                    reset.push(uid);
                }
                None => {
                    self.uids.insert(uid, UidScore::new(*hotkey));
                }
            }
        }
        reset
    }

    /// Folds one miner's outcome of `window` in; returns the window score.
    pub fn record(
        &mut self,
        window: Window,
        uid: u16,
        hotkey: Hotkey,
        outcome: WindowOutcome,
        params: &ScoringParams,
    ) -> f64 {
        let entry = self.uids.entry(uid).or_insert_with(|| UidScore::new(hotkey));
        if entry.hotkey != hotkey {
            *entry = UidScore::new(hotkey);
        }
        // (own − random, |own| + |random|) of the window, for the indicator.
        let (score, specific) = match outcome {
            WindowOutcome::Scored(eval) => {
                entry.windows_scored += 1;
                entry.last_scored = Some(window);
                let own = eval.own_improvement();
                let score = if own.is_finite() { own.clamp(-SCORE_LIMIT, SCORE_LIMIT) } else { -SCORE_LIMIT };
                let random = eval.random_improvement();
                let specific = if own.is_finite() && random.is_finite() {
                    let (own, random) = (own.clamp(-SCORE_LIMIT, SCORE_LIMIT), random.clamp(-SCORE_LIMIT, SCORE_LIMIT));
                    (own - random, own.abs() + random.abs())
                } else {
                    (-SCORE_LIMIT, SCORE_LIMIT)
                };
                (score, Some(specific))
            }
            WindowOutcome::Missing => {
                entry.windows_missing += 1;
                (0.0, None)
            }
            WindowOutcome::Copier { .. } => {
                entry.windows_copied += 1;
                entry.last_scored = Some(window);
                // −1 at the miner's usual scale (or a small one if it has none yet).
                let scale = if entry.specific_scale > 0.0 { entry.specific_scale } else { 1e-3 };
                (0.0, Some((-scale, scale)))
            }
        };
        let a = params.moving_alpha;
        entry.moving = (1.0 - a) * entry.moving + a * score;
        if let Some((diff, scale)) = specific {
            let b = params.indicator_alpha;
            entry.specific_diff = (1.0 - b) * entry.specific_diff + b * diff;
            entry.specific_scale = (1.0 - b) * entry.specific_scale + b * scale;
            entry.indicator = if entry.specific_scale > f64::EPSILON {
                (entry.specific_diff / entry.specific_scale).clamp(-1.0, 1.0)
            } else {
                0.0
            };
        }
        entry.last_score = Some(score);
        score
    }

    /// Marks `window` as folded in.
    pub fn finish_window(&mut self, window: Window) {
        self.window = Some(self.window.map_or(window, |w| w.max(window)));
    }

    /// Normalised weights, `final^power / Σ final^power` ([`UidScore::final_score`]),
    /// zeros left out; empty when nobody has earned anything (never NaN, never negative).
    pub fn weights(&self, params: &ScoringParams) -> Vec<(u16, f64)> {
        let gate = Gate::of(self, params);
        let powered: Vec<(u16, f64)> = self
            .uids
            .iter()
            .map(|(&uid, s)| (uid, s.final_score(gate).powf(params.weights_power)))
            .filter(|(_, v)| v.is_finite() && *v > 0.0)
            .collect();
        let total: f64 = powered.iter().map(|(_, v)| v).sum();
        if !(total.is_finite() && total > 0.0) {
            return Vec::new();
        }
        powered.into_iter().map(|(uid, v)| (uid, v / total)).collect()
    }

    /// `candidates` in a fair evaluation order: never scored first, then the least
    /// recently scored; ties by UID.
    pub fn eval_order(&self, candidates: &[u16]) -> Vec<u16> {
        let mut order = candidates.to_vec();
        order.sort_by_key(|uid| (self.uids.get(uid).and_then(|s| s.last_scored), *uid));
        order.dedup();
        order
    }

    /// Writes the book atomically (temp file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<(), ScoreError> {
        let err = |reason: String| ScoreError::Write { path: path.display().to_string(), reason };
        let json = serde_json::to_vec_pretty(self).map_err(|e| err(e.to_string()))?;
        crate::fsutil::write_atomic(path, &json).map_err(|e| err(e.to_string()))
    }

    /// The book saved at `path`; `None` when there is none yet.
    pub fn load(path: &Path) -> Result<Option<Self>, ScoreError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ScoreError::Read { path: path.display().to_string(), reason: e.to_string() }),
        };
        let book: ScoreBook = serde_json::from_slice(&bytes)
            .map_err(|e| ScoreError::Format { path: path.display().to_string(), reason: e.to_string() })?;
        if book.format != FORMAT {
            return Err(ScoreError::Format {
                path: path.display().to_string(),
                reason: format!("format {} (this build reads {FORMAT})", book.format),
            });
        }
        let bad = book
            .uids
            .values()
            .any(|s| ![s.moving, s.indicator, s.specific_diff, s.specific_scale].iter().all(|v| v.is_finite()));
        if bad {
            return Err(ScoreError::Format { path: path.display().to_string(), reason: "a non-finite score".into() });
        }
        Ok(Some(book))
    }

    /// The book at `path` as [`ScoreBook::load`] reads it, except that a damaged one (not
    /// a scores file of this version) is renamed to `<path>.damaged-<unix secs>` and `None`
    /// returned with the new path: scoring resumes from zero instead of failing every
    /// window, and the file is kept for the operator. An unreadable file stays an error.
    pub fn load_or_set_aside(path: &Path) -> Result<(Option<Self>, Option<std::path::PathBuf>), ScoreError> {
        match Self::load(path) {
            Ok(book) => Ok((book, None)),
            Err(ScoreError::Format { .. }) => {
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let mut aside = path.as_os_str().to_owned();
                aside.push(format!(".damaged-{secs}"));
                let aside = std::path::PathBuf::from(aside);
                std::fs::rename(path, &aside)
                    .map_err(|e| ScoreError::Write { path: path.display().to_string(), reason: e.to_string() })?;
                Ok((None, Some(aside)))
            }
            Err(e) => Err(e),
        }
    }
}

/// Weights as the chain takes them: the largest scaled to 65535, the others in
/// proportion (rounded), zeros dropped. Non-finite or non-positive inputs are dropped.
pub fn to_u16_weights(weights: &[(u16, f64)]) -> (Vec<u16>, Vec<u16>) {
    let max = weights.iter().map(|(_, w)| *w).filter(|w| w.is_finite() && *w > 0.0).fold(0.0f64, f64::max);
    if max <= 0.0 {
        return (Vec::new(), Vec::new());
    }
    let mut out: Vec<(u16, u16)> = weights
        .iter()
        .filter(|(_, w)| w.is_finite() && *w > 0.0)
        .map(|&(uid, w)| (uid, ((w / max) * 65535.0).round().clamp(0.0, 65535.0) as u16))
        .filter(|(_, w)| *w > 0)
        .collect();
    out.sort_unstable();
    out.dedup_by_key(|(uid, _)| *uid);
    out.into_iter().unzip()
}

/// Hotkeys as SS58 text in the scores file, so an operator can read it.
mod ss58 {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::hotkey::Hotkey;

    pub fn serialize<S: Serializer>(hotkey: &Hotkey, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hotkey.to_ss58())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Hotkey, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(|e| serde::de::Error::custom(format!("{text:?}: {e:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hk(i: u8) -> Hotkey {
        Hotkey([i; 32])
    }

    fn eval(own: f64, random: f64) -> WindowOutcome {
        WindowOutcome::Scored(Evaluation {
            own_before: 3.0,
            own_after: 3.0 - own,
            random_before: 3.0,
            random_after: 3.0 - random,
        })
    }

    fn book_of(n: u8) -> ScoreBook {
        let mut book = ScoreBook::new(1);
        book.sync_metagraph(&(0..n).map(hk).collect::<Vec<_>>());
        book
    }

    #[test]
    fn honest_miners_share_the_weight_and_misbehaving_ones_get_none() {
        let p = ScoringParams::default();
        let mut book = book_of(6);
        for w in 1..=30 {
            book.record(w, 0, hk(0), eval(0.010, 0.004), &p); // honest
            book.record(w, 1, hk(1), eval(0.012, 0.005), &p); // honest
            book.record(w, 2, hk(2), eval(0.0, 0.0), &p); // lazy: a zero update
            book.record(w, 3, hk(3), eval(-0.05, -0.05), &p); // noise
            // Random pages: its own data is no better than random, either way by chance.
            let (own, random) = if w % 2 == 0 { (0.004, 0.003) } else { (0.003, 0.004) };
            book.record(w, 4, hk(4), eval(own, random), &p);
            book.record(w, 5, hk(5), WindowOutcome::Copier { original: 0 }, &p);
            book.finish_window(w);
        }
        let weights: BTreeMap<u16, f64> = book.weights(&p).into_iter().collect();
        let honest = weights[&0].min(weights[&1]);
        let adversaries: f64 = [2, 3, 4, 5].iter().map(|u| weights.get(u).copied().unwrap_or(0.0)).sum();
        assert!(honest > 0.3, "{weights:?}");
        assert!(adversaries < 0.1, "{weights:?}");
        assert!((weights.values().sum::<f64>() - 1.0).abs() < 1e-9);
        assert_eq!(book.window, Some(30));
    }

    #[test]
    fn the_indicator_is_scale_free_and_a_window_of_small_improvements_hardly_moves_it() {
        let p = ScoringParams::default();
        let mut book = book_of(2);
        for w in 0..30 {
            book.record(w, 0, hk(0), eval(0.03, 0.01), &p);
            book.record(w, 1, hk(1), eval(0.003, 0.001), &p);
        }
        let (a, b) = (book.uids[&0].indicator, book.uids[&1].indicator);
        assert!((a - 0.5).abs() < 1e-9 && (b - 0.5).abs() < 1e-9, "{a} {b}");
        // One window whose own improvement is tiny and below the random one.
        book.record(30, 0, hk(0), eval(0.0005, 0.002), &p);
        assert!(book.uids[&0].indicator > 0.4, "{}", book.uids[&0].indicator);
        // Zero updates: no difference, no indicator.
        let mut lazy = book_of(1);
        lazy.record(1, 0, hk(0), eval(0.0, 0.0), &p);
        assert_eq!(lazy.uids[&0].indicator, 0.0);
    }

    #[test]
    fn honest_miners_clearly_specific_share_by_improvement_not_by_specificity() {
        let p = ScoringParams::default();
        let mut book = book_of(2);
        for w in 0..40 {
            book.record(w, 0, hk(0), eval(0.010, 0.002), &p); // very specific
            book.record(w, 1, hk(1), eval(0.010, 0.007), &p); // specific enough
        }
        let weights: BTreeMap<u16, f64> = book.weights(&p).into_iter().collect();
        assert!((weights[&0] - 0.5).abs() < 1e-6 && (weights[&1] - 0.5).abs() < 1e-6, "{weights:?}");
    }

    #[test]
    fn without_a_measurable_specificity_miners_share_by_improvement_and_copiers_get_nothing() {
        let p = ScoringParams::default();
        let mut book = book_of(3);
        for w in 0..40 {
            // Own and random improvements nearly equal for everyone: no signal.
            let tilt = if w % 2 == 0 { 0.0001 } else { -0.0001 };
            book.record(w, 0, hk(0), eval(0.010 + tilt, 0.010), &p);
            book.record(w, 1, hk(1), eval(0.010 - tilt, 0.010), &p);
            book.record(w, 2, hk(2), WindowOutcome::Copier { original: 0 }, &p);
        }
        let weights: BTreeMap<u16, f64> = book.weights(&p).into_iter().collect();
        assert!((weights[&0] - 0.5).abs() < 0.01 && (weights[&1] - 0.5).abs() < 0.01, "{weights:?}");
        assert!(!weights.contains_key(&2), "{weights:?}");
    }

    #[test]
    fn absence_decays_the_moving_score_instead_of_zeroing_it() {
        let p = ScoringParams::default();
        let mut book = book_of(1);
        for w in 0..20 {
            book.record(w, 0, hk(0), eval(0.01, 0.0), &p);
        }
        let before = book.uids[&0].moving;
        book.record(20, 0, hk(0), WindowOutcome::Missing, &p);
        let after = book.uids[&0].moving;
        assert!(after > 0.0 && after < before, "{before} -> {after}");
        assert!((after - before * (1.0 - p.moving_alpha)).abs() < 1e-12);
        assert_eq!(book.uids[&0].windows_missing, 1);
        // Missing says nothing about the data it trained on: the indicator stays.
        assert!(book.uids[&0].indicator > 0.8);
    }

    #[test]
    fn a_changed_hotkey_starts_from_zero_and_gone_uids_are_dropped() {
        let p = ScoringParams::default();
        let mut book = book_of(3);
        for uid in 0..3u16 {
            book.record(1, uid, hk(uid as u8), eval(0.01, 0.0), &p);
        }
        let reset = book.sync_metagraph(&[hk(0), hk(9)]);
        assert_eq!(reset, vec![1]);
        assert_eq!(book.uids.len(), 2);
        assert_eq!(book.uids[&1].hotkey, hk(9));
        assert_eq!(book.uids[&1].moving, 0.0);
        assert!(book.uids[&0].moving > 0.0);
        // A record under a new hotkey also starts over.
        book.record(2, 0, hk(7), eval(0.0, 0.0), &p);
        assert_eq!(book.uids[&0].windows_scored, 1);
    }

    #[test]
    fn weights_are_never_nan_or_negative() {
        let p = ScoringParams::default();
        let mut book = book_of(3);
        assert!(book.weights(&p).is_empty(), "nobody earned anything");
        book.record(1, 0, hk(0), eval(-0.5, 0.0), &p);
        book.record(1, 1, hk(1), eval(f64::NAN, 0.0), &p);
        book.record(1, 2, hk(2), eval(f64::INFINITY, 0.0), &p);
        assert!(book.weights(&p).is_empty(), "{:?}", book.weights(&p));
        assert!(book.uids.values().all(|s| s.moving.is_finite()));
        assert_eq!(to_u16_weights(&[(1, f64::NAN), (2, -1.0), (3, 0.0)]), (vec![], vec![]));
    }

    #[test]
    fn chain_weights_scale_the_largest_to_u16_max_and_drop_zeros() {
        let (uids, w) = to_u16_weights(&[(4, 0.5), (1, 0.25), (7, 0.0), (2, 1e-9)]);
        assert_eq!(uids, vec![1, 4]);
        assert_eq!(w, vec![32768, 65535]);
    }

    #[test]
    fn evaluation_order_is_least_recently_scored_first() {
        let p = ScoringParams::default();
        let mut book = book_of(4);
        book.record(5, 0, hk(0), eval(0.01, 0.0), &p);
        book.record(3, 1, hk(1), eval(0.01, 0.0), &p);
        book.record(4, 2, hk(2), WindowOutcome::Missing, &p); // missing is not "scored"
        assert_eq!(book.eval_order(&[0, 1, 2, 3]), vec![2, 3, 1, 0]);
    }

    #[test]
    fn scores_survive_a_save_and_load_and_bad_files_are_refused() {
        let p = ScoringParams::default();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scores.json");
        assert!(ScoreBook::load(&path).unwrap().is_none());
        let mut book = book_of(2);
        book.record(7, 1, hk(1), eval(0.02, 0.01), &p);
        book.finish_window(7);
        book.save(&path).unwrap();
        let loaded = ScoreBook::load(&path).unwrap().unwrap();
        assert_eq!((loaded.window, loaded.uids.len()), (book.window, book.uids.len()));
        for (uid, s) in &book.uids {
            let l = &loaded.uids[uid];
            assert_eq!((l.hotkey, l.last_scored, l.windows_scored), (s.hotkey, s.last_scored, s.windows_scored));
            assert!((l.moving - s.moving).abs() < 1e-15 && (l.indicator - s.indicator).abs() < 1e-15);
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(&hk(1).to_ss58()), "hotkeys are readable: {text}");

        std::fs::write(&path, &text[..text.len() / 2]).unwrap();
        let err = ScoreBook::load(&path).unwrap_err().to_string();
        assert!(err.contains("scores.json") && err.contains("not a scores file"), "{err}");
        std::fs::write(&path, text.replace("\"format\": 1", "\"format\": 9")).unwrap();
        assert!(ScoreBook::load(&path).unwrap_err().to_string().contains("format 9"));
    }

    #[test]
    fn a_damaged_scores_file_is_set_aside_and_scoring_starts_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scores.json");
        assert_eq!(ScoreBook::load_or_set_aside(&path).unwrap(), (None, None));
        book_of(2).save(&path).unwrap();
        let (kept, aside) = ScoreBook::load_or_set_aside(&path).unwrap();
        assert!(kept.is_some() && aside.is_none());
        std::fs::write(&path, b"{ not json").unwrap();
        let (book, aside) = ScoreBook::load_or_set_aside(&path).unwrap();
        let aside = aside.expect("the damaged file was moved aside");
        assert!(book.is_none() && !path.exists(), "the damaged file is no longer in the way");
        assert_eq!(std::fs::read(&aside).unwrap(), b"{ not json", "the damaged file is kept for the operator");
        assert!(aside.file_name().unwrap().to_string_lossy().starts_with("scores.json.damaged-"));
    }
}
