//! Reading the runtime: which storage entries and calls its metadata has, storage reads
//! with the runtime's defaults, and the scale-value shapes of numbers, bytes and
//! commitments — what differs between subtensor runtimes is handled here.

use subxt::PolkadotConfig;
use subxt::dynamic::{self, Value};
use subxt::ext::scale_value::{Composite, Primitive, ValueDef};

use super::rpc_err;
use crate::chain::{ChainError, CommitScheme};

pub(super) const SUBTENSOR: &str = "SubtensorModule";
/// Timelocked commit calls, newest first; `commit_crv3_weights` was replaced by
/// `commit_timelocked_weights` (which adds `commit_reveal_version`).
pub(super) const TIMELOCK_CALLS: [&str; 2] = ["commit_timelocked_weights", "commit_crv3_weights"];

pub(super) type AtBlock = subxt::OnlineClientAtBlock<PolkadotConfig>;

/// Whether this runtime has storage `SubtensorModule.<entry>`: runtimes gain and lose
/// entries (`RevealPeriodEpochs` is newer than commit-reveal), and a missing one means its
/// default applies.
pub(super) fn has_storage(metadata: &subxt::Metadata, entry: &str) -> bool {
    metadata.pallet_by_name(SUBTENSOR).and_then(|p| p.storage()).and_then(|s| s.entry_by_name(entry)).is_some()
}

pub(super) fn has_call(metadata: &subxt::Metadata, call: &str) -> bool {
    metadata.pallet_by_name(SUBTENSOR).and_then(|p| p.call_variant_by_name(call)).is_some()
}

/// The commit call this runtime offers: a timelocked one when there is one (the chain
/// then reveals by itself), else the hash commit.
pub(super) fn commit_scheme(metadata: &subxt::Metadata) -> Option<CommitScheme> {
    if let Some(call) = TIMELOCK_CALLS.into_iter().find(|c| has_call(metadata, c)) {
        return Some(CommitScheme::Timelock { call });
    }
    has_call(metadata, "commit_weights").then_some(CommitScheme::Hash)
}

/// `SubtensorModule.<entry>` at `key`: the runtime's default when the key is unset (a
/// `ValueQuery`), `fallback` when it has none (an `OptionQuery` such as `WeightCommits`)
/// or when the runtime has no such storage.
pub(super) async fn read_or<K, V>(at: &AtBlock, entry: &str, key: K, fallback: V) -> Result<V, ChainError>
where
    K: subxt::ext::frame_decode::storage::IntoEncodableValues + subxt::ext::frame_decode::storage::IntoDecodableValues,
    V: subxt::ext::scale_decode::DecodeAsType,
{
    if !has_storage(&at.metadata(), entry) {
        return Ok(fallback);
    }
    let value = at.storage().try_fetch(dynamic::storage::<K, V>(SUBTENSOR, entry), key).await.map_err(rpc_err)?;
    match value {
        None => Ok(fallback),
        Some(v) => {
            v.decode().map_err(|e| ChainError::Decode { what: format!("{SUBTENSOR}.{entry}"), reason: e.to_string() })
        }
    }
}

pub(super) async fn ensure_subnet(at: &AtBlock, netuid: u16) -> Result<(), ChainError> {
    let added = at
        .storage()
        .try_fetch(dynamic::storage::<(u16,), bool>(SUBTENSOR, "NetworksAdded"), (netuid,))
        .await
        .map_err(rpc_err)?;
    if !added.map(|v| v.decode().unwrap_or(false)).unwrap_or(false) {
        return Err(ChainError::NoSuchSubnet { netuid });
    }
    Ok(())
}

pub(super) fn u16_list(xs: &[u16]) -> Value {
    Value::unnamed_composite(xs.iter().map(|&x| Value::u128(u128::from(x))))
}

/// Number of arguments of a call in this runtime's metadata.
pub(super) fn call_fields(metadata: &subxt::Metadata, pallet: &str, call: &str) -> Result<usize, ChainError> {
    let p = metadata.pallet_by_name(pallet).ok_or_else(|| ChainError::Metadata { what: format!("pallet {pallet}") })?;
    let v =
        p.call_variant_by_name(call).ok_or_else(|| ChainError::Metadata { what: format!("call {pallet}.{call}") })?;
    Ok(v.fields.len())
}

pub(super) fn as_u128<T>(v: &Value<T>) -> Option<u128> {
    match &v.value {
        ValueDef::Primitive(Primitive::U128(n)) => Some(*n),
        // Newtypes (e.g. `NetUid(u16)` in newer runtimes) wrap the number.
        ValueDef::Composite(c) if c.len() == 1 => c.values().next().and_then(as_u128),
        _ => None,
    }
}

/// Bytes of a composite of u8 values (how scale-value shows `[u8; N]` / `Vec<u8>`).
pub(super) fn as_bytes<T>(v: &Value<T>) -> Option<Vec<u8>> {
    match &v.value {
        ValueDef::Composite(c) => c.values().map(|b| as_u128(b).and_then(|n| u8::try_from(n).ok())).collect(),
        _ => None,
    }
}

pub(super) fn field<'a, T>(v: &'a Value<T>, name: &str) -> Option<&'a Value<T>> {
    match &v.value {
        ValueDef::Composite(Composite::Named(fields)) => fields.iter().find(|(n, _)| n == name).map(|(_, v)| v),
        _ => None,
    }
}

/// The text of a `Registration { info: CommitmentInfo { fields: [Data::RawN(bytes), ..] } }`:
/// the first `Raw*` entry under `info`, searched through newtypes such as `BoundedVec`
/// so that a runtime's wrapper types do not change the answer.
pub(super) fn commitment_text<T>(registration: &Value<T>) -> Option<String> {
    fn first_raw<T>(v: &Value<T>) -> Option<&Value<T>> {
        match &v.value {
            ValueDef::Variant(variant) if variant.name.starts_with("Raw") => variant.values.values().next(),
            ValueDef::Variant(_) => None,
            ValueDef::Composite(c) => c.values().find_map(first_raw),
            _ => None,
        }
    }
    let raw = first_raw(field(registration, "info")?)?;
    String::from_utf8(as_bytes(raw)?).ok()
}

pub(super) fn commitment_value(data: &str) -> Value {
    let raw = Value::variant(format!("Raw{}", data.len()), Composite::unnamed([Value::from_bytes(data.as_bytes())]));
    Value::named_composite([("fields", Value::unnamed_composite([raw]))])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commitment_values_round_trip_through_scale_value() {
        let v = commitment_value("s3://my-bucket");
        // The chain returns a Registration wrapping the CommitmentInfo we sent.
        let registration: Value =
            Value::named_composite([("deposit", Value::u128(0)), ("block", Value::u128(5)), ("info", v)]);
        assert_eq!(commitment_text(&registration).as_deref(), Some("s3://my-bucket"));
        let hashed = Value::named_composite([(
            "info",
            Value::named_composite([(
                "fields",
                Value::unnamed_composite([Value::variant(
                    "Sha256",
                    Composite::unnamed([Value::from_bytes([0u8; 32])]),
                )]),
            )]),
        )]);
        assert_eq!(commitment_text(&hashed), None);
        assert_eq!(commitment_text(&Value::u128(3)), None);
    }
}
