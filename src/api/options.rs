//! The import options a request carries, as form fields beside the file or as query
//! parameters: parsed here once for both the upload and the preview, so the two read a file
//! the same way and refuse the same options with the same errors.

use std::collections::HashMap;

use axum::extract::multipart::{Field, MultipartError};
use axum::http::{HeaderMap, header};

use super::body_rate::body_error;
use super::error::ApiError;
use crate::import::SourceOptions;
use crate::import::map::Explicit;

/// Largest form field other than the file (a mapping, say).
pub const MAX_FORM_FIELD: usize = 64 * 1024;

/// Where the column mapping comes from.
pub enum MappingChoice {
    /// The automatic match.
    Auto,
    /// A `mapping` field: column (header or `#N`) → field.
    Manual(Explicit),
    /// A `template` field: the name of a saved mapping.
    Template(String),
}

/// How to read the file and how to map its columns.
pub struct ImportOptions {
    pub source: SourceOptions,
    pub mapping: MappingChoice,
}

/// A parameter, when given and not blank.
pub fn param<'a>(params: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    params
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.trim().is_empty())
}

impl ImportOptions {
    pub fn parse(params: &HashMap<String, String>) -> Result<Self, ApiError> {
        let text = |name: &str| param(params, name).map(|v| v.trim().to_string());
        let source = SourceOptions {
            delimiter: param(params, "delimiter")
                .map(parse_delimiter)
                .transpose()?,
            encoding: text("encoding"),
            sheet: text("sheet"),
            row_column: false,
            part: None,
        };
        let mapping = match (param(params, "mapping"), text("template")) {
            (Some(m), _) => MappingChoice::Manual(serde_json::from_str(m).map_err(|e| {
                ApiError::bad(
                    "invalid_mapping",
                    format!(
                        "mapping must be a JSON object of column → field name, a column named by \
                         its header or by its position (\"#3\"): {e}"
                    ),
                )
            })?),
            (None, Some(t)) => MappingChoice::Template(t),
            (None, None) => MappingChoice::Auto,
        };
        Ok(Self { source, mapping })
    }
}

fn parse_delimiter(s: &str) -> Result<u8, ApiError> {
    match s {
        "tab" | "\\t" | "\t" => Ok(b'\t'),
        _ if s.len() == 1 && s.is_ascii() && s != "\"" && s != "\n" && s != "\r" => {
            Ok(s.as_bytes()[0])
        }
        _ => Err(ApiError::bad(
            "invalid_delimiter",
            "delimiter must be one ASCII character (or `tab`), not a quote or line break",
        )),
    }
}

/// The options of an export (`POST /api/v1/export/{dataset}`), as the request spelled them:
/// parsed here from form fields, query parameters or a JSON body (flattened by
/// [`json_params`]); checked against the dataset's fields by `api::export`.
pub struct ExportOptions {
    pub format: crate::export::ExportFormat,
    /// Field names in output order (`a,b` or a JSON array).
    pub columns: Option<Vec<String>>,
    /// Field → value, or field → `{gte, lte}`.
    pub filter: serde_json::Map<String, serde_json::Value>,
    pub updated_since: Option<chrono::DateTime<chrono::Utc>>,
    pub job_id: Option<i64>,
    pub template: Option<String>,
    pub bom: bool,
    pub formula_safe: bool,
}

/// Every option an export takes; anything else is `400 unknown_option`.
const EXPORT_OPTIONS: &[&str] = &[
    "format",
    "columns",
    "where",
    "updatedSince",
    "jobId",
    "template",
    "bom",
    "formulaSafe",
    "priority",
];

/// A JSON object body as parameters: strings as they are, anything else as its JSON text.
pub fn json_params(body: &[u8]) -> Result<HashMap<String, String>, ApiError> {
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).map_err(|e| {
            ApiError::bad(
                "invalid_body",
                format!("the body must be a JSON object: {e}"),
            )
        })?;
    Ok(object
        .into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => (k, s),
            other => (k, other.to_string()),
        })
        .collect())
}

/// `true`/`false` (also `1`/`0`), else `400 invalid_parameter`.
pub fn flag(params: &HashMap<String, String>, name: &str, default: bool) -> Result<bool, ApiError> {
    match param(params, name).map(str::trim) {
        None => Ok(default),
        Some("true" | "1") => Ok(true),
        Some("false" | "0") => Ok(false),
        Some(_) => Err(ApiError::bad(
            "invalid_parameter",
            format!("`{name}` must be true or false"),
        )),
    }
}

