//! Export jobs (issue 15) through the real server, on SQLite and on PostgreSQL: the round trip
//! (import 10k rows, export CSV and XLSX, import each export again → every row unchanged; the
//! workbook opened by openpyxl has the values and the types), one consistent snapshot while an
//! import commits batches, the filters (`where`, `columns`, `jobId`, `updatedSince`,
//! `template`), `bom` and `formulaSafe`, bad options, organisation isolation and the download's
//! rules (creator or admin, ETag, Range, 304, 416, 409 before done, 410 once the file is gone),
//! a worker killed mid-export, and `sluice export` end to end.

#[macro_use]
mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::Digest;

use common::*;

/// Creates an export with a JSON body; the answer.
async fn export_as(app: &TestApp, token: &str, dataset: &str, body: Value) -> (u16, Value) {
    let resp = app
        .http
        .post(app.url(&format!("/api/v1/export/{dataset}")))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("export");
    json_of(resp).await
}

/// Creates an export and waits for it to complete; its status.
async fn exported(app: &TestApp, token: &str, dataset: &str, body: Value) -> Value {
    let (code, answer) = export_as(app, token, dataset, body).await;
    assert_eq!(code, 202, "{answer}");
    let status = app.wait_done_as(token, job_id(&answer)).await;
    assert_eq!(status["status"], "completed", "{status}");
    assert_eq!(status["kind"], "export");
    status
}

async fn download_as(
    app: &TestApp,
    token: &str,
    job: i64,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = app
        .http
        .get(app.url(&format!("/api/v1/export/{job}/download")))
        .bearer_auth(token);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.expect("download")
}

async fn file_of(app: &TestApp, token: &str, job: i64) -> Vec<u8> {
    let resp = download_as(app, token, job, &[]).await;
    assert_eq!(resp.status(), 200);
    resp.bytes().await.expect("body").to_vec()
}

/// Uploads a file with `token`; waits for the job; its status.
async fn import_file_as(app: &TestApp, token: &str, dataset: &str, path: &Path) -> Value {
    let bytes = std::fs::read(path).expect("read");
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(bytes).file_name(name),
    );
    let resp = app
        .http
        .post(app.url(&format!("/api/v1/import/{dataset}")))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await
        .expect("upload");
    let (code, body) = json_of(resp).await;
    assert_eq!(code, 202, "{body}");
    let status = app.wait_done_as(token, job_id(&body)).await;
    assert_eq!(status["status"], "completed", "{status}");
    status
}

fn counts(status: &Value) -> [u64; 4] {
    [
        "createdCount",
        "updatedCount",
        "unchangedCount",
        "errorCount",
    ]
    .map(|k| {
        status[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} in {status}"))
    })
}

fn hex_sha(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A CSV's records (header included).
fn records(bytes: &[u8]) -> Vec<Vec<String>> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(bytes)
        .records()
        .map(|r| r.expect("csv record").iter().map(str::to_string).collect())
        .collect()
}

/// The products of organisation `org`, prices as numbers (19.9 and 19.90 are one price).
fn products_of(app: &TestApp, org: i64) -> Vec<Vec<Option<String>>> {
    app.db()
        .rows(&format!(
            "SELECT sku, name, category, price, stock, updated_at FROM products \
             WHERE _sluice_org = {org} ORDER BY sku"
        ))
        .into_iter()
        .map(|mut r| {
            r[3] = r[3]
                .take()
                .map(|p| format!("{:.4}", p.parse::<f64>().expect("price")));
            r
        })
        .collect()
}

/// What openpyxl reads from a workbook: per sheet its name, frozen pane, autofilter, whether
/// the header is bold, the header, and every data row as `[type, value]` pairs.
fn openpyxl(path: &Path) -> Value {
    let script = r#"
import json, sys, datetime, openpyxl
wb = openpyxl.load_workbook(sys.argv[1])
out = []
for ws in wb.worksheets:
    rows = []
    for row in ws.iter_rows(min_row=2):
        cells = []
        for c in row:
            v = c.value
            if isinstance(v, datetime.datetime):
                cells.append(["date", v.date().isoformat() if v.time() == datetime.time(0) else v.isoformat(), c.number_format])
            elif isinstance(v, bool):
                cells.append(["bool", v, c.number_format])
            elif isinstance(v, (int, float)):
                cells.append(["number", v, c.number_format])
            elif v is None:
                cells.append(["empty", None, c.number_format])
            else:
                cells.append(["text", v, c.number_format])
        rows.append(cells)
    out.append({
        "name": ws.title,
        "freeze": ws.freeze_panes,
        "filter": ws.auto_filter.ref,
        "bold": all(c.font.b for c in ws[1]),
        "header": [c.value for c in ws[1]],
        "rows": rows,
    })
print(json.dumps(out))
"#;
    python_json(script, path)
}

