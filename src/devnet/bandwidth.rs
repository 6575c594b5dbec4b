//! The bandwidth model: what a miner of each exchanging group downloaded per window, beside
//! what the exchange implies (the state and delta slices of each peer it reads).

use std::io::Write;

use anyhow::Result;
use tessera_actors::devnet::Role;
use tessera_core::hparams::Hparams;
use tessera_core::model::ParamLayout;
use tessera_core::slice::{
    Exchange, ObjectBytes, download_bytes_per_window, max_encoded_len, slice_len, state_compression,
};
use tessera_core::sparseloco::{CompressSettings, delta_object_bytes};

use super::report::{MinerRun, exchange_of};

/// The groups whose downloads are shown.
const GROUPS: [Role; 2] = [Role::Exchanging, Role::SeedExchange];

/// Bytes of one encoded slice of the model, `compression` its hparam.
pub fn slice_bytes(layout: &ParamLayout, compression: u32) -> u64 {
    let values: u64 = layout.params().iter().map(|p| slice_len(p.numel() as u64, compression)).sum();
    max_encoded_len(values as usize) as u64
}

/// The objects of the network's exchange: a state slice, and a delta slice or (SparseLoCo)
/// payload object.
pub fn object_bytes(layout: &ParamLayout, hparams: &Hparams) -> Result<ObjectBytes> {
    let compression = state_compression(hparams.exchange, hparams.compression, layout.total_numel() as u64);
    let state = slice_bytes(layout, compression);
    let delta = match hparams.exchange {
        exchange if exchange.is_compressed() => {
            let defaults = CompressSettings::default();
            let top_k = hparams.exchange_top_k.map_or(defaults.top_k, |k| k as usize);
            delta_object_bytes(layout.params(), &CompressSettings { top_k, ..defaults })?
        }
        _ => state,
    };
    Ok(ObjectBytes { state, delta })
}

/// One group's downloads: measured, and as the exchange implies.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupBandwidth {
    pub role: Role,
    /// The group's exchange, as its miners report it.
    pub exchange: String,
    /// Mean bytes downloaded per miner and window.
    pub measured: f64,
    /// Bytes per window the exchange implies.
    pub computed: u64,
}

/// Each exchanging group that trained a window: what it downloaded and what it should have.
/// `exchange` and `max_peers` are the network's hparams (`exchange_max_peers` applies to the
/// update exchange's group only); the seed-exchange group reads slices of `bytes.state`.
pub fn per_group(
    runs: &[MinerRun],
    exchange: Exchange,
    max_peers: Option<u32>,
    bytes: ObjectBytes,
) -> Vec<GroupBandwidth> {
    GROUPS
        .into_iter()
        .filter_map(|role| {
            let group: Vec<&MinerRun> = runs.iter().filter(|r| r.role == role).collect();
            let windows: usize = group.iter().map(|r| r.windows.len()).sum();
            if windows == 0 {
                return None;
            }
            let downloaded: u64 = group.iter().flat_map(|r| r.windows.iter()).map(|w| w.bytes_downloaded).sum();
            let peers = publishing(runs, role).saturating_sub(1);
            let (exchange, objects) = match role {
                Role::SeedExchange => (Exchange::Seed, ObjectBytes { state: bytes.state, delta: bytes.state }),
                _ => (exchange, bytes),
            };
            Some(GroupBandwidth {
                role,
                exchange: exchange_of(runs, role),
                measured: downloaded as f64 / windows as f64,
                computed: download_bytes_per_window(exchange, peers, max_peers.map(u64::from), objects),
            })
        })
        .collect()
}

/// Nodes publishing in the exchange of `role`: every one is a peer, adversaries too (they
/// publish in the network's exchange, the exchanging miners').
fn publishing(runs: &[MinerRun], role: Role) -> u64 {
    let publishes = |r: &&MinerRun| r.role == role || (role == Role::Exchanging && r.role.is_adversary());
    runs.iter().filter(publishes).count() as u64
}

