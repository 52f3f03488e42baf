//! The import spine through the HTTP API of the real server: counts, rejected rows, updates and
//! history, synchronous datasets, file-level errors, authentication.

#[macro_use]
mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use serde_json::Value;

fn expected_invalid_rows(expect: &Value) -> BTreeSet<u64> {
    // The generator numbers data rows from 1; a spreadsheet shows data row n as row n + 1.
    expect["invalid_row_numbers"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|v| {
            v.as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_u64().unwrap() + 1)
        })
        .collect()
}

async fn products_import_reports_exact_counts_and_rejected_rows(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        batch_size: 1000,
        ..Default::default()
    });
    let (file, expect) = generate(
        app.dir.path(),
        "bad.csv",
        // ~1,500 rejected rows: the CSV download crosses its 1,000-row pages.
        &["--rows", "10000", "--error-rate", "0.15", "--seed", "7"],
    );
    let (code, body) = app.upload("products", &file).await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["success"], true);
    let job = job_id(&body);
    assert_eq!(
        body["data"]["statusUrl"],
        format!("/api/v1/import/status/{job}")
    );

    let s = app.wait_done(job, MINUTE).await;
    let valid = expect["valid_rows"].as_u64().unwrap();
    let invalid = expect["invalid_rows"].as_u64().unwrap();
    assert_eq!(s["status"], "completed", "{s}");
    assert_eq!(s["results"]["totalRows"], 10_000);
    assert_eq!(s["results"]["successCount"], valid);
    assert_eq!(s["results"]["errorCount"], invalid);
    assert_eq!(s["createdCount"], valid);
    assert_eq!(s["updatedCount"], 0);
    assert_eq!(s["progress"]["current"], 10_000);
    assert_eq!(s["progress"]["total"], 10_000);
    assert_eq!(s["progress"]["percentage"], 100);
    assert!(s["startedAt"].is_string() && s["completedAt"].is_string());
    assert_eq!(s["batches"], 10);

    // The table holds exactly the valid rows.
    let mut db = app.db();
    let count = db.number("SELECT count(*) FROM products");
    let stock = db.number("SELECT sum(stock) FROM products");
    let price: rust_decimal::Decimal = db
        .rows("SELECT price FROM products")
        .into_iter()
        .map(|r| {
            r[0].as_deref()
                .unwrap()
                .parse::<rust_decimal::Decimal>()
                .unwrap()
        })
        .sum();
    let price = price.to_string();
    assert_eq!(count as u64, valid);
    assert_eq!(stock, expect["valid_sum_stock"].as_i64().unwrap());
    assert_eq!(price, expect["valid_sum_price"].as_str().unwrap());
    // Decimals are stored exactly as written.
    let p = db
        .value("SELECT price FROM products WHERE sku = 'SKU-0000001'")
        .unwrap();
    let first_line = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_string();
    assert!(
        first_line.contains(&format!(",{p},")),
        "{first_line} vs {p}"
    );

    // The rejected rows CSV has exactly the invalid rows, with the original columns + error.
    let csv_text = app.errors_csv(job).await;
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(csv_text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_string)
        .collect();
    assert_eq!(
        header,
        [
            "sku",
            "name",
            "category",
            "price",
            "stock",
            "updated_at",
            "error"
        ]
    );
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len() as u64, invalid);

    // The JSON errors name the same rows, each once, with a message naming the problem.
    let (_, errs) = app
        .get_json(&format!("/api/v1/import/{job}/errors?limit=100000"))
        .await;
    assert_eq!(errs["data"]["total"], invalid);
    let errors = errs["data"]["errors"].as_array().unwrap();
    let rows: BTreeSet<u64> = errors.iter().map(|e| e["row"].as_u64().unwrap()).collect();
    assert_eq!(rows, expected_invalid_rows(&expect));
    // The CSV carries the same rows in the same (row) order: no page skipped or repeated.
    let csv_messages: Vec<&str> = records.iter().map(|r| &r[r.len() - 1]).collect();
    let json_messages: Vec<&str> = errors
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(csv_messages, json_messages);
    let by_kind = |kind: &str| -> BTreeSet<u64> {
        expect["invalid_row_numbers"][kind]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_u64().unwrap() + 1)
            .collect()
    };
    for e in errors {
        let row = e["row"].as_u64().unwrap();
        let msg = e["message"].as_str().unwrap();
        let expected = if by_kind("duplicate_sku").contains(&row) {
            "duplicate key, first seen at row"
        } else if by_kind("wrong_column_count").contains(&row) {
            "wrong_field_count"
        } else if by_kind("empty_sku").contains(&row) {
            "sku: is required"
        } else if by_kind("bad_price").contains(&row) {
            "price:"
        } else if by_kind("negative_stock").contains(&row) {
            "below the minimum 0"
        } else {
            "updated_at:"
        };
        assert!(
            msg.contains(expected),
            "row {row}: `{msg}` should contain `{expected}`"
        );
    }
    // The summary counts the same errors by column and by kind of message.
    let (code, summary) = app
        .get_json(&format!("/api/v1/import/{job}/errors/summary"))
        .await;
    assert_eq!(code, 200, "{summary}");
    let summary = &summary["data"];
    assert_eq!(summary["total"], invalid);
    let kinds = &expect["invalid_by_kind"];
    let column = |name: &str| -> u64 {
        summary["byColumn"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["column"] == name)
            .map_or(0, |c| c["count"].as_u64().unwrap())
    };
    assert_eq!(column("price"), kinds["bad_price"]);
    assert_eq!(column("stock"), kinds["negative_stock"]);
    assert_eq!(column("updated_at"), kinds["bad_date"]);
    assert_eq!(column("(whole row)"), kinds["wrong_column_count"]);
    assert_eq!(
        column("sku"),
        kinds["empty_sku"].as_u64().unwrap() + kinds["duplicate_sku"].as_u64().unwrap()
    );
    let shapes = summary["byMessage"].as_array().unwrap();
    let sum = |list: &[Value]| {
        list.iter()
            .map(|c| c["count"].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(sum(shapes), invalid);
    assert_eq!(sum(summary["byColumn"].as_array().unwrap()), invalid);
    // 1,500 rejected rows read as a handful of causes, most frequent first, each with a real
    // example taken from the rows.
    assert!(shapes.len() <= 12, "{shapes:?}");
    assert!(
        shapes
            .windows(2)
            .all(|w| w[0]["count"].as_u64() >= w[1]["count"].as_u64())
    );
    for shape in shapes {
        let row = shape["exampleRow"].as_u64().unwrap();
        let e = errors.iter().find(|e| e["row"] == row).unwrap();
        assert_eq!(e["message"], shape["example"], "{shape}");
        assert!(
            !shape["message"].as_str().unwrap().contains("SKU-"),
            "{shape}"
        );
    }

    // Paging.
    let (_, page) = app
        .get_json(&format!("/api/v1/import/{job}/errors?limit=10&offset=5"))
        .await;
    assert_eq!(page["data"]["errors"].as_array().unwrap().len(), 10);
    assert_eq!(page["data"]["errors"][0], errors[5]);
}

/// Reads a generated CSV into sku → fields.
fn read_products(path: &std::path::Path) -> BTreeMap<String, Vec<String>> {
    let mut r = csv::Reader::from_path(path).unwrap();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            (rec[0].to_string(), rec.iter().map(str::to_string).collect())
        })
        .collect()
}