async fn round_trip_through_csv_and_xlsx_leaves_every_row_unchanged(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        ..Default::default()
    });
    let (source, _) = generate(app.dir.path(), "products.csv", &["--rows", "10000"]);
    let first = import_file_as(&app, TOKEN, "products", &source).await;
    assert_eq!(counts(&first), [10_000, 0, 0, 0]);

    let csv_status = exported(&app, TOKEN, "products", json!({"formulaSafe": false})).await;
    assert_eq!(csv_status["results"]["totalRows"], 10_000);
    assert_eq!(csv_status["progress"]["current"], 10_000);
    let csv_job = csv_status["jobId"].as_i64().unwrap();
    assert_eq!(
        csv_status["downloadUrl"],
        format!("/api/v1/export/{csv_job}/download")
    );
    assert!(csv_status["expiresAt"].is_string(), "{csv_status}");
    let csv = file_of(&app, TOKEN, csv_job).await;
    assert_eq!(csv_status["fileSize"], csv.len() as u64);
    assert_eq!(csv_status["sha256"], hex_sha(&csv));
    // The same rows as the file imported, in key order, header first.
    let source_records = records(&std::fs::read(&source).unwrap());
    let exported_records = records(&csv);
    assert_eq!(exported_records[0], source_records[0]);
    assert_eq!(exported_records.len(), 10_001);

    let xlsx_status = exported(&app, TOKEN, "products", json!({"format": "xlsx"})).await;
    let xlsx_job = xlsx_status["jobId"].as_i64().unwrap();
    assert_eq!(xlsx_status["results"]["totalRows"], 10_000);
    let xlsx_path = app.path("back.xlsx");
    std::fs::write(&xlsx_path, file_of(&app, TOKEN, xlsx_job).await).unwrap();
    let csv_path = app.path("back.csv");
    std::fs::write(&csv_path, &csv).unwrap();

    // An independent reader sees the values and their types.
    let book = openpyxl(&xlsx_path);
    let sheet = &book[0];
    assert_eq!(book.as_array().unwrap().len(), 1);
    assert_eq!(sheet["freeze"], "A2");
    assert_eq!(sheet["filter"], "A1:F10001");
    assert_eq!(sheet["bold"], true);
    assert_eq!(
        sheet["header"],
        json!(["sku", "name", "category", "price", "stock", "updated_at"])
    );
    let rows = sheet["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 10_000);
    let mut by_sku: Vec<&Vec<String>> = source_records[1..].iter().collect();
    by_sku.sort_by(|a, b| a[0].cmp(&b[0]));
    for (row, want) in rows.iter().zip(by_sku) {
        let cell = |i: usize| &row[i];
        assert_eq!(cell(0)[0], "text");
        assert_eq!(cell(0)[1], want[0]);
        assert_eq!(cell(1)[1], want[1]);
        if want[2].is_empty() {
            assert_eq!(cell(2)[0], "empty");
        } else {
            assert_eq!(cell(2)[1], want[2]);
        }
        assert_eq!(cell(3)[0], "number", "{row:?}");
        let price = cell(3)[1].as_f64().unwrap();
        assert!(
            (price - want[3].parse::<f64>().unwrap()).abs() < 1e-9,
            "{row:?} {want:?}"
        );
        assert_eq!(cell(4)[0], "number", "{row:?}");
        assert_eq!(cell(4)[1].as_i64(), Some(want[4].parse::<i64>().unwrap()));
        assert_eq!(cell(5)[0], "date", "{row:?}");
        assert_eq!(cell(5)[1], want[5]);
        assert_eq!(cell(5)[2], "yyyy-mm-dd");
    }

    // Counted in the metrics of the process whose worker wrote them.
    let metrics = app
        .get("/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "sluice_export_rows_total{format=\"csv\"} 10000",
        "sluice_export_rows_total{format=\"xlsx\"} 10000",
        "sluice_exports_total{format=\"csv\"} 1",
        "sluice_exports_total{format=\"xlsx\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in:\n{metrics}"
        );
    }

    // Importing either export again changes nothing.
    for back in [&csv_path, &xlsx_path] {
        let again = import_file_as(&app, TOKEN, "products", back).await;
        assert_eq!(counts(&again), [0, 0, 10_000, 0], "{back:?}");
    }
    // Into an organisation of its own, each export gives the very same table.
    let original = products_of(&app, 1);
    assert_eq!(original.len(), 10_000);
    for (name, back) in [("from-csv", &csv_path), ("from-xlsx", &xlsx_path)] {
        let (org, token) = org_with_admin(&app, name);
        let status = import_file_as(&app, &token, "products", back).await;
        assert_eq!(counts(&status), [10_000, 0, 0, 0]);
        assert_eq!(products_of(&app, org), original, "{name}");
    }
}