/// A line per group.
pub fn print(out: &mut impl Write, groups: &[GroupBandwidth], bytes: ObjectBytes) -> Result<()> {
    for g in groups {
        let compressed = [Exchange::SparseLoco, Exchange::Gradient].iter().any(|e| g.exchange == e.as_str());
        let objects = if compressed {
            format!(
                "peers' deltas of {:.1} KB, in-step states of {:.1} KB",
                bytes.delta as f64 / 1e3,
                bytes.state as f64 / 1e3
            )
        } else {
            format!("peers' state + delta slices of {:.1} KB", bytes.state as f64 / 1e3)
        };
        writeln!(
            out,
            "{} ({}): downloaded {:.1} KB per miner and window ({objects}: {:.1} KB expected)",
            g.role,
            g.exchange,
            g.measured / 1e3,
            g.computed as f64 / 1e3
        )?;
    }
    Ok(())
}

/// The groups for `summary.json`, by role.
pub fn to_json(groups: &[GroupBandwidth]) -> serde_json::Map<String, serde_json::Value> {
    groups
        .iter()
        .map(|g| {
            let figures = serde_json::json!({
                "measured_bytes_per_window": g.measured,
                "computed_bytes_per_window": g.computed,
            });
            (g.role.to_string(), figures)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::table::SliceCounts;
    use super::super::table::tests::window;
    use super::*;
    use tessera_actors::devnet::Adversary;

    fn run(name: &str, role: Role, exchange: &str, downloaded: &[u64]) -> MinerRun {
        let windows = downloaded
            .iter()
            .enumerate()
            .map(|(i, &bytes)| {
                let mut w = window(i as u64, 3.0, None, (1, 1));
                w.bytes_downloaded = bytes;
                w
            })
            .collect();
        let (slices, restarts, resumed) = (SliceCounts::default(), 0, false);
        MinerRun { name: name.into(), role, exchange: exchange.into(), windows, slices, restarts, resumed }
    }

    #[test]
    fn every_publisher_but_the_own_is_read_up_to_max_peers() {
        let runs = [
            run("miner1", Role::Exchanging, "update", &[1000, 3000]),
            run("miner2", Role::Exchanging, "update", &[2000, 2000]),
            run("seedx1", Role::SeedExchange, "seed", &[0, 0]),
            run("baseline1", Role::Baseline, "none", &[0, 0]),
            run("copier1", Role::Adversary(Adversary::Copier), "update", &[0]),
            run("lazy1", Role::Adversary(Adversary::Lazy), "update", &[0]),
        ];
        let bytes = ObjectBytes { state: 100, delta: 100 };
        let groups = per_group(&runs, Exchange::Update, None, bytes);
        // Two exchanging miners and two adversaries publish: three peers, a state and a delta slice each.
        let update =
            GroupBandwidth { role: Role::Exchanging, exchange: "update".into(), measured: 2000.0, computed: 600 };
        let seed = GroupBandwidth { role: Role::SeedExchange, exchange: "seed".into(), measured: 0.0, computed: 0 };
        assert_eq!(groups, [update, seed]);
        // `exchange_max_peers` 2: the own slice and one peer's.
        assert_eq!(per_group(&runs, Exchange::Update, Some(2), bytes)[0].computed, 200);
        // Under the seed exchange it does not apply.
        assert_eq!(per_group(&runs, Exchange::Seed, Some(2), bytes)[0].computed, 600);
        // SparseLoCo: every peer's delta, and the in-step states of up to 4 of them.
        let sparse = ObjectBytes { state: 100, delta: 40 };
        assert_eq!(per_group(&runs, Exchange::SparseLoco, Some(2), sparse)[0].computed, 3 * 40 + 3 * 100);
        let mut out = Vec::new();
        print(&mut out, &groups[..1], bytes).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "exchanging (update): downloaded 2.0 KB per miner and window (peers' state + delta slices of 0.1 KB: 0.6 KB expected)\n"
        );
        assert!(per_group(&runs[3..4], Exchange::Update, None, bytes).is_empty(), "no group, no line");
    }
}