async fn overlapping_import_updates_changed_rows_and_archives_history(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        batch_size: 700,
        ..Default::default()
    });
    let (a, _) = generate(app.dir.path(), "a.csv", &["--rows", "4000", "--seed", "1"]);
    let (b, _) = generate(
        app.dir.path(),
        "b.csv",
        &["--rows", "4000", "--seed", "2", "--start-sku", "2001"],
    );
    let first = job_id(&app.upload("products", &a).await.1);
    assert_eq!(app.wait_done(first, MINUTE).await["createdCount"], 4000);

    let old = read_products(&a);
    let new = read_products(&b);
    let overlap: Vec<&String> = new.keys().filter(|k| old.contains_key(*k)).collect();
    assert_eq!(overlap.len(), 2000);
    let changed = overlap.iter().filter(|k| old[**k] != new[**k]).count() as u64;
    let price_changes = overlap
        .iter()
        .filter(|k| old[**k][3] != new[**k][3])
        .count() as i64;
    let stock_changes = overlap
        .iter()
        .filter(|k| old[**k][4] != new[**k][4])
        .count() as i64;

    let second = job_id(&app.upload("products", &b).await.1);
    let s = app.wait_done(second, MINUTE).await;
    assert_eq!(s["status"], "completed");
    assert_eq!(s["createdCount"], 2000);
    assert_eq!(s["updatedCount"], changed);
    assert_eq!(s["unchangedCount"], 2000 - changed);
    assert_eq!(s["errorCount"], 0);

    let mut db = app.db();
    assert_eq!(db.number("SELECT count(*) FROM products"), 6000);
    let mut hist = |field: &str| -> i64 {
        db.number(&format!(
            "SELECT count(*) FROM products_history WHERE field = '{field}' AND job_id = {second}"
        ))
    };
    assert_eq!(hist("price"), price_changes);
    assert_eq!(hist("stock"), stock_changes);
    // One archived record, checked field by field.
    let k = overlap.iter().find(|k| old[**k][3] != new[**k][3]).unwrap();
    let record = db.rows(&format!(
        "SELECT old_value, new_value, valid_from, valid_to FROM products_history WHERE sku = '{k}' AND field = 'price'"
    ));
    let [old_value, new_value, valid_from, valid_to] =
        <[Option<String>; 4]>::try_from(record[0].clone()).unwrap();
    assert_eq!(old_value.as_deref(), Some(old[*k][3].as_str()));
    assert_eq!(new_value.as_deref(), Some(new[*k][3].as_str()));
    assert!(valid_from < valid_to, "{valid_from:?} < {valid_to:?}");
    let current = db
        .value(&format!("SELECT price FROM products WHERE sku = '{k}'"))
        .unwrap();
    assert_eq!(current, new[*k][3]);

    // The stamps: a history field's `_sluice_since_*` moves only when that field changes; a
    // created row has one time in all four.
    let mut stamps = |k: &str| -> [Option<String>; 4] {
        let r = db.rows(&format!(
            "SELECT _sluice_created_at, _sluice_updated_at, _sluice_since_price, \
             _sluice_since_stock FROM products WHERE sku = '{k}'"
        ));
        <[Option<String>; 4]>::try_from(r[0].clone()).unwrap()
    };
    let price_only = overlap
        .iter()
        .find(|k| old[**k][3] != new[**k][3] && old[**k][4] == new[**k][4])
        .expect("the second file changes some price and not its stock");
    let [created, updated, since_price, since_stock] = stamps(price_only);
    assert!(created < updated, "{created:?} < {updated:?}");
    assert_eq!(
        since_price, updated,
        "the changed field's since is the update"
    );
    assert_eq!(since_stock, created, "the unchanged field keeps its since");
    let fresh = new.keys().find(|k| !old.contains_key(*k)).unwrap();
    let [created, updated, since_price, since_stock] = stamps(fresh);
    assert!(created.is_some());
    assert_eq!([&updated, &since_price, &since_stock], [&created; 3]);

    // The same file again changes nothing and archives nothing.
    let third = job_id(&app.upload("products", &b).await.1);
    let s = app.wait_done(third, MINUTE).await;
    assert_eq!(
        (
            s["createdCount"].as_u64(),
            s["updatedCount"].as_u64(),
            s["unchangedCount"].as_u64()
        ),
        (Some(0), Some(0), Some(4000))
    );
    let archived = db.number(&format!(
        "SELECT count(*) FROM products_history WHERE job_id = {third}"
    ));
    assert_eq!(archived, 0);
}

