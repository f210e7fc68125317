//! The status index (layout 3): for each status, one key per 64 consecutive order ids
//! (`keys::status_bits`), whose value is a 64-bit map of which of those ids are in that status.
//! A key is removed when its map empties.
//!
//! Why not one key per order, as before: a create wrote five sled keys, and sled's apply and
//! leaf splits (a leaf splits past 16 entries) cost per key. New ids are consecutive, so the
//! creates of one apply chunk change one or two maps instead of adding one key each, and a
//! million orders need 16,000 keys here instead of a million.
//!
//! A map's value is the 64 bits big-endian, bit `id % 64` counted from the lowest.

use super::keys;
use super::StoreError;
use crate::order::OrderStatus;

/// Order ids per map.
pub const IDS_PER_KEY: u64 = 64;

/// The map's group (the key's suffix) and the id's bit in it.
pub fn locate(id: u64) -> (u64, u64) {
    (id / IDS_PER_KEY, 1 << (id % IDS_PER_KEY))
}

pub fn decode(value: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = value.try_into().map_err(|_| {
        StoreError::Corrupt(format!("a status map of {} bytes, not 8", value.len()))
    })?;
    Ok(u64::from_be_bytes(bytes))
}

pub fn encode(bits: u64) -> Vec<u8> {
    bits.to_be_bytes().to_vec()
}

/// The ids in `status` from `first` on, ascending, read from `sm` as the iterator goes (one
/// sled read per 64 ids).
pub fn ids_from(
    sm: &sled::Tree,
    status: OrderStatus,
    first: u64,
) -> impl Iterator<Item = Result<u64, StoreError>> {
    let prefix = keys::status_bits_prefix(status);
    let (first_group, _) = locate(first);
    let maps = sm
        .range(keys::with_id(prefix.clone(), first_group)..)
        .take_while(move |kv| {
            kv.as_ref().map_or(true, |(k, _)| {
                k.starts_with(&prefix) && k.len() == prefix.len() + 8
            })
        });
    maps.flat_map(move |kv| {
        let ids: Box<dyn Iterator<Item = Result<u64, StoreError>>> =
            match kv.map_err(StoreError::from).and_then(|(k, v)| {
                let group = keys::id_suffix(&k);
                let lowest = group.checked_mul(IDS_PER_KEY).ok_or_else(|| {
                    StoreError::Corrupt(format!("a status map past the last id: {k:?}"))
                })?;
                Ok((lowest, decode(&v)?))
            }) {
                Ok((lowest, bits)) => Box::new(
                    (0..IDS_PER_KEY)
                        .filter(move |bit| bits & (1 << bit) != 0)
                        .map(move |bit| lowest + bit)
                        .filter(move |id| *id >= first)
                        .map(Ok),
                ),
                Err(e) => Box::new(std::iter::once(Err(e))),
            };
        ids
    })
}

