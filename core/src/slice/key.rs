//! Object names in a bucket: `{key}-{window}-{hotkey}-v{P}.slice`.
//!
//! The protocol version is in every name so that peers of another version are ignored
//! (listing filters them out) instead of being mixed in.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::hotkey::Hotkey;
use crate::window::Window;

/// Version of the slice protocol: index sampling, wire format and naming together.
pub const PROTOCOL_VERSION: u16 = 1;

const SUFFIX: &str = ".slice";

/// What a slice carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SliceKind {
    /// Parameter values at `I(w)`, uploaded at the end of window `w-1` to seed window `w`.
    State,
    /// Parameter values at `I(w)` after training in window `w`.
    Delta,
    /// Every parameter's value at the start of window `w` (after the outer step of `w-1`),
    /// in f32: what a node joining a compressed exchange starts from (validators publish
    /// one every few windows).
    Snapshot,
}

impl SliceKind {
    pub const ALL: &'static [SliceKind] = &[SliceKind::State, SliceKind::Delta, SliceKind::Snapshot];

    pub fn as_str(&self) -> &'static str {
        match self {
            SliceKind::State => "state",
            SliceKind::Delta => "delta",
            SliceKind::Snapshot => "snapshot",
        }
    }
}

impl fmt::Display for SliceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SliceKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "state" => Ok(SliceKind::State),
            "delta" => Ok(SliceKind::Delta),
            "snapshot" => Ok(SliceKind::Snapshot),
            other => Err(format!("unknown slice kind {other:?} (expected state, delta or snapshot)")),
        }
    }
}

/// The name of one slice object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    pub kind: SliceKind,
    pub window: Window,
    pub hotkey: Hotkey,
    pub version: u16,
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("not a slice object name {key:?}: {reason}")]
pub struct KeyParseError {
    pub key: String,
    pub reason: String,
}

impl ObjectKey {
    /// A key of the current protocol version.
    pub fn new(kind: SliceKind, window: Window, hotkey: Hotkey) -> Self {
        Self { kind, window, hotkey, version: PROTOCOL_VERSION }
    }

    /// Listing prefix of all slices of one kind and window.
    pub fn prefix(kind: SliceKind, window: Window) -> String {
        format!("{kind}-{window}-")
    }

    /// The key of `kind` for `window` under `exchange`'s protocol version.
    pub fn for_exchange(kind: SliceKind, window: Window, hotkey: Hotkey, exchange: super::Exchange) -> Self {
        Self { kind, window, hotkey, version: exchange.protocol_version() }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}-v{}{SUFFIX}", self.kind, self.window, self.hotkey, self.version)
    }
}

impl FromStr for ObjectKey {
    type Err = KeyParseError;
    fn from_str(key: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| KeyParseError { key: key.to_owned(), reason };
        let stem = key.strip_suffix(SUFFIX).ok_or_else(|| err(format!("does not end in {SUFFIX}")))?;
        let parts: Vec<&str> = stem.split('-').collect();
        let [kind, window, hotkey, version] = parts[..] else {
            return Err(err(format!("expected 4 '-'-separated fields, found {}", parts.len())));
        };
        let kind = kind.parse().map_err(err)?;
        let window = window.parse().map_err(|_| err(format!("window {window:?} is not a number")))?;
        let hotkey = hotkey.parse().map_err(|e: crate::hotkey::HotkeyParseError| err(e.reason))?;
        let version = version
            .strip_prefix('v')
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| err(format!("version {version:?} is not v<number>")))?;
        let parsed = ObjectKey { kind, window, hotkey, version };
        // Exactly one spelling per object, so two names can never denote the same slice.
        if parsed.to_string() != key {
            return Err(err("not in canonical form".into()));
        }
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";

    #[test]
    fn keys_round_trip_through_their_names() {
        let key = ObjectKey::new(SliceKind::Delta, 123, ALICE.parse().unwrap());
        let name = key.to_string();
        assert_eq!(name, format!("delta-123-{ALICE}-v1.slice"));
        assert_eq!(name.parse::<ObjectKey>().unwrap(), key);
        assert!(name.starts_with(&ObjectKey::prefix(SliceKind::Delta, 123)));
    }

    #[test]
    fn foreign_and_malformed_names_are_rejected_with_reasons() {
        for (name, why) in [
            (format!("state-1-{ALICE}-v1.pt"), "does not end"),
            (format!("state-1-{ALICE}.slice"), "expected 4"),
            (format!("weights-1-{ALICE}-v1.slice"), "unknown slice kind"),
            (format!("state-x-{ALICE}-v1.slice"), "not a number"),
            (format!("state-01-{ALICE}-v1.slice"), "canonical"),
            (format!("state-1-{ALICE}-1.slice"), "v<number>"),
            ("state-1-5Grw-v1.slice".to_string(), ""),
        ] {
            let err = name.parse::<ObjectKey>().unwrap_err();
            assert!(err.to_string().contains(why), "{name}: {err}");
        }
    }

    #[test]
    fn other_versions_parse_but_are_not_current() {
        let key: ObjectKey = format!("state-5-{ALICE}-v2.slice").parse().unwrap();
        assert_ne!(key.version, PROTOCOL_VERSION);
    }
}