const SMALL_DEALERS: &str = r#"
[datasets.dealers]
key = ["code"]
sync = true
max_rows = 5
[datasets.dealers.fields]
code = { type = "text", required = true, aliases = ["dealer code"] }
name = { type = "text", required = true }
active = { type = "boolean" }
"#;

async fn synchronous_dataset_answers_200_with_results_and_enforces_its_row_limit(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        datasets: Some(SMALL_DEALERS.into()),
        ..Default::default()
    });
    let ok = app.path("dealers.csv");
    std::fs::write(
        &ok,
        "Dealer Code,name,active\nD1,Müller GmbH,yes\nD2,Acme,maybe\nD3,Zed,0\n",
    )
    .unwrap();
    let (code, body) = app.upload("dealers", &ok).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["success"], true);
    let data = &body["data"];
    assert_eq!(data["status"], "completed");
    assert_eq!(data["results"]["totalRows"], 3);
    assert_eq!(data["results"]["successCount"], 2);
    assert_eq!(data["results"]["errorCount"], 1);
    assert_eq!(data["errors"][0]["row"], 3);
    assert_eq!(data["errors"][0]["column"], "active");
    let name = app
        .db()
        .value("SELECT name FROM dealers WHERE code = 'D1'")
        .unwrap();
    assert_eq!(name, "Müller GmbH");

    let big = app.path("big.csv");
    std::fs::write(&big, "code,name\n1,a\n2,b\n3,c\n4,d\n5,e\n6,f\n").unwrap();
    let (code, body) = app.upload("dealers", &big).await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"]["code"], "too_many_rows");
}

