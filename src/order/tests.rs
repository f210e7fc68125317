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
