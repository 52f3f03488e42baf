//! The CLI client: `import`, `analyze`, `export`, `status`, `jobs`, `errors`, `source` over the
//! HTTP API.
//!
//! Uploads stream the file from disk as a raw body (`?filename=`), never reading it whole.
//! `import --wait` follows the job with an indicatif progress bar and exits non-zero when the
//! job fails; `analyze` uploads with `dryRun=true`, always follows the analysis, prints its
//! summary and saves its report (`--report F`, XLSX or, for `.json`, JSON).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::{CliResult, ServerArgs};

/// How the server reads an uploaded file: the options `sluice import` and `sluice analyze`
/// share, sent as the upload's form fields.
#[derive(Args)]
pub struct FileArgs {
    /// CSV field delimiter (sniffed when not given).
    #[arg(long)]
    pub delimiter: Option<String>,
    /// CSV text encoding, e.g. utf-8, utf-16le, windows-1252 (detected when not given).
    #[arg(long)]
    pub encoding: Option<String>,
    /// Spreadsheet sheet: a name or a 1-based position (default: the first visible sheet).
    #[arg(long)]
    pub sheet: Option<String>,
    /// JSON object mapping file headers to field names.
    #[arg(long)]
    pub mapping: Option<String>,
}

impl FileArgs {
    fn fields(&self) -> [(&'static str, &Option<String>); 4] {
        [
            ("delimiter", &self.delimiter),
            ("encoding", &self.encoding),
            ("sheet", &self.sheet),
            ("mapping", &self.mapping),
        ]
    }
}

#[derive(Args)]
pub struct ImportArgs {
    /// The file to import (CSV/TSV, XLSX, XLS or ODS).
    pub file: PathBuf,
    /// Target dataset (as configured in datasets.toml).
    #[arg(long, short)]
    pub dataset: String,
    /// upsert (default), insert, replace (the file becomes the table) or sync (an upsert that
    /// also deletes the rows whose keys the file does not have, when the job completes).
    #[arg(long)]
    pub mode: Option<String>,
    /// With --mode sync: the most of the rows, in percent, the sync may delete (default 50);
    /// past it the job fails and deletes nothing.
    #[arg(long, value_name = "PERCENT")]
    pub max_delete_percent: Option<String>,
    #[command(flatten)]
    pub read: FileArgs,
    /// high, normal (default) or low: workers claim higher priorities first.
    #[arg(long)]
    pub priority: Option<String>,
    /// Follow the job with a progress bar until it ends.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Args)]
pub struct AnalyzeArgs {
    /// The file to analyse (CSV/TSV, XLSX, XLS or ODS): read and validated, nothing written.
    pub file: PathBuf,
    /// Target dataset (as configured in datasets.toml).
    #[arg(long, short)]
    pub dataset: String,
    /// upsert (default), insert or replace: how the import would treat existing keys.
    #[arg(long)]
    pub mode: Option<String>,
    #[command(flatten)]
    pub read: FileArgs,
    /// Save the report here (`.json`: the JSON report; otherwise the XLSX workbook).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Print the final status as JSON instead of the summary.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Args)]
pub struct JobArgs {
    /// Job id.
    pub id: i64,
    /// Print the raw JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Args)]
pub struct JobsArgs {
    /// Only jobs in this status (pending, processing, completed, failed, …).
    #[arg(long)]
    pub status: Option<String>,
    /// Only jobs of this dataset.
    #[arg(long)]
    pub dataset: Option<String>,
    #[arg(long, default_value_t = 20)]
    pub limit: u64,
    /// Print the raw JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Args)]
pub struct ErrorsArgs {
    /// Job id.
    pub id: i64,
    /// Write to this file instead of standard output.
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    /// csv (original columns plus `error`, ready to fix and re-upload) or json.
    #[arg(long, default_value = "csv", value_parser = ["csv", "json"])]
    pub format: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

pub(super) struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    pub(super) fn new(args: &ServerArgs) -> Result<Self, String> {
        let http = crate::tls::http_client()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            http,
            base: args.server.trim_end_matches('/').to_string(),
            token: args.token.clone(),
        })
    }