async fn file_level_problems_are_400s_and_create_no_job(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        max_upload_mb: Some(1),
        ..Default::default()
    });
    let cases: &[(&str, &[u8], &str)] = &[
        ("empty.csv", b"", "empty_file"),
        ("header.csv", b"sku,name,updated_at\n", "no_rows"),
        ("blank-header.csv", b",,\n1,2,3\n", "no_header"),
        ("missing.csv", b"sku,price\nA,1\n", "missing_columns"),
        (
            "image.xlsx",
            b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0",
            "unsupported_format",
        ),
        (
            "twice.csv",
            b"sku,code,name,updated_at\nA,B,n,2024-01-01\n",
            "invalid_mapping",
        ),
    ];
    for (name, bytes, code) in cases {
        let path = app.path(name);
        std::fs::write(&path, bytes).unwrap();
        let (status, body) = app.upload("products", &path).await;
        assert_eq!(status, 400, "{name}: {body}");
        assert_eq!(body["success"], false);
        assert_eq!(body["error"]["code"], *code, "{name}: {body}");
    }
    let missing = app.path("missing.csv");
    let (_, body) = app.upload("products", &missing).await;
    assert_eq!(
        body["error"]["message"],
        "missing required column(s): name, updated_at"
    );

    let ok = app.path("ok.csv");
    std::fs::write(&ok, "sku,name,updated_at\nA,n,2024-01-01\n").unwrap();
    let (status, body) = app
        .upload_with("products", &ok, &[("mode", "sideways")])
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_mode"))
    );
    let (status, body) = app
        .upload_with("products", &ok, &[("mapping", "{not json")])
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_mapping"))
    );
    let (status, body) = app.upload("nosuch", &ok).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );

    // Past the size limit: 413 while streaming.
    let big = app.path("big.csv");
    let mut text = String::from("sku,name,updated_at\n");
    while text.len() < 1_200_000 {
        text.push_str("SKU-1,some name here,2024-01-01\n");
    }
    std::fs::write(&big, &text).unwrap();
    let (status, body) = app.upload("products", &big).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("file_too_large"))
    );

    // A multipart request without a file field.
    let resp = app
        .http
        .post(app.url("/api/v1/import/products"))
        .bearer_auth(TOKEN)
        .multipart(reqwest::multipart::Form::new().text("mode", "upsert"))
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(resp).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("missing_file"))
    );

    let (_, jobs) = app.get_json("/api/v1/import/jobs").await;
    assert_eq!(jobs["data"]["total"], 0, "no job may exist: {jobs}");
    // Nothing left behind in the blob store either.
    assert_eq!(app.blob_count(), 0);
}

