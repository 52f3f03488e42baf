//! Before an import: `POST /api/v1/import/{dataset}/preview` reads the head of a file and shows
//! what an import would do with it (format, headers, the automatic mapping with confidences,
//! the first rows and their validation errors); `GET|POST /api/v1/datasets/{dataset}/templates`
//! list and save named mappings.
//!
//! The preview reads at most [`PREVIEW_BYTES`] of the body (clients send a slice of a big file;
//! the rest of a longer body is read and discarded) into a temporary file that is removed before
//! answering. Nothing is written to the database.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, FromRequest, Multipart, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value as JsonValue, json};
use tokio::io::AsyncWriteExt;

use super::AppState;
use super::auth::Caller;
use super::body_rate::body_error;
use super::dto::{Data, ErrorBody, PreviewView, Templates, UploadForm};
use super::error::ApiError;
use super::options::{self, ImportOptions, MappingChoice};
use crate::blob::BlobStore;
use crate::dataset::Dataset;
use crate::import::map::{self, Explicit};
use crate::import::read::{Source, no_rows_error, resolve_options, with_sheet_hint};
use crate::import::validate::Validator;
use crate::import::{FileError, Format, SourceOptions};
use crate::store::Template;

/// Most bytes of a file the preview reads.
pub const PREVIEW_BYTES: usize = 1024 * 1024;
/// Data rows shown.
const PREVIEW_ROWS: usize = 20;

fn dataset(state: &AppState, name: &str) -> Result<Arc<Dataset>, ApiError> {
    state.jobs.datasets.get(name).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no dataset named `{name}`; configured: {}",
            state.jobs.datasets.names().join(", ")
        ))
    })
}

/// The head of the uploaded file and the other form fields.
struct Head {
    bytes: Vec<u8>,
    truncated: bool,
    /// The head is the whole file.
    whole: bool,
    params: HashMap<String, String>,
}

/// Appends a chunk to the spool, refusing past the upload limit.
async fn spool_chunk(
    out: &mut tokio::io::BufWriter<tokio::fs::File>,
    size: &mut u64,
    max_bytes: u64,
    chunk: &[u8],
) -> Result<(), ApiError> {
    *size += chunk.len() as u64;
    if *size > max_bytes {
        return Err(ApiError::TooLarge(format!(
            "the file is larger than the limit of {max_bytes} bytes"
        )));
    }
    out.write_all(chunk)
        .await
        .map_err(|e| ApiError::storage(e, "writing preview spool"))
}

/// Appends `chunk` to `head` up to the preview limit.
fn take(head: &mut Head, chunk: &[u8]) {
    let room = PREVIEW_BYTES.saturating_sub(head.bytes.len());
    if chunk.len() > room {
        head.truncated = true;
    }
    head.bytes
        .extend_from_slice(&chunk[..chunk.len().min(room)]);
}

/// Reads the request: the file's first [`PREVIEW_BYTES`] into memory, the whole file into
/// `spool` (a workbook can only be read whole), and the other form fields.
async fn read_head(
    req: Request,
    mut params: HashMap<String, String>,
    spool: &std::path::Path,
    max_bytes: u64,
) -> Result<Head, ApiError> {
    let mut out = tokio::io::BufWriter::new(
        tokio::fs::File::create(spool)
            .await
            .map_err(|e| ApiError::storage(e, "creating preview spool"))?,
    );
    let mut size = 0u64;
    let multipart = options::is_multipart(req.headers());
    let mut head = Head {
        bytes: Vec::new(),
        truncated: false,
        whole: true,
        params: HashMap::new(),
    };
    let bad = options::multipart_error;
    if multipart {
        let mut form = Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::bad("bad_multipart", e.body_text()))?;
        let mut saw_file = false;
        while let Some(mut field) = form.next_field().await.map_err(bad)? {
            let name = field.name().unwrap_or_default().to_string();
            if name == "file" {
                saw_file = true;
                while let Some(chunk) = field.chunk().await.map_err(bad)? {
                    take(&mut head, &chunk);
                    spool_chunk(&mut out, &mut size, max_bytes, &chunk).await?;
                }
            } else {
                let text = options::text_field(&mut field, &name).await?;
                params.insert(name, text);
            }
        }
        if !saw_file {
            return Err(ApiError::bad(
                "missing_file",
                "send the file in a multipart form field named `file`",
            ));
        }
    } else {
        let mut body = req.into_body().into_data_stream();
        while let Some(chunk) = body.next().await {
            let chunk: Bytes = chunk.map_err(|e| {
                body_error(e, |e| {
                    ApiError::bad(
                        "upload_interrupted",
                        format!("the upload did not arrive whole: {e}"),
                    )
                })
            })?;
            take(&mut head, &chunk);
            spool_chunk(&mut out, &mut size, max_bytes, &chunk).await?;
        }
    }
    out.flush()
        .await
        .map_err(|e| ApiError::storage(e, "writing preview spool"))?;
    head.whole = !head.truncated;
    head.params = params;
    Ok(head)
}

