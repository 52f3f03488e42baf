//! Row errors counted by column and by kind of message, so that thousands of rejected rows read
//! as a handful of causes (the job page's chart, the analysis report's Summary sheet).
//!
//! A message's kind is its *shape*: the message with the cell's value taken out
//! ([`message_shape`]), so "price: `abc` is not a decimal number" and "price: `n/a` is not a
//! decimal number" are one cause. Shapes are capped at [`MAX_SHAPES`]; rarer ones are counted
//! together as [`OTHER`], so a tally stays small whatever the file holds.

use std::collections::HashMap;

use serde::Serialize;

/// Most distinct message shapes a tally keeps apart.
pub const MAX_SHAPES: usize = 50;

/// The shape that counts the messages past [`MAX_SHAPES`].
pub const OTHER: &str = "(other messages)";

/// The column name of errors that concern the whole row (a wrong field count).
pub const WHOLE_ROW: &str = "(whole row)";

/// The message without the value it quotes: text between backticks becomes `…`, and a number
/// that is the value (the first word after the field name, or after "row") becomes `…` too;
/// numbers that state a rule (a minimum, a maximum, a count of decimal places) are kept.
pub fn message_shape(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quoted = false;
    for c in message.chars() {
        match (c, quoted) {
            ('`', false) => {
                quoted = true;
                out.push_str("`…");
            }
            ('`', true) => {
                quoted = false;
                out.push('`');
            }
            (_, true) => {}
            (c, false) => out.push(c),
        }
    }
    if quoted {
        out.push('`');
    }
    let words: Vec<&str> = out.split(' ').collect();
    let mut shaped = Vec::with_capacity(words.len());
    for (i, word) in words.iter().enumerate() {
        let previous = i.checked_sub(1).map(|p| words[p]);
        let is_value = previous.is_none_or(|p| p.ends_with(':') || p == "row");
        let number = word.trim_end_matches([',', '.', ';']);
        if is_value && !number.is_empty() && number.parse::<f64>().is_ok() {
            shaped.push(word.replacen(number, "…", 1));
        } else {
            shaped.push((*word).to_string());
        }
    }
    shaped.join(" ")
}

/// One column's or one cause's count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Count {
    /// The column (a dataset field), or `(whole row)`.
    pub column: String,
    pub count: u64,
}

/// One kind of message and how often it occurs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageCount {
    /// The message with its value taken out (see [`message_shape`]).
    pub message: String,
    pub count: u64,
    /// The first message of this shape, as written, and its row.
    pub example: String,
    pub example_row: u64,
}

/// Row errors counted by column and by message shape, most frequent first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorSummary {
    pub total: u64,
    pub by_column: Vec<Count>,
    pub by_message: Vec<MessageCount>,
}

/// Counts row errors as they stream past.
#[derive(Debug, Default)]
pub struct Tally {
    total: u64,
    columns: HashMap<String, u64>,
    shapes: HashMap<String, MessageCount>,
}

impl Tally {
    pub fn add(&mut self, row: u64, column: Option<&str>, message: &str) {
        self.total += 1;
        let column = column.unwrap_or(WHOLE_ROW);
        match self.columns.get_mut(column) {
            Some(n) => *n += 1,
            None => {
                self.columns.insert(column.to_string(), 1);
            }
        }
        let mut shape = message_shape(message);
        if !self.shapes.contains_key(&shape) && self.shapes.len() >= MAX_SHAPES {
            shape = OTHER.to_string();
        }
        self.shapes
            .entry(shape.clone())
            .or_insert_with(|| MessageCount {
                message: shape,
                count: 0,
                example: message.to_string(),
                example_row: row,
            })
            .count += 1;
    }

    pub fn summary(self) -> ErrorSummary {
        let mut by_column: Vec<Count> = self
            .columns
            .into_iter()
            .map(|(column, count)| Count { column, count })
            .collect();
        by_column.sort_by(|a, b| b.count.cmp(&a.count).then(a.column.cmp(&b.column)));
        let mut by_message: Vec<MessageCount> = self.shapes.into_values().collect();
        by_message.sort_by(|a, b| {
            (a.message == OTHER)
                .cmp(&(b.message == OTHER))
                .then(b.count.cmp(&a.count))
                .then(a.message.cmp(&b.message))
        });
        ErrorSummary {
            total: self.total,
            by_column,
            by_message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_taken_out_and_rules_kept() {
        assert_eq!(
            message_shape("price: `abc` is not a decimal number"),
            "price: `…` is not a decimal number"
        );
        assert_eq!(
            message_shape("stock: -4 is below the minimum 0"),
            "stock: … is below the minimum 0"
        );
        assert_eq!(
            message_shape("price: `1.234` has more than 2 decimal places"),
            "price: `…` has more than 2 decimal places"
        );
        assert_eq!(
            message_shape("duplicate key, first seen at row 17"),
            "duplicate key, first seen at row …"
        );
        assert_eq!(message_shape("name: is required"), "name: is required");
        assert_eq!(message_shape("a `dangling quote"), "a `…`");
    }

    #[test]
    fn counts_group_by_column_and_shape_most_frequent_first() {
        let mut t = Tally::default();
        t.add(2, Some("price"), "price: `x` is not a decimal number");
        t.add(3, Some("price"), "price: `y` is not a decimal number");
        t.add(4, Some("name"), "name: is required");
        t.add(
            5,
            None,
            "wrong_field_count: the row has 3 fields, the header has 5",
        );
        let s = t.summary();
        assert_eq!(s.total, 4);
        assert_eq!(
            s.by_column[0],
            Count {
                column: "price".into(),
                count: 2
            }
        );
        assert!(s.by_column.iter().any(|c| c.column == WHOLE_ROW));
        assert_eq!(
            s.by_message[0].message,
            "price: `…` is not a decimal number"
        );
        assert_eq!(s.by_message[0].count, 2);
        assert_eq!(s.by_message[0].example_row, 2);
        assert_eq!(
            s.by_message[0].example,
            "price: `x` is not a decimal number"
        );
    }

    #[test]
    fn shapes_past_the_cap_are_counted_together_last() {
        let mut t = Tally::default();
        for i in 0..(MAX_SHAPES + 10) {
            t.add(i as u64, Some("c"), &format!("c: rule {i}x broken"));
        }
        t.add(999, Some("c"), "c: rule 0x broken");
        let s = t.summary();
        assert_eq!(s.by_message.len(), MAX_SHAPES + 1);
        let last = s.by_message.last().unwrap();
        assert_eq!((last.message.as_str(), last.count), (OTHER, 10));
        assert_eq!(s.by_message[0].count, 2);
        assert_eq!(s.total, MAX_SHAPES as u64 + 11);
    }
}