    pub(super) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// Sends a request and returns the JSON body of a 2xx answer, or the API's error message.
    pub(super) async fn send(&self, req: reqwest::RequestBuilder) -> Result<(u16, Value), String> {
        let resp = req
            .send()
            .await
            .map_err(|e| format!("cannot reach the sluice server at {}: {e}", self.base))?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            Ok((status, body))
        } else {
            Err(api_error(status, &body))
        }
    }

    pub(super) async fn get(&self, path: &str) -> Result<Value, String> {
        self.send(self.request(reqwest::Method::GET, path))
            .await
            .map(|(_, v)| v)
    }
}

fn api_error(status: u16, body: &Value) -> String {
    let code = body["error"]["code"].as_str().unwrap_or("http_error");
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or("the server gave no details");
    let hint = if status == 401 {
        " (pass --token or set SLUICE_TOKEN)"
    } else {
        ""
    };
    format!("{status} {code}: {message}{hint}")
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Streams a file to `POST /api/v1/import/{dataset}` with the given options (query).
async fn upload(
    api: &Api,
    path: &std::path::Path,
    dataset: &str,
    options: &[(&'static str, &Option<String>)],
) -> Result<(u16, Value), String> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let size = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let filename = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "upload.csv".into());
    let mut query = vec![("filename", filename)];
    for (k, v) in options {
        if let Some(v) = v {
            query.push((k, v.clone()));
        }
    }
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
        file,
        256 * 1024,
    ));
    let req = api
        .request(reqwest::Method::POST, &format!("/api/v1/import/{dataset}"))
        .query(&query)
        .header(reqwest::header::CONTENT_TYPE, "text/csv")
        .header(reqwest::header::CONTENT_LENGTH, size)
        .body(body);
    api.send(req).await
}

pub async fn import(args: ImportArgs) -> CliResult {
    let api = Api::new(&args.server)?;
    let (status, body) = upload(
        &api,
        &args.file,
        &args.dataset,
        &[
            ("mode", &args.mode),
            ("priority", &args.priority),
            ("maxDeletePercent", &args.max_delete_percent),
        ]
        .into_iter()
        .chain(args.read.fields())
        .collect::<Vec<_>>(),
    )
    .await?;
    if status == 200 {
        // A synchronous dataset: the import already ran.
        print_summary(&body["data"]);
        return finished_ok(&body["data"]);
    }
    let job_id = body["data"]["jobId"]
        .as_i64()
        .ok_or("the server answered without a job id")?;
    if !args.wait {
        println!("job {job_id} started; follow it with: sluice status {job_id}");
        return Ok(());
    }
    eprintln!("job {job_id} started");
    let data = follow(&api, job_id).await?;
    print_summary(&data);
    finished_ok(&data)
}

/// Polls a job's status with a progress bar until it ends; its last status.
async fn follow(api: &Api, job_id: i64) -> Result<Value, String> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} rows  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let data = loop {
        let status = api.get(&format!("/api/v1/import/status/{job_id}")).await?;
        let data = status["data"].clone();
        bar.set_length(n(&data["progress"]["total"]));
        bar.set_position(n(&data["progress"]["current"]));
        let rps = n(&data["rowsPerSecond"]);
        let eta = data["etaSeconds"]
            .as_u64()
            .map(|s| format!(", ETA {s}s"))
            .unwrap_or_default();
        bar.set_message(format!(
            "{} · {rps} rows/s{eta}",
            data["status"].as_str().unwrap_or("?")
        ));
        if matches!(
            data["status"].as_str(),
            Some("completed" | "failed" | "cancelled")
        ) {
            break data;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    bar.finish();
    Ok(data)
}

pub async fn analyze(args: AnalyzeArgs) -> CliResult {
    let api = Api::new(&args.server)?;
    let dry = Some("true".to_string());
    let (_, body) = upload(
        &api,
        &args.file,
        &args.dataset,
        &[("dryRun", &dry), ("mode", &args.mode)]
            .into_iter()
            .chain(args.read.fields())
            .collect::<Vec<_>>(),
    )
    .await?;
    let job_id = body["data"]["jobId"]
        .as_i64()
        .ok_or("the server answered without a job id")?;
    eprintln!("analysis {job_id} started");
    let data = follow(&api, job_id).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&data)?);
    } else {
        print_analysis(&data);
    }
    finished_ok(&data)?;
    if let Some(path) = &args.report {
        let format = match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("json") => "json",
            _ => "xlsx",
        };
        let resp = api
            .request(
                reqwest::Method::GET,
                &format!("/api/v1/import/{job_id}/report"),
            )
            .query(&[("format", format)])
            .send()
            .await
            .map_err(|e| format!("cannot reach the sluice server at {}: {e}", api.base))?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            return Err(api_error(status, &body).into());
        }
        let mut out = tokio::fs::File::create(path)
            .await
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let mut resp = resp;
        while let Some(chunk) = resp.chunk().await? {
            out.write_all(&chunk).await?;
        }
        out.flush().await?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn print_analysis(d: &Value) {
    let s = &d["summary"];
    println!(
        "analysis {} ({}, {}): {}",
        d["jobId"],
        d["dataset"].as_str().unwrap_or("?"),
        d["filename"].as_str().unwrap_or("?"),
        d["status"].as_str().unwrap_or("?")
    );
    println!("  rows:         {}", n(&s["rows"]));
    println!(
        "  would create {} · would update {} · unchanged {} · errors {}",
        n(&s["wouldCreate"]),
        n(&s["wouldUpdate"]),
        n(&s["unchanged"]),
        n(&s["errors"])
    );
    if let Some(doomed) = s["wouldDelete"].as_u64() {
        println!("  would delete {doomed} (mode=sync: rows whose keys the file lacks)");
    }
    if let Some(why) = s["deleteRefusal"].as_str() {
        println!("  the import would fail: {why}");
    }
    if let Some(columns) = s["errorsByColumn"].as_array().filter(|c| !c.is_empty()) {
        let list: Vec<String> = columns
            .iter()
            .map(|c| format!("{} {}", c["column"].as_str().unwrap_or("?"), n(&c["count"])))
            .collect();
        println!("  errors by column: {}", list.join(", "));
    }
    if let Some(e) = d["error"].as_str() {
        println!("  error:        {e}");
    }
    if d["status"] == "completed" {
        println!(
            "  import it:    POST /api/v1/import/{}/run  (report: {})",
            d["jobId"],
            d["reportUrl"].as_str().unwrap_or("-")
        );
    }
}