/// Removes the temporary file however the preview ends.
struct TempBlob {
    blobs: BlobStore,
    name: String,
}

impl Drop for TempBlob {
    /// A preview file is only ever local (never published to the store), so removing it touches
    /// no database — safe on an async thread, on every early return.
    fn drop(&mut self) {
        if let Some(path) = self.blobs.temp_path(&self.name) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// `POST /api/v1/import/{dataset}/preview` (multipart `file`, or a raw body): optional `mapping`
/// (JSON column → field, a column named by header or `#N`) or `template` (a saved mapping's name), and `delimiter`.
#[utoipa::path(post, path = "/api/v1/import/{id}/preview", operation_id = "previewFile", tag = "imports",
    summary = "What an import of this file would do: format, headers, mapping, the first rows and their errors",
    description = "Reads at most the first MiB of the file (a workbook whole); writes nothing. The form fields may also be query parameters.",
    params(
        ("id" = String, Path, description = "The dataset", example = "products"),
        ("filename" = Option<String>, Query, description = "The file's name, for a raw body"),
    ),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "The preview; file-level problems an import would refuse are in `problems`", body = Data<PreviewView>),
        (status = 400, description = "Form: `bad_multipart`, `missing_file`, `multiple_files`, `field_too_large`; options: `invalid_mapping`, `invalid_delimiter`, `unknown_template`; file: `empty_file`, `no_header`, `no_rows`, `unsupported_format`, `missing_columns`, `unreadable_file`, `sheet_not_found`, `archive_too_large`, `too_many_columns`, `cell_too_large`, `invalid_encoding`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such dataset", body = ErrorBody),
        (status = 408, description = "`body_timeout`: the body arrived slower than the minimum rate", body = ErrorBody),
        (status = 413, description = "`file_too_large`", body = ErrorBody),
    ))]
pub async fn preview(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> Result<Json<Data<JsonValue>>, ApiError> {
    let ds = dataset(&state, &name)?;
    let blobs = state.jobs.blobs.clone();
    let spool = TempBlob {
        name: BlobStore::new_name(),
        blobs: blobs.clone(),
    };
    let spool_path = blobs
        .temp_path(&spool.name)
        .ok_or_else(|| ApiError::Internal("generated blob name rejected".into()))?;
    let head = read_head(req, query, &spool_path, state.max_upload_bytes).await?;
    let ImportOptions {
        source: requested,
        mapping,
    } = ImportOptions::parse(&head.params)?;
    let templates = {
        let n = ds.name.clone();
        state
            .jobs
            .store_call(move |s| s.template_list(caller.org_id, &n))
            .await?
    };
    let (explicit, source): (Option<Explicit>, &str) = match mapping {
        MappingChoice::Manual(m) => (Some(m), "manual"),
        MappingChoice::Template(t) => {
            let found = templates.iter().find(|x| x.name == t).ok_or_else(|| {
                ApiError::bad(
                    "unknown_template",
                    format!("dataset `{}` has no mapping template named `{t}`", ds.name),
                )
            })?;
            (Some(found.mapping.clone()), "template")
        }
        MappingChoice::Auto => (None, "auto"),
    };
    if head.bytes.is_empty() {
        return Err(FileError::Empty.into());
    }
    let temp = TempBlob {
        name: BlobStore::new_name(),
        blobs: blobs.clone(),
    };
    let path = blobs
        .temp_path(&temp.name)
        .ok_or_else(|| ApiError::Internal("generated blob name rejected".into()))?;
    // A workbook (zip or OLE) is only readable whole; text is previewed from its head.
    let workbook =
        head.bytes.starts_with(b"PK\x03\x04") || head.bytes.starts_with(&[0xD0, 0xCF, 0x11, 0xE0]);
    let truncated = head.truncated && !workbook;
    let (mut out, sheets) = tokio::task::spawn_blocking(move || {
        let file = if workbook {
            spool_path.clone()
        } else {
            std::fs::write(&path, &head.bytes)?;
            if truncated {
                whole_lines(&path, &requested)?;
            }
            path.clone()
        };
        let (out, format) = analyze(&ds, &file, &requested, explicit.as_ref(), source)?;
        let sheets = crate::import::read::sheet_names(&file, format)?;
        drop((temp, spool));
        Ok::<_, FileError>((out, sheets))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("preview task: {e}")))??;
    out["truncated"] = json!(truncated);
    out["sheets"] = json!(sheets);
    let headers: Vec<String> = serde_json::from_value(out["headers"].clone()).unwrap_or_default();
    out["templates"] = json!(templates.iter().map(template_json).collect::<Vec<_>>());
    out["suggestedTemplate"] = json!(suggest(&templates, &headers));
    Ok(Json(Data::ok(out)))
}

/// Cuts the head of a longer text file (at `path`) after its last whole line, found in the
/// file's own encoding: a line ends in LF, CRLF or a lone CR (classic Mac), two bytes wide in
/// UTF-16. A head without any line end is left whole.
fn whole_lines(path: &std::path::Path, requested: &SourceOptions) -> Result<(), FileError> {
    let (_, options) = resolve_options(path, requested)?;
    let bytes = std::fs::read(path)?;
    let utf16 = match options.encoding.as_deref() {
        Some("UTF-16LE") => Some(false),
        Some("UTF-16BE") => Some(true),
        _ => None,
    };
    let end = match utf16 {
        None => bytes
            .iter()
            .rposition(|b| matches!(b, b'\n' | b'\r'))
            .map(|i| i + 1),
        Some(big_endian) => (0..bytes.len() / 2)
            .rev()
            .map(|u| 2 * u)
            .find(|&i| {
                let unit = if big_endian {
                    [bytes[i + 1], bytes[i]]
                } else {
                    [bytes[i], bytes[i + 1]]
                };
                matches!(unit, [b'\n', 0] | [b'\r', 0])
            })
            .map(|i| i + 2),
    };
    if let Some(end) = end {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)?
            .set_len(end as u64)?;
    }
    Ok(())
}

