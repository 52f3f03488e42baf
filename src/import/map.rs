//! Column mapping: which column of the file feeds which field of the dataset.
//!
//! Headers match field names and aliases ignoring case, spaces, `_`, `-` and `.`; an explicit
//! mapping (column → field) from the request wins over the automatic one. It names a column by
//! its header text or by its 1-based position (`#3`), so columns with the same header (common
//! in real exports) can be told apart. A header that matches
//! no name or alias may still match a field by similarity (`Prod. Code` → `sku` through the
//! alias "product code"): with a confidence of at least [`FUZZY_APPLY`] it is applied and always
//! reported (a warning on the job, a `fuzzy` entry in the preview); below that it is only
//! suggested. Columns that match nothing are ignored and reported as warnings; a required field
//! without a column is a file-level error.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::FileError;
use crate::dataset::Dataset;

/// The resolved mapping, stored with the job so the worker reads the file exactly as the upload
/// was checked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping {
    /// For each column of the file, the name of the field it feeds (if any).
    pub columns: Vec<Option<String>>,
    /// Headers that feed no field.
    pub ignored: Vec<String>,
    /// Columns mapped by similarity, not by name or alias.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fuzzy: Vec<FuzzyMatch>,
}

/// A column matched to a field by similarity; `percent` is the confidence (0–100).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FuzzyMatch {
    pub header: String,
    pub field: String,
    pub percent: u8,
}

/// Lowest confidence at which a similarity match is applied without being asked.
pub const FUZZY_APPLY: f64 = 0.8;
/// Lowest confidence at which a similarity match is offered as a suggestion.
pub const FUZZY_SUGGEST: f64 = 0.5;

/// How a column found (or did not find) its field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchKind {
    Name,
    Alias,
    Fuzzy,
    None,
}

/// The automatic match of one column, as the preview shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ColumnMatch {
    pub header: String,
    /// The field the column feeds automatically (name, alias, or fuzzy at ≥ [`FUZZY_APPLY`]).
    pub field: Option<String>,
    #[serde(rename = "match")]
    pub kind: MatchKind,
    /// 1.0 for a name or alias; the similarity for a fuzzy match or suggestion.
    pub confidence: f64,
    /// The best similar field when it was not applied (confidence between [`FUZZY_SUGGEST`] and
    /// [`FUZZY_APPLY`]).
    pub suggestion: Option<String>,
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
        let fuzzy = self.fuzzy.iter().map(|m| {
            format!(
                "column `{}` was mapped to `{}` by similarity (confidence {:.2}); pass a mapping if that is wrong",
                m.header,
                m.field,
                f64::from(m.percent) / 100.0
            )
        });
        let ignored = self
            .ignored
            .iter()
            .map(|h| format!("column `{h}` matches no field and is ignored"));
        fuzzy.chain(ignored).collect()
    }
}

/// Folds a header for comparison: lowercase, without spaces, `_`, `-` and `.`.
fn fold(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, ' ' | '_' | '-' | '.') && !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

/// An explicit mapping as a request or template gives it: column → field name, where the column
/// is a header text or `#N` (the N-th column, from 1); a field of `""` or `null` ignores it.
pub type Explicit = BTreeMap<String, Option<String>>;

/// What an explicit mapping decides for one column: `None` when it does not name the column,
/// `Some(None)` to ignore it, `Some(Some(field))` to feed that field.
pub type Choice = Option<Option<String>>;

/// The column a mapping key names: a header that appears exactly once, else `#N` for the N-th
/// column. A header that appears more than once is an error that names the way out.
pub fn column_of(headers: &[String], key: &str) -> Result<usize, FileError> {
    let same: Vec<usize> = (0..headers.len()).filter(|&i| headers[i] == key).collect();
    match same.as_slice() {
        [i] => return Ok(*i),
        [] => {}
        many => {
            let positions: Vec<String> = many.iter().map(|i| format!("#{}", i + 1)).collect();
            return Err(FileError::BadMapping(format!(
                "the file has {} columns named `{key}` (columns {}); name one by its position instead, e.g. {{\"{}\": \"…\"}}",
                many.len(),
                positions.join(", "),
                positions[0]
            )));
        }
    }
    if let Some(n) = key
        .strip_prefix('#')
        .and_then(|n| n.trim().parse::<usize>().ok())
    {
        if n >= 1 && n <= headers.len() {
            return Ok(n - 1);
        }
        return Err(FileError::BadMapping(format!(
            "the mapping names column #{n}, but the file has {} column(s)",
            headers.len()
        )));
    }
    Err(FileError::BadMapping(format!(
        "the mapping names column `{key}`, which the file does not have"
    )))
}

