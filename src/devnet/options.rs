//! `tessera devnet`'s flags: `--exchange` as a typed flag.

use clap::ValueEnum;
use clap::builder::PossibleValue;
use tessera_core::slice::Exchange;

/// `--exchange`: the core's [`Exchange`] as a clap value, spelled as the core spells it
/// ([`Exchange::as_str`]), so the flag and the printed exchange cannot drift apart. A
/// newtype because the core does not depend on clap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExchangeFlag(pub Exchange);

impl ValueEnum for ExchangeFlag {
    fn value_variants<'a>() -> &'a [Self] {
        &[ExchangeFlag(Exchange::Update), ExchangeFlag(Exchange::Seed)]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        let help = match self.0 {
            Exchange::Update => "each window's update, averaged in place of the own one (protocol v2)",
            Exchange::Seed => "the seed's exchange of parameter values (protocol v1)",
        };
        Some(PossibleValue::new(self.0.as_str()).help(help))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exchange_flag_takes_the_cores_spelling() {
        for flag in ExchangeFlag::value_variants() {
            assert_eq!(ExchangeFlag::from_str(flag.0.as_str(), false), Ok(*flag));
        }
        assert!(ExchangeFlag::from_str("foo", false).is_err());
    }
}
