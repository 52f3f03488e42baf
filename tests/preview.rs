//! Preview and mapping through the real server: what a file would import as, fuzzy matches with
//! confidences, the edited mapping, and named templates suggested next time.

#[macro_use]
mod common;

use common::*;
use serde_json::{Value, json};

const NEAR_MISS: &str = "Prod. Code,Name,Colour,Price,Stok,Upated At\n";

/// 25 rows with headers that are near misses; row 3 has a bad price, row 5 repeats row 2's key,
/// row 8 has no name.
fn near_miss_file(dir: &std::path::Path) -> std::path::PathBuf {
    let mut text = NEAR_MISS.to_string();
    for i in 1..=25 {
        let row = i + 1;
        let sku = if row == 5 {
            "P-1".to_string()
        } else {
            format!("P-{i}")
        };
        let price = if row == 3 { "abc" } else { "9.50" };
        let name = if row == 8 { "" } else { "Widget" };
        text.push_str(&format!(
            "{sku},{name},red,{price},{i},2024-01-0{}\n",
            1 + i % 9
        ));
    }
    let path = dir.join("supplier.csv");
    std::fs::write(&path, text).unwrap();
    path
}

async fn preview(app: &TestApp, file: &std::path::Path, fields: &[(&str, &str)]) -> (u16, Value) {
    let mut form = reqwest::multipart::Form::new();
    for (k, v) in fields {
        form = form.text(k.to_string(), v.to_string());
    }
    form = form.part(
        "file",
        reqwest::multipart::Part::bytes(std::fs::read(file).unwrap()).file_name("supplier.csv"),
    );
    json_of(
        app.post("/api/v1/import/products/preview")
            .multipart(form)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn preview_shows_the_format_the_auto_mapping_with_confidence_and_the_first_rows_errors(
    backend: Backend,
) {
    let app = spawn_app(AppOptions {
        backend,
        ..Default::default()
    });
    let file = near_miss_file(app.dir.path());
    let (code, body) = preview(&app, &file, &[]).await;
    assert_eq!(code, 200, "{body}");
    let d = &body["data"];
    assert_eq!(d["format"], "csv");
    assert_eq!(d["delimiter"], ",");
    assert_eq!(d["sheets"], json!([]));
    assert_eq!(d["truncated"], false);
    assert_eq!(
        d["headers"],
        json!(["Prod. Code", "Name", "Colour", "Price", "Stok", "Upated At"])
    );
    let col = |i: usize| &d["columns"][i];
    assert_eq!(col(0)["field"], "sku");
    assert_eq!(col(0)["match"], "fuzzy");
    assert_eq!(col(0)["confidence"], 0.9);
    assert_eq!(col(1)["match"], "name");
    assert_eq!(col(1)["confidence"], 1.0);
    assert_eq!(col(2)["field"], Value::Null);
    assert_eq!(col(2)["match"], "none");
    assert_eq!(col(3)["match"], "name");
    assert_eq!(col(4)["field"], "stock");
    assert_eq!(col(5)["field"], "updated_at");
    assert_eq!(d["mapping"]["Prod. Code"], "sku");
    assert_eq!(d["mapping"]["Colour"], Value::Null);
    assert!(d["warnings"].as_array().unwrap().iter().any(|w| {
        w.as_str()
            .unwrap()
            .contains("`Prod. Code` was mapped to `sku` by similarity")
    }));
    assert_eq!(d["problems"], json!([]));
    assert_eq!(d["rows"].as_array().unwrap().len(), 20);
    assert_eq!(d["rows"][0]["row"], 2);
    assert_eq!(d["rows"][0]["values"][0], "P-1");
    let errors: Vec<(u64, &str)> = d["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["row"].as_u64().unwrap(), e["message"].as_str().unwrap()))
        .collect();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert_eq!(errors[0].0, 3);
    assert!(errors[0].1.starts_with("price:"));
    assert_eq!(errors[1], (5, "duplicate key, first seen at row 2"));
    assert_eq!(errors[2].0, 8);
    assert!(errors[2].1.starts_with("name:"));

    // A preview creates nothing.
    let (_, jobs) = app.get_json("/api/v1/import/jobs").await;
    assert_eq!(jobs["data"]["total"], 0);

    // Without the required columns the preview still answers, naming the problem.
    let bad = app.path("bad.csv");
    std::fs::write(&bad, "Prod. Code,Colour\nA,red\n").unwrap();
    let (code, body) = preview(&app, &bad, &[]).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["data"]["problems"][0]["code"], "missing_columns");
    assert_eq!(body["data"]["errors"], json!([]));
    // A broken file is a 400, as at upload: a zip that is no workbook cannot be read.
    let zip = app.path("x.csv");
    std::fs::write(&zip, b"PK\x03\x04rest").unwrap();
    let (code, body) = preview(&app, &zip, &[]).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (400, Some("unreadable_file"))
    );
}

async fn an_upload_without_a_mapping_applies_and_reports_confident_fuzzy_matches(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        ..Default::default()
    });
    let file = near_miss_file(app.dir.path());
    let (code, body) = app.upload("products", &file).await;
    assert_eq!(code, 202, "{body}");
    let s = app.wait_done(job_id(&body), MINUTE).await;
    assert_eq!(s["status"], "completed");
    assert_eq!(s["results"]["successCount"], 22);
    let warnings = s["warnings"].to_string();
    assert!(warnings.contains("`Prod. Code` was mapped to `sku` by similarity (confidence 0.90)"));
    assert!(warnings.contains("`Stok` was mapped to `stock`"));
    assert!(warnings.contains("column `Colour` matches no field and is ignored"));
    let stock = app
        .db()
        .number("SELECT stock FROM products WHERE sku = 'P-6'");
    assert_eq!(stock, 6);
}

