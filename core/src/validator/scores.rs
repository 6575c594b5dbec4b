//! Moving scores per UID, the weights they imply, and their file (written atomically with
//! the window they were computed for, so a restarted validator loses nothing).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::ScoringParams;
use super::evaluation::{Evaluation, clamp_score};
use super::gate::{Specificity, gate, weak_gate};
use crate::hotkey::Hotkey;
use crate::window::Window;

/// What the validator learnt of one miner in one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WindowOutcome {
    Scored(Evaluation),
    /// Scored, but its state slice of the window was refused or far beyond every other's
    /// ([`crate::slice::far_beyond`]): the gate learns from the update as usual and the
    /// window pays nothing (a loss still counts), so poisoning state costs a window's pay
    /// each time.
    StateFault(Evaluation),
    /// No valid delta: none uploaded, uploaded outside the window's time, or rejected.
    Missing,
    /// Its delta copies UID `original`'s, first seen earlier by the validator (or at the
    /// same time with the same body): see [`super::copies`].
    Copier {
        original: u16,
    },
}

/// One UID's standing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UidScore {
    #[serde(with = "ss58")]
    pub hotkey: Hotkey,
    /// Moving average of the window scores (loss improvement on the validator's random
    /// data; negative when the updates make it worse).
    pub moving: f64,
    /// The gate's z: how significantly the miner's updates improve its own data more than
    /// random data ([`Specificity::z`]); reported, and what [`UidScore::gate`] reads.
    pub indicator: f64,
    /// Decayed moments of `own − random` improvement behind `indicator`.
    pub specificity: Specificity,
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
            specificity: Specificity::default(),
            last_score: None,
            last_scored: None,
            windows_scored: 0,
            windows_missing: 0,
            windows_copied: 0,
        }
    }

    /// The significance gate in [0, 1] ([`gate`]): shut until the miner has been measured
    /// in enough windows, then open as its own-over-random improvement is significant.
    pub fn gate(&self) -> f64 {
        gate(self.indicator, self.windows_scored + self.windows_copied)
    }

    /// `max(moving, 0) · gate`: what the miner's updates did for the model on data nobody
    /// trained on, paid only to a miner shown to train on its own pages.
    pub fn final_score(&self) -> f64 {
        let v = self.moving.max(0.0) * self.gate();
        if v.is_finite() { v } else { 0.0 }
    }

    /// [`Self::final_score`] under the weak-signal gate ([`weak_gate`]).
    pub fn weak_signal_score(&self) -> f64 {
        let v = self.moving.max(0.0) * weak_gate(self.indicator, self.windows_scored + self.windows_copied);
        if v.is_finite() { v } else { 0.0 }
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

/// 2: window scores are random-data improvements and the gate a significance test (the
/// moments in [`UidScore::specificity`]); a format-1 file is set aside, not misread.
const FORMAT: u32 = 2;

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
    ///
    /// Scored: the score is the improvement on the validator's random data (clamped,
    /// negative kept), and `(own − random) / (|own| + |random|)` joins the gate's moments. Missing: score 0, the
    /// gate untouched (absence says nothing of the data trained on). Copier: score 0 and a
    /// strongly negative `d` ([`Specificity::copy_penalty`]).
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
        let (score, d) = match outcome {
            WindowOutcome::Scored(eval) | WindowOutcome::StateFault(eval) => {
                entry.windows_scored += 1;
                entry.last_scored = Some(window);
                let random = clamp_score(eval.random_improvement());
                let paid = if matches!(outcome, WindowOutcome::StateFault(_)) { random.min(0.0) } else { random };
                (paid, Some(eval.specificity()))
            }
            WindowOutcome::Missing => {
                entry.windows_missing += 1;
                (0.0, None)
            }
            WindowOutcome::Copier { .. } => {
                entry.windows_copied += 1;
                entry.last_scored = Some(window);
                (0.0, Some(entry.specificity.copy_penalty()))
            }
        };
        let a = params.moving_alpha;
        entry.moving = (1.0 - a) * entry.moving + a * score;
        if let Some(d) = d {
            entry.specificity.add(d, params.indicator_alpha);
            entry.indicator = entry.specificity.z();
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
        let strict = self.signal_is_strong();
        let powered: Vec<(u16, f64)> = self
            .uids
            .iter()
            .map(|(&uid, s)| {
                let score = if strict { s.final_score() } else { s.weak_signal_score() };
                (uid, score.powf(params.weights_power))
            })
            .filter(|(_, v)| v.is_finite() && *v > 0.0)
            .collect();
        let total: f64 = powered.iter().map(|(_, v)| v).sum();
        if !(total.is_finite() && total > 0.0) {
            return Vec::new();
        }
        powered.into_iter().map(|(uid, v)| (uid, v / total)).collect()
    }

    /// Whether at least half of the improving miners pass the significance gate. When they
    /// do not (many micro-batches per window dilute the own-data signal; measured on the
    /// devnet at fixed compute 8: honest z 0.5–1.3 after 18 windows), paying only the few
    /// that pass would hand everything to whoever is luckiest or trains hardest on a few
    /// batches (an overfitter took 100% there); [`weak_gate`] pays every miner whose own
    /// data is not significantly worse served than random data, by its random-data
    /// improvement per norm. Sybils can hold the network in this mode only by registering
    /// more insignificant miners than there are significant ones.
    pub fn signal_is_strong(&self) -> bool {
        let improving: Vec<&UidScore> = self.uids.values().filter(|s| s.moving > 0.0).collect();
        let significant = improving.iter().filter(|s| s.gate() > 0.0).count();
        !improving.is_empty() && 2 * significant >= improving.len()
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
        let bad =
            book.uids.values().any(|s| !(s.moving.is_finite() && s.indicator.is_finite() && s.specificity.is_finite()));
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
    use rand::SeedableRng;

    use super::*;
    use crate::validator::SCORE_LIMIT;
    use crate::validator::gate::{GATE_MIN_WINDOWS, GATE_Z_FULL, GATE_Z_OPEN};
    use crate::validator::simulation::{Miner, gaussian};

    fn hk(i: u8) -> Hotkey {
        Hotkey([i; 32])
    }

    fn eval(own: f64, random: f64) -> WindowOutcome {
        WindowOutcome::Scored(Evaluation {
            own_before: 3.0,
            own_after: 3.0 - own,
            random_before: 3.0,
            random_after: 3.0 - random,
            control: None,
        })
    }

    fn book_of(n: u8) -> ScoreBook {
        let mut book = ScoreBook::new(1);
        book.sync_metagraph(&(0..n).map(hk).collect::<Vec<_>>());
        book
    }

    fn weights_of(book: &ScoreBook, p: &ScoringParams) -> BTreeMap<u16, f64> {
        book.weights(p).into_iter().collect()
    }

    #[test]
    fn the_window_score_is_the_random_improvement_with_its_sign() {
        let p = ScoringParams::default();
        let mut book = book_of(1);
        let mut score = |w: Window, own: f64, random: f64| book.record(w, 0, hk(0), eval(own, random), &p);
        assert!((score(1, 0.5, 0.004) - 0.004).abs() < 1e-12, "own data does not pay");
        assert!((score(2, 0.5, -0.003) + 0.003).abs() < 1e-12, "worse on random data is negative");
        assert_eq!(score(3, 0.0, 7.0), SCORE_LIMIT);
        assert_eq!(score(4, 0.0, -7.0), -SCORE_LIMIT);
        assert_eq!(score(5, 0.0, f64::NAN), -SCORE_LIMIT);
        assert!((score(6, f64::INFINITY, 0.01) - 0.01).abs() < 1e-12);
        assert!(book.uids[&0].specificity.mean < 0.0, "a non-finite own loss counts against the gate");
    }

    #[test]
    fn an_overfitter_earns_nothing_while_an_honest_miner_is_paid() {
        let p = ScoringParams::default();
        let mut book = book_of(2);
        for w in 0..40 {
            let tilt = if w % 2 == 0 { 0.001 } else { -0.001 };
            book.record(w, 0, hk(0), eval(0.010 + tilt, 0.004), &p); // honest
            book.record(w, 1, hk(1), eval(0.5 + tilt, -0.002), &p); // fits own batches, worse elsewhere
        }
        let (honest, overfit) = (&book.uids[&0], &book.uids[&1]);
        assert!(overfit.gate() == 1.0, "its own data is clearly specific: the score, not the gate, stops it");
        assert!(overfit.moving < 0.0 && overfit.final_score() == 0.0, "{overfit:?}");
        assert!(honest.final_score() > 0.0);
        assert_eq!(weights_of(&book, &p), BTreeMap::from([(0, 1.0)]));
    }

    #[test]
    fn the_gate_is_shut_until_enough_windows_are_measured() {
        let p = ScoringParams::default();
        let mut book = book_of(1);
        for w in 0..GATE_MIN_WINDOWS - 1 {
            let tilt = if w % 2 == 0 { 0.001 } else { -0.001 };
            book.record(w, 0, hk(0), eval(0.010 + tilt, 0.004), &p);
            assert_eq!(book.uids[&0].gate(), 0.0, "window {w}");
        }
        assert!(book.weights(&p).is_empty());
        book.record(GATE_MIN_WINDOWS, 0, hk(0), eval(0.010, 0.004), &p);
        assert!(book.uids[&0].indicator > GATE_Z_FULL, "{}", book.uids[&0].indicator);
        assert_eq!(book.uids[&0].gate(), 1.0);
        assert_eq!(weights_of(&book, &p), BTreeMap::from([(0, 1.0)]));
    }

    #[test]
    fn the_gate_opens_for_honest_noise_and_stays_shut_for_random_pages_lazy_and_noise() {
        let p = ScoringParams::default();
        let miners = [Miner::Honest { own: 0.010, random: 0.004 }, Miner::RandomPages, Miner::Lazy, Miner::Noise];
        for seed in 0..5 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut book = book_of(4);
            for w in 0..60 {
                for (uid, m) in miners.iter().enumerate() {
                    book.record(w, uid as u16, hk(uid as u8), m.outcome(&mut rng), &p);
                }
            }
            let z = |uid: u16| book.uids[&uid].indicator;
            assert!(z(0) > GATE_Z_FULL && book.uids[&0].gate() == 1.0, "seed {seed}: honest z {}", z(0));
            for uid in 1..4 {
                assert!(z(uid) < GATE_Z_OPEN && book.uids[&uid].gate() == 0.0, "seed {seed}: uid {uid} z {}", z(uid));
            }
        }
    }

    #[test]
    fn sybils_with_tiny_positive_improvements_move_no_honest_gate_or_order() {
        let p = ScoringParams::default();
        let honest = [(0.010, 0.004), (0.012, 0.005), (0.008, 0.003)];
        let run = |sybils: u8| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            let mut sybil_rng = rand::rngs::StdRng::seed_from_u64(8);
            let mut book = book_of(3 + sybils);
            for w in 0..60 {
                for (uid, &(own, random)) in honest.iter().enumerate() {
                    let m = Miner::Honest { own, random };
                    book.record(w, uid as u16, hk(uid as u8), m.outcome(&mut rng), &p);
                }
                for s in 0..sybils {
                    let d = 1e-5 * gaussian(&mut sybil_rng);
                    book.record(w, 3 + u16::from(s), hk(3 + s), eval(2e-4 + 1e-4 + d, 1e-4), &p);
                }
            }
            book
        };
        let (alone, crowded) = (run(0), run(10));
        for uid in 0..3 {
            assert_eq!(alone.uids[&uid].final_score(), crowded.uids[&uid].final_score(), "uid {uid}");
        }
        let (wa, wc) = (weights_of(&alone, &p), weights_of(&crowded, &p));
        let order = |w: &BTreeMap<u16, f64>| {
            let mut uids: Vec<u16> = (0..3).collect();
            uids.sort_by(|a, b| w[b].total_cmp(&w[a]));
            uids
        };
        assert_eq!(order(&wa), order(&wc));
        let least_honest = (0..3).map(|u| wc[&u]).fold(f64::INFINITY, f64::min);
        let most_sybil = (3..13).map(|u| wc.get(&u).copied().unwrap_or(0.0)).fold(0.0, f64::max);
        assert!(least_honest >= most_sybil, "{wc:?}");
    }

    #[test]
    fn a_copier_gate_shuts_and_one_copied_window_costs_an_honest_gate() {
        let p = ScoringParams::default();
        let mut book = book_of(2);
        for w in 0..30 {
            let tilt = if w % 2 == 0 { 0.003 } else { -0.003 };
            book.record(w, 0, hk(0), eval(0.010 + tilt, 0.004), &p);
            book.record(w, 1, hk(1), WindowOutcome::Copier { original: 0 }, &p);
        }
        let copier = &book.uids[&1];
        assert!(copier.indicator < -GATE_Z_FULL && copier.gate() == 0.0 && copier.windows_copied == 30);
        let before = book.uids[&0].indicator;
        book.record(30, 0, hk(0), WindowOutcome::Copier { original: 1 }, &p);
        let after = book.uids[&0].indicator;
        assert!(after < 0.7 * before, "{before} -> {after}");
        assert_eq!(book.uids[&0].last_score, Some(0.0));
    }

    #[test]
    fn absence_decays_the_moving_score_and_leaves_the_gate() {
        let p = ScoringParams::default();
        let mut book = book_of(1);
        for w in 0..20 {
            let tilt = if w % 2 == 0 { 0.001 } else { -0.001 };
            book.record(w, 0, hk(0), eval(0.01 + tilt, 0.002), &p);
        }
        let before = book.uids[&0].clone();
        book.record(20, 0, hk(0), WindowOutcome::Missing, &p);
        let after = &book.uids[&0];
        assert!((after.moving - before.moving * (1.0 - p.moving_alpha)).abs() < 1e-15);
        assert_eq!((after.indicator, after.specificity), (before.indicator, before.specificity));
        assert_eq!(after.windows_missing, 1);
    }

    #[test]
    fn a_state_fault_pays_nothing_for_the_window_but_a_loss_still_counts() {
        let p = ScoringParams::default();
        let (mut honest, mut faulty) = (book_of(1), book_of(1));
        for w in 0..20 {
            let tilt = if w % 2 == 0 { 0.001 } else { -0.001 };
            let outcome = eval(0.01 + tilt, 0.002);
            honest.record(w, 0, hk(0), outcome, &p);
            let WindowOutcome::Scored(e) = outcome else { unreachable!() };
            let fault = if w >= 10 { WindowOutcome::StateFault(e) } else { outcome };
            let paid = faulty.record(w, 0, hk(0), fault, &p);
            assert!((paid - if w >= 10 { 0.0 } else { 0.002 }).abs() < 1e-12, "{w}: {paid}");
        }
        let (h, f) = (&honest.uids[&0], &faulty.uids[&0]);
        assert!(f.moving < 0.5 * h.moving, "{} against {}", f.moving, h.moving);
        assert_eq!(f.specificity, h.specificity, "the gate learns from the update either way");
        let WindowOutcome::Scored(worse) = eval(0.01, -0.003) else { unreachable!() };
        let paid = faulty.record(20, 0, hk(0), WindowOutcome::StateFault(worse), &p);
        assert!((paid + 0.003).abs() < 1e-12, "a loss still counts: {paid}");
    }

    #[test]
    fn a_changed_hotkey_starts_from_zero_and_gone_uids_are_dropped() {
        let p = ScoringParams::default();
        let mut book = book_of(3);
        for uid in 0..3u16 {
            book.record(1, uid, hk(uid as u8), eval(0.01, 0.01), &p);
        }
        let reset = book.sync_metagraph(&[hk(0), hk(9)]);
        assert_eq!(reset, vec![1]);
        assert_eq!(book.uids.len(), 2);
        assert_eq!(book.uids[&1].hotkey, hk(9));
        assert_eq!((book.uids[&1].moving, book.uids[&1].specificity), (0.0, Specificity::default()));
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
        for w in 0..10 {
            book.record(w, 0, hk(0), eval(0.5, -0.5), &p);
            book.record(w, 1, hk(1), eval(f64::NAN, f64::NAN), &p);
            book.record(w, 2, hk(2), eval(f64::INFINITY, f64::NEG_INFINITY), &p);
        }
        assert!(book.weights(&p).is_empty(), "{:?}", book.weights(&p));
        assert!(book.uids.values().all(|s| s.moving.is_finite() && s.indicator.is_finite()));
        assert_eq!(to_u16_weights(&[(1, f64::NAN), (2, -1.0), (3, 0.0)]), (vec![], vec![]));
        // Honest miners share the weight; it sums to one.
        let mut book = book_of(2);
        for w in 0..30 {
            let tilt = if w % 2 == 0 { 0.001 } else { -0.001 };
            book.record(w, 0, hk(0), eval(0.01 + tilt, 0.004), &p);
            book.record(w, 1, hk(1), eval(0.01 - tilt, 0.005), &p);
        }
        let weights = weights_of(&book, &p);
        assert_eq!(weights.len(), 2, "{weights:?}");
        assert!((weights.values().sum::<f64>() - 1.0).abs() < 1e-12, "{weights:?}");
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
        for w in 0..7 {
            book.record(w, 1, hk(1), eval(0.02 + 0.001 * w as f64, 0.01), &p);
        }
        book.finish_window(7);
        book.save(&path).unwrap();
        let loaded = ScoreBook::load(&path).unwrap().unwrap();
        assert_eq!((loaded.window, loaded.uids.len()), (book.window, book.uids.len()));
        for (uid, s) in &book.uids {
            let l = &loaded.uids[uid];
            assert_eq!((l.hotkey, l.last_scored, l.windows_scored), (s.hotkey, s.last_scored, s.windows_scored));
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-15 * a.abs().max(b.abs()).max(1.0);
            let (ls, ss) = (l.specificity, s.specificity);
            assert!(close(l.moving, s.moving) && close(l.indicator, s.indicator), "{l:?}");
            assert!(close(ls.weight, ss.weight) && close(ls.mean, ss.mean) && close(ls.m2, ss.m2), "{l:?}");
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(&hk(1).to_ss58()), "hotkeys are readable: {text}");

        std::fs::write(&path, &text[..text.len() / 2]).unwrap();
        let err = ScoreBook::load(&path).unwrap_err().to_string();
        assert!(err.contains("scores.json") && err.contains("not a scores file"), "{err}");
        std::fs::write(&path, text.replace("\"format\": 2", "\"format\": 9")).unwrap();
        assert!(ScoreBook::load(&path).unwrap_err().to_string().contains("format 9"));
    }

    #[test]
    fn a_damaged_or_old_scores_file_is_set_aside_and_scoring_starts_again() {
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
        // A format-1 file (the median-gated scores) is not misread as this version's.
        let old = format!(
            r#"{{"format":1,"netuid":1,"window":3,"uids":{{"0":{{"hotkey":"{}","moving":0.1,"indicator":0.5,
            "specific_diff":0.01,"specific_scale":0.02,"last_score":0.1,"last_scored":3,"windows_scored":3,
            "windows_missing":0,"windows_copied":0}}}}}}"#,
            hk(0).to_ss58()
        );
        std::fs::write(&path, old).unwrap();
        let (book, aside) = ScoreBook::load_or_set_aside(&path).unwrap();
        assert!(book.is_none() && aside.is_some() && !path.exists());
    }
}