/// While an import commits batches of 50 new keys in key order, exports see whole batches only:
/// exactly the first N keys, N a multiple of 50, and the count they announced (`total`, read
/// first) equal to the rows they wrote (read last) — which a count and a read outside one
/// transaction would not give while batches land between them.
async fn an_export_during_an_import_sees_whole_batches_only(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        batch_size: 50,
        workers: 2,
        ..Default::default()
    });
    let (source, _) = generate(app.dir.path(), "products.csv", &["--rows", "40000"]);
    let (code, body) = app.upload("products", &source).await;
    assert_eq!(code, 202, "{body}");
    let import = job_id(&body);
    // Wait (on the import's own progress, not a timer) until batches are landing.
    let start = Instant::now();
    while app.status(import).await["progress"]["current"].as_u64() == Some(0) {
        assert!(start.elapsed() < MINUTE, "the import never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut partial = 0;
    loop {
        let import_done = app.status(import).await["status"] == "completed";
        let status = exported(&app, TOKEN, "products", json!({"columns": "sku"})).await;
        let rows = status["results"]["totalRows"].as_u64().unwrap();
        assert_eq!(status["progress"]["total"], rows, "{status}");
        assert_eq!(rows % 50, 0, "a batch seen in part: {rows}");
        let job = status["jobId"].as_i64().unwrap();
        let csv = records(&file_of(&app, TOKEN, job).await);
        assert_eq!(csv.len() as u64, rows + 1);
        for (i, r) in csv[1..].iter().enumerate() {
            assert_eq!(r[0], format!("SKU-{:07}", i + 1));
        }
        if rows > 0 && rows < 40_000 {
            partial += 1;
        }
        if import_done {
            assert_eq!(rows, 40_000);
            break;
        }
    }
    assert!(partial > 0, "no export ran while the import did");
}

const THINGS: &str = r#"
[datasets.things]
key = ["code"]
[datasets.things.fields]
code = { type = "text", required = true }
label = { type = "text" }
qty = { type = "integer" }
price = { type = "decimal", scale = 2 }
active = { type = "boolean" }
day = { type = "date" }
seen = { type = "datetime" }
"#;

const FIRST: &str = "code,label,qty,price,active,day,seen
A1,=1+1,5,1.5,true,2024-01-02,2024-01-02T03:04:05
A2,plain,-3,20,false,2024-02-01,2024-02-01T00:00:00
B1,@home,10,300.25,true,2023-12-31,
B2,,0,0.1,,2024-03-15,2024-03-15T12:00:00
C1,\"comma, quoted\",7,7.77,false,,
";

/// Updates A1, leaves A2 as it is, adds D1.
const SECOND: &str = "code,label,qty,price,active,day,seen
A1,=1+1,6,1.5,true,2024-01-02,2024-01-02T03:04:05
A2,plain,-3,20,false,2024-02-01,2024-02-01T00:00:00
D1,new,1,2,true,2024-04-01,
";

async fn things(app: &TestApp, token: &str, csv: &str) -> Value {
    imported(app, token, "things", csv).await
}

/// Imports `csv` into `dataset` and waits for it to complete.
async fn imported(app: &TestApp, token: &str, dataset: &str, csv: &str) -> Value {
    let path = format!("/api/v1/import/{dataset}");
    let (code, body) = app
        .upload_text_as(token, &path, &format!("{dataset}.csv"), csv, &[])
        .await;
    assert_eq!(code, 202, "{body}");
    let s = app.wait_done_as(token, job_id(&body)).await;
    assert_eq!(s["status"], "completed", "{s}");
    s
}

/// The codes (first column) an export of `things` with `body` gives.
async fn codes(app: &TestApp, body: Value) -> Vec<String> {
    let status = exported(app, TOKEN, "things", body).await;
    let csv = records(&file_of(app, TOKEN, status["jobId"].as_i64().unwrap()).await);
    csv[1..].iter().map(|r| r[0].clone()).collect()
}

async fn filters_columns_templates_and_options(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        datasets: Some(THINGS.into()),
        ..Default::default()
    });
    let first = things(&app, TOKEN, FIRST).await;
    let second = things(&app, TOKEN, SECOND).await;
    assert_eq!(counts(&second), [1, 1, 1, 0]);

    // Everything, in key order, values as the import reads them back; text formulas neutralised.
    let status = exported(&app, TOKEN, "things", json!({})).await;
    let csv = records(&file_of(&app, TOKEN, status["jobId"].as_i64().unwrap()).await);
    assert_eq!(
        csv,
        vec![
            vec!["code", "label", "qty", "price", "active", "day", "seen"],
            vec![
                "A1",
                "'=1+1",
                "6",
                "1.50",
                "true",
                "2024-01-02",
                "2024-01-02T03:04:05"
            ],
            vec![
                "A2",
                "plain",
                "-3",
                "20.00",
                "false",
                "2024-02-01",
                "2024-02-01T00:00:00"
            ],
            vec!["B1", "'@home", "10", "300.25", "true", "2023-12-31", ""],
            vec![
                "B2",
                "",
                "0",
                "0.10",
                "",
                "2024-03-15",
                "2024-03-15T12:00:00"
            ],
            vec!["C1", "comma, quoted", "7", "7.77", "false", "", ""],
            vec!["D1", "new", "1", "2.00", "true", "2024-04-01", ""],
        ]
    );
    // formulaSafe off, a byte order mark on, and the options as form fields and as a query.
    let resp = app
        .http
        .post(app.url("/api/v1/export/things?bom=true"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("formulaSafe=false&columns=label%2Ccode")
        .send()
        .await
        .unwrap();
    let (code, body) = json_of(resp).await;
    assert_eq!(code, 202, "{body}");
    let done = app.wait_done(job_id(&body), MINUTE).await;
    let bytes = file_of(&app, TOKEN, done["jobId"].as_i64().unwrap()).await;
    assert!(
        bytes.starts_with(b"\xEF\xBB\xBFlabel,code\n=1+1,A1\n"),
        "{:?}",
        String::from_utf8_lossy(&bytes)
    );
    let form = reqwest::multipart::Form::new()
        .text("columns", "[\"qty\"]")
        .text("where", "{\"code\":\"B1\"}");
    let resp = app
        .http
        .post(app.url("/api/v1/export/things"))
        .bearer_auth(TOKEN)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let (code, body) = json_of(resp).await;
    assert_eq!(code, 202, "{body}");
    let done = app.wait_done(job_id(&body), MINUTE).await;
    assert_eq!(
        file_of(&app, TOKEN, done["jobId"].as_i64().unwrap()).await,
        b"qty\n10\n"
    );

    // where: equality and ranges, typed by the field.
    assert_eq!(codes(&app, json!({"where": {"code": "A2"}})).await, ["A2"]);
    assert_eq!(
        codes(&app, json!({"where": {"qty": {"gte": 0, "lte": 7}}})).await,
        ["A1", "B2", "C1", "D1"]
    );
    assert_eq!(
        codes(&app, json!({"where": {"qty": {"lte": "-1"}}})).await,
        ["A2"]
    );
    // 20 ≥ 9.5 as numbers (as text "20" < "9.5").
    assert_eq!(
        codes(&app, json!({"where": {"price": {"gte": "9.5"}}})).await,
        ["A2", "B1"]
    );
    assert_eq!(codes(&app, json!({"where": {"price": 0.10}})).await, ["B2"]);
    assert_eq!(
        codes(&app, json!({"where": {"active": false}})).await,
        ["A2", "C1"]
    );
    assert_eq!(
        codes(
            &app,
            json!({"where": {"day": {"gte": "2024-01-01", "lte": "2024-03-15"}}})
        )
        .await,
        ["A1", "A2", "B2"]
    );
    assert_eq!(
        codes(
            &app,
            json!({"where": {"seen": {"gte": "2024-02-01T00:00:00"}, "active": true}})
        )
        .await,
        Vec::<String>::new()
    );
    assert_eq!(
        codes(
            &app,
            json!({"where": {"seen": {"gte": "2024-02-01T00:00:00"}}})
        )
        .await,
        ["A2", "B2"]
    );
    // jobId: the rows that import wrote last — created, updated, and found unchanged (stamped).
    let second_id = second["jobId"].as_i64().unwrap();
    assert_eq!(
        codes(&app, json!({"jobId": second_id})).await,
        ["A1", "A2", "D1"]
    );
    assert_eq!(
        codes(&app, json!({"jobId": first["jobId"]})).await,
        ["B1", "B2", "C1"]
    );
    // updatedSince: rows an import created or changed from then on (not those it found
    // unchanged: their values were not written).
    let since = second["startedAt"].as_str().unwrap();
    assert_eq!(
        codes(&app, json!({"updatedSince": since})).await,
        ["A1", "D1"]
    );
    assert_eq!(
        codes(&app, json!({"updatedSince": "2000-01-01"}))
            .await
            .len(),
        6
    );

    // A template's headers name the columns (and pick them).
    let resp = app
        .post("/api/v1/datasets/things/templates")
        .json(&json!({"name": "Supplier", "mapping": {"Artikel": "code", "Menge": "qty", "Extra": null}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let status = exported(
        &app,
        TOKEN,
        "things",
        json!({"template": "Supplier", "where": {"code": "B1"}}),
    )
    .await;
    let csv = records(&file_of(&app, TOKEN, status["jobId"].as_i64().unwrap()).await);
    assert_eq!(csv, vec![vec!["Artikel", "Menge"], vec!["B1", "10"]]);
    let status = exported(
        &app,
        TOKEN,
        "things",
        json!({"template": "Supplier", "columns": ["qty", "label"]}),
    )
    .await;
    let csv = records(&file_of(&app, TOKEN, status["jobId"].as_i64().unwrap()).await);
    assert_eq!(csv[0], vec!["Menge", "label"]);

    // XLSX: typed cells (a decimal's scale as its format, booleans, dates and times).
    let status = exported(&app, TOKEN, "things", json!({"format": "xlsx"})).await;
    let path = app.path("things.xlsx");
    std::fs::write(
        &path,
        file_of(&app, TOKEN, status["jobId"].as_i64().unwrap()).await,
    )
    .unwrap();
    let book = openpyxl(&path);
    let rows = book[0]["rows"].as_array().unwrap();
    assert_eq!(book[0]["filter"], "A1:G7");
    assert_eq!(
        rows[0][1],
        json!(["text", "=1+1", "General"]),
        "a string, never a formula"
    );
    assert_eq!(rows[0][2], json!(["number", 6, "General"]));
    assert_eq!(rows[0][3], json!(["number", 1.5, "0.00"]));
    assert_eq!(rows[0][4], json!(["bool", true, "General"]));
    assert_eq!(rows[0][5], json!(["date", "2024-01-02", "yyyy-mm-dd"]));
    assert_eq!(
        rows[0][6],
        json!(["date", "2024-01-02T03:04:05", "yyyy-mm-dd hh:mm:ss"])
    );
    assert_eq!(rows[1][2], json!(["number", -3, "General"]));
    assert_eq!(rows[3][4][0], "empty");

    // Bad options: 400 with a code, and no job.
    for (body, code) in [
        (json!({"format": "pdf"}), "invalid_format"),
        (json!({"columns": "code,nope"}), "unknown_field"),
        (json!({"columns": "code,code"}), "invalid_columns"),
        (json!({"columns": [1]}), "invalid_columns"),
        (json!({"where": {"nope": 1}}), "unknown_field"),
        (json!({"where": {"qty": "many"}}), "invalid_where"),
        (json!({"where": {"price": {"gt": 1}}}), "invalid_where"),
        (json!({"where": {"day": "yesterday"}}), "invalid_where"),
        (json!({"where": {"active": "maybe"}}), "invalid_where"),
        (json!({"where": "code=A1"}), "invalid_where"),
        (json!({"where": {"qty": [1]}}), "invalid_where"),
        (json!({"updatedSince": "soon"}), "invalid_updated_since"),
        (json!({"jobId": "x"}), "invalid_job"),
        (json!({"jobId": 999_999}), "invalid_job"),
        (json!({"jobId": status["jobId"]}), "invalid_job"),
        (json!({"template": "Nope"}), "unknown_template"),
        (json!({"bom": "sometimes"}), "invalid_parameter"),
        (json!({"priority": "urgent"}), "invalid_priority"),
        (json!({"sheet": "x"}), "unknown_option"),
    ] {
        let (status, answer) = export_as(&app, TOKEN, "things", body.clone()).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (400, Some(code)),
            "{body}: {answer}"
        );
    }
    let resp = app
        .post("/api/v1/export/things")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(resp).await.1["error"]["code"], "invalid_body");
    let (status, _) = export_as(&app, TOKEN, "nothing", json!({})).await;
    assert_eq!(status, 404);
}

async fn organisations_see_their_own_rows_and_downloads_follow_the_rules(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        datasets: Some(THINGS.into()),
        ..Default::default()
    });
    things(&app, TOKEN, FIRST).await;
    let (_, acme) = org_with_admin(&app, "acme");
    things(&app, &acme, "code,label\nZ9,acme's\n").await;
    let member = created(
        &app,
        &[
            "user", "create", "--org", "acme", "--name", "bob", "--role", "member",
        ],
    );
    let (member, _) = token_for(&app, member, &[]);

    let mine = exported(&app, &acme, "things", json!({})).await;
    let job = mine["jobId"].as_i64().unwrap();
    let csv = records(&file_of(&app, &acme, job).await);
    assert_eq!(csv[1..], [vec!["Z9", "acme's", "", "", "", "", ""]]);
    let theirs = exported(&app, TOKEN, "things", json!({})).await;
    assert_eq!(theirs["results"]["totalRows"], 5);
    // Another organisation: not found (as for its imports); a member who did not start it: 403.
    let resp = download_as(&app, TOKEN, job, &[]).await;
    assert_eq!(resp.status(), 404);
    let resp = app
        .http
        .get(app.url(&format!("/api/v1/import/status/{job}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(download_as(&app, &member, job, &[]).await.status(), 403);
    // The member's own export is theirs to download; the admin may download it too.
    let own = exported(&app, &member, "things", json!({"format": "xlsx"})).await;
    let own = own["jobId"].as_i64().unwrap();
    assert_eq!(download_as(&app, &member, own, &[]).await.status(), 200);
    assert_eq!(download_as(&app, &acme, own, &[]).await.status(), 200);
    // An import is no export.
    let (_, body) = app
        .upload_text_as(TOKEN, "/api/v1/import/things", "x.csv", "code\nQ1\n", &[])
        .await;
    let import = job_id(&body);
    app.wait_done(import, MINUTE).await;
    assert_eq!(download_as(&app, TOKEN, import, &[]).await.status(), 404);

    // The download's headers, ranges and validators.
    let job = theirs["jobId"].as_i64().unwrap();
    let resp = download_as(&app, TOKEN, job, &[]).await;
    let headers = resp.headers().clone();
    let whole = resp.bytes().await.unwrap();
    let sha = hex_sha(&whole);
    let etag = format!("\"{sha}\"");
    assert_eq!(theirs["sha256"], sha);
    assert_eq!(headers["etag"], etag.as_str());
    assert_eq!(headers["accept-ranges"], "bytes");
    assert_eq!(headers["content-type"], "text/csv; charset=utf-8");
    assert_eq!(headers["content-length"], whole.len().to_string().as_str());
    assert_eq!(
        headers["content-disposition"],
        format!("attachment; filename=\"things-export-{job}.csv\"").as_str()
    );
    let size = whole.len();
    let part = |range: &'static str| {
        let app = &app;
        async move {
            let resp = download_as(app, TOKEN, job, &[("range", range)]).await;
            let status = resp.status().as_u16();
            let content_range = resp
                .headers()
                .get("content-range")
                .map(|v| v.to_str().unwrap().to_string());
            (status, content_range, resp.bytes().await.unwrap())
        }
    };
    let (status, range, head) = part("bytes=0-9").await;
    assert_eq!(
        (status, range.as_deref()),
        (206, Some(format!("bytes 0-9/{size}").as_str()))
    );
    let (_, _, tail) = part("bytes=10-").await;
    assert_eq!(
        [&head[..], &tail[..]].concat(),
        whole.to_vec(),
        "a resumed download is the file"
    );
    let (status, _, last) = part("bytes=-5").await;
    assert_eq!((status, &last[..]), (206, &whole[size - 5..]));
    let (status, range, _) = part("bytes=99999-").await;
    assert_eq!(
        (status, range.as_deref()),
        (416, Some(format!("bytes */{size}").as_str()))
    );
    let resp = download_as(&app, TOKEN, job, &[("if-none-match", &etag)]).await;
    assert_eq!(resp.status(), 304);
    let resp = download_as(&app, TOKEN, job, &[("if-none-match", "\"other\"")]).await;
    assert_eq!(resp.status(), 200);
    let resp = download_as(
        &app,
        TOKEN,
        job,
        &[("range", "bytes=0-3"), ("if-range", "\"old\"")],
    )
    .await;
    assert_eq!(resp.status(), 200, "a changed file is sent whole");
}

/// Before its worker has run, an export answers 409 `not_ready`; a file gone from the disk
/// (what retention does) is 410 `expired`.
async fn a_download_before_the_end_is_409_and_after_the_file_is_gone_410(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        datasets: Some(THINGS.into()),
        workers: 0,
        ..Default::default()
    });
    let (code, body) = export_as(&app, TOKEN, "things", json!({})).await;
    assert_eq!(code, 202, "{body}");
    let job = job_id(&body);
    assert_eq!(app.status(job).await["status"], "pending");
    let resp = download_as(&app, TOKEN, job, &[]).await;
    let (code, body) = json_of(resp).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (409, Some("not_ready")),
        "{body}"
    );
    let datasets = app.path("datasets.toml");
    app.spawn_worker_with(1, &["--datasets", datasets.to_str().unwrap()]);
    let done = app.wait_done(job, MINUTE).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["results"]["totalRows"], 0);
    assert_eq!(
        file_of(&app, TOKEN, job).await,
        b"code,label,qty,price,active,day,seen\n"
    );
    // Retention removes the file and marks the job (as `jobs_sweep` does).
    let now = if backend == Backend::Postgres {
        "now()"
    } else {
        "'2026-01-01T00:00:00.000Z'"
    };
    app.db().execute(&format!(
        "UPDATE jobs SET blob_deleted_at = {now} WHERE id = {job}"
    ));
    let (code, body) = json_of(download_as(&app, TOKEN, job, &[]).await).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (410, Some("expired")),
        "{body}"
    );
    assert!(app.status(job).await.get("downloadUrl").is_none());
}

