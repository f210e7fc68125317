//! Unit and property tests of the order rules.

use proptest::prelude::*;

use super::*;

fn item(sku: &str, quantity: u32, unit_price_cents: u64) -> LineItem {
    LineItem {
        sku: sku.into(),
        quantity,
        unit_price_cents,
    }
}

fn new_order(items: Vec<LineItem>) -> NewOrder {
    NewOrder {
        customer_id: "c-1".into(),
        items,
        note: None,
    }
}

#[test]
fn total_is_sum_of_lines() {
    let o = create_order(
        7,
        &new_order(vec![item("a", 2, 150), item("b", 1, 99)]),
        1000,
    )
    .unwrap();
    assert_eq!(o.total_cents, 399);
    assert_eq!((o.id, o.version, o.status), (7, 1, OrderStatus::Pending));
    assert_eq!((o.created_at_ms, o.updated_at_ms), (1000, 1000));
}

#[test]
fn validation_names_the_field() {
    let cases: Vec<(NewOrder, &str)> = vec![
        (
            NewOrder {
                customer_id: String::new(),
                ..new_order(vec![item("a", 1, 1)])
            },
            "customer_id",
        ),
        (
            NewOrder {
                customer_id: "x".repeat(65),
                ..new_order(vec![item("a", 1, 1)])
            },
            "customer_id",
        ),
        (new_order(vec![]), "items"),
        (new_order(vec![item("a", 1, 1); 101]), "items"),
        (
            new_order(vec![item("a", 1, 1), item("", 1, 1)]),
            "items[1].sku",
        ),
        (new_order(vec![item("a", 0, 1)]), "items[0].quantity"),
        (new_order(vec![item("a", 10_001, 1)]), "items[0].quantity"),
        (
            new_order(vec![item("a", 1, 1_000_000_001)]),
            "items[0].unit_price_cents",
        ),
        (
            NewOrder {
                note: Some("n".repeat(1001)),
                ..new_order(vec![item("a", 1, 1)])
            },
            "note",
        ),
    ];
    for (order, field) in cases {
        let err = validate_new_order(&order).unwrap_err();
        assert_eq!(err.field, field, "{order:?}");
        assert!(matches!(
            create_order(1, &order, 0),
            Err(Rejection::Invalid(_))
        ));
    }
    // The limits themselves are allowed.
    let max = NewOrder {
        customer_id: "x".repeat(64),
        items: vec![item(&"s".repeat(64), 10_000, 1_000_000_000); 100],
        note: Some("n".repeat(1000)),
    };
    assert_eq!(
        validate_new_order(&max).unwrap(),
        100 * 10_000 * 1_000_000_000
    );
}

#[test]
fn legal_and_illegal_transitions() {
    use OrderStatus::*;
    let legal = [
        (Pending, Paid),
        (Pending, Cancelled),
        (Paid, Shipped),
        (Paid, Cancelled),
        (Shipped, Delivered),
    ];
    for from in OrderStatus::ALL {
        for to in OrderStatus::ALL {
            assert_eq!(
                from.can_move_to(to),
                legal.contains(&(from, to)),
                "{from} -> {to}"
            );
        }
    }
    let o = create_order(1, &new_order(vec![item("a", 1, 1)]), 0).unwrap();
    let paid = transition(&o, Paid, Some(1), 5).unwrap();
    assert_eq!(
        (
            paid.status,
            paid.version,
            paid.updated_at_ms,
            paid.created_at_ms
        ),
        (Paid, 2, 5, 0)
    );
    assert_eq!(
        transition(&paid, Paid, None, 6),
        Err(Rejection::InvalidTransition {
            from: Paid,
            to: Paid
        })
    );
    assert_eq!(
        transition(&paid, Shipped, Some(1), 6),
        Err(Rejection::VersionConflict {
            expected: 1,
            actual: 2
        })
    );
}

