//! Exports over HTTP: `POST /api/v1/export/{dataset}` checks the options against the dataset
//! and creates the export job; `GET /api/v1/export/{jobId}/download` serves its file (ETag,
//! single `Range`, `If-None-Match`), streamed from local disk so a slow client holds no
//! database connection. The job itself runs in `crate::export`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rust_decimal::Decimal;

use super::AppState;
use super::auth::Caller;
use super::dto::{Accepted, ErrorBody, ExportRequest, Said};
use super::error::ApiError;
use super::jobs::{load_job, parse_id};
use super::options::{
    ExportOptions, MAX_FORM_FIELD, is_multipart, json_params, multipart_error, param, text_field,
};
use crate::blob::BlobStore;
use crate::dataset::{Dataset, FieldType};
use crate::export::{ExportFormat, ExportParams, ExportResult};
use crate::import::{Format, Mapping, Mode, SourceOptions};
use crate::store::{
    ExportFilter, ExportQuery, Inserted, Job, JobKind, JobStatus, NewJob, Priority,
};

/// The request's options: query parameters, then the body's (a JSON object, a URL-encoded or a
/// multipart form), which win.
async fn request_params(
    mut params: HashMap<String, String>,
    req: Request,
) -> Result<HashMap<String, String>, ApiError> {
    let headers = req.headers().clone();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if is_multipart(&headers) {
        let mut form = Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::bad("bad_multipart", e.body_text()))?;
        while let Some(mut field) = form.next_field().await.map_err(multipart_error)? {
            let name = field.name().unwrap_or_default().to_string();
            let text = text_field(&mut field, &name).await?;
            params.insert(name, text);
        }
        return Ok(params);
    }
    let body = axum::body::to_bytes(req.into_body(), MAX_FORM_FIELD)
        .await
        .map_err(|_| {
            ApiError::bad(
                "field_too_large",
                format!("the body is larger than {MAX_FORM_FIELD} bytes"),
            )
        })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(params);
    }
    let fields = if content_type.starts_with("application/x-www-form-urlencoded") {
        url_form(&body)
    } else {
        json_params(&body)?
    };
    params.extend(fields);
    Ok(params)
}

