//! Column mapping: which column of the file feeds which field of the dataset.
//!
//! Headers match field names and aliases ignoring case, spaces, `_` and `-`; an explicit mapping
//! (header → field) from the request wins over the automatic one. Columns that match nothing are
//! ignored and reported as warnings; a required field without a column is a file-level error.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::FileError;
use crate::dataset::Dataset;

/// The resolved mapping, stored with the job so the worker reads the file exactly as the upload
/// was checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping {
    /// For each column of the file, the name of the field it feeds (if any).
    pub columns: Vec<Option<String>>,
    /// Headers that feed no field.
    pub ignored: Vec<String>,
}

impl Mapping {
    /// For each dataset field, the index of the column that feeds it.
    pub fn field_columns(&self, dataset: &Dataset) -> Vec<Option<usize>> {
        dataset
            .fields
            .iter()
            .map(|f| {
                self.columns
                    .iter()
                    .position(|c| c.as_deref() == Some(f.name.as_str()))
            })
            .collect()
    }

    pub fn warnings(&self) -> Vec<String> {
        self.ignored
            .iter()
            .map(|h| format!("column `{h}` matches no field and is ignored"))
            .collect()
    }
}

/// Folds a header for comparison: lowercase, without spaces, `_`, `-` and `.`.
fn fold(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, ' ' | '_' | '-' | '.') && !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

/// Resolves the mapping of `headers` onto `dataset`. `explicit` maps header → field name; a
/// field name of `""` or `null` in it means "ignore this column".
pub fn resolve(
    dataset: &Dataset,
    headers: &[String],
    explicit: Option<&BTreeMap<String, Option<String>>>,
) -> Result<Mapping, FileError> {
    let mut names: BTreeMap<String, &str> = BTreeMap::new();
    for field in &dataset.fields {
        names.insert(fold(&field.name), &field.name);
        for alias in &field.aliases {
            names.entry(fold(alias)).or_insert(&field.name);
        }
    }
    if let Some(explicit) = explicit {
        for (header, field) in explicit {
            if !headers.iter().any(|h| h == header) {
                return Err(FileError::BadMapping(format!(
                    "the mapping names column `{header}`, which the file does not have"
                )));
            }
            if let Some(f) = field.as_deref().filter(|f| !f.is_empty())
                && dataset.field_index(f).is_none()
            {
                return Err(FileError::BadMapping(format!(
                    "the mapping sends column `{header}` to `{f}`, which is not a field of dataset `{}`",
                    dataset.name
                )));
            }
        }
    }
    let mut columns = Vec::with_capacity(headers.len());
    let mut ignored = Vec::new();
    for header in headers {
        let target = match explicit.and_then(|m| m.get(header)) {
            Some(choice) => choice.clone().filter(|f| !f.is_empty()),
            None => names.get(&fold(header)).map(|s| s.to_string()),
        };
        if target.is_none() && !header.is_empty() {
            ignored.push(header.clone());
        }
        columns.push(target);
    }
    for (i, c) in columns.iter().enumerate() {
        if let Some(field) = c
            && let Some(j) = columns[i + 1..].iter().position(|d| d == c)
        {
            return Err(FileError::BadMapping(format!(
                "columns `{}` and `{}` both map to field `{field}`; keep one or pass a mapping",
                headers[i],
                headers[i + 1 + j]
            )));
        }
    }
    let missing: Vec<String> = dataset
        .fields
        .iter()
        .filter(|f| {
            f.required
                && !columns
                    .iter()
                    .any(|c| c.as_deref() == Some(f.name.as_str()))
        })
        .map(|f| f.name.clone())
        .collect();
    if !missing.is_empty() {
        return Err(FileError::MissingColumns(missing));
    }
    Ok(Mapping { columns, ignored })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::Datasets;

    fn headers(h: &[&str]) -> Vec<String> {
        h.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn matches_names_and_aliases_loosely() {
        let ds = Datasets::builtin().get("products").unwrap();
        let m = resolve(
            &ds,
            &headers(&["Product Code", "NAME", "Updated-At", "colour"]),
            None,
        )
        .unwrap();
        assert_eq!(m.columns[0].as_deref(), Some("sku"));
        assert_eq!(m.columns[1].as_deref(), Some("name"));
        assert_eq!(m.columns[2].as_deref(), Some("updated_at"));
        assert_eq!(m.ignored, vec!["colour".to_string()]);
    }

    #[test]
    fn missing_required_columns_are_named() {
        let ds = Datasets::builtin().get("products").unwrap();
        let err = resolve(&ds, &headers(&["sku", "price"]), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "missing required column(s): name, updated_at"
        );
    }

    #[test]
    fn explicit_mapping_wins() {
        let ds = Datasets::builtin().get("products").unwrap();
        let mut explicit = BTreeMap::new();
        explicit.insert("Artikel".to_string(), Some("sku".to_string()));
        explicit.insert("sku".to_string(), None);
        let m = resolve(
            &ds,
            &headers(&["Artikel", "sku", "name", "updated_at"]),
            Some(&explicit),
        )
        .unwrap();
        assert_eq!(m.columns[0].as_deref(), Some("sku"));
        assert_eq!(m.columns[1], None);
    }
}