/// Moves a store's status index from one key per order (`keys::OLD_STATUS_PREFIX`, then the
/// status tag and the id, with empty values: layouts 1 and 2) to maps (`upgrade::regroup`:
/// safe to run again after a crash). Returns how many old keys it moved.
pub(super) fn move_from_old_layout(sm: &sled::Tree, batch_keys: usize) -> Result<u64, StoreError> {
    let place = |k: &[u8], _: &[u8]| {
        let status = match (k.len(), k.get(1).copied().and_then(OrderStatus::from_tag)) {
            (10, Some(status)) => status,
            _ => {
                return Err(StoreError::Corrupt(format!(
                    "a malformed status index key of the old layout: {k:?}"
                )))
            }
        };
        let (group, bit) = locate(keys::id_suffix(k));
        Ok((keys::with_id(keys::status_bits_prefix(status), group), bit))
    };
    let merge = |already: Option<&[u8]>, bits: Vec<u64>| {
        let already = already.map(decode).transpose()?.unwrap_or(0);
        Ok(encode(bits.into_iter().fold(already, |map, bit| map | bit)))
    };
    super::upgrade::regroup(sm, keys::OLD_STATUS_PREFIX, batch_keys, place, merge)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> sled::Tree {
        let db = sled::Config::new().temporary(true).open().unwrap();
        db.open_tree("sm").unwrap()
    }

    fn put(sm: &sled::Tree, status: OrderStatus, ids: &[u64]) {
        for id in ids {
            let (group, bit) = locate(*id);
            let key = keys::with_id(keys::status_bits_prefix(status), group);
            let bits = sm.get(&key).unwrap().map_or(0, |v| decode(&v).unwrap());
            sm.insert(key, encode(bits | bit)).unwrap();
        }
    }

    fn ids(sm: &sled::Tree, status: OrderStatus, first: u64) -> Vec<u64> {
        ids_from(sm, status, first).map(Result::unwrap).collect()
    }

    #[test]
    fn ids_come_in_order_from_the_first_asked_for_and_only_of_their_status() {
        let sm = tree();
        let paid = [
            1,
            2,
            63,
            64,
            65,
            127,
            128,
            1000,
            64 * 1000 + 5,
            u64::MAX >> 8,
        ];
        put(&sm, OrderStatus::Paid, &paid);
        put(&sm, OrderStatus::Pending, &[3, 66, 129]);
        put(&sm, OrderStatus::Shipped, &[4]);
        assert_eq!(ids(&sm, OrderStatus::Paid, 0), paid);
        assert_eq!(ids(&sm, OrderStatus::Paid, 64), paid[3..]);
        assert_eq!(ids(&sm, OrderStatus::Paid, 66), paid[5..]);
        assert_eq!(ids(&sm, OrderStatus::Paid, 1001), paid[8..]);
        assert_eq!(ids(&sm, OrderStatus::Paid, u64::MAX), Vec::<u64>::new());
        assert_eq!(ids(&sm, OrderStatus::Pending, 0), [3, 66, 129]);
        assert_eq!(ids(&sm, OrderStatus::Delivered, 0), Vec::<u64>::new());
    }

    #[test]
    fn a_map_of_the_wrong_size_or_past_the_last_id_is_an_error_not_a_panic() {
        let sm = tree();
        let past_the_end =
            keys::with_id(keys::status_bits_prefix(OrderStatus::Cancelled), u64::MAX);
        sm.insert(past_the_end, encode(1 << 63)).unwrap();
        let got: Vec<_> = ids_from(&sm, OrderStatus::Cancelled, 0).collect();
        assert!(matches!(got[..], [Err(StoreError::Corrupt(_))]), "{got:?}");
        sm.insert(
            keys::with_id(keys::status_bits_prefix(OrderStatus::Paid), 0),
            &b"abc"[..],
        )
        .unwrap();
        let got: Vec<_> = ids_from(&sm, OrderStatus::Paid, 0).collect();
        assert!(matches!(got[..], [Err(StoreError::Corrupt(_))]), "{got:?}");
    }

    #[test]
    fn old_keys_move_into_maps_also_when_a_pass_was_cut_short() {
        let sm = tree();
        let old = |status: OrderStatus, id: u64| {
            keys::with_id(vec![keys::OLD_STATUS_PREFIX[0], status.tag()], id)
        };
        let pending: Vec<u64> = (1..=300).filter(|id| id % 3 != 0).collect();
        let paid: Vec<u64> = (1..=300).filter(|id| id % 3 == 0).collect();
        for id in &pending {
            sm.insert(old(OrderStatus::Pending, *id), &[][..]).unwrap();
        }
        for id in &paid {
            sm.insert(old(OrderStatus::Paid, *id), &[][..]).unwrap();
        }
        // A pass cut short: ids 1-127 of pending already in their maps, and (as no pass of
        // whole maps leaves it, but the merge must not lose it) id 128 in the map of 128-191
        // whose other ids are still under old keys.
        for id in pending.iter().filter(|id| **id <= 128) {
            sm.remove(old(OrderStatus::Pending, *id)).unwrap();
        }
        put(
            &sm,
            OrderStatus::Pending,
            &pending
                .iter()
                .copied()
                .filter(|id| *id <= 128)
                .collect::<Vec<_>>(),
        );

        let moved = move_from_old_layout(&sm, 2).unwrap();
        assert_eq!(
            moved as usize,
            paid.len() + pending.iter().filter(|id| **id > 128).count()
        );
        assert_eq!(sm.scan_prefix(keys::OLD_STATUS_PREFIX).count(), 0);
        assert_eq!(ids(&sm, OrderStatus::Pending, 0), pending);
        assert_eq!(ids(&sm, OrderStatus::Paid, 0), paid);
        assert_eq!(
            move_from_old_layout(&sm, 2).unwrap(),
            0,
            "nothing left to move"
        );
    }
}
