//! Column statistics of an analysis, in bounded memory: per mapped column its fill rate,
//! distinct values (exact up to [`DISTINCT_CAP`], then "more than"), min/max of numbers and
//! dates, the longest text (length and a sample), up to [`INVALID_SAMPLES`] invalid values and
//! the mapping's confidence.
//!
//! Fed by [`StatsSink`], a [`BatchSink`] wrapper that looks at each batch once the inner
//! (dry-run) writer committed it. The state lives in memory only: an analysis that resumes
//! after a lost worker starts over from the first row (`analysis::run`), so the figures are
//! always those of the whole file.

use std::collections::HashSet;

use rust_decimal::Decimal;
use serde::Serialize;

use crate::dataset::{Dataset, FieldType};
use crate::import::{Batch, BatchCounts, BatchSink, Mapping, SinkError, Value};

/// Distinct values counted exactly up to this many per column.
pub const DISTINCT_CAP: usize = 10_000;
/// Invalid values kept per column.
pub const INVALID_SAMPLES: usize = 5;
/// Characters kept of the longest text's sample.
const SAMPLE_CHARS: usize = 100;

/// One mapped column's statistics, as the report shows them.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ColumnReport {
    pub header: String,
    pub field: String,
    #[serde(rename = "type")]
    pub ty: String,
    /// Rows (valid or not) with a non-empty value.
    pub filled: u64,
    /// `filled` of all data rows, in percent (two decimals).
    pub filled_percent: f64,
    /// Distinct non-empty values; when `distinctOverCap`, more than this.
    pub distinct: u64,
    pub distinct_over_cap: bool,
    pub min: Option<String>,
    pub max: Option<String>,
    /// Characters of the longest value, and its first 100 characters.
    pub longest_length: u64,
    pub longest_sample: Option<String>,
    pub invalid_samples: Vec<String>,
    /// How sure the mapping of header to field is (100: by name or alias).
    pub confidence: u8,
}