/// The most recently used or saved template whose every column is in the file.
fn suggest<'a>(templates: &'a [Template], headers: &[String]) -> Option<&'a str> {
    templates
        .iter()
        .find(|t| {
            !t.mapping.is_empty() && t.mapping.keys().all(|k| map::column_of(headers, k).is_ok())
        })
        .map(|t| t.name.as_str())
}

fn analyze(
    ds: &Dataset,
    path: &std::path::Path,
    requested: &SourceOptions,
    explicit: Option<&Explicit>,
    source: &str,
) -> Result<(JsonValue, Format), FileError> {
    let (format, options) = resolve_options(path, requested)?;
    let mut reader = Source::open(path, format, &options)?;
    let headers = reader.headers().to_vec();
    // A mapping that names no column of the file is reported by `resolve` below; the columns
    // then show the automatic match.
    let chosen =
        map::explicit_columns(ds, &headers, explicit).unwrap_or_else(|_| vec![None; headers.len()]);
    let auto = map::auto_match_rest(ds, &headers, &chosen);
    let columns: Vec<JsonValue> = auto
        .iter()
        .zip(&chosen)
        .enumerate()
        .map(|(i, (m, choice))| {
            let mut column = match choice {
                Some(field) => json!({
                    "header": m.header, "field": field,
                    "match": source, "confidence": null, "suggestion": null,
                }),
                None => json!(m),
            };
            column["key"] = json!(map::column_key(&headers, i));
            column["position"] = json!(i + 1);
            column
        })
        .collect();
    let resolved = map::resolve(ds, &headers, explicit)
        .map_err(|e| with_sheet_hint(e, path, format, &options));
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let mut mapping = serde_json::Map::new();
    match &resolved {
        Ok(m) => {
            warnings = m.warnings();
            for (i, f) in m.columns.iter().enumerate() {
                mapping.insert(map::column_key(&headers, i), json!(f));
            }
        }
        Err(e) => {
            problems.push(json!({"code": e.code(), "message": e.to_string()}));
            for c in &columns {
                if let Some(key) = c["key"].as_str() {
                    mapping.insert(key.to_string(), c["field"].clone());
                }
            }
        }
    }
    let validator = resolved
        .as_ref()
        .ok()
        .map(|m| Validator::new(ds, m.field_columns(ds), headers.len()));
    let mut record = csv::ByteRecord::new();
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    let mut keys: HashMap<Vec<Option<String>>, u64> = HashMap::new();
    let mut values = Vec::new();
    while rows.len() < PREVIEW_ROWS {
        let Some(index) = reader.next_record(&mut record)? else {
            break;
        };
        let row = index + 2;
        let fields: Vec<String> = record
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect();
        if let Some(v) = &validator {
            values.clear();
            match v.validate(&record, row, reader.cell_errors(), &mut values) {
                Ok(()) => {
                    let key: Vec<Option<String>> =
                        ds.key.iter().map(|&k| values[k].to_text()).collect();
                    if let Some(first) = keys.get(&key) {
                        errors.push(json!({
                            "row": row, "column": ds.key.first().map(|&k| &ds.fields[k].name),
                            "value": key.first().cloned().flatten(),
                            "message": format!("duplicate key, first seen at row {first}"),
                        }));
                    } else {
                        keys.insert(key, row);
                    }
                }
                Err(e) => errors.push(json!({
                    "row": e.row, "column": e.column, "value": e.value, "message": e.message,
                })),
            }
        }
        rows.push(json!({"row": row, "values": fields}));
    }
    if rows.is_empty() && problems.is_empty() {
        let e = no_rows_error(path, format, &options);
        problems.push(json!({"code": e.code(), "message": e.to_string()}));
    }
    let out = json!({
        "dataset": ds.name,
        "format": format,
        "delimiter": options.delimiter.map(|d| (d as char).to_string()),
        "headers": headers,
        "columns": columns,
        "mapping": mapping,
        "mappingSource": source,
        "fields": ds.fields.iter().map(|f| json!({
            "name": f.name,
            "type": format!("{:?}", f.ty).to_lowercase(),
            "required": f.required,
            "key": ds.key.iter().any(|&k| ds.fields[k].name == f.name),
        })).collect::<Vec<_>>(),
        "warnings": warnings,
        "problems": problems,
        "rows": rows,
        "errors": errors,
        "fuzzyThreshold": map::FUZZY_APPLY,
    });
    Ok((out, format))
}