async fn api_routes_require_a_token_but_health_does_not(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        ..Default::default()
    });
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    for path in [
        "/api/v1/import/jobs",
        "/api/v1/import/status/1",
        "/api/v1/import/1/errors",
    ] {
        let (status, body) = json_of(app.http.get(app.url(path)).send().await.unwrap()).await;
        assert_eq!(status, 401, "{path}");
        assert_eq!(body["error"]["code"], "unauthorized");
        let wrong = app
            .http
            .get(app.url(path))
            .bearer_auth("nope")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status().as_u16(), 401, "{path}");
    }
    let upload = app
        .http
        .post(app.url("/api/v1/import/products?filename=x.csv"))
        .body("sku,name,updated_at\nA,b,2024-01-01\n")
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status().as_u16(), 401);
    // Seed 000's cookie works, and a raw body with ?filename= is accepted.
    let resp = app
        .http
        .post(app.url("/api/v1/import/products?filename=x.csv"))
        .header("Cookie", format!("token={TOKEN}"))
        .body("sku,name,updated_at\nA,b,2024-01-01\n")
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 202, "{body}");
    let s = app.wait_done(job_id(&body), MINUTE).await;
    assert_eq!(s["filename"], "x.csv");
    assert_eq!(s["createdCount"], 1);
    let (status, _) = app.get_json("/api/v1/import/status/999").await;
    assert_eq!(status, 404);
    let (status, _) = app.get_json("/api/v1/import/status/abc").await;
    assert_eq!(status, 404);
}

async fn first_start_prints_a_token_that_works(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        admin_token: None,
        ..Default::default()
    });
    let token = app
        .stdout_lines
        .iter()
        .map(|l| l.trim())
        .find(|l| l.starts_with("slc_"))
        .expect("token printed")
        .to_string();
    assert!(
        app.stdout_lines
            .iter()
            .any(|l| l.contains("curl -H \"Authorization: Bearer"))
    );
    let ok = app
        .http
        .get(app.url("/api/v1/import/jobs"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
}

async fn job_list_filters_and_pages_newest_first(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        ..Default::default()
    });
    let f = app.path("one.csv");
    std::fs::write(&f, "sku,name,updated_at\nA,b,2024-01-01\n").unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = job_id(&app.upload("products", &f).await.1);
        app.wait_done(id, MINUTE).await;
        ids.push(id);
    }
    let (_, list) = app.get_json("/api/v1/import/jobs?limit=2").await;
    let jobs = list["data"]["jobs"].as_array().unwrap();
    assert_eq!(list["data"]["total"], 3);
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0]["jobId"], ids[2]);
    assert_eq!(jobs[1]["jobId"], ids[1]);
    let (_, page2) = app.get_json("/api/v1/import/jobs?limit=2&offset=2").await;
    assert_eq!(page2["data"]["jobs"][0]["jobId"], ids[0]);
    let (_, done) = app
        .get_json("/api/v1/import/jobs?status=completed&dataset=products")
        .await;
    assert_eq!(done["data"]["total"], 3);
    let (_, none) = app.get_json("/api/v1/import/jobs?status=failed").await;
    assert_eq!(none["data"]["total"], 0);
    let (status, _) = app.get_json("/api/v1/import/jobs?status=bogus").await;
    assert_eq!(status, 400);
}

async fn unknown_columns_are_warnings_and_a_mapping_can_rename(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        ..Default::default()
    });
    let f = app.path("erp.csv");
    std::fs::write(
        &f,
        "Artikel;Bezeichnung;Preis;colour;updated_at\nX-1;Crème brûlée;1,5;red;2024-03-01\nX-2;Müller;2.50;blue;2024-03-02\n",
    )
    .unwrap();
    let mapping = r#"{"Artikel":"sku","Bezeichnung":"name","Preis":"price"}"#;
    let (status, body) = app
        .upload_with("products", &f, &[("mapping", mapping)])
        .await;
    assert_eq!(status, 202, "{body}");
    let s = app.wait_done(job_id(&body), MINUTE).await;
    assert_eq!(
        s["warnings"][0],
        "column `colour` matches no field and is ignored"
    );
    assert_eq!(s["createdCount"], 1);
    assert_eq!(s["errorCount"], 1);
    let row = app
        .db()
        .rows("SELECT name, price FROM products WHERE sku = 'X-2'");
    assert_eq!(
        row,
        vec![vec![Some("Müller".to_string()), Some("2.50".to_string())]]
    );
}