/// The key that names column `i` in a mapping: its header, or `#N` when the header is shared
/// with another column.
pub fn column_key(headers: &[String], i: usize) -> String {
    let header = &headers[i];
    if headers.iter().filter(|h| *h == header).count() == 1 {
        header.clone()
    } else {
        format!("#{}", i + 1)
    }
}

/// Each column's explicit choice (see [`Choice`]), checking that every key names a column of the
/// file, that no column is named twice, and that every field exists.
pub fn explicit_columns(
    dataset: &Dataset,
    headers: &[String],
    explicit: Option<&Explicit>,
) -> Result<Vec<Choice>, FileError> {
    let mut chosen: Vec<Choice> = vec![None; headers.len()];
    let mut keys: Vec<Option<&str>> = vec![None; headers.len()];
    for (key, field) in explicit.into_iter().flatten() {
        let i = column_of(headers, key)?;
        if let Some(f) = field.as_deref().filter(|f| !f.is_empty())
            && dataset.field_index(f).is_none()
        {
            return Err(FileError::BadMapping(format!(
                "the mapping sends column `{key}` to `{f}`, which is not a field of dataset `{}`",
                dataset.name
            )));
        }
        if let Some(other) = keys[i] {
            return Err(FileError::BadMapping(format!(
                "the mapping names column {} twice (`{other}` and `{key}`); keep one",
                i + 1
            )));
        }
        keys[i] = Some(key);
        chosen[i] = Some(field.clone().filter(|f| !f.is_empty()));
    }
    Ok(chosen)
}