/// A worker SIGKILLed in the middle of an export: after its lease expires another worker runs
/// the export again from the start, and the file has every row once.
async fn a_killed_worker_s_export_starts_over_and_completes(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        workers: 0,
        lease_seconds: 2,
        ..Default::default()
    });
    let (source, _) = generate(app.dir.path(), "products.csv", &["--rows", "120000"]);
    let worker = app.spawn_worker(1);
    let (code, body) = app.upload("products", &source).await;
    assert_eq!(code, 202, "{body}");
    let import = app.wait_done(job_id(&body), 5 * MINUTE).await;
    assert_eq!(import["status"], "completed", "{import}");
    let (code, body) = export_as(&app, TOKEN, "products", json!({"format": "xlsx"})).await;
    assert_eq!(code, 202, "{body}");
    let job = job_id(&body);
    // Kill it once progress shows rows written, before it completes.
    let start = Instant::now();
    loop {
        let s = app.status(job).await;
        assert_ne!(
            s["status"], "completed",
            "the export ended before it could be killed: {s}"
        );
        if s["progress"]["current"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(start.elapsed() < MINUTE, "{s}");
        // Slower than the rate limit (100 requests/s a token) allows.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.kill_worker(worker);
    let killed = app.status(job).await;
    assert_eq!(killed["status"], "processing");
    app.spawn_worker(1);
    let done = app.wait_done(job, 5 * MINUTE).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["attempts"], 2);
    assert_eq!(done["results"]["totalRows"], 120_000);
    let path = app.path("after-kill.xlsx");
    std::fs::write(&path, file_of(&app, TOKEN, job).await).unwrap();
    let book = openpyxl(&path);
    let rows = book[0]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 120_000);
    assert_eq!(rows[0][0][1], "SKU-0000001");
    assert_eq!(rows[119_999][0][1], "SKU-0120000");

    // Cancelled while it writes: no file (409); a retry runs the same job again, whole.
    let (_, body) = export_as(&app, TOKEN, "products", json!({"format": "xlsx"})).await;
    let job = job_id(&body);
    let start = Instant::now();
    while app.status(job).await["progress"]["current"]
        .as_u64()
        .unwrap_or(0)
        == 0
    {
        assert!(start.elapsed() < MINUTE);
        // Slower than the rate limit (100 requests/s a token) allows.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resp = app
        .post(&format!("/api/v1/import/{job}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(app.status(job).await["status"], "cancelled");
    let (code, body) = json_of(download_as(&app, TOKEN, job, &[]).await).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (409, Some("not_ready")),
        "{body}"
    );
    let resp = app
        .post(&format!("/api/v1/import/{job}/retry?fromStart=true"))
        .send()
        .await
        .unwrap();
    let (code, body) = json_of(resp).await;
    assert_eq!(code, 200, "{body}");
    let done = app.wait_done(job, 5 * MINUTE).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["kind"], "export");
    assert_eq!(done["results"]["totalRows"], 120_000);
    assert_eq!(download_as(&app, TOKEN, job, &[]).await.status(), 200);
}

