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