async fn rows_the_database_refuses_are_rejected_one_by_one_and_the_rest_are_written(
    backend: Backend,
) {
    // A table the app created itself, with a constraint sluice does not know about.
    let app = spawn_app(AppOptions {
        backend,
        batch_size: 500,
        setup_sql: Some(match backend {
            Backend::Sqlite => "CREATE TABLE products (sku TEXT PRIMARY KEY, name TEXT, category TEXT, \
                 price TEXT CONSTRAINT price_cap CHECK (CAST(price AS REAL) < 4000), stock INTEGER, updated_at TEXT);"
                .into(),
            Backend::Postgres => "CREATE TABLE products (sku TEXT PRIMARY KEY, name TEXT, category TEXT, \
                 price NUMERIC CONSTRAINT price_cap CHECK (price < 4000), stock BIGINT, updated_at DATE);"
                .into(),
        }),
        ..Default::default()
    });
    let (file, _) = generate(app.dir.path(), "p.csv", &["--rows", "2000", "--seed", "4"]);
    let products = read_products(&file);
    let refused: BTreeSet<String> = products
        .iter()
        .filter(|(_, f)| f[3].parse::<f64>().unwrap() >= 4000.0)
        .map(|(k, _)| k.clone())
        .collect();
    assert!(!refused.is_empty());
    let job = job_id(&app.upload("products", &file).await.1);
    let s = app.wait_done(job, MINUTE).await;
    assert_eq!(s["status"], "completed", "{s}");
    assert_eq!(s["errorCount"], refused.len());
    assert_eq!(s["createdCount"], 2000 - refused.len());
    let (_, errs) = app
        .get_json(&format!("/api/v1/import/{job}/errors?limit=5000"))
        .await;
    for e in errs["data"]["errors"].as_array().unwrap() {
        assert_eq!(
            e["message"], "the database refused the row (constraint price_cap failed)",
            "{e}"
        );
    }
    let count: i64 = app.db().number("SELECT count(*) FROM products");
    assert_eq!(count as usize, 2000 - refused.len());
}

/// Uploads `text` as a products CSV and waits for its job to complete: (job, status).
async fn import_csv(app: &TestApp, text: &str) -> (i64, Value) {
    let (code, body) = app
        .upload_text_as(TOKEN, "/api/v1/import/products", "p.csv", text, &[])
        .await;
    assert_eq!(code, 202, "{body}");
    let job = job_id(&body);
    let s = app.wait_done(job, MINUTE).await;
    assert_eq!(s["status"], "completed", "{s}");
    (job, s)
}

