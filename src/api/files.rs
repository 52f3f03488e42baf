//! Serving a job's stored file — an export's output, an analysis's report — as a download: the
//! one place that answers `Content-Disposition`, `Content-Length`, `ETag` / `If-None-Match`
//! (304), `Accept-Ranges` and a single `Range` (206, or 416) / `If-Range`. The file is streamed
//! from a local copy (database blob mode: checked out first, removed when the response ends),
//! so a slow client holds no database connection; the stream counts in [`crate::memory::Stream`].

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;

/// What is served, and how it is named.
pub struct Served {
    /// The blob holding the file.
    pub blob: String,
    /// The name the client saves it under.
    pub filename: String,
    pub content_type: &'static str,
    pub size: u64,
    /// The file's SHA-256 (hex), its `ETag`; without one, no `ETag`, `304` or `If-Range`.
    pub sha256: Option<String>,
}

/// A `Range: bytes=…` header against a file of `size` bytes: `Ok(None)` for the whole file (no
/// header, or one this server does not serve partly: several ranges, another unit), the
/// inclusive byte range, or 416.
pub fn byte_range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, ApiError> {
    let Some(spec) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let Some(spec) = spec.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let unsatisfiable = || ApiError::RangeNotSatisfiable { size };
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Err(unsatisfiable());
    };
    let (first, last) = (first.trim(), last.trim());
    let number = |s: &str| s.parse::<u64>().map_err(|_| unsatisfiable());
    let range = if first.is_empty() {
        // The last `n` bytes.
        let n = number(last)?;
        if n == 0 || size == 0 {
            return Err(unsatisfiable());
        }
        (size.saturating_sub(n), size - 1)
    } else {
        let start = number(first)?;
        let end = if last.is_empty() {
            size.saturating_sub(1)
        } else {
            let end = number(last)?;
            if end < start {
                return Err(unsatisfiable());
            }
            end.min(size.saturating_sub(1))
        };
        if start >= size {
            return Err(unsatisfiable());
        }
        (start, end)
    };
    Ok(Some(range))
}

/// Streams `file` as an attachment, honouring the request's conditional and range headers.
/// `gone` is the error for a file that is no longer there.
pub async fn serve(
    state: &Arc<AppState>,
    file: Served,
    headers: &HeaderMap,
    gone: impl Fn() -> ApiError,
) -> Result<Response, ApiError> {
    let etag = file.sha256.as_ref().map(|sha| format!("\"{sha}\""));
    if let Some(etag) = &etag {
        let matches = headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
        if matches {
            return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag.clone())]).into_response());
        }
    }
    // `If-Range` with another validator (or none to compare with): the whole file.
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| etag.as_deref() == Some(v.trim()));
    let range = if if_range_ok {
        byte_range(headers, file.size)?
    } else {
        None
    };
    let blobs = state.jobs.blobs.clone();
    let blob = file.blob.clone();
    let copy = tokio::task::spawn_blocking(move || blobs.checkout(&blob))
        .await
        .map_err(|e| ApiError::Internal(format!("checkout task: {e}")))?;
    let copy = match copy {
        Ok(copy) => copy,
        Err(crate::blob::BlobError::Missing) => return Err(gone()),
        Err(crate::blob::BlobError::Store(e)) => return Err(e.into()),
        Err(e) => return Err(ApiError::Internal(e.to_string())),
    };
    let mut reader = tokio::fs::File::open(&*copy).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            gone()
        } else {
            ApiError::Internal(format!("opening a stored file: {e}"))
        }
    })?;
    let (start, end) = range.unwrap_or((0, file.size.saturating_sub(1)));
    let length = if file.size == 0 { 0 } else { end - start + 1 };
    if start > 0 {
        use tokio::io::AsyncSeekExt;
        reader
            .seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(|e| ApiError::Internal(format!("seeking a stored file: {e}")))?;
    }
    use tokio::io::AsyncReadExt;
    let stream = tokio_util::io::ReaderStream::with_capacity(reader.take(length), 64 * 1024);
    // The memory counter and the local copy live as long as the response body.
    let held = (crate::memory::Stream::start(), copy);
    let body = Body::from_stream(futures_util::StreamExt::map(stream, move |chunk| {
        let _held = &held;
        chunk
    }));
    let mut response = Response::new(body);
    *response.status_mut() = if range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let h = response.headers_mut();
    let value = |s: String| {
        header::HeaderValue::from_str(&s).map_err(|e| ApiError::Internal(e.to_string()))
    };
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(file.content_type),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        value(format!("attachment; filename=\"{}\"", file.filename))?,
    );
    h.insert(header::CONTENT_LENGTH, value(length.to_string())?);
    if let Some(etag) = etag {
        h.insert(header::ETAG, value(etag)?);
    }
    h.insert(
        header::ACCEPT_RANGES,
        header::HeaderValue::from_static("bytes"),
    );
    if range.is_some() {
        h.insert(
            header::CONTENT_RANGE,
            value(format!("bytes {start}-{end}/{}", file.size))?,
        );
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(spec: &str, size: u64) -> Result<Option<(u64, u64)>, u64> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, spec.parse().unwrap());
        byte_range(&h, size).map_err(|e| match e {
            ApiError::RangeNotSatisfiable { size } => size,
            other => panic!("{other}"),
        })
    }

    #[test]
    fn byte_ranges() {
        assert_eq!(range("bytes=0-9", 100), Ok(Some((0, 9))));
        assert_eq!(range("bytes=90-", 100), Ok(Some((90, 99))));
        assert_eq!(range("bytes=90-500", 100), Ok(Some((90, 99))));
        assert_eq!(range("bytes=-10", 100), Ok(Some((90, 99))));
        assert_eq!(range("bytes=-500", 100), Ok(Some((0, 99))));
        assert_eq!(
            range("bytes=0-1,5-6", 100),
            Ok(None),
            "several: the whole file"
        );
        assert_eq!(range("items=0-1", 100), Ok(None));
        for bad in ["bytes=100-", "bytes=5-2", "bytes=-0", "bytes=x-", "bytes=3"] {
            assert_eq!(range(bad, 100), Err(100), "{bad}");
        }
        assert_eq!(range("bytes=0-", 0), Err(0));
    }
}