/// `sluice export` over HTTP: creates the job, follows it, downloads the file; filters and
/// columns from its flags; a refused option is a clear error and a non-zero exit.
async fn the_cli_exports_to_a_file(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        datasets: Some(THINGS.into()),
        ..Default::default()
    });
    let first = things(&app, TOKEN, FIRST).await;
    let run = |args: &[&str]| {
        Command::new(binary())
            .args(args)
            .env("SLUICE_SERVER", &app.base)
            .env("SLUICE_TOKEN", TOKEN)
            .output()
            .expect("run sluice")
    };
    let out_path = app.path("cli.csv");
    let out = run(&[
        "export",
        "things",
        "--out",
        out_path.to_str().unwrap(),
        "--where",
        "qty>=0",
        "--where",
        "qty<=7",
        "--where",
        "active=false",
        "--columns",
        "code,qty",
        "--job",
        &first["jobId"].to_string(),
        "--no-formula-safe",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("exported 1 rows of things"), "{stdout}");
    assert_eq!(std::fs::read(&out_path).unwrap(), b"code,qty\nC1,7\n");
    let xlsx_path = app.path("cli.xlsx");
    let out = run(&[
        "export",
        "things",
        "--format",
        "xlsx",
        "--out",
        xlsx_path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(openpyxl(&xlsx_path)[0]["rows"].as_array().unwrap().len(), 5);
    let out = run(&["export", "things", "--out", "x.csv", "--columns", "nope"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown_field"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["export", "things", "--out", "x.csv", "--where", "qty"]);
    assert!(!out.status.success());
}

/// Datasets `fresh` and `known`, each with every field type, an unscaled decimal too.
fn every_type() -> String {
    ["fresh", "known"]
        .map(|name| {
            format!(
                "[datasets.{name}]\nkey = [\"code\"]\n[datasets.{name}.fields]\n\
                 code = {{ type = \"text\", required = true }}\nlabel = {{ type = \"text\" }}\n\
                 qty = {{ type = \"integer\" }}\nprice = {{ type = \"decimal\", scale = 2 }}\n\
                 ratio = {{ type = \"decimal\" }}\nactive = {{ type = \"boolean\" }}\n\
                 day = {{ type = \"date\" }}\nseen = {{ type = \"datetime\" }}\n"
            )
        })
        .concat()
}

const EVERY_VALUE: &str = "code,label,qty,price,active,day,seen,ratio
A1,tab\there \\ back,9223372036854775807,0.00,true,2000-01-01,2000-01-01T00:00:00,0.00
A2,\"line\nbreak\",-9223372036854775808,-0.5,false,1999-12-31,1999-12-31T23:59:59.5,-0.5
A3,üñí €,0,12345678.99,,0001-01-01,2024-01-02T03:04:05.123456,12345678.12345678
A4,,1,0.01,true,9999-12-31,2024-02-29T12:00:00+02:00,0.00001
A5,x,-1,1000,false,2024-02-29,2024-02-29T12:00:00Z,-79228162514264337593543950335
A6,y,2,7.1,,1970-01-01,1970-01-01T00:00:00.1,10000
";

/// PostgreSQL COPYs a batch of new keys straight into the table in binary, and one with a
/// known key through the staging table as text (`store/postgres/binary.rs`): the two store
/// every type alike, as an export reads them back. (SQLite has one path; it must agree too.)
async fn new_and_known_keys_store_every_type_alike(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        datasets: Some(every_type()),
        ..Default::default()
    });
    let fresh = imported(&app, TOKEN, "fresh", EVERY_VALUE).await;
    assert_eq!(counts(&fresh), [6, 0, 0, 0], "{fresh}");
    // One key known beforehand (with other values): the whole batch goes through staging.
    imported(&app, TOKEN, "known", "code,qty\nA6,5\n").await;
    let known = imported(&app, TOKEN, "known", EVERY_VALUE).await;
    assert_eq!(counts(&known), [5, 1, 0, 0], "{known}");

    let mut files = Vec::new();
    for dataset in ["fresh", "known"] {
        let status = exported(&app, TOKEN, dataset, json!({})).await;
        files.push(records(
            &file_of(&app, TOKEN, status["jobId"].as_i64().unwrap()).await,
        ));
    }
    assert_eq!(files[0], files[1]);
    let a2 = &files[0][2];
    assert_eq!(a2[..3], ["A2", "line\nbreak", "-9223372036854775808"]);
    assert_eq!(a2[3..7], ["-0.50", "-0.5", "false", "1999-12-31"]);
    assert_eq!(
        files[0][1][4], "0.00",
        "an unscaled zero keeps its scale: {:?}",
        files[0][1]
    );

    // Nanoseconds have no exact binary form (PostgreSQL's text input rounds them): such a
    // batch is written through staging, nothing lost.
    let fine = imported(
        &app,
        TOKEN,
        "fresh",
        "code,seen\nN1,2024-01-01T00:00:00.123456789\n",
    )
    .await;
    assert_eq!(counts(&fine), [1, 0, 0, 0], "{fine}");
    let status = exported(&app, TOKEN, "fresh", json!({"columns": "code,seen"})).await;
    let rows = records(&file_of(&app, TOKEN, status["jobId"].as_i64().unwrap()).await);
    let n1 = rows.iter().find(|r| r[0] == "N1").expect("N1 exported");
    assert!(n1[1].starts_with("2024-01-01T00:00:00.12345"), "{n1:?}");
}

conformance!(
    the_cli_exports_to_a_file,
    round_trip_through_csv_and_xlsx_leaves_every_row_unchanged,
    an_export_during_an_import_sees_whole_batches_only,
    filters_columns_templates_and_options,
    organisations_see_their_own_rows_and_downloads_follow_the_rules,
    a_download_before_the_end_is_409_and_after_the_file_is_gone_410,
    a_killed_worker_s_export_starts_over_and_completes,
    new_and_known_keys_store_every_type_alike,
);