/// The first `limit` row errors of `job`, as (row, message).
async fn error_rows(app: &TestApp, job: i64, limit: usize) -> Vec<(u64, String)> {
    let (_, errs) = app
        .get_json(&format!("/api/v1/import/{job}/errors?limit={limit}"))
        .await;
    errs["data"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["row"].as_u64().unwrap(),
                e["message"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Batches of 100 whose keys are all new take the writer's fast path (every row inserted at
/// once, no lookup); a key repeated from an earlier batch or within the batch, or a key another
/// organisation's import does not share, must still come out exactly as on the usual path.
async fn repeated_keys_after_all_new_batches_are_still_caught(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        batch_size: 100,
        ..Default::default()
    });
    let mut text = String::from("sku,name,category,price,stock,updated_at\n");
    let row = |n: usize| {
        format!(
            "SKU-{n:05},Item {n},Tools,{}.50,{n},2024-01-02\n",
            n % 90 + 1
        )
    };
    for n in 1..=1000 {
        text.push_str(&match n {
            // Data row 550 repeats row 10's key (five batches earlier); 777 repeats 776's.
            550 => row(10),
            777 => row(776),
            n => row(n),
        });
    }
    let (job, s) = import_csv(&app, &text).await;
    assert_eq!(s["createdCount"], 998, "{s}");
    assert_eq!(s["errorCount"], 2, "{s}");
    let errors = error_rows(&app, job, 10).await;
    assert_eq!(
        errors,
        [
            (551, "duplicate key, first seen at row 11".to_string()),
            (778, "duplicate key, first seen at row 777".to_string()),
        ]
    );
    assert_eq!(app.db().number("SELECT count(*) FROM products"), 998);
    assert_eq!(
        app.db().number(&format!(
            "SELECT count(*) FROM ledger WHERE job_id = {job} AND op = 'created'"
        )),
        998
    );
    // The same file again: nothing new, so no batch is tried the fast way.
    let (_, again) = import_csv(&app, &text).await;
    assert_eq!(again["unchangedCount"], 998, "{again}");
    assert_eq!(again["errorCount"], 2, "{again}");
}

/// An update pass in batches of 50 (so not the all-new fast path): a key the batch before wrote
/// (updated or created) and the next batch repeats is a duplicate, as is one repeated two
/// batches later, and every count, row and ledger entry is exact. (It failed every time with a
/// lookup made ahead of the commit that did not read the last batch's keys again.)
async fn keys_repeated_across_update_batches_are_caught(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        batch_size: 50,
        ..Default::default()
    });
    let header = "sku,name,category,price,stock,updated_at\n";
    let row = |key: usize, cents: u32| {
        format!(
            "SKU-{key:05},Item {key},Tools,{}.{cents},{key},2024-01-02\n",
            key % 90 + 1
        )
    };
    let base: String = std::iter::once(header.to_string())
        .chain((1..=400).map(|k| row(k, 50)))
        .collect();
    let (_, s) = import_csv(&app, &base).await;
    assert_eq!(s["createdCount"], 400, "{s}");
    // Data row n has key 300 + n: keys 301-400 exist (updated), 401-700 are new. The first
    // row of every batch from the second on repeats the key of the last row of the batch
    // before it (an updated key, then created ones), and row 310 (batch 7) repeats row 210's
    // (batch 5).
    let mut text = header.to_string();
    for n in 1..=400 {
        let key = match n {
            310 => 510,
            n if n % 50 == 1 && n > 1 => 300 + n - 1,
            n => 300 + n,
        };
        text.push_str(&row(key, 75));
    }
    let (job, s) = import_csv(&app, &text).await;
    assert_eq!(
        (
            &s["createdCount"],
            &s["updatedCount"],
            &s["unchangedCount"],
            &s["errorCount"]
        ),
        (&293.into(), &99.into(), &0.into(), &8.into()),
        "{s}"
    );
    let errors = error_rows(&app, job, 20).await;
    let first_seen =
        |row: u64, first: u64| (row, format!("duplicate key, first seen at row {first}"));
    assert_eq!(
        errors,
        [
            first_seen(52, 51),
            first_seen(102, 101),
            first_seen(152, 151),
            first_seen(202, 201),
            first_seen(252, 251),
            first_seen(302, 301),
            first_seen(311, 211),
            first_seen(352, 351),
        ]
    );
    let mut db = app.db();
    assert_eq!(db.number("SELECT count(*) FROM products"), 693);
    assert_eq!(
        db.number("SELECT count(*) FROM products WHERE CAST(price AS TEXT) LIKE '%.75'"),
        392
    );
    // Key 351 is not in the second file (its row repeats 350); the keys of the other repeating
    // rows are nowhere.
    assert_eq!(
        db.number("SELECT count(*) FROM products WHERE sku = 'SKU-00351' AND CAST(price AS TEXT) LIKE '%.50'"),
        1
    );
    for missing in [401, 451, 501, 551, 601, 610, 651] {
        assert_eq!(
            db.number(&format!(
                "SELECT count(*) FROM products WHERE sku = 'SKU-{missing:05}'"
            )),
            0
        );
    }
    assert_eq!(
        db.number(&format!(
            "SELECT count(*) FROM ledger WHERE job_id = {job} AND op = 'updated'"
        )),
        99
    );
    assert_eq!(
        db.number(&format!(
            "SELECT count(*) FROM ledger WHERE job_id = {job} AND op = 'created'"
        )),
        293
    );
}

conformance!(
    keys_repeated_across_update_batches_are_caught,
    repeated_keys_after_all_new_batches_are_still_caught,
    products_import_reports_exact_counts_and_rejected_rows,
    overlapping_import_updates_changed_rows_and_archives_history,
    synchronous_dataset_answers_200_with_results_and_enforces_its_row_limit,
    file_level_problems_are_400s_and_create_no_job,
    api_routes_require_a_token_but_health_does_not,
    first_start_prints_a_token_that_works,
    job_list_filters_and_pages_newest_first,
    unknown_columns_are_warnings_and_a_mapping_can_rename,
    rows_the_database_refuses_are_rejected_one_by_one_and_the_rest_are_written,
);