/// Resolves the mapping of `headers` onto `dataset`; `explicit` (see [`Explicit`]) decides the
/// columns it names, the automatic match the rest.
pub fn resolve(
    dataset: &Dataset,
    headers: &[String],
    explicit: Option<&Explicit>,
) -> Result<Mapping, FileError> {
    let chosen = explicit_columns(dataset, headers, explicit)?;
    let auto = auto_match_rest(dataset, headers, &chosen);
    let mut columns = Vec::with_capacity(headers.len());
    let mut ignored = Vec::new();
    let mut fuzzy = Vec::new();
    for ((header, found), choice) in headers.iter().zip(&auto).zip(&chosen) {
        let target = match choice {
            Some(choice) => choice.clone(),
            None => found.field.clone(),
        };
        if found.kind == MatchKind::Fuzzy
            && let Some(field) = &found.field
            && target.as_ref() == Some(field)
        {
            fuzzy.push(FuzzyMatch {
                header: header.clone(),
                field: field.clone(),
                percent: (found.confidence * 100.0).round() as u8,
            });
        }
        if target.is_none() && !header.is_empty() {
            ignored.push(header.clone());
        }
        columns.push(target);
    }
    for (i, c) in columns.iter().enumerate() {
        if let Some(field) = c
            && let Some(j) = columns[i + 1..].iter().position(|d| d == c)
        {
            let j = i + 1 + j;
            return Err(FileError::BadMapping(format!(
                "columns {} (`{}`) and {} (`{}`) both map to field `{field}`; pass a mapping that \
                 keeps one, naming columns by header or by position, e.g. {{\"#{}\": null}}",
                i + 1,
                headers[i],
                j + 1,
                headers[j],
                j + 1
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
        return Err(FileError::MissingColumns {
            missing,
            hint: None,
        });
    }
    Ok(Mapping {
        columns,
        ignored,
        fuzzy,
    })
}

/// The automatic match of the columns an explicit mapping left undecided (`chosen`, from
/// [`explicit_columns`]); the fields it chose are not matched again.
pub fn auto_match_rest(
    dataset: &Dataset,
    headers: &[String],
    chosen: &[Choice],
) -> Vec<ColumnMatch> {
    let taken: Vec<&str> = chosen
        .iter()
        .flatten()
        .flatten()
        .map(String::as_str)
        .collect();
    auto_match(dataset, headers, &|i| chosen[i].is_some(), &taken)
}

/// The automatic match of every header: by name, by alias, or by similarity. Columns (by index)
/// for which `skip` is true, and fields in `taken`, are left out of similarity matching (an explicit
/// mapping decides them). Names and aliases match first; similarity then only pairs headers and
/// fields still free, the most similar pairs first, each field at most once.
pub fn auto_match(
    dataset: &Dataset,
    headers: &[String],
    skip: &dyn Fn(usize) -> bool,
    taken: &[&str],
) -> Vec<ColumnMatch> {
    let mut names: BTreeMap<String, (&str, MatchKind)> = BTreeMap::new();
    for field in &dataset.fields {
        names.insert(fold(&field.name), (&field.name, MatchKind::Name));
    }
    for field in &dataset.fields {
        for alias in &field.aliases {
            names
                .entry(fold(alias))
                .or_insert((&field.name, MatchKind::Alias));
        }
    }
    let mut used: Vec<String> = taken.iter().map(|s| s.to_string()).collect();
    let mut out: Vec<ColumnMatch> = headers
        .iter()
        .map(|h| ColumnMatch {
            header: h.clone(),
            field: None,
            kind: MatchKind::None,
            confidence: 0.0,
            suggestion: None,
        })
        .collect();
    for (i, h) in headers.iter().enumerate() {
        if skip(i) {
            continue;
        }
        // Two columns named for one field stay a clash for `resolve` to report, not a guess.
        if let Some((field, kind)) = names.get(&fold(h)) {
            used.push(field.to_string());
            out[i].field = Some(field.to_string());
            out[i].kind = *kind;
            out[i].confidence = 1.0;
        }
    }
    // Every (header, field) pair not decided yet, best first.
    let mut pairs: Vec<(f64, usize, &str)> = Vec::new();
    for (i, h) in headers.iter().enumerate() {
        if skip(i) || out[i].field.is_some() || h.trim().is_empty() {
            continue;
        }
        for field in &dataset.fields {
            if used.contains(&field.name) {
                continue;
            }
            let best = std::iter::once(&field.name)
                .chain(&field.aliases)
                .map(|target| similarity(h, target))
                .fold(0.0, f64::max);
            if best >= FUZZY_SUGGEST {
                pairs.push((best, i, &field.name));
            }
        }
    }
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    for (score, i, field) in pairs {
        if out[i].kind != MatchKind::None || out[i].suggestion.is_some() {
            continue;
        }
        if score >= FUZZY_APPLY {
            if used.iter().any(|u| u == field) {
                continue;
            }
            used.push(field.to_string());
            out[i].field = Some(field.to_string());
            out[i].kind = MatchKind::Fuzzy;
        } else {
            out[i].suggestion = Some(field.to_string());
        }
        out[i].confidence = (score * 100.0).round() / 100.0;
    }
    out
}

/// Lowercase alphanumeric words of a header.
fn words(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// How alike a header and a field name (or alias) are, from 0 to 1. Equal but for punctuation:
/// 0.95; every word an abbreviation of the matching word (`Prod. Code` / `product code`): 0.9;
/// otherwise the edit-distance ratio of the folded forms, or a containment score.
pub fn similarity(header: &str, target: &str) -> f64 {
    let (hw, tw) = (words(header), words(target));
    let (h, t) = (hw.concat(), tw.concat());
    if h.is_empty() || t.is_empty() {
        return 0.0;
    }
    if h == t {
        return 0.95;
    }
    if hw.len() == tw.len()
        && hw
            .iter()
            .zip(&tw)
            .all(|(a, b)| b.starts_with(a.as_str()) && (a.len() >= 3 || a == b))
    {
        return 0.9;
    }
    let (hc, tc): (Vec<char>, Vec<char>) = (h.chars().collect(), t.chars().collect());
    let longest = hc.len().max(tc.len());
    let ratio = 1.0 - levenshtein(&hc, &tc) as f64 / longest as f64;
    let shortest = hc.len().min(tc.len());
    let contained = if shortest >= 3 && (h.contains(&t) || t.contains(&h)) {
        0.6 + 0.3 * shortest as f64 / longest as f64
    } else {
        0.0
    };
    ratio.max(contained)
}

fn levenshtein(a: &[char], b: &[char]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
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
    fn near_misses_are_matched_by_similarity_and_reported() {
        let ds = Datasets::builtin().get("products").unwrap();
        let m = resolve(
            &ds,
            &headers(&["Prod. Code", "Name", "Upated At", "Stok", "Colour"]),
            None,
        )
        .unwrap();
        assert_eq!(m.columns[0].as_deref(), Some("sku"));
        assert_eq!(m.columns[2].as_deref(), Some("updated_at"));
        assert_eq!(m.columns[3].as_deref(), Some("stock"));
        assert_eq!(m.columns[4], None);
        let fuzzy: Vec<&str> = m.fuzzy.iter().map(|f| f.header.as_str()).collect();
        assert_eq!(fuzzy, vec!["Prod. Code", "Upated At", "Stok"]);
        assert!(m.warnings()[0].contains("`Prod. Code` was mapped to `sku` by similarity"));
    }

    #[test]
    fn weak_similarity_is_only_suggested() {
        let ds = Datasets::builtin().get("products").unwrap();
        let found = auto_match(
            &ds,
            &headers(&["sku", "Product Price", "nme"]),
            &|_: usize| false,
            &[],
        );
        assert_eq!(found[1].field, None);
        assert_eq!(found[1].suggestion.as_deref(), Some("price"));
        assert!(found[1].confidence < FUZZY_APPLY && found[1].confidence >= FUZZY_SUGGEST);
        // "nme" is one edit from "name" (0.75): suggested, not applied.
        assert_eq!(found[2].field, None);
        assert_eq!(found[2].suggestion.as_deref(), Some("name"));
    }

    #[test]
    fn a_field_is_never_matched_twice() {
        let ds = Datasets::builtin().get("products").unwrap();
        let found = auto_match(
            &ds,
            &headers(&["sku", "Prod. Code"]),
            &|_: usize| false,
            &[],
        );
        assert_eq!(found[0].kind, MatchKind::Name);
        assert_eq!(found[1].field, None);
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

    #[test]
    fn repeated_headers_are_told_apart_by_position() {
        let ds = Datasets::builtin().get("products").unwrap();
        let cols = headers(&["sku", "name", "price", "updated_at", "price"]);
        let err = resolve(&ds, &cols, None).unwrap_err();
        assert_eq!(err.code(), "invalid_mapping");
        assert!(
            err.to_string()
                .contains("columns 3 (`price`) and 5 (`price`)")
                && err.to_string().contains(r##"{"#5": null}"##),
            "{err}"
        );
        // By header text, a repeated name is ambiguous, and the message names the way out.
        let mut by_name = BTreeMap::new();
        by_name.insert("price".to_string(), None);
        let err = resolve(&ds, &cols, Some(&by_name)).unwrap_err();
        assert!(err.to_string().contains("columns #3, #5"), "{err}");
        // By position it works: the second `price` feeds the field, the first is ignored.
        let mut by_position = BTreeMap::new();
        by_position.insert("#3".to_string(), None);
        by_position.insert("#5".to_string(), Some("price".to_string()));
        let m = resolve(&ds, &cols, Some(&by_position)).unwrap();
        assert_eq!(m.columns[2], None);
        assert_eq!(m.columns[4].as_deref(), Some("price"));
        assert_eq!(column_key(&cols, 0), "sku");
        assert_eq!(column_key(&cols, 4), "#5");
    }

    #[test]
    fn positions_out_of_range_or_named_twice_are_refused() {
        let ds = Datasets::builtin().get("products").unwrap();
        let cols = headers(&["sku", "name", "updated_at"]);
        let mut m = BTreeMap::new();
        m.insert("#4".to_string(), Some("price".to_string()));
        let err = resolve(&ds, &cols, Some(&m)).unwrap_err();
        assert!(err.to_string().contains("#4, but the file has 3"), "{err}");
        let mut m = BTreeMap::new();
        m.insert("#1".to_string(), Some("sku".to_string()));
        m.insert("sku".to_string(), None);
        let err = resolve(&ds, &cols, Some(&m)).unwrap_err();
        assert!(err.to_string().contains("names column 1 twice"), "{err}");
        // A header that really is `#2` is named by its text first.
        let odd = headers(&["sku", "#2", "name", "updated_at"]);
        let mut m = BTreeMap::new();
        m.insert("#2".to_string(), Some("price".to_string()));
        let r = resolve(&ds, &odd, Some(&m)).unwrap();
        assert_eq!(r.columns[1].as_deref(), Some("price"));
    }
}
