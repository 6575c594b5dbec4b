//! The devnet's adversaries: nodes that publish something other than their honest result,
//! or serve their bucket in a hostile way, as a market's participants would, for the
//! validator's tests and `--adversaries`. Each is a [`Misbehaviour`] the devnet gives its
//! node and, for the bucket's tricks, a [`Hostility`] of its S3 front; the production
//! window loop knows none of them. A new adversary is one more variant of [`Adversary`]
//! and its type, here only.

mod copies;
mod poison;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tessera_core::hotkey::Hotkey;

pub use self::copies::{COPY_NOISE, COPY_SCALE, Copier, CopyKind};
pub use self::poison::{Lazy, Noise, OVERFIT_SCALE, Overfitter, Poisoner};
use super::hostile_s3::Hostility;
use crate::context::RuntimeSettings;
use crate::window::Misbehaviour;

/// A slow bucket answers every read after this share of `peer_deadline` (tenths): just
/// under the deadline, as the slowest peer a deadline alone would never skip.
const SLOW_BUCKET_TENTHS: u32 = 9;
/// How much earlier a time liar's bucket claims its objects were written.
const TIME_LIE: Duration = Duration::from_secs(1);

fn idle(name: &str) -> String {
    format!("a devnet adversary ({name}) does not train")
}

/// The adversaries a devnet can run, one node each with `--adversaries`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Adversary {
    /// Republishes the first exchanging miner's delta.
    Copier,
    /// Publishes a zero update (its state unchanged).
    Lazy,
    /// Publishes noise.
    Noise,
    /// Trains honestly, on random pages instead of its own.
    RandomPages,
    /// Publishes ±the largest admissible value in its state and delta.
    Poisoner,
    /// Republishes the first exchanging miner's delta × 1.05.
    ScaledCopy,
    /// Republishes the first exchanging miner's delta plus 5% noise.
    NoisyCopy,
    /// Republishes the mean of the others' deltas.
    MeanEcho,
    /// Trains every step on its first micro-batch and publishes its update × 4.
    Overfitter,
    /// Trains honestly; its bucket answers every read just under the deadline.
    SlowBucket,
    /// Copies the first exchanging miner's delta; its bucket claims earlier upload times.
    TimeLiar,
    /// Trains honestly; a second hotkey of the same owner ([`Adversary::SybilTwin`])
    /// publishes the same update.
    Sybil,
    /// The sybil's second hotkey: republishes the sybil's update at once.
    SybilTwin,
}

impl Adversary {
    /// Every adversary, in the devnet's order (`--adversaries all`).
    pub const ALL: [Adversary; 13] = [
        Adversary::Copier,
        Adversary::Lazy,
        Adversary::Noise,
        Adversary::RandomPages,
        Adversary::Poisoner,
        Adversary::ScaledCopy,
        Adversary::NoisyCopy,
        Adversary::MeanEcho,
        Adversary::Overfitter,
        Adversary::SlowBucket,
        Adversary::TimeLiar,
        Adversary::Sybil,
        Adversary::SybilTwin,
    ];
    /// The four the devnet ran before the hostile network's (a bare `--adversaries`).
    pub const CLASSIC: [Adversary; 4] = [Adversary::Copier, Adversary::Lazy, Adversary::Noise, Adversary::RandomPages];

    /// Its name in node names (`copier1`), tables and the report.
    pub fn name(self) -> &'static str {
        match self {
            Adversary::Copier => "copier",
            Adversary::Lazy => "lazy",
            Adversary::Noise => "noise",
            Adversary::RandomPages => "randompages",
            Adversary::Poisoner => "poisoner",
            Adversary::ScaledCopy => "scaledcopy",
            Adversary::NoisyCopy => "noisycopy",
            Adversary::MeanEcho => "meanecho",
            Adversary::Overfitter => "overfitter",
            Adversary::SlowBucket => "slowbucket",
            Adversary::TimeLiar => "timeliar",
            Adversary::Sybil => "sybil",
            Adversary::SybilTwin => "sybiltwin",
        }
    }

    /// The adversaries a list selects: `all`, or names separated by commas; a sybil
    /// brings its twin.
    pub fn parse_list(list: &str) -> Result<Vec<Adversary>, String> {
        let mut chosen: Vec<Adversary> = Vec::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let more: Vec<Adversary> = match name {
                "all" => Adversary::ALL.to_vec(),
                "classic" => Adversary::CLASSIC.to_vec(),
                "sybil" => vec![Adversary::Sybil, Adversary::SybilTwin],
                name => vec![name.parse()?],
            };
            for a in more {
                if !chosen.contains(&a) {
                    chosen.push(a);
                }
            }
        }
        chosen.sort_by_key(|a| Adversary::ALL.iter().position(|b| b == a));
        Ok(chosen)
    }

    /// How its S3 front misbehaves, if it has one.
    pub fn hostility(self, settings: &RuntimeSettings) -> Option<Hostility> {
        match self {
            Adversary::SlowBucket => Some(Hostility::Slow(settings.peer_deadline * SLOW_BUCKET_TENTHS / 10)),
            Adversary::TimeLiar => Some(Hostility::EarlierTimes(TIME_LIE)),
            _ => None,
        }
    }

    /// Sets a node up as this adversary: its settings, and what it publishes instead of
    /// its honest result (`victim`: the honest node copiers copy; `sybil`: the sybil
    /// whose update its twin republishes).
    pub fn equip(self, settings: &mut RuntimeSettings, victim: Hotkey, sybil: Hotkey) -> Option<Arc<dyn Misbehaviour>> {
        let copier = |victim, kind| Some(Arc::new(Copier { victim, kind }) as Arc<dyn Misbehaviour>);
        match self {
            Adversary::Copier | Adversary::TimeLiar => copier(victim, CopyKind::Exact),
            Adversary::ScaledCopy => copier(victim, CopyKind::Scaled),
            Adversary::NoisyCopy => copier(victim, CopyKind::Noised),
            Adversary::MeanEcho => copier(victim, CopyKind::MeanEcho),
            Adversary::SybilTwin => copier(sybil, CopyKind::Exact),
            Adversary::Lazy => Some(Arc::new(Lazy)),
            Adversary::Noise => Some(Arc::new(Noise)),
            Adversary::Poisoner => Some(Arc::new(Poisoner)),
            Adversary::Overfitter => Some(Arc::new(Overfitter)),
            Adversary::RandomPages => {
                settings.random = true;
                None
            }
            Adversary::SlowBucket | Adversary::Sybil => None,
        }
    }
}

impl FromStr for Adversary {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        Adversary::ALL.into_iter().find(|a| a.name() == name).ok_or_else(|| {
            let names: Vec<&str> = Adversary::ALL.iter().map(|a| a.name()).collect();
            format!("unknown adversary {name:?}: one of all, classic, {}", names.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adversary_lists_parse_by_name_all_and_classic() {
        assert_eq!(Adversary::parse_list("all").unwrap(), Adversary::ALL.to_vec());
        assert_eq!(Adversary::parse_list("classic").unwrap(), Adversary::CLASSIC.to_vec());
        assert_eq!(
            Adversary::parse_list("sybil, poisoner,poisoner").unwrap(),
            vec![Adversary::Poisoner, Adversary::Sybil, Adversary::SybilTwin]
        );
        assert!(Adversary::parse_list("bogus").unwrap_err().contains("unknown adversary \"bogus\""));
        for a in Adversary::ALL {
            assert_eq!(a.name().parse::<Adversary>(), Ok(a));
        }
    }
}
