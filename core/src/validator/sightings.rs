//! When each update was first seen, as the copy check orders them. The validator's own
//! sightings come in rounds (every bucket listed at once); two updates of one round tie.
//! Within a round, updates stored on the same S3 endpoint are ordered by that endpoint's
//! `LastModified`: one server's clock, which neither of two peers sharing it controls
//! (a bucket on a peer's own server claims what the peer likes, so across endpoints the
//! tie stands).

/// One update's sighting: the validator's round (unix ms), the bucket's endpoint origin,
/// and the time its server claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    pub first_seen_ms: i64,
    pub origin: String,
    pub last_modified_ms: Option<i64>,
}

/// Sub-round ranks available per round (an order key is `round · RANKS + rank`).
const RANKS: i64 = 1 << 12;

/// The order key of each sighting for [`super::find_copies`]: earlier rounds first; in a
/// round, by the shared server's time among updates on one endpoint, tied across endpoints
/// and among equal or unknown times.
pub fn order_keys(sightings: &[Sighting]) -> Vec<i64> {
    sightings
        .iter()
        .map(|s| {
            let rank = match s.last_modified_ms {
                Some(t) => sightings
                    .iter()
                    .filter(|o| o.first_seen_ms == s.first_seen_ms && o.origin == s.origin)
                    .filter_map(|o| o.last_modified_ms)
                    .filter(|&other| other < t)
                    .count() as i64,
                None => 0,
            };
            s.first_seen_ms.saturating_mul(RANKS).saturating_add(rank.min(RANKS - 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(round: i64, origin: &str, claimed: Option<i64>) -> Sighting {
        Sighting { first_seen_ms: round, origin: origin.into(), last_modified_ms: claimed }
    }

    #[test]
    fn rounds_order_first_and_a_shared_server_orders_within_a_round() {
        let keys = order_keys(&[
            seen(100, "http://s3", Some(50)),  // the original, same server
            seen(100, "http://s3", Some(60)),  // its copy, same round, later on the same server
            seen(100, "http://liar", Some(1)), // a copy on its own server claiming an early time
            seen(90, "http://s3", Some(70)),   // an earlier round beats any claim
        ]);
        assert!(keys[3] < keys[0] && keys[0] < keys[1], "{keys:?}");
        assert_eq!(keys[2], keys[0], "across endpoints a round is a tie, whatever is claimed");
        assert_eq!(order_keys(&[seen(5, "a", None), seen(5, "a", Some(3))]), vec![5 * RANKS, 5 * RANKS]);
    }
}
