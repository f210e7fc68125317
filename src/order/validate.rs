//! Validation of a new order: the limits every order must respect, checked before a command is
//! proposed (so a client gets a 422 naming the field) and again when it is applied (so a
//! command that reached the log by another path can never store a bad order).

use super::model::NewOrder;

pub const MAX_CUSTOMER_ID_CHARS: usize = 64;
pub const MAX_ITEMS: usize = 100;
pub const MAX_SKU_CHARS: usize = 64;
pub const MAX_QUANTITY: u32 = 10_000;
pub const MAX_UNIT_PRICE_CENTS: u64 = 1_000_000_000;
pub const MAX_NOTE_CHARS: usize = 1000;
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// A rule an input broke, naming the field (`items[2].quantity`) so a caller can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError {
            field: field.into(),
            message: message.into(),
        }
    }
}

fn check_text(field: &str, value: &str, max_chars: usize) -> Result<(), ValidationError> {
    let n = value.chars().count();
    if n == 0 || n > max_chars {
        return Err(ValidationError::new(
            field,
            format!("must be 1 to {max_chars} characters, got {n}"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Checks every limit of a new order and returns its total in cents.
pub fn validate_new_order(order: &NewOrder) -> Result<u64, ValidationError> {
    check_text("customer_id", &order.customer_id, MAX_CUSTOMER_ID_CHARS)?;
    if order.items.is_empty() || order.items.len() > MAX_ITEMS {
        return Err(ValidationError::new(
            "items",
            format!(
                "must hold 1 to {MAX_ITEMS} items, got {}",
                order.items.len()
            ),
        ));
    }
    let mut total: u64 = 0;
    for (i, item) in order.items.iter().enumerate() {
        check_text(&format!("items[{i}].sku"), &item.sku, MAX_SKU_CHARS)?;
        if item.quantity == 0 || item.quantity > MAX_QUANTITY {
            return Err(ValidationError::new(
                format!("items[{i}].quantity"),
                format!("must be 1 to {MAX_QUANTITY}"),
            ));
        }
        if item.unit_price_cents > MAX_UNIT_PRICE_CENTS {
            return Err(ValidationError::new(
                format!("items[{i}].unit_price_cents"),
                format!("must be 0 to {MAX_UNIT_PRICE_CENTS}"),
            ));
        }
        let line = item
            .unit_price_cents
            .checked_mul(u64::from(item.quantity))
            .and_then(|line| total.checked_add(line));
        total = line.ok_or_else(|| ValidationError::new("items", "total overflows"))?;
    }
    if let Some(note) = &order.note {
        let n = note.chars().count();
        if n > MAX_NOTE_CHARS {
            return Err(ValidationError::new(
                "note",
                format!("must be at most {MAX_NOTE_CHARS} characters"),
            ));
        }
    }
    Ok(total)
}

/// An idempotency key is 1–128 printable ASCII characters (space excluded).
pub fn validate_idempotency_key(key: &str) -> Result<(), ValidationError> {
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY_LEN
        || !key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ValidationError::new(
            "Idempotency-Key",
            format!("must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters"),
        ));
    }
    Ok(())
}