#[test]
fn idempotency_keys() {
    assert!(validate_idempotency_key("abc-123_XYZ").is_ok());
    assert!(validate_idempotency_key(&"k".repeat(128)).is_ok());
    for bad in ["", "has space", "tab\t", "ünï", &"k".repeat(129)] {
        assert!(validate_idempotency_key(bad).is_err(), "{bad:?}");
    }
}

proptest! {
    #[test]
    fn total_matches_checked_sum(lines in proptest::collection::vec((1u32..=10_000, 0u64..=1_000_000_000), 1..=100)) {
        let items: Vec<_> = lines.iter().map(|&(q, p)| item("sku", q, p)).collect();
        let expected: u128 = lines.iter().map(|&(q, p)| q as u128 * p as u128).sum();
        let order = create_order(1, &new_order(items), 0).unwrap();
        prop_assert_eq!(order.total_cents as u128, expected);
    }

    #[test]
    fn any_walk_of_transitions_keeps_version_and_rules(steps in proptest::collection::vec(0usize..5, 0..20)) {
        let mut order = create_order(1, &new_order(vec![item("a", 1, 1)]), 0).unwrap();
        for (t, s) in steps.into_iter().enumerate() {
            let next = OrderStatus::ALL[s];
            match transition(&order, next, None, t as i64 + 1) {
                Ok(moved) => {
                    prop_assert!(order.status.can_move_to(next));
                    prop_assert_eq!(moved.version, order.version + 1);
                    order = moved;
                }
                Err(Rejection::InvalidTransition { from, to }) => {
                    prop_assert!(!from.can_move_to(to));
                    prop_assert_eq!(from, order.status);
                }
                Err(other) => prop_assert!(false, "unexpected {:?}", other),
            }
        }
    }
}

/// Properties of `apply_command` (idempotency, the clock, expiry) on the in-memory state.
mod apply_properties {
    use super::memory_state::{fingerprint, history, MemoryState};
    use super::*;

    fn apply(state: &mut MemoryState, command: &OrderCommand) -> Applied {
        match apply_command(state, command, fingerprint(&command.op)) {
            Ok(applied) => applied,
            Err(never) => match never {},
        }
    }