impl ExportOptions {
    pub fn parse(params: &HashMap<String, String>) -> Result<Self, ApiError> {
        if let Some(unknown) = params
            .keys()
            .find(|k| !EXPORT_OPTIONS.contains(&k.as_str()))
        {
            return Err(ApiError::bad(
                "unknown_option",
                format!(
                    "`{unknown}` is not an export option; they are: {}",
                    EXPORT_OPTIONS.join(", ")
                ),
            ));
        }
        let format = match param(params, "format").map(str::trim) {
            None | Some("csv") => crate::export::ExportFormat::Csv,
            Some("xlsx") => crate::export::ExportFormat::Xlsx,
            Some(other) => {
                return Err(ApiError::bad(
                    "invalid_format",
                    format!("format must be `csv` or `xlsx`, not `{other}`"),
                ));
            }
        };
        let columns = param(params, "columns")
            .map(|c| {
                let c = c.trim();
                if c.starts_with('[') {
                    serde_json::from_str::<Vec<String>>(c).map_err(|e| {
                        ApiError::bad(
                            "invalid_columns",
                            format!(
                                "columns must be field names, `a,b` or a JSON array of strings: {e}"
                            ),
                        )
                    })
                } else {
                    Ok(c.split(',').map(|f| f.trim().to_string()).collect())
                }
            })
            .transpose()?;
        let filter = match param(params, "where") {
            None => serde_json::Map::new(),
            Some(w) => serde_json::from_str(w).map_err(|e| {
                ApiError::bad(
                    "invalid_where",
                    format!(
                        "where must be a JSON object of field → value or field → {{\"gte\": …, \"lte\": …}}: {e}"
                    ),
                )
            })?,
        };
        let updated_since = param(params, "updatedSince")
            .map(|t| {
                let t = t.trim();
                chrono::DateTime::parse_from_rfc3339(t)
                    .map(|t| t.to_utc())
                    .or_else(|_| {
                        chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d")
                            .map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc())
                    })
                    .map_err(|_| {
                        ApiError::bad(
                            "invalid_updated_since",
                            format!("updatedSince must be an RFC 3339 time or a date (YYYY-MM-DD), not `{t}`"),
                        )
                    })
            })
            .transpose()?;
        let job_id = param(params, "jobId")
            .map(|j| {
                j.trim()
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| {
                        ApiError::bad("invalid_job", format!("jobId must be a job id, not `{j}`"))
                    })
            })
            .transpose()?;
        Ok(Self {
            format,
            columns,
            filter,
            updated_since,
            job_id,
            template: param(params, "template").map(|t| t.trim().to_string()),
            bom: flag(params, "bom", false)?,
            formula_safe: flag(params, "formulaSafe", true)?,
        })
    }
}

/// Whether the request body is a multipart form.
/// A `limit` or `offset` query parameter: a whole number from 0 to 2⁶³−1 (what the databases
/// count in; the document says so), else `400 invalid_parameter`.
pub fn number(params: &HashMap<String, String>, name: &str, default: u64) -> Result<u64, ApiError> {
    params.get(name).map_or(Ok(default), |v| {
        v.parse::<u64>()
            .ok()
            .filter(|n| i64::try_from(*n).is_ok())
            .ok_or_else(|| {
                ApiError::bad(
                    "invalid_parameter",
                    format!("`{name}` must be a whole number from 0 to {}", i64::MAX),
                )
            })
    })
}

pub fn is_multipart(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"))
}

/// A multipart error as the client's problem (or the body-rate cut-off it was).
pub fn multipart_error(e: MultipartError) -> ApiError {
    body_error(e, |e| ApiError::bad("bad_multipart", e.body_text()))
}

/// The text of a form field other than the file, at most [`MAX_FORM_FIELD`] bytes.
pub async fn text_field(field: &mut Field<'_>, name: &str) -> Result<String, ApiError> {
    let mut text = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        text.extend_from_slice(&chunk);
        if text.len() > MAX_FORM_FIELD {
            return Err(ApiError::bad(
                "field_too_large",
                format!("form field `{name}` is larger than {MAX_FORM_FIELD} bytes"),
            ));
        }
    }
    Ok(String::from_utf8_lossy(&text).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delimiters() {
        assert_eq!(parse_delimiter("tab").unwrap(), b'\t');
        assert_eq!(parse_delimiter(";").unwrap(), b';');
        assert!(parse_delimiter("\"").is_err());
        assert!(parse_delimiter(";;").is_err());
    }
}
