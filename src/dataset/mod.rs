//! Datasets: the target tables described in `datasets.toml`.
//!
//! Owns parsing and checking that file (identifiers, types, bounds) into [`Dataset`] values that
//! the rest of sluice trusts. Table and column names come only from here and are validated as
//! plain identifiers, so the SQL built from them is safe; values from files are always bound.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use indexmap::IndexMap;
use rust_decimal::Decimal;
use serde::Deserialize;
use toml::Spanned;

/// The built-in `datasets.toml`, used when no `--datasets` file is given.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// Columns of a `<table>_history` table besides the key columns.
pub const HISTORY_COLUMNS: &[&str] = &[
    "id",
    "field",
    "old_value",
    "new_value",
    "valid_from",
    "valid_to",
    "job_id",
];

/// Rows a synchronous dataset accepts when the file sets no `max_rows`.
const DEFAULT_SYNC_MAX_ROWS: u64 = 5_000;

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
}

/// The value type of a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    Text,
    Integer,
    Decimal,
    Boolean,
    Date,
    Datetime,
}

/// One typed column of a dataset.
#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    pub ty: FieldType,
    pub required: bool,
    pub min: Option<Decimal>,
    pub max: Option<Decimal>,
    pub max_len: Option<usize>,
    /// Most decimal places a decimal field accepts.
    pub scale: Option<u32>,
    /// Other header names that map to this field.
    pub aliases: Vec<String>,
    /// Accepted chrono formats for date/datetime fields, tried after ISO 8601.
    pub formats: Vec<String>,
    /// Archive the old value in `<table>_history` when an import changes it.
    pub history: bool,
}

/// A target table: its name, key and fields, in declaration order.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub name: String,
    pub table: String,
    pub fields: Vec<Field>,
    /// Indices into `fields` of the key columns.
    pub key: Vec<usize>,
    /// Imported inside the request (200 with results) rather than as a background job.
    pub sync: bool,
    /// Largest number of data rows a synchronous import accepts.
    pub max_rows: u64,
    /// Longest a job of this dataset may run (from its first start); overrides the global
    /// `--job-timeout`.
    pub timeout: Option<std::time::Duration>,
}

impl Dataset {
    pub fn field_index(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }

    pub fn history_table(&self) -> String {
        format!("{}_history", self.table)
    }

    pub fn has_history(&self) -> bool {
        self.fields.iter().any(|f| f.history)
    }

    pub fn is_key(&self, field: usize) -> bool {
        self.key.contains(&field)
    }

    /// The staging table a `mode=replace` job of `job` builds before it replaces this table:
    /// the same fields, no history (the swap replaces rows; it does not archive them).
    pub fn staging(&self, job: i64) -> Dataset {
        let mut staged = self.clone();
        staged.table = staging_table(job);
        staged.fields.iter_mut().for_each(|f| f.history = false);
        staged
    }
}

/// All datasets of one configuration, by name.
#[derive(Debug, Clone, Default)]
pub struct Datasets {
    by_name: BTreeMap<String, Arc<Dataset>>,
}

impl Datasets {
    /// The built-in datasets.
    pub fn builtin() -> Self {
        Self::parse(DEFAULT_TOML, "built-in datasets.toml")
            .expect("the built-in datasets.toml is valid")
    }