    fn create(customer: &str) -> OrderOp {
        OrderOp::Create(NewOrder {
            customer_id: customer.into(),
            items: vec![item("fresh", 1, 1)],
            note: None,
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// A keyed command sent again (a client's retry, seconds later, perhaps to a new
        /// leader) is never applied twice: it replays the first result and changes no order.
        #[test]
        fn a_retried_keyed_command_is_applied_at_most_once(h in history(40)) {
            let mut s = MemoryState::default();
            for sent in &h {
                let first = apply(&mut s, &sent.command);
                let orders = (s.orders.clone(), s.next_id);
                for retry in 1..sent.times {
                    let mut again = sent.command.clone();
                    again.stamped_at_ms += 1_000 * retry as i64;
                    let again = apply(&mut s, &again);
                    // Changes to users take no key (validation refuses one): not retried safely.
                    if sent.command.idempotency_key.is_none()
                        || matches!(sent.command.op, OrderOp::Admin(_))
                    {
                        continue;
                    }
                    if first.outcome.result == Err(Rejection::IdempotencyKeyReused) {
                        prop_assert_eq!(&again.outcome.result, &first.outcome.result);
                    } else {
                        prop_assert!(again.outcome.replayed);
                        prop_assert_eq!(&again.outcome.result, &first.outcome.result);
                        // The first request's revision, even if the order changed since.
                        prop_assert_eq!(again.outcome.revision, first.outcome.revision);
                    }
                    prop_assert_eq!(&(s.orders.clone(), s.next_id), &orders);
                }
            }
        }

        /// A write that changed an order answers with the revision of its change: the next
        /// one, recorded with the order as the write left it. Anything else (a rejection, a
        /// change to users or roles) answers with none and takes no revision.
        #[test]
        fn a_write_answers_with_the_revision_of_its_change(h in history(60)) {
            let mut s = MemoryState::default();
            for sent in &h {
                for _ in 0..sent.times {
                    let before = s.revision;
                    let applied = apply(&mut s, &sent.command);
                    if applied.outcome.replayed {
                        prop_assert_eq!(s.revision, before);
                        continue;
                    }
                    match &applied.outcome.result {
                        Ok(Effect::Order(order)) => {
                            prop_assert_eq!(applied.outcome.revision, Some(before + 1));
                            prop_assert_eq!(s.revision, before + 1);
                            let change = s.changes[&(before + 1)].with_order(order.clone());
                            prop_assert_eq!(&change.order, order);
                        }
                        _ => {
                            prop_assert_eq!(applied.outcome.revision, None);
                            prop_assert_eq!(s.revision, before);
                        }
                    }
                }
            }
        }

        /// The clock follows the stamps, but never goes back, moves at most one step per
        /// distinct stamp, and says when it cut a stamp short.
        #[test]
        fn the_clock_is_monotonic_and_moves_one_bounded_step_per_stamp(h in history(60)) {
            let mut s = MemoryState::default();
            for sent in &h {
                let stamp = sent.command.stamped_at_ms;
                let before = s.clock.zip(s.last_stamp);
                let applied = apply(&mut s, &sent.command);
                let clock = s.clock.expect("a clock after a command");
                prop_assert_eq!(s.last_stamp, Some(stamp));
                match before {
                    None => prop_assert_eq!(clock, stamp),
                    Some((c, last)) if last == stamp => prop_assert_eq!(clock, c),
                    Some((c, _)) => {
                        prop_assert!(clock >= c && clock - c <= MAX_CLOCK_STEP_MS);
                        prop_assert_eq!(applied.clock_clamped, clock != stamp.max(c));
                    }
                }
            }
        }

        /// While its record lives, a key is bound to its request: another request with it
        /// is refused and changes no order. Once the clock has passed the record's expiry,
        /// cleanup has dropped it and the key is free for a new request.
        #[test]
        fn a_key_is_bound_to_its_request_until_it_expires(h in history(40)) {
            let mut s = MemoryState::default();
            for sent in &h {
                apply(&mut s, &sent.command);
            }
            let (now, mut stamp) = s.clock.zip(s.last_stamp).expect("a clock after a command");
            let keys: Vec<String> = s.records.keys().cloned().collect();
            for key in &keys {
                if s.records[key].expires_at_ms <= now {
                    continue;
                }
                let orders = s.orders.clone();
                let other = OrderCommand {
                    op: create("someone else"),
                    idempotency_key: Some(key.clone()),
                    stamped_at_ms: stamp,
                };
                let refused = apply(&mut s, &other);
                prop_assert_eq!(refused.outcome.result, Err(Rejection::IdempotencyKeyReused));
                prop_assert_eq!(&s.orders, &orders);
            }
            // Unkeyed commands that change nothing, one clock step apart, for a day and more.
            let noop = |stamp| OrderCommand {
                op: OrderOp::SetStatus { id: 999, status: OrderStatus::Paid, expected_version: None },
                idempotency_key: None,
                stamped_at_ms: stamp,
            };
            while s.clock.expect("clock") <= now + IDEMPOTENCY_TTL_MS {
                stamp += MAX_CLOCK_STEP_MS;
                apply(&mut s, &noop(stamp));
            }
            apply(&mut s, &noop(stamp + 1));
            prop_assert!(s.records.is_empty() && s.expiries.is_empty(), "cleanup caught up");
            for key in &keys {
                stamp += 1;
                let fresh = OrderCommand {
                    op: create("someone else"),
                    idempotency_key: Some(key.clone()),
                    stamped_at_ms: stamp,
                };
                let applied = apply(&mut s, &fresh);
                prop_assert!(applied.outcome.result.is_ok() && !applied.outcome.replayed);
            }
        }
    }
}