async fn an_edited_mapping_is_saved_as_a_template_suggested_next_time_and_used_by_the_import(
    backend: Backend,
) {
    let app = spawn_app(AppOptions {
        backend,
        ..Default::default()
    });
    let file = near_miss_file(app.dir.path());
    let edited = json!({"Prod. Code": "sku", "Name": "name", "Colour": "category", "Price": "price",
                        "Stok": null, "Upated At": "updated_at"});
    let (code, body) = preview(&app, &file, &[("mapping", &edited.to_string())]).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["data"]["mappingSource"], "manual");
    assert_eq!(body["data"]["columns"][2]["field"], "category");
    assert_eq!(body["data"]["columns"][4]["field"], Value::Null);
    assert_eq!(body["data"]["suggestedTemplate"], Value::Null);

    let (code, saved) = json_of(
        app.post("/api/v1/datasets/products/templates")
            .json(&json!({"name": "Supplier A", "mapping": edited}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 201, "{saved}");
    // A template naming a field the dataset lacks is refused.
    let (code, body) = json_of(
        app.post("/api/v1/datasets/products/templates")
            .json(&json!({"name": "bad", "mapping": {"x": "colour"}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (400, Some("invalid_template"))
    );

    // Next time the same columns arrive, the template is suggested, and can be previewed.
    let (_, body) = preview(&app, &file, &[]).await;
    assert_eq!(body["data"]["suggestedTemplate"], "Supplier A");
    assert_eq!(body["data"]["templates"][0]["name"], "Supplier A");
    let (_, body) = preview(&app, &file, &[("template", "Supplier A")]).await;
    assert_eq!(body["data"]["mappingSource"], "template");
    assert_eq!(body["data"]["mapping"]["Colour"], "category");
    let (code, body) = preview(&app, &file, &[("template", "nope")]).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (400, Some("unknown_template"))
    );

    // The import takes the template by name.
    let (code, body) = app
        .upload_with("products", &file, &[("template", "Supplier A")])
        .await;
    assert_eq!(code, 202, "{body}");
    let s = app.wait_done(job_id(&body), MINUTE).await;
    assert_eq!(s["status"], "completed", "{s}");
    let row = app
        .db()
        .rows("SELECT category, stock FROM products WHERE sku = 'P-6'");
    assert_eq!(row, vec![vec![Some("red".to_string()), None]]);
    let (_, list) = app.get_json("/api/v1/datasets/products/templates").await;
    assert!(list["data"]["templates"][0]["usedAt"].is_string());
}

async fn a_big_file_is_previewed_from_its_first_megabyte(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        ..Default::default()
    });
    let (file, _) = generate(app.dir.path(), "big.csv", &["--rows", "50000"]);
    assert!(std::fs::metadata(&file).unwrap().len() > 2 * 1024 * 1024);
    let (code, body) = json_of(
        app.post("/api/v1/import/products/preview?filename=big.csv")
            .body(std::fs::read(&file).unwrap())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["data"]["truncated"], true);
    assert_eq!(body["data"]["rows"].as_array().unwrap().len(), 20);
    assert_eq!(body["data"]["columns"][0]["match"], "name");
}

conformance!(
    a_workbook_preview_lists_its_sheets_and_reads_the_chosen_one,
    preview_shows_the_format_the_auto_mapping_with_confidence_and_the_first_rows_errors,
    an_upload_without_a_mapping_applies_and_reports_confident_fuzzy_matches,
    an_edited_mapping_is_saved_as_a_template_suggested_next_time_and_used_by_the_import,
    a_big_file_is_previewed_from_its_first_megabyte,
);

/// A workbook is previewed whole: its sheets are listed, and `sheet` picks the one shown.
async fn a_workbook_preview_lists_its_sheets_and_reads_the_chosen_one(backend: Backend) {
    use common::xlsx::{RawSheet, header, is, raw_xlsx};
    let app = spawn_app(AppOptions {
        backend,
        ..Default::default()
    });
    let sheet = |name: &str, sku: &str| RawSheet {
        name: Box::leak(name.to_string().into_boxed_str()),
        hidden: false,
        rows: format!(
            "{}<row r=\"2\">{}{}{}</row>",
            header(&["sku", "name", "updated_at"]),
            is("A2", sku),
            is("B2", "n"),
            is("C2", "2024-01-01")
        ),
    };
    // Big enough (hard-to-compress padding in a hidden third sheet) that the 1 MiB head a text
    // preview reads would cut the zip.
    let mut padding = String::new();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for r in 1..=40_000 {
        let mut cell = String::new();
        for _ in 0..8 {
            // The high half of an LCG step: the low bits of an LCG repeat quickly.
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            cell.push_str(&format!("{:08x}", x >> 32));
        }
        padding.push_str(&format!(
            "<row r=\"{r}\">{}</row>",
            is(&format!("A{r}"), &cell)
        ));
    }
    let book = raw_xlsx(
        &[
            sheet("Notes", "N-1"),
            sheet("Prices", "P-1"),
            RawSheet {
                name: "Padding",
                hidden: true,
                rows: padding,
            },
        ],
        &[],
        false,
        "",
    );
    assert!(
        book.len() > 1 << 20,
        "the workbook must exceed the 1 MiB head: {}",
        book.len()
    );
    let path = app.path("book.xlsx");
    std::fs::write(&path, &book).unwrap();
    let (code, body) = preview(&app, &path, &[("sheet", "Prices")]).await;
    assert_eq!(code, 200, "{body}");
    let d = &body["data"];
    assert_eq!(
        d["sheets"],
        serde_json::json!(["Notes", "Prices", "Padding"])
    );
    assert_eq!(d["truncated"], false);
    assert_eq!(d["rows"][0]["values"][0], "P-1", "{d}");
}

/// Re-encodes a UTF-8 text file as UTF-16 without a BOM.
fn utf16_without_bom(text: &str, big_endian: bool) -> Vec<u8> {
    text.encode_utf16()
        .flat_map(|u| {
            if big_endian {
                u.to_be_bytes()
            } else {
                u.to_le_bytes()
            }
        })
        .collect()
}

/// Previews `bytes` (a raw body) with `query`, and imports them with the same options: the
/// preview must read what the import reads.
async fn preview_and_import(app: &TestApp, bytes: Vec<u8>, query: &str) -> (Value, Value) {
    let (code, preview) = json_of(
        app.post(&format!(
            "/api/v1/import/products/preview?filename=f.csv&{query}"
        ))
        .body(bytes.clone())
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(code, 200, "{preview}");
    let (code, body) = json_of(
        app.post(&format!("/api/v1/import/products?filename=f.csv&{query}"))
            .body(bytes)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 202, "{body}");
    let status = app.wait_done(job_id(&body), MINUTE).await;
    (preview["data"].clone(), status)
}

/// Classic Mac line ends (a lone CR), in a file longer than the preview's 1 MiB: the preview cuts
/// its head after the last CR, not the last LF (there is none).
#[tokio::test]
async fn a_big_csv_with_cr_line_ends_previews_as_it_imports() {
    let app = spawn_app(AppOptions::default());
    let (file, expect) = generate(app.dir.path(), "mac.csv", &["--rows", "20000"]);
    let text = std::fs::read_to_string(&file).unwrap().replace('\n', "\r");
    assert!(text.len() > 1 << 20 && !text.contains('\n'));
    let (preview, status) = preview_and_import(&app, text.into_bytes(), "").await;
    assert_eq!(preview["truncated"], true);
    assert_eq!(preview["headers"], expect["header"]);
    assert_eq!(preview["rows"].as_array().unwrap().len(), 20, "{preview}");
    assert_eq!(preview["rows"][0]["values"][0], "SKU-0000001");
    assert_eq!(status["status"], "completed", "{status}");
    assert_eq!(status["createdCount"], expect["valid_rows"]);
}

/// BOM-less UTF-16 read with the `encoding` option: the preview honours it before looking for
/// binary content (it answered "the file is binary"), and cuts a long head at a whole UTF-16
/// line end.
#[tokio::test]
async fn bom_less_utf16_previews_with_the_given_encoding_as_it_imports() {
    let app = spawn_app(AppOptions::default());
    let cases = [(50, false), (50, true), (20000, false), (20000, true)];
    for (i, (rows, big_endian)) in cases.into_iter().enumerate() {
        // New skus each time, so every row is created.
        let start = (1 + 100_000 * i).to_string();
        let (file, expect) = generate(
            app.dir.path(),
            &format!("u16-{i}.csv"),
            &["--rows", &rows.to_string(), "--start-sku", &start],
        );
        let text = std::fs::read_to_string(&file).unwrap();
        let bytes = utf16_without_bom(&text, big_endian);
        let encoding = if big_endian { "utf-16be" } else { "utf-16le" };
        let (preview, status) =
            preview_and_import(&app, bytes, &format!("encoding={encoding}")).await;
        assert_eq!(preview["headers"], expect["header"], "{encoding} {rows}");
        assert_eq!(preview["truncated"], rows > 50);
        assert_eq!(preview["rows"].as_array().unwrap().len(), 20.min(rows));
        assert_eq!(
            preview["rows"][0]["values"][0], expect["valid_sku_first"],
            "{encoding} {rows}: {preview}"
        );
        assert_eq!(status["status"], "completed", "{status}");
        assert_eq!(
            status["createdCount"], expect["valid_rows"],
            "{encoding} {rows}"
        );
    }
}

/// Two columns with one header (`price` twice): refused with a message that names the way out,
/// which then works — a mapping naming columns by position, in the upload, the preview and a
/// saved template.
#[tokio::test]
async fn repeated_headers_are_mapped_by_position() {
    let app = spawn_app(AppOptions::default());
    let path = app.path("twice.csv");
    std::fs::write(
        &path,
        "sku,name,price,updated_at,price\nA-1,Apple,1.00,2024-01-01,2.50\nA-2,Pear,1.00,2024-01-01,3.75\n",
    )
    .unwrap();
    let (code, body) = app.upload("products", &path).await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_mapping");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("columns 3 (`price`) and 5 (`price`)")
            && message.contains(r##"{"#5": null}"##),
        "{message}"
    );
    // By header text the column is ambiguous; the message says how to name it.
    let (code, body) = app
        .upload_with("products", &path, &[("mapping", r#"{"price": null}"#)])
        .await;
    assert_eq!(code, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("columns #3, #5"), "{body}");

    // The preview names repeated columns by position.
    let (code, body) = preview(&app, &path, &[]).await;
    assert_eq!(code, 200, "{body}");
    let d = &body["data"];
    let keys: Vec<&str> = d["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["sku", "name", "#3", "updated_at", "#5"]);
    assert_eq!(d["problems"][0]["code"], "invalid_mapping");
    let mapping = r##"{"#3": null, "#5": "price"}"##;
    let (code, body) = preview(&app, &path, &[("mapping", mapping)]).await;
    assert_eq!(code, 200, "{body}");
    let d = &body["data"];
    assert_eq!(d["problems"], json!([]), "{d}");
    assert_eq!(d["mapping"]["#3"], Value::Null);
    assert_eq!(d["mapping"]["#5"], "price");
    assert_eq!(d["columns"][4]["match"], "manual");

    // A template keyed by position is suggested for the file and imports it.
    let (code, body) = json_of(
        app.post("/api/v1/datasets/products/templates")
            .json(&json!({"name": "second price", "mapping": {"#3": null, "#5": "price"}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let (_, body) = preview(&app, &path, &[]).await;
    assert_eq!(body["data"]["suggestedTemplate"], "second price", "{body}");
    let (code, body) = app
        .upload_with("products", &path, &[("template", "second price")])
        .await;
    assert_eq!(code, 202, "{body}");
    let status = app.wait_done(job_id(&body), MINUTE).await;
    assert_eq!(status["createdCount"], 2, "{status}");
    let prices = app
        .db()
        .rows("SELECT sku, CAST(price AS TEXT) FROM products ORDER BY sku");
    assert_eq!(
        prices,
        vec![
            vec![Some("A-1".to_string()), Some("2.50".to_string())],
            vec![Some("A-2".to_string()), Some("3.75".to_string())]
        ]
    );
}