fn finished_ok(data: &Value) -> CliResult {
    match data["status"].as_str() {
        Some("completed") => Ok(()),
        other => Err(format!(
            "job {} {}: {}",
            data["jobId"],
            other.unwrap_or("ended"),
            data["error"].as_str().unwrap_or("no details")
        )
        .into()),
    }
}

fn print_summary(d: &Value) {
    println!(
        "job {} ({}, {}): {}",
        d["jobId"],
        d["dataset"].as_str().unwrap_or("?"),
        d["filename"].as_str().unwrap_or("?"),
        d["status"].as_str().unwrap_or("?")
    );
    let p = &d["progress"];
    println!(
        "  rows:      {}/{} ({}%)",
        n(&p["current"]),
        n(&p["total"]),
        n(&p["percentage"])
    );
    // Deletions only where a job made some (rollbacks).
    let deleted = match n(&d["deletedCount"]) {
        0 => String::new(),
        k => format!(" · deleted {k}"),
    };
    println!(
        "  created {} · updated {} · unchanged {}{deleted} · errors {}",
        n(&d["createdCount"]),
        n(&d["updatedCount"]),
        n(&d["unchangedCount"]),
        n(&d["errorCount"])
    );
    if let Some(of) = d["rollbackOf"].as_i64() {
        println!("  rolls back job {of} (errors: rows a later job changed, left as they are)");
    }
    if let Some(by) = d["rolledBackBy"].as_i64() {
        println!("  rolled back by job {by}");
    }
    if let Some(rps) = d["rowsPerSecond"].as_u64() {
        println!("  speed:     {rps} rows/s");
    }
    if let Some(e) = d["error"].as_str() {
        println!("  error:     {e}");
    }
    if n(&d["errorCount"]) > 0 {
        println!(
            "  rejected rows: sluice errors {} --out rejected.csv",
            d["jobId"]
        );
    }
}

pub async fn status(args: JobArgs) -> CliResult {
    let api = Api::new(&args.server)?;
    let body = api
        .get(&format!("/api/v1/import/status/{}", args.id))
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
    } else {
        print_summary(&body["data"]);
    }
    Ok(())
}