/// `a=1&b=2` (with `+` and `%XX`), as axum's own form reading would.
fn url_form(body: &[u8]) -> HashMap<String, String> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                    match u8::from_str_radix(hex, 16) {
                        Ok(b) => {
                            out.push(b);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

fn bad_where(message: String) -> ApiError {
    ApiError::bad("invalid_where", message)
}

/// A filter value as the field's canonical text (as the import stores it).
fn typed(ds: &Dataset, field: usize, v: &serde_json::Value) -> Result<String, ApiError> {
    let f = &ds.fields[field];
    let text = match v {
        serde_json::Value::String(s) => s.trim().to_string(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::Bool(b) => b.to_string(),
        other => {
            return Err(bad_where(format!(
                "`{}`: {other} is not a value (a string, number or boolean)",
                f.name
            )));
        }
    };
    let wrong = |what: &str| bad_where(format!("`{}` is {what}; `{text}` is not one", f.name));
    Ok(match f.ty {
        FieldType::Text => text,
        FieldType::Integer => text
            .parse::<i64>()
            .map_err(|_| wrong("an integer"))?
            .to_string(),
        FieldType::Decimal => text
            .parse::<Decimal>()
            .or_else(|_| Decimal::from_scientific(&text))
            .map_err(|_| wrong("a decimal"))?
            .normalize()
            .to_string(),
        FieldType::Boolean => match text.to_ascii_lowercase().as_str() {
            "true" | "1" => "true".into(),
            "false" | "0" => "false".into(),
            _ => return Err(wrong("a boolean (true or false)")),
        },
        FieldType::Date => chrono::NaiveDate::parse_from_str(&text, "%Y-%m-%d")
            .map_err(|_| wrong("a date (YYYY-MM-DD)"))?
            .format("%Y-%m-%d")
            .to_string(),
        FieldType::Datetime => {
            let t = text.trim_end_matches('Z');
            chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f")
                .or_else(|_| chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f"))
                .map_err(|_| wrong("a date and time (YYYY-MM-DDTHH:MM:SS)"))?
                .format("%Y-%m-%dT%H:%M:%S%.f")
                .to_string()
        }
    })
}

fn field_index(ds: &Dataset, name: &str) -> Result<usize, ApiError> {
    ds.field_index(name).ok_or_else(|| {
        ApiError::bad(
            "unknown_field",
            format!(
                "dataset `{}` has no field `{name}`; its fields are: {}",
                ds.name,
                ds.fields
                    .iter()
                    .map(|f| f.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })
}

/// The `where` object as filters on the dataset's fields.
fn filters(
    ds: &Dataset,
    filter: &serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<ExportFilter>, ApiError> {
    filter
        .iter()
        .map(|(name, v)| {
            let field = field_index(ds, name)?;
            let mut f = ExportFilter {
                field,
                eq: None,
                gte: None,
                lte: None,
            };
            match v {
                serde_json::Value::Object(range) => {
                    if range.is_empty() {
                        return Err(bad_where(format!("`{name}`: a range needs gte or lte")));
                    }
                    for (op, bound) in range {
                        let value = Some(typed(ds, field, bound)?);
                        match op.as_str() {
                            "gte" => f.gte = value,
                            "lte" => f.lte = value,
                            other => {
                                return Err(bad_where(format!(
                                    "`{name}`: `{other}` is not a range bound (gte, lte)"
                                )));
                            }
                        }
                    }
                }
                v => f.eq = Some(typed(ds, field, v)?),
            }
            Ok(f)
        })
        .collect()
}

/// `POST /api/v1/export/{dataset}`
#[utoipa::path(post, path = "/api/v1/export/{id}", operation_id = "createExport", tag = "exports",
    summary = "Export the organisation's rows of a dataset to CSV or XLSX, as a background job",
    description = "The options may be a JSON body, form fields or query parameters. The job reads one consistent snapshot of the table; poll `statusUrl` until `downloadUrl` appears.",
    params(
        ("id" = String, Path, description = "The dataset", example = "products"),
        ("format" = Option<String>, Query, description = "`csv` (default) or `xlsx`"),
    ),
    request_body(content = ExportRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "The export job was created; poll `statusUrl` (also in `Location`)", body = Said<Accepted>),
        (status = 400, description = "`unknown_option`, `invalid_format`, `invalid_columns`, `unknown_field`, `invalid_where`, `invalid_updated_since`, `invalid_job`, `unknown_template`, `invalid_parameter`, `invalid_priority`, `invalid_body`, `bad_multipart`, `field_too_large`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such dataset", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    Path(dataset_name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> Result<Response, ApiError> {
    let ctx = &state.jobs;
    let dataset = ctx.datasets.get(&dataset_name).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no dataset named `{dataset_name}`; configured: {}",
            ctx.datasets.names().join(", ")
        ))
    })?;
    let params = request_params(query, req).await?;
    let options = ExportOptions::parse(&params)?;
    let priority = param(&params, "priority")
        .map(|p| p.trim().parse::<Priority>())
        .transpose()
        .map_err(|m| ApiError::bad("invalid_priority", m))?
        .unwrap_or_default();
    // A template names the columns with its headers (and, without `columns`, picks them).
    let template = match &options.template {
        None => None,
        Some(name) => {
            let (d, n, org) = (dataset.name.clone(), name.clone(), caller.org_id);
            let found = ctx.store_call(move |s| s.template_use(org, &d, &n)).await?;
            Some(found.ok_or_else(|| {
                ApiError::bad(
                    "unknown_template",
                    format!(
                        "dataset `{}` has no mapping template named `{name}`",
                        dataset.name
                    ),
                )
            })?)
        }
    };
    // Field → the template's header for it (a column named by position keeps the field name).
    let header_of: HashMap<String, String> = template
        .iter()
        .flat_map(|t| t.mapping.iter())
        .filter_map(|(header, field)| {
            let field = field.as_ref()?;
            (!header.starts_with('#')).then(|| (field.clone(), header.clone()))
        })
        .collect();
    let columns: Vec<usize> = match (&options.columns, &template) {
        (Some(names), _) => {
            let mut columns = Vec::with_capacity(names.len());
            for name in names {
                let i = field_index(&dataset, name)?;
                if columns.contains(&i) {
                    return Err(ApiError::bad(
                        "invalid_columns",
                        format!("column `{name}` is asked for twice"),
                    ));
                }
                columns.push(i);
            }
            if columns.is_empty() {
                return Err(ApiError::bad("invalid_columns", "columns names no field"));
            }
            columns
        }
        (None, Some(t)) => {
            let mapped: Vec<usize> = (0..dataset.fields.len())
                .filter(|&i| {
                    t.mapping
                        .values()
                        .any(|f| f.as_deref() == Some(dataset.fields[i].name.as_str()))
                })
                .collect();
            if mapped.is_empty() {
                (0..dataset.fields.len()).collect()
            } else {
                mapped
            }
        }
        (None, None) => (0..dataset.fields.len()).collect(),
    };
    let headers: Vec<String> = columns
        .iter()
        .map(|&i| {
            let name = &dataset.fields[i].name;
            header_of.get(name).unwrap_or(name).clone()
        })
        .collect();
    if let Some(job_id) = options.job_id {
        let job = ctx.store_call(move |s| s.job_get(job_id)).await?;
        let fits = job.is_some_and(|j| {
            caller.sees(&j)
                && j.kind == JobKind::Import
                && j.dataset == dataset.name
                && j.parent_id.is_none()
        });
        if !fits {
            return Err(ApiError::bad(
                "invalid_job",
                format!(
                    "jobId {job_id} is not an import into `{}` of this organisation",
                    dataset.name
                ),
            ));
        }
    }
    let export = ExportParams {
        format: options.format,
        query: ExportQuery {
            columns,
            filters: filters(&dataset, &options.filter)?,
            updated_since: options.updated_since,
            job: options.job_id,
        },
        headers: headers.clone(),
        bom: options.bom,
        formula_safe: options.formula_safe,
    };
    let params_json =
        serde_json::to_value(&export).map_err(|e| ApiError::Internal(e.to_string()))?;
    let ext = options.format.as_str();
    let blob = BlobStore::new_name();
    let new_job = NewJob {
        dataset: dataset.name.clone(),
        mode: Mode::default(),
        filename: format!("{}-export.{ext}", dataset.name),
        // No file went in, so no checksum; a value of its own per job (not empty) because the
        // unique index `jobs_one_active_file` (org, dataset, sha256) of active jobs would
        // otherwise let only one export of a dataset be pending or running at a time. The
        // status shows the file's SHA-256 once it is written.
        sha256: format!("export:{blob}"),
        blob,
        file_size: 0,
        format: match options.format {
            ExportFormat::Csv => Format::Csv,
            ExportFormat::Xlsx => Format::Xlsx,
        },
        options: SourceOptions::default(),
        header: headers,
        mapping: Mapping::default(),
        created_by: Some(caller.token_id),
        org_id: caller.org_id,
        user_id: Some(caller.user_id),
        idempotency_key: None,
        retry_of: None,
        priority,
        kind: JobKind::Export,
        params: Some(params_json),
        analysis_of: None,
    };
    let audit = caller.audit("export", None, Some(format!("{} as {ext}", dataset.name)));
    let inserted = ctx
        .store_call(move |s| s.job_insert(&new_job, None, Some(&audit)))
        .await?;
    let job_id = match inserted {
        Inserted::Created(id)
        | Inserted::Replayed(id)
        | Inserted::ActiveDuplicate(id)
        | Inserted::DatasetBusy(id) => id,
    };
    ctx.wake.notify_one();
    let status_url = format!("/api/v1/import/status/{job_id}");
    let body = Said {
        success: true,
        message: format!("Export of {} started in background", dataset.name),
        data: Accepted {
            job_id,
            status_url: status_url.clone(),
        },
    };
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, status_url)],
        Json(body),
    )
        .into_response())
}

fn not_ready(job: &Job) -> ApiError {
    let message = match job.status {
        JobStatus::Failed => format!(
            "the export failed: {}",
            job.error.as_deref().unwrap_or("no reason recorded")
        ),
        JobStatus::Cancelled => "the export was cancelled".to_string(),
        s => format!(
            "the export is {}; download it once its status is completed",
            s.as_str()
        ),
    };
    ApiError::Conflict {
        code: "not_ready",
        message,
        job: Some(job.id),
    }
}

/// `GET /api/v1/export/{jobId}/download`
#[utoipa::path(get, path = "/api/v1/export/{id}/download", operation_id = "downloadExport", tag = "exports",
    summary = "An export's file: whole, or one byte range (resume); `ETag` is the file's SHA-256",
    params(
        ("id" = String, Path, description = "The export job's id", example = "1"),
        ("Range" = Option<String>, Header, description = "`bytes=first-last`, `bytes=first-` or `bytes=-n` (one range)"),
        ("If-None-Match" = Option<String>, Header, description = "The `ETag` of a copy the client has: 304 when it is still this file"),
    ),
    responses(
        (status = 200, description = "The file", content(
            (String = "text/csv"),
            (String = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
        )),
        (status = 206, description = "The requested range (`Content-Range`)", body = String, content_type = "application/octet-stream"),
        (status = 304, description = "Not modified: the client's copy (`If-None-Match`) is this file"),
        (status = 404, description = "`not_found`: no such export job (or another organisation's)", body = ErrorBody),
        (status = 409, description = "`not_ready`: the export has not completed (or failed)", body = ErrorBody),
        (status = 410, description = "`expired`: the file was removed by retention", body = ErrorBody),
        (status = 416, description = "`range_not_satisfiable` (with `Content-Range: bytes */size`)", body = ErrorBody),
    ))]
pub async fn download(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let job = load_job(&state, &caller, parse_id(&id)?).await?;
    if job.kind != JobKind::Export {
        return Err(super::jobs::job_not_found());
    }
    if !caller.controls(&job) {
        return Err(ApiError::Forbidden(
            "only the member who started this export, or an admin, may download it".into(),
        ));
    }
    if job.status != JobStatus::Completed {
        return Err(not_ready(&job));
    }
    let expired = || ApiError::Gone("the export's file has expired; export again".into());
    if job.blob_deleted {
        return Err(expired());
    }
    let result = ExportResult::of(&job).ok_or_else(|| not_ready(&job))?;
    let file = super::files::Served {
        blob: job.blob.clone(),
        filename: format!(
            "{}-export-{}.{}",
            job.dataset,
            job.id,
            result.format.as_str()
        ),
        content_type: result.format.content_type(),
        size: result.size,
        sha256: Some(result.sha256.clone()),
    };
    super::files::serve(&state, file, &headers, expired).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms_decode_plus_and_percent() {
        let f = url_form(b"columns=a%2Cb&where=%7B%22x%22%3A1%7D&bom=&q=a+b&bad=%zz%4");
        assert_eq!(f["columns"], "a,b");
        assert_eq!(f["where"], "{\"x\":1}");
        assert_eq!(f["bom"], "");
        assert_eq!(f["q"], "a b");
        assert_eq!(f["bad"], "%zz%4");
    }
}
