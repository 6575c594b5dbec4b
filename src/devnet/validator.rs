//! The devnet's validator view: a line per scored window, each UID's weight on the dev
//! chain at the end, and the verdict on the adversaries.

use std::io::Write;
use std::sync::Arc;

use anyhow::Result;
use tessera_actors::devnet::{Adversary, Devnet, Role};
use tessera_actors::stats::ScoredWindow;
use tessera_actors::{MinerContext, UidOutcome};

/// One line per scored window: each UID's outcome, window score and weight.
pub fn print_window(out: &mut impl Write, name: &str, w: &ScoredWindow, names: &[(u16, String)]) -> Result<()> {
    let label = |uid: u16| names.iter().find(|(u, _)| *u == uid).map(|(_, n)| n.clone()).unwrap_or(uid.to_string());
    let cells: Vec<String> = w
        .uids
        .iter()
        .map(|u| match (u.outcome, u.score) {
            (UidOutcome::Scored | UidOutcome::StateFault, Some(s)) => format!(
                "{}{} {:+.4} d{:+.5} z{:.1} w{:.2}",
                label(u.uid),
                if u.outcome == UidOutcome::StateFault { " state-fault" } else { "" },
                s,
                u.specificity.unwrap_or(0.0),
                u.indicator,
                u.weight
            ),
            (outcome, _) => format!("{} {outcome} w{:.2}", label(u.uid), u.weight),
        })
        .collect();
    writeln!(
        out,
        "{:>6}  {:<10} scored {} ({:.2}s each), skipped {}, missing {}, copiers {}: {}",
        w.window,
        name,
        w.scored,
        w.eval_secs_per_miner,
        w.skipped,
        w.missing,
        w.copiers,
        cells.join(" | ")
    )?;
    Ok(())
}

/// A UID's weight as the validator set it on the dev chain.
pub struct WeightRow {
    pub uid: u16,
    pub name: String,
    pub role: Role,
    pub weight: u16,
    pub share: f64,
}

/// Each node's weight in the validator's row of the dev chain's `Weights`.
pub async fn chain_weights(
    net: &Devnet,
    validator: &MinerContext,
    nodes: &[Arc<MinerContext>],
) -> Result<Vec<WeightRow>> {
    use tessera_core::chain::Chain;
    let set = net.chain.weights(net.options.netuid, validator.id.uid).await?;
    let total: f64 = set.iter().map(|(_, w)| f64::from(*w)).sum();
    Ok(nodes
        .iter()
        .filter(|m| !m.is_validator())
        .map(|m| {
            let weight = set.iter().find(|(u, _)| *u == m.id.uid).map(|(_, w)| *w).unwrap_or(0);
            WeightRow {
                uid: m.id.uid,
                name: m.id.name.clone(),
                role: net.role(&m.id.name).unwrap_or(Role::Exchanging),
                weight,
                share: if total > 0.0 { f64::from(weight) / total } else { 0.0 },
            }
        })
        .collect())
}

/// A row per UID: its node, role, weight and share of the validator's weights.
fn print_weights(out: &mut impl Write, rows: &[WeightRow]) -> Result<()> {
    writeln!(out, "\n{:<5} {:<13} {:<12} {:>8} {:>7}", "uid", "node", "role", "weight", "share")?;
    for r in rows {
        writeln!(out, "{:<5} {:<13} {:<12} {:>8} {:>6.1}%", r.uid, r.name, r.role, r.weight, r.share * 100.0)?;
    }
    Ok(())
}

/// The weights `validator` set on the dev chain and the verdict on them (its reasons added
/// to `reasons`); with adversaries and no reason, their share.
pub fn print_weights_and_verdict(
    out: &mut impl Write,
    validator: &str,
    rows: &[WeightRow],
    adversaries: bool,
    reasons: &mut Vec<String>,
) -> Result<()> {
    write!(out, "\nweights set on the dev chain by {validator}:")?;
    print_weights(out, rows)?;
    let before = reasons.len();
    judge(rows, adversaries, reasons);
    if reasons.len() == before && adversaries {
        let share = adversary_share(rows);
        writeln!(
            out,
            "every honest miner ends above every adversary; the adversaries hold {:.1}% of the weight",
            share * 100.0
        )?;
    }
    Ok(())
}

/// The verdict on the weights: some were set; with adversaries, every honest miner ends
/// with more weight than every adversary, and the adversaries with under 10% in all. A
/// sybil trains honestly and its twin publishes the same update under a second hotkey:
/// the update is to be paid once, so the sybil is judged as an honest miner would be
/// (neither an adversary nor in their share) and its twin as an adversary.
pub fn judge(rows: &[WeightRow], adversaries: bool, reasons: &mut Vec<String>) {
    let total: u64 = rows.iter().map(|r| u64::from(r.weight)).sum();
    if total == 0 {
        reasons.push("the validator set no weights on the dev chain".into());
        return;
    }
    if !adversaries {
        return;
    }
    let honest: Vec<&WeightRow> = rows.iter().filter(|r| r.role == Role::Exchanging).collect();
    let weakest_honest = honest.iter().map(|r| r.weight).min().unwrap_or(0);
    for a in rows.iter().filter(|r| is_judged_adversary(r)) {
        if a.weight >= weakest_honest {
            reasons.push(format!(
                "adversary {} ended with weight {} ≥ the weakest honest miner's {}",
                a.name, a.weight, weakest_honest
            ));
        }
    }
    let bad_share = adversary_share(rows);
    if bad_share >= 0.10 {
        reasons.push(format!("the adversaries hold {:.1}% of the weight (must be under 10%)", bad_share * 100.0));
    }
}

/// An adversary whose weight must stay below every honest miner's (all but the sybil,
/// whose own training is honest).
fn is_judged_adversary(row: &WeightRow) -> bool {
    row.role.is_adversary() && row.role != Role::Adversary(Adversary::Sybil)
}

/// The adversaries' share of the weights (a sybil's own, earned by honest training, left out).
pub fn adversary_share(rows: &[WeightRow]) -> f64 {
    rows.iter().filter(|r| is_judged_adversary(r)).map(|r| r.share).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_actors::devnet::Adversary;

    fn row(uid: u16, role: Role, weight: u16, share: f64) -> WeightRow {
        WeightRow { uid, name: format!("n{uid}"), role, weight, share }
    }

    #[test]
    fn adversaries_must_end_below_every_honest_miner_and_under_a_tenth() {
        let mut reasons = Vec::new();
        let good = [
            row(0, Role::Exchanging, 65535, 0.5),
            row(1, Role::Exchanging, 60000, 0.46),
            row(2, Role::Adversary(Adversary::Noise), 500, 0.04),
        ];
        judge(&good, true, &mut reasons);
        assert!(reasons.is_empty(), "{reasons:?}");
        let bad = [row(0, Role::Exchanging, 65535, 0.5), row(1, Role::Adversary(Adversary::Lazy), 65535, 0.5)];
        judge(&bad, true, &mut reasons);
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        let mut none = Vec::new();
        judge(&[row(0, Role::Exchanging, 0, 0.0)], false, &mut none);
        assert!(none[0].contains("no weights"));
    }
}
