//! `tessera status`: one screen for a running process, read from its `/metrics` and
//! `/healthz` — each node's identity, window, loss, speed, peers, rejections, restarts.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cli::StatusArgs;

/// One sample of the Prometheus text format: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The samples of a Prometheus text exposition (comments and malformed lines skipped).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (head, value) = line.trim().rsplit_once(' ')?;
    let value = match value {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let (name, labels) = match head.split_once('{') {
        None => (head.to_owned(), BTreeMap::new()),
        Some((name, rest)) => (name.to_owned(), parse_labels(rest.strip_suffix('}')?)?),
    };
    Some(Sample { name, labels, value })
}

/// `a="x",b="y \"q\""` → {a: x, b: y "q"}.
fn parse_labels(text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(labels);
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if chars.next()? != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(key.trim().to_owned(), value);
    }
}

/// What the screen shows of one node.
#[derive(Debug, Default)]
struct Node {
    role: String,
    uid: String,
    hotkey: String,
    bucket: String,
    values: BTreeMap<String, f64>,
    rejected: BTreeMap<String, f64>,
    restarts: BTreeMap<String, f64>,
    averaged: BTreeMap<String, f64>,
}

pub async fn run(args: StatusArgs) -> Result<()> {
    let base = args.metrics.trim_end_matches('/').trim_end_matches("/metrics").to_owned();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| {
            format!("reading {base}/metrics: is a tessera miner or validator running there (metrics.listen)?")
        })?
        .text()
        .await?;
    let health = match client.get(format!("{base}/healthz")).send().await {
        Ok(r) => {
            format!("{} {}", if r.status().is_success() { "healthy:" } else { "UNHEALTHY:" }, r.text().await?.trim())
        }
        Err(e) => format!("/healthz unreachable: {e}"),
    };
    let samples = parse_metrics(&metrics);
    let nodes = group(&samples);
    if nodes.is_empty() {
        bail!("{base}/metrics has no tessera series: is this a tessera process?");
    }
    print!("{}", render(&base, &health, &nodes));
    Ok(())
}

fn group(samples: &[Sample]) -> BTreeMap<String, Node> {
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    for s in samples {
        let Some(miner) = s.labels.get("miner") else { continue };
        if !s.name.starts_with("tessera_") {
            continue;
        }
        let node = nodes.entry(miner.clone()).or_default();
        let label = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
        match s.name.as_str() {
            "tessera_miner_info" => {
                (node.role, node.uid, node.hotkey, node.bucket) =
                    (label("role"), label("uid"), label("hotkey"), label("bucket"));
            }
            "tessera_slices_rejected_total" => {
                node.rejected.insert(label("reason"), s.value);
            }
            "tessera_actor_restarts_total" => {
                node.restarts.insert(label("actor"), s.value);
            }
            "tessera_window_slices_averaged" => {
                node.averaged.insert(label("kind"), s.value);
            }
            name if s.labels.len() == 1 => {
                node.values.insert(name.to_owned(), s.value);
            }
            _ => {}
        }
    }
    nodes
}

fn render(base: &str, health: &str, nodes: &BTreeMap<String, Node>) -> String {
    let mut out = format!("tessera at {base}: {health}\n\n");
    let bw = nodes.values().map(|n| n.bucket.chars().count()).max().unwrap_or(0).max(6);
    out.push_str(&format!(
        "{:<14} {:<9} {:>4} {:<13} {:<bw$} {:>7} {:>4} {:>7} {:>8} {:>8} {:>5} {:>8}\n",
        "node", "role", "uid", "hotkey", "bucket", "window", "lag", "loss", "heldout", "tok/s", "peers", "averaged"
    ));
    let num = |n: &Node, k: &str, prec: usize| {
        n.values.get(k).filter(|v| v.is_finite()).map(|v| format!("{v:.prec$}")).unwrap_or_else(|| "-".into())
    };
    for (name, n) in nodes {
        let hotkey = if n.hotkey.len() > 12 {
            format!("{}…{}", &n.hotkey[..5], &n.hotkey[n.hotkey.len() - 5..])
        } else {
            n.hotkey.clone()
        };
        let averaged = match (n.averaged.get("state"), n.averaged.get("delta")) {
            (Some(s), Some(d)) => format!("{s:.0}+{d:.0}"),
            _ => "-".into(),
        };
        out.push_str(&format!(
            "{:<14} {:<9} {:>4} {:<13} {:<bw$} {:>7} {:>4} {:>7} {:>8} {:>8} {:>5} {:>8}\n",
            name,
            if n.role.is_empty() { "-" } else { &n.role },
            if n.uid.is_empty() { "-" } else { &n.uid },
            hotkey,
            n.bucket,
            num(n, "tessera_window", 0),
            num(n, "tessera_window_lag", 0),
            num(n, "tessera_loss", 3),
            num(n, "tessera_eval_loss", 3),
            num(n, "tessera_tokens_per_second", 0),
            num(n, "tessera_peers", 0),
            averaged,
        ));
    }
    out.push('\n');
    for (name, n) in nodes {
        let rejected: Vec<String> =
            n.rejected.iter().filter(|(_, v)| **v > 0.0).map(|(r, v)| format!("{r} {v:.0}")).collect();
        let restarts: Vec<String> =
            n.restarts.iter().filter(|(_, v)| **v > 0.0).map(|(a, v)| format!("{a} {v:.0}")).collect();
        out.push_str(&format!(
            "{name}: rejected {}; restarts {}\n",
            if rejected.is_empty() { "none".to_owned() } else { rejected.join(", ") },
            if restarts.is_empty() { "none".to_owned() } else { restarts.join(", ") },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP tessera_loss Mean training loss.
# TYPE tessera_loss gauge
tessera_loss{miner="m1"} 2.5
tessera_window{miner="m1"} 40
tessera_miner_info{miner="m1",uid="3",hotkey="5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY",bucket="s3://b",role="miner"} 1
tessera_slices_rejected_total{miner="m1",reason="bad_signature"} 2
tessera_actor_restarts_total{miner="m1",actor="trainer"} 1
tessera_window_slices_averaged{miner="m1",kind="state"} 3
tessera_window_slices_averaged{miner="m1",kind="delta"} 2
odd{a="x \"q\"",b="y"} NaN
not a metric line
"#;

    #[test]
    fn the_text_format_parses_with_labels_escapes_and_special_values() {
        let samples = parse_metrics(TEXT);
        assert_eq!(samples.len(), 8, "{samples:?}");
        assert_eq!(samples[0].name, "tessera_loss");
        assert_eq!(samples[0].labels["miner"], "m1");
        assert_eq!(samples[0].value, 2.5);
        let odd = samples.iter().find(|s| s.name == "odd").unwrap();
        assert_eq!(odd.labels["a"], "x \"q\"");
        assert!(odd.value.is_nan());
    }

    #[test]
    fn the_screen_shows_identity_progress_rejections_and_restarts() {
        let nodes = group(&parse_metrics(TEXT));
        let screen = render("http://127.0.0.1:9464", "healthy: ok: m1", &nodes);
        assert!(screen.contains("healthy: ok: m1"), "{screen}");
        let row = screen.lines().find(|l| l.starts_with("m1 ")).unwrap();
        for cell in ["miner", " 3 ", "5Grwv…KutQY", "s3://b", " 40 ", "2.500", "3+2"] {
            assert!(row.contains(cell), "{cell} in {row}");
        }
        assert!(screen.contains("m1: rejected bad_signature 2; restarts trainer 1"), "{screen}");
    }
}