pub async fn jobs(args: JobsArgs) -> CliResult {
    let api = Api::new(&args.server)?;
    let mut req = api
        .request(reqwest::Method::GET, "/api/v1/import/jobs")
        .query(&[("limit", args.limit.to_string())]);
    if let Some(s) = &args.status {
        req = req.query(&[("status", s)]);
    }
    if let Some(d) = &args.dataset {
        req = req.query(&[("dataset", d)]);
    }
    let (_, body) = api.send(req).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    println!(
        "{:>6}  {:<10}  {:<12}  {:>12}  {:>8}  {:>8}  FILE",
        "ID", "STATUS", "DATASET", "ROWS", "%", "ERRORS"
    );
    for j in body["data"]["jobs"].as_array().into_iter().flatten() {
        println!(
            "{:>6}  {:<10}  {:<12}  {:>12}  {:>8}  {:>8}  {}",
            j["jobId"],
            j["status"].as_str().unwrap_or("?"),
            j["dataset"].as_str().unwrap_or("?"),
            n(&j["progress"]["current"]),
            n(&j["progress"]["percentage"]),
            n(&j["errorCount"]),
            j["filename"].as_str().unwrap_or("")
        );
    }
    println!("{} job(s) in all", n(&body["data"]["total"]));
    Ok(())
}