    /// Reads a datasets file; errors name the file and line.
    pub fn load(path: &Path) -> Result<Self, DatasetError> {
        let text = std::fs::read_to_string(path).map_err(|source| DatasetError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, DatasetError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| DatasetError::Invalid {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let invalid = |span: std::ops::Range<usize>, message: String| DatasetError::Invalid {
            origin: format!("{origin}, line {}", line_of(text, span.start)),
            message,
        };
        if raw.datasets.is_empty() {
            return Err(DatasetError::Invalid {
                origin: origin.to_string(),
                message: "no [datasets.NAME] table is defined".into(),
            });
        }
        let mut by_name = BTreeMap::new();
        let mut tables = BTreeMap::new();
        for (name, ds) in raw.datasets {
            let span = name.span();
            let name = name.into_inner();
            let dataset = build_dataset(&name, ds).map_err(|m| invalid(span.clone(), m))?;
            if let Some(other) = tables.insert(dataset.table.clone(), name.clone()) {
                return Err(invalid(
                    span,
                    format!(
                        "datasets `{other}` and `{name}` both write table `{}`",
                        dataset.table
                    ),
                ));
            }
            by_name.insert(name, Arc::new(dataset));
        }
        Ok(Self { by_name })
    }

    pub fn get(&self, name: &str) -> Option<Arc<Dataset>> {
        self.by_name.get(name).cloned()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Dataset>> {
        self.by_name.values()
    }

    pub fn names(&self) -> Vec<&str> {
        self.by_name.keys().map(String::as_str).collect()
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

/// The name of a replace job's staging table (in sluice's reserved `_sluice` namespace).
pub fn staging_table(job: i64) -> String {
    format!("_sluice_next_{job}")
}

/// A plain SQL identifier: a letter or `_` first, then letters, digits or `_`, at most 63 bytes,
/// and not in sluice's reserved `_sluice` namespace.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    first_ok
        && s.len() <= 63
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.to_ascii_lowercase().starts_with("_sluice")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    datasets: IndexMap<Spanned<String>, RawDataset>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDataset {
    table: Option<String>,
    key: Vec<String>,
    #[serde(default)]
    sync: bool,
    max_rows: Option<u64>,
    timeout: Option<String>,
    fields: IndexMap<String, RawField>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    #[serde(rename = "type")]
    ty: FieldType,
    #[serde(default)]
    required: bool,
    min: Option<RawNumber>,
    max: Option<RawNumber>,
    max_len: Option<usize>,
    scale: Option<u32>,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    formats: Vec<String>,
    #[serde(default)]
    history: bool,
}

/// A bound written as a TOML integer, float or string; floats are read through their text so
/// `0.1` means exactly one tenth.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawNumber {
    Int(i64),
    Float(f64),
    Text(String),
}

impl RawNumber {
    fn to_decimal(&self) -> Option<Decimal> {
        match self {
            RawNumber::Int(i) => Some(Decimal::from(*i)),
            RawNumber::Float(f) => Decimal::from_str(&f.to_string()).ok(),
            RawNumber::Text(s) => Decimal::from_str(s.trim()).ok(),
        }
    }
}

fn build_dataset(name: &str, raw: RawDataset) -> Result<Dataset, String> {
    if !is_identifier(name) {
        return Err(format!(
            "dataset name `{name}` must be a plain identifier (letters, digits, _)"
        ));
    }
    let table = raw.table.unwrap_or_else(|| name.to_string());
    if !is_identifier(&table) {
        return Err(format!("table name `{table}` must be a plain identifier"));
    }
    if raw.fields.is_empty() {
        return Err(format!("dataset `{name}` has no fields"));
    }
    let mut fields = Vec::with_capacity(raw.fields.len());
    for (fname, f) in raw.fields {
        fields.push(build_field(&fname, f)?);
    }
    if raw.key.is_empty() {
        return Err(format!(
            "dataset `{name}` needs a key (key = [\"field\", …])"
        ));
    }
    let mut key = Vec::new();
    for k in &raw.key {
        let idx = fields.iter().position(|f| &f.name == k).ok_or_else(|| {
            format!("key field `{k}` of dataset `{name}` is not among its fields")
        })?;
        if key.contains(&idx) {
            return Err(format!("key field `{k}` is listed twice"));
        }
        if HISTORY_COLUMNS.contains(&k.as_str()) {
            return Err(format!(
                "key field `{k}` clashes with a column of the history table ({})",
                HISTORY_COLUMNS.join(", ")
            ));
        }
        // A key value must always be present.
        fields[idx].required = true;
        key.push(idx);
    }
    if raw.max_rows == Some(0) {
        return Err("max_rows must be at least 1".into());
    }
    let timeout = raw
        .timeout
        .as_deref()
        .map(crate::duration::parse)
        .transpose()
        .map_err(|e| format!("timeout: {e}"))?;
    Ok(Dataset {
        name: name.to_string(),
        table,
        fields,
        key,
        sync: raw.sync,
        max_rows: raw.max_rows.unwrap_or(if raw.sync {
            DEFAULT_SYNC_MAX_ROWS
        } else {
            u64::MAX
        }),
        timeout,
    })
}

fn build_field(name: &str, raw: RawField) -> Result<Field, String> {
    if !is_identifier(name) {
        return Err(format!(
            "field name `{name}` must be a plain identifier (letters, digits, _; not starting with _sluice)"
        ));
    }
    let numeric = matches!(raw.ty, FieldType::Integer | FieldType::Decimal);
    let bound = |b: &Option<RawNumber>, which: &str| -> Result<Option<Decimal>, String> {
        match b {
            None => Ok(None),
            Some(_) if !numeric => Err(format!(
                "field `{name}`: `{which}` applies only to integer and decimal fields"
            )),
            Some(n) => n
                .to_decimal()
                .map(Some)
                .ok_or_else(|| format!("field `{name}`: `{which}` is not a number")),
        }
    };
    let min = bound(&raw.min, "min")?;
    let max = bound(&raw.max, "max")?;
    if let (Some(lo), Some(hi)) = (min, max)
        && lo > hi
    {
        return Err(format!("field `{name}`: min {lo} is greater than max {hi}"));
    }
    if raw.max_len.is_some() && raw.ty != FieldType::Text {
        return Err(format!(
            "field `{name}`: max_len applies only to text fields"
        ));
    }
    if raw.scale.is_some() && raw.ty != FieldType::Decimal {
        return Err(format!(
            "field `{name}`: scale applies only to decimal fields"
        ));
    }
    if raw.scale.is_some_and(|s| s > 28) {
        return Err(format!("field `{name}`: scale must be at most 28"));
    }
    if !raw.formats.is_empty() && !matches!(raw.ty, FieldType::Date | FieldType::Datetime) {
        return Err(format!(
            "field `{name}`: formats apply only to date and datetime fields"
        ));
    }
    for f in &raw.formats {
        if chrono::format::StrftimeItems::new(f).parse().is_err() {
            return Err(format!("field `{name}`: `{f}` is not a valid date format"));
        }
    }
    Ok(Field {
        name: name.to_string(),
        ty: raw.ty,
        required: raw.required,
        min,
        max,
        max_len: raw.max_len,
        scale: raw.scale,
        aliases: raw.aliases,
        formats: raw.formats,
        history: raw.history,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_datasets_parse() {
        let d = Datasets::builtin();
        let p = d.get("products").unwrap();
        assert_eq!(p.key, vec![0]);
        assert!(p.fields[3].history);
        assert!(d.get("dealers").unwrap().sync);
    }

    #[test]
    fn errors_name_the_line() {
        let text = "[datasets.ok]\nkey=[\"a\"]\n[datasets.ok.fields]\na={type=\"text\"}\n\n[datasets.\"bad name\"]\nkey=[\"a\"]\n[datasets.\"bad name\".fields]\na={type=\"text\"}\n";
        let err = Datasets::parse(text, "x.toml").unwrap_err().to_string();
        assert!(err.contains("line 6"), "{err}");
        let err = Datasets::parse(
            "[datasets.a]\nkey=[\"z\"]\n[datasets.a.fields]\nb={type=\"text\"}\n",
            "x.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("key field `z`"), "{err}");
        let err = Datasets::parse(
            "[datasets.a]\nkey=[\"b\"]\n[datasets.a.fields]\nb={type=\"txt\"}\n",
            "x.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 4"), "{err}");
    }

    #[test]
    fn identifiers_are_strict() {
        assert!(is_identifier("products_2"));
        assert!(!is_identifier("drop table"));
        assert!(!is_identifier("a\"b"));
        assert!(!is_identifier("_sluice_job"));
        assert!(!is_identifier("1abc"));
    }
}