impl ColumnReport {
    /// The distinct count as people read it: `123`, or `more than 10,000`.
    pub fn distinct_text(&self) -> String {
        if self.distinct_over_cap {
            format!("more than {}", thousands(DISTINCT_CAP as u64))
        } else {
            self.distinct.to_string()
        }
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

struct Column {
    field: usize,
    file_column: usize,
    header: String,
    confidence: u8,
    filled: u64,
    distinct: HashSet<String>,
    over_cap: bool,
    min_num: Option<Decimal>,
    max_num: Option<Decimal>,
    min_text: Option<String>,
    max_text: Option<String>,
    longest: u64,
    longest_sample: Option<String>,
    invalid: Vec<String>,
}

impl Column {
    fn see_text(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        self.filled += 1;
        if !self.over_cap && !self.distinct.contains(text) {
            if self.distinct.len() >= DISTINCT_CAP {
                self.over_cap = true;
            } else {
                self.distinct.insert(text.to_string());
            }
        }
        let len = text.chars().count() as u64;
        if len > self.longest {
            self.longest = len;
            self.longest_sample = Some(text.chars().take(SAMPLE_CHARS).collect());
        }
    }

    fn see_value(&mut self, value: &Value) {
        match value {
            Value::Int(i) => self.see_number(Decimal::from(*i)),
            Value::Decimal(d) => self.see_number(*d),
            Value::Date(s) | Value::DateTime(s) => {
                if self.min_text.as_deref().is_none_or(|m| s.as_str() < m) {
                    self.min_text = Some(s.clone());
                }
                if self.max_text.as_deref().is_none_or(|m| s.as_str() > m) {
                    self.max_text = Some(s.clone());
                }
            }
            Value::Null | Value::Text(_) | Value::Bool(_) => {}
        }
    }

    fn see_number(&mut self, d: Decimal) {
        if self.min_num.is_none_or(|m| d < m) {
            self.min_num = Some(d);
        }
        if self.max_num.is_none_or(|m| d > m) {
            self.max_num = Some(d);
        }
    }
}

/// The statistics of one analysis so far.
pub struct Stats {
    columns: Vec<Column>,
    types: Vec<FieldType>,
    names: Vec<String>,
    /// Data rows seen (valid and invalid).
    rows: u64,
}

impl Stats {
    pub fn new(dataset: &Dataset, header: &[String], mapping: &Mapping) -> Self {
        let field_columns = mapping.field_columns(dataset);
        let columns = field_columns
            .iter()
            .enumerate()
            .filter_map(|(field, col)| col.map(|c| (field, c)))
            .map(|(field, c)| {
                let header = header.get(c).cloned().unwrap_or_default();
                let confidence = mapping
                    .fuzzy
                    .iter()
                    .find(|f| f.header == header && f.field == dataset.fields[field].name)
                    .map_or(100, |f| f.percent);
                Column {
                    field,
                    file_column: c,
                    header,
                    confidence,
                    filled: 0,
                    distinct: HashSet::new(),
                    over_cap: false,
                    min_num: None,
                    max_num: None,
                    min_text: None,
                    max_text: None,
                    longest: 0,
                    longest_sample: None,
                    invalid: Vec::new(),
                }
            })
            .collect();
        Self {
            columns,
            types: dataset.fields.iter().map(|f| f.ty).collect(),
            names: dataset.fields.iter().map(|f| f.name.clone()).collect(),
            rows: 0,
        }
    }

    /// Takes in one committed batch: its valid rows (typed values) and its invalid ones
    /// (their original fields).
    pub fn add(&mut self, batch: &Batch) {
        self.rows += (batch.len() + batch.errors.len()) as u64;
        for i in 0..batch.len() {
            let values = batch.row_values(i);
            for c in &mut self.columns {
                let v = &values[c.field];
                match v {
                    Value::Null => {}
                    Value::Text(s) | Value::Date(s) | Value::DateTime(s) => c.see_text(s),
                    other => {
                        if let Some(t) = other.to_text() {
                            c.see_text(&t);
                        }
                    }
                }
                c.see_value(v);
            }
        }
        for e in &batch.errors {
            for c in &mut self.columns {
                let raw = e.record.get(c.file_column).map_or("", String::as_str);
                c.see_text(raw.trim());
                if e.column.as_deref() == Some(self.names[c.field].as_str())
                    && c.invalid.len() < INVALID_SAMPLES
                    && let Some(v) = &e.value
                    && !c.invalid.contains(v)
                {
                    c.invalid.push(v.chars().take(SAMPLE_CHARS).collect());
                }
            }
        }
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn report(&self) -> Vec<ColumnReport> {
        self.columns
            .iter()
            .map(|c| {
                let percent = if self.rows == 0 {
                    0.0
                } else {
                    (c.filled as f64 * 10_000.0 / self.rows as f64).round() / 100.0
                };
                let (min, max) = match (c.min_num, c.max_num) {
                    (Some(a), Some(b)) => (
                        Some(a.normalize().to_string()),
                        Some(b.normalize().to_string()),
                    ),
                    _ => (c.min_text.clone(), c.max_text.clone()),
                };
                ColumnReport {
                    header: c.header.clone(),
                    field: self.names[c.field].clone(),
                    ty: type_name(self.types[c.field]).into(),
                    filled: c.filled,
                    filled_percent: percent,
                    distinct: c.distinct.len() as u64,
                    distinct_over_cap: c.over_cap,
                    min,
                    max,
                    longest_length: c.longest,
                    longest_sample: c.longest_sample.clone(),
                    invalid_samples: c.invalid.clone(),
                    confidence: c.confidence,
                }
            })
            .collect()
    }
}

pub fn type_name(ty: FieldType) -> &'static str {
    match ty {
        FieldType::Text => "text",
        FieldType::Integer => "integer",
        FieldType::Decimal => "decimal",
        FieldType::Boolean => "boolean",
        FieldType::Date => "date",
        FieldType::Datetime => "datetime",
    }
}

/// A [`BatchSink`] that feeds [`Stats`] with every batch the inner sink committed.
pub struct StatsSink<'a, S: BatchSink + ?Sized> {
    pub inner: Box<S>,
    pub stats: &'a mut Stats,
}

impl<S: BatchSink + ?Sized> BatchSink for StatsSink<'_, S> {
    fn commit(&mut self, batch: &Batch, checkpoint: u64) -> Result<BatchCounts, SinkError> {
        let counts = self.inner.commit(batch, checkpoint)?;
        self.stats.add(batch);
        Ok(counts)
    }
}