pub async fn errors(args: ErrorsArgs) -> CliResult {
    let api = Api::new(&args.server)?;
    let mut query = vec![("format", args.format.clone())];
    if args.format == "json" {
        query.push(("limit", u64::MAX.to_string()));
    }
    let resp = api
        .request(
            reqwest::Method::GET,
            &format!("/api/v1/import/{}/errors", args.id),
        )
        .query(&query)
        .send()
        .await
        .map_err(|e| format!("cannot reach the sluice server at {}: {e}", api.base))?;
    let status = resp.status().as_u16();
    if !(200..300).contains(&status) {
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        return Err(api_error(status, &body).into());
    }
    let mut out: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match &args.out {
        Some(path) => Box::new(
            tokio::fs::File::create(path)
                .await
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?,
        ),
        None => Box::new(tokio::io::stdout()),
    };
    let mut resp = resp;
    while let Some(chunk) = resp.chunk().await? {
        out.write_all(&chunk).await?;
    }
    out.flush().await?;
    if let Some(path) = &args.out {
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

#[derive(Args)]
pub struct RollbackArgs {
    /// The job to undo (an import, or a rollback).
    pub id: i64,
    /// Also overwrite rows that later jobs changed (otherwise they are left and reported).
    #[arg(long)]
    pub force: bool,
    /// Follow the rollback job with a progress bar and print its summary; exit 1 unless it
    /// completes without conflicts.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `sluice rollback`: asks for the rollback job; prints its id (and follows it with --wait).
pub async fn rollback(args: RollbackArgs) -> CliResult {
    let api = Api::new(&args.server)?;
    let req = api
        .request(
            reqwest::Method::POST,
            &format!("/api/v1/import/{}/rollback", args.id),
        )
        .query(&[("force", args.force.to_string())]);
    let (_, body) = api.send(req).await?;
    let job = body["data"]["jobId"]
        .as_i64()
        .ok_or("the server answered without a job id")?;
    eprintln!("rollback of job {} started as job {job}", args.id);
    if !args.wait {
        println!("{job}");
        return Ok(());
    }
    let data = follow(&api, job).await?;
    print_summary(&data);
    if data["status"] != "completed" || n(&data["errorCount"]) > 0 {
        return Err(format!(
            "rollback job {job} {}: {} conflicts",
            data["status"].as_str().unwrap_or("?"),
            n(&data["errorCount"])
        )
        .into());
    }
    Ok(())
}

#[derive(Args)]
pub struct ChangesArgs {
    /// The dataset whose changes to read.
    pub dataset: String,
    /// Start after this cursor (0: from the oldest change kept).
    #[arg(long, default_value_t = 0)]
    pub after: i64,
    /// Keep following: wait for new changes instead of stopping at the end (Ctrl-C to stop).
    #[arg(long)]
    pub follow: bool,
    /// Changes per request (1–10000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub limit: u64,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `sluice changes`: the change feed as JSON lines on standard output, one change per line;
/// the cursor to resume from goes to standard error at the end.
pub async fn changes(args: ChangesArgs) -> CliResult {
    let api = Api::new(&args.server)?;
    let mut out = tokio::io::stdout();
    let mut after = args.after;
    loop {
        let mut query = vec![
            ("after", after.to_string()),
            ("limit", args.limit.to_string()),
        ];
        if args.follow {
            query.push(("wait", "30s".to_string()));
        }
        let req = api
            .request(
                reqwest::Method::GET,
                &format!("/api/v1/datasets/{}/changes", args.dataset),
            )
            .query(&query);
        let (_, body) = api.send(req).await?;
        let data = &body["data"];
        for change in data["changes"].as_array().into_iter().flatten() {
            out.write_all(format!("{change}\n").as_bytes()).await?;
        }
        out.flush().await?;
        after = data["next"].as_i64().unwrap_or(after);
        if !args.follow && !data["hasMore"].as_bool().unwrap_or(false) {
            eprintln!("next cursor: {after}");
            return Ok(());
        }
    }
}

#[derive(Args)]
pub struct ExportArgs {
    /// The dataset to export (as configured in datasets.toml).
    pub dataset: String,
    /// csv (default) or xlsx.
    #[arg(long, default_value = "csv", value_parser = ["csv", "xlsx"])]
    pub format: String,
    /// Where to write the file.
    #[arg(long, short)]
    pub out: PathBuf,
    /// A filter: `field=value`, `field>=value` or `field<=value` (repeat for more; all hold).
    #[arg(long = "where", value_name = "FILTER")]
    pub filters: Vec<String>,
    /// Fields in output order, comma-separated (default: every field).
    #[arg(long)]
    pub columns: Option<String>,
    /// Only the rows this import job wrote last.
    #[arg(long = "job")]
    pub job: Option<i64>,
    /// Only rows an import created or changed since this time (RFC 3339, or YYYY-MM-DD).
    #[arg(long)]
    pub updated_since: Option<String>,
    /// A saved mapping template whose headers name the columns.
    #[arg(long)]
    pub template: Option<String>,
    /// CSV: start the file with a UTF-8 byte order mark (for Excel).
    #[arg(long)]
    pub bom: bool,
    /// CSV: write text cells as they are, without the `'` before a leading `=`, `+`, `-`, `@`.
    #[arg(long)]
    pub no_formula_safe: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `--where` filters as the API's `where` object.
fn where_object(filters: &[String]) -> Result<serde_json::Map<String, Value>, String> {
    let mut object = serde_json::Map::new();
    for f in filters {
        let (field, op, value) = [">=", "<=", "="]
            .iter()
            .find_map(|op| f.split_once(op).map(|(a, b)| (a.trim(), *op, b)))
            .ok_or_else(|| {
                format!("--where `{f}`: expected field=value, field>=value or field<=value")
            })?;
        if field.is_empty() {
            return Err(format!("--where `{f}`: no field name"));
        }
        let value = Value::String(value.to_string());
        match op {
            "=" => {
                object.insert(field.to_string(), value);
            }
            bound => {
                let key = if bound == ">=" { "gte" } else { "lte" };
                let entry = object
                    .entry(field.to_string())
                    .or_insert_with(|| Value::Object(serde_json::Map::new()));
                match entry {
                    Value::Object(range) => {
                        range.insert(key.into(), value);
                    }
                    _ => return Err(format!("--where `{field}`: both a value and a range")),
                }
            }
        }
    }
    Ok(object)
}

pub async fn export(args: ExportArgs) -> CliResult {
    let api = Api::new(&args.server)?;
    let mut body = serde_json::Map::new();
    body.insert("format".into(), Value::String(args.format.clone()));
    let filter = where_object(&args.filters)?;
    if !filter.is_empty() {
        body.insert("where".into(), Value::Object(filter));
    }
    if let Some(c) = &args.columns {
        body.insert("columns".into(), Value::String(c.clone()));
    }
    if let Some(j) = args.job {
        body.insert("jobId".into(), Value::from(j));
    }
    if let Some(t) = &args.updated_since {
        body.insert("updatedSince".into(), Value::String(t.clone()));
    }
    if let Some(t) = &args.template {
        body.insert("template".into(), Value::String(t.clone()));
    }
    if args.bom {
        body.insert("bom".into(), Value::Bool(true));
    }
    if args.no_formula_safe {
        body.insert("formulaSafe".into(), Value::Bool(false));
    }
    let req = api
        .request(
            reqwest::Method::POST,
            &format!("/api/v1/export/{}", args.dataset),
        )
        .json(&Value::Object(body));
    let (_, answer) = api.send(req).await?;
    let job_id = answer["data"]["jobId"]
        .as_i64()
        .ok_or("the server answered without a job id")?;
    eprintln!("export job {job_id} started");
    let data = follow(&api, job_id).await?;
    finished_ok(&data)?;
    let url = data["downloadUrl"]
        .as_str()
        .ok_or("the export completed without a download")?;
    let mut resp = api
        .request(reqwest::Method::GET, url)
        .send()
        .await
        .map_err(|e| format!("cannot reach the sluice server at {}: {e}", api.base))?;
    let status = resp.status().as_u16();
    if status != 200 {
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        return Err(api_error(status, &body).into());
    }
    // Written beside the target and renamed when whole: no half file under the name asked for.
    let mut part = args.out.clone().into_os_string();
    part.push(".part");
    let part = PathBuf::from(part);
    let mut out = tokio::fs::File::create(&part)
        .await
        .map_err(|e| format!("cannot create {}: {e}", part.display()))?;
    let mut written = 0u64;
    while let Some(chunk) = resp.chunk().await? {
        out.write_all(&chunk).await?;
        written += chunk.len() as u64;
    }
    out.flush().await?;
    out.sync_all().await?;
    drop(out);
    tokio::fs::rename(&part, &args.out)
        .await
        .map_err(|e| format!("cannot write {}: {e}", args.out.display()))?;
    println!(
        "exported {} rows of {} to {} ({written} bytes)",
        n(&data["results"]["totalRows"]),
        args.dataset,
        args.out.display()
    );
    Ok(())
}

/// `sluice source …`: scheduled sources on a running server (admins).
#[derive(clap::Subcommand)]
pub enum SourceCommand {
    /// Create a source; prints its id.
    Add(Box<SourceAddArgs>),
    /// List the organisation's sources.
    List(SourceListArgs),
    /// Run a source now; prints the run (exits non-zero when it failed).
    Run(SourceRunArgs),
    /// A source's runs, newest first.
    Runs(SourceRunsArgs),
}

#[derive(Args)]
pub struct SourceAddArgs {
    /// Unique in the organisation.
    pub name: String,
    /// Target dataset.
    #[arg(long, short)]
    pub dataset: String,
    /// A directory on the server (under one of its `--source-root`s).
    #[arg(long, conflicts_with_all = ["url", "sftp"], required_unless_present_any = ["url", "sftp"])]
    pub dir: Option<String>,
    /// An http:// or https:// URL to fetch.
    #[arg(long, conflicts_with = "sftp")]
    pub url: Option<String>,
    /// An SFTP server: `USER@HOST[:PORT]:/absolute/path` (with --host-key, and --private-key-file
    /// or SLUICE_SFTP_PASSWORD).
    #[arg(long, requires = "host_key")]
    pub sftp: Option<String>,
    /// --sftp: the server's host key fingerprint, `SHA256:…` (`ssh-keygen -lf KEY.pub`).
    #[arg(long)]
    pub host_key: Option<String>,
    /// --sftp: a private key file (OpenSSH or PEM).
    #[arg(long)]
    pub private_key_file: Option<PathBuf>,
    /// --sftp: the passphrase of an encrypted --private-key-file (better from the environment
    /// than on a command line).
    #[arg(
        long,
        env = "SLUICE_SFTP_KEY_PASSPHRASE",
        hide_env_values = true,
        requires = "private_key_file"
    )]
    pub private_key_passphrase: Option<String>,
    /// --sftp: the password (better from the environment than on a command line).
    #[arg(long, env = "SLUICE_SFTP_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Run every interval (`90s`, `10m`, `6h`, `1d`).
    #[arg(long, conflicts_with = "cron", required_unless_present = "cron")]
    pub every: Option<String>,
    /// Run on a cron schedule of 5 fields, e.g. "0 2 * * *".
    #[arg(long)]
    pub cron: Option<String>,
    /// The IANA time zone of --cron (default UTC).
    #[arg(long, requires = "cron")]
    pub timezone: Option<String>,
    /// latest (the newest file) or all-new (default: every file not taken before).
    #[arg(long)]
    pub pick: Option<String>,
    /// --dir: file names to take (`*`, `?`).
    #[arg(long)]
    pub glob: Option<String>,
    /// --dir: seconds a file's size and mtime must stay the same (default 30).
    #[arg(long)]
    pub stable_seconds: Option<u32>,
    /// --dir: take a file once `<name>.done` exists beside it.
    #[arg(long)]
    pub done_marker: bool,
    /// --dir: leave (default), move or delete a file once taken.
    #[arg(long)]
    pub after: Option<String>,
    /// --dir with --after move: where to (relative to --dir, or absolute under a root).
    #[arg(long)]
    pub move_to: Option<String>,
    /// --url: a request header `Name: value` (repeatable; kept secret by the server).
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// upsert (default), insert, replace or sync (the table keeps only the file's keys).
    #[arg(long)]
    pub mode: Option<String>,
    /// With --mode sync: the most of the rows, in percent, a run may delete (default 50).
    #[arg(long, value_name = "PERCENT")]
    pub max_delete_percent: Option<u8>,
    /// A saved mapping template of the dataset.
    #[arg(long)]
    pub template: Option<String>,
    /// JSON object mapping file headers to field names.
    #[arg(long)]
    pub mapping: Option<String>,
    /// Create it disabled (it runs only when asked).
    #[arg(long)]
    pub disabled: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Args)]
pub struct SourceListArgs {
    /// Print the raw JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Args)]
pub struct SourceRunArgs {
    /// Source id.
    pub id: i64,
    /// Print the raw JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Args)]
pub struct SourceRunsArgs {
    /// Source id.
    pub id: i64,
    #[arg(long, default_value_t = 20)]
    pub limit: u64,
    /// Print the raw JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

impl SourceAddArgs {
    /// The `POST /api/v1/sources` body.
    fn body(&self) -> Result<Value, String> {
        use serde_json::json;
        let mut body = json!({"name": self.name, "dataset": self.dataset});
        let mut put = |k: &str, v: Value| {
            if !v.is_null() {
                body[k] = v;
            }
        };
        put(
            "schedule",
            match (&self.every, &self.cron) {
                (Some(every), _) => json!({ "every": every }),
                (None, Some(cron)) => match &self.timezone {
                    Some(tz) => json!({ "cron": cron, "timezone": tz }),
                    None => json!({ "cron": cron }),
                },
                (None, None) => return Err("give --every or --cron".into()),
            },
        );
        if let Some(dir) = &self.dir {
            put("kind", json!("directory"));
            put("path", json!(dir));
            put("glob", json!(self.glob));
            put("stableSeconds", json!(self.stable_seconds));
            if self.done_marker {
                put("doneMarker", json!(true));
            }
            put("after", json!(self.after));
            put("moveTo", json!(self.move_to));
        } else if let Some(target) = &self.sftp {
            let (user, rest) = target
                .split_once('@')
                .ok_or("--sftp is USER@HOST[:PORT]:/path")?;
            let (host_port, path) = rest
                .split_once(":/")
                .map(|(h, p)| (h, format!("/{p}")))
                .ok_or("--sftp is USER@HOST[:PORT]:/path")?;
            let (host, port) = match host_port.rsplit_once(':') {
                Some((h, p)) => (
                    h,
                    Some(
                        p.parse::<u16>()
                            .map_err(|_| format!("--sftp: `{p}` is not a port"))?,
                    ),
                ),
                None => (host_port, None),
            };
            put("kind", json!("sftp"));
            put("host", json!(host));
            put("port", json!(port));
            put("user", json!(user));
            put("path", json!(path));
            put("hostKey", json!(self.host_key));
            if let Some(file) = &self.private_key_file {
                let key = std::fs::read_to_string(file)
                    .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
                put("privateKey", json!(key));
                put("privateKeyPassphrase", json!(self.private_key_passphrase));
            }
            put("password", json!(self.password));
            put("glob", json!(self.glob));
            put("stableSeconds", json!(self.stable_seconds));
            if self.done_marker {
                put("doneMarker", json!(true));
            }
            put("after", json!(self.after));
            put("moveTo", json!(self.move_to));
        } else if let Some(url) = &self.url {
            put("kind", json!("url"));
            put("url", json!(url));
            if !self.headers.is_empty() {
                let mut headers = serde_json::Map::new();
                for h in &self.headers {
                    let (k, v) = h
                        .split_once(':')
                        .ok_or_else(|| format!("--header `{h}`: write it as `Name: value`"))?;
                    headers.insert(k.trim().to_string(), json!(v.trim()));
                }
                put("headers", Value::Object(headers));
            }
        }
        put("pick", json!(self.pick));
        let mut options = serde_json::Map::new();
        if let Some(m) = &self.mode {
            options.insert("mode".into(), json!(m));
        }
        if let Some(p) = self.max_delete_percent {
            options.insert("maxDeletePercent".into(), json!(p));
        }
        if let Some(t) = &self.template {
            options.insert("template".into(), json!(t));
        }
        if let Some(m) = &self.mapping {
            let m: Value =
                serde_json::from_str(m).map_err(|e| format!("--mapping is not JSON: {e}"))?;
            options.insert("mapping".into(), m);
        }
        put("options", Value::Object(options));
        if self.disabled {
            put("enabled", json!(false));
        }
        Ok(body)
    }
}

fn print_run(r: &Value) {
    println!(
        "run {}  {}  {}  {}{}",
        r["id"],
        r["outcome"].as_str().unwrap_or("running"),
        r["file"].as_str().unwrap_or("-"),
        r["jobId"]
            .as_i64()
            .map_or_else(|| "-".to_string(), |j| format!("job {j}")),
        r["reason"]
            .as_str()
            .map(|s| format!("  ({s})"))
            .unwrap_or_default()
    );
}

pub async fn source(cmd: SourceCommand) -> CliResult {
    match cmd {
        SourceCommand::Add(args) => {
            let api = Api::new(&args.server)?;
            let body = args.body()?;
            let (_, answer) = api
                .send(
                    api.request(reqwest::Method::POST, "/api/v1/sources")
                        .json(&body),
                )
                .await?;
            println!("{}", answer["data"]["id"]);
        }
        SourceCommand::List(args) => {
            let api = Api::new(&args.server)?;
            let body = api.get("/api/v1/sources").await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&body)?);
                return Ok(());
            }
            println!("ID\tNAME\tKIND\tDATASET\tSCHEDULE\tNEXT");
            for s in body["data"]["sources"].as_array().into_iter().flatten() {
                let schedule = &s["schedule"];
                let when = match (schedule["every"].as_str(), schedule["cron"].as_str()) {
                    (Some(every), _) => format!("every {every}"),
                    (None, Some(cron)) => format!(
                        "cron {cron} {}",
                        schedule["timezone"].as_str().unwrap_or("UTC")
                    ),
                    _ => "?".into(),
                };
                println!(
                    "{}\t{}\t{}\t{}\t{when}\t{}",
                    s["id"],
                    s["name"].as_str().unwrap_or(""),
                    s["kind"].as_str().unwrap_or(""),
                    s["dataset"].as_str().unwrap_or(""),
                    s["nextDueAt"].as_str().unwrap_or("disabled")
                );
            }
        }
        SourceCommand::Run(args) => {
            let api = Api::new(&args.server)?;
            let (_, body) = api
                .send(api.request(
                    reqwest::Method::POST,
                    &format!("/api/v1/sources/{}/run", args.id),
                ))
                .await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&body)?);
            } else {
                print_run(&body["data"]);
            }
            if body["data"]["outcome"] == "failed" {
                return Err("the run failed".into());
            }
        }
        SourceCommand::Runs(args) => {
            let api = Api::new(&args.server)?;
            let body = api
                .get(&format!(
                    "/api/v1/sources/{}/runs?limit={}",
                    args.id, args.limit
                ))
                .await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&body)?);
                return Ok(());
            }
            for r in body["data"]["runs"].as_array().into_iter().flatten() {
                print_run(r);
            }
            println!("{} run(s) in all", n(&body["data"]["total"]));
        }
    }
    Ok(())
}