pub fn template_json(t: &Template) -> JsonValue {
    json!(t)
}

/// `POST /api/v1/datasets/{dataset}/templates`
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"name": "shop export", "mapping": {"Article": "sku", "Notes": null}}))]
pub struct NewTemplate {
    name: String,
    /// Column (header or `#N`) → field, or `null` to ignore the column.
    #[schema(value_type = std::collections::BTreeMap<String, Option<String>>)]
    mapping: Explicit,
}

/// `GET /api/v1/datasets/{dataset}/templates`
#[utoipa::path(get, path = "/api/v1/datasets/{id}/templates", operation_id = "listTemplates", tag = "datasets",
    summary = "The dataset's saved mapping templates",
    params(("id" = String, Path, description = "The dataset", example = "products")),
    responses(
        (status = 200, description = "The templates", body = Data<Templates>),
        (status = 404, description = "`not_found`: no such dataset", body = ErrorBody),
    ))]
pub async fn templates(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Data<Templates>>, ApiError> {
    let ds = dataset(&state, &name)?;
    let list = state
        .jobs
        .store_call(move |s| s.template_list(caller.org_id, &ds.name))
        .await?;
    Ok(Json(Data::ok(Templates { templates: list })))
}

/// `POST /api/v1/datasets/{dataset}/templates {name, mapping}`: creates or replaces.
#[utoipa::path(post, path = "/api/v1/datasets/{id}/templates", operation_id = "saveTemplate", tag = "datasets",
    summary = "Save a mapping template (creates or replaces)",
    params(("id" = String, Path, description = "The dataset", example = "products")),
    request_body = NewTemplate,
    responses(
        (status = 201, description = "Saved", body = Data<Template>),
        (status = 400, description = "`invalid_body`, `invalid_template`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such dataset", body = ErrorBody),
    ))]
pub async fn save_template(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ds = dataset(&state, &name)?;
    let req: NewTemplate = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad(
            "invalid_body",
            format!(
                "send JSON {{\"name\": \"…\", \"mapping\": {{\"header\": \"field\" | null}}}}: {e}"
            ),
        )
    })?;
    let tname = req.name.trim().to_string();
    if tname.is_empty() || tname.chars().count() > 100 || tname.chars().any(char::is_control) {
        return Err(ApiError::bad(
            "invalid_template",
            "a template name is 1–100 printable characters",
        ));
    }
    if req.mapping.is_empty() {
        return Err(ApiError::bad(
            "invalid_template",
            "a template maps at least one column",
        ));
    }
    for (header, field) in &req.mapping {
        if let Some(f) = field.as_deref().filter(|f| !f.is_empty())
            && ds.field_index(f).is_none()
        {
            return Err(ApiError::bad(
                "invalid_template",
                format!(
                    "column `{header}` goes to `{f}`, which is not a field of dataset `{}`",
                    ds.name
                ),
            ));
        }
    }
    let saved = state
        .jobs
        .store_call(move |s| s.template_save(caller.org_id, &ds.name, &tname, &req.mapping))
        .await?;
    Ok((StatusCode::CREATED, Json(Data::ok(saved))).into_response())
}
