//! Dataset rows and mapping templates belong to organisations (issue 7): every row carries
//! `_sluice_org`, keys are unique per organisation, and no import — upsert, insert or replace —
//! reads or touches another organisation's rows or history. Tables from before organisations
//! owned rows keep their rows (given to the `default` organisation) and gain the
//! per-organisation key. A template is listed, suggested and usable only in its organisation.
//! On both backends, through the real server and the real `sluice org|user|token` commands.

#[macro_use]
mod common;

use serde_json::{Value, json};

use common::*;

const ITEMS: &str = r#"
[datasets.items]
key = ["code"]
[datasets.items.fields]
code = { type = "text", required = true }
qty = { type = "integer", history = true }
name = { type = "text" }
"#;

fn spawn(backend: Backend, setup_sql: Option<String>) -> TestApp {
    spawn_app(AppOptions {
        backend,
        datasets: Some(ITEMS.into()),
        setup_sql,
        ..Default::default()
    })
}

/// Uploads `csv` to `items` with the token, query and form fields; the answer.
async fn upload(
    app: &TestApp,
    token: &str,
    query: &str,
    csv: &str,
    fields: &[(&str, &str)],
) -> (u16, Value) {
    let path = format!("/api/v1/import/items{query}");
    app.upload_text_as(token, &path, "items.csv", csv, fields)
        .await
}

/// Uploads `csv` to `items` with the token and query; waits for the end; returns the status.
async fn import(app: &TestApp, token: &str, query: &str, csv: &str) -> Value {
    import_with(app, token, query, csv, &[]).await
}

async fn import_with(
    app: &TestApp,
    token: &str,
    query: &str,
    csv: &str,
    fields: &[(&str, &str)],
) -> Value {
    let (code, body) = upload(app, token, query, csv, fields).await;
    assert_eq!(code, 202, "{body}");
    let s = app.wait_done_as(token, job_id(&body)).await;
    assert_eq!(s["status"], "completed", "{s}");
    s
}

fn counts(s: &Value) -> [u64; 4] {
    [
        "createdCount",
        "updatedCount",
        "unchangedCount",
        "errorCount",
    ]
    .map(|k| s[k].as_u64().unwrap_or_else(|| panic!("{k} in {s}")))
}

/// (organisation, code, qty, name) of every row, in that order.
fn items(app: &TestApp) -> Vec<(i64, String, i64, String)> {
    app.db()
        .rows("SELECT _sluice_org, code, qty, name FROM items ORDER BY _sluice_org, code")
        .into_iter()
        .map(|r| {
            let text = |i: usize| r[i].clone().unwrap_or_default();
            (
                text(0).parse().expect("org"),
                text(1),
                text(2).parse().expect("qty"),
                text(3),
            )
        })
        .collect()
}

fn row(org: i64, code: &str, qty: i64, name: &str) -> (i64, String, i64, String) {
    (org, code.into(), qty, name.into())
}

async fn each_organisation_has_its_own_rows(backend: Backend) {
    let app = spawn(backend, None);
    let (acme, acme_t) = org_with_admin(&app, "acme");
    let (other, other_t) = org_with_admin(&app, "other");

    let s = import(&app, &acme_t, "", "code,qty,name\nK1,1,a1\nK2,2,a2\n").await;
    assert_eq!(counts(&s), [2, 0, 0, 0], "{s}");
    // The same key in another organisation is a new row there, not an update of acme's.
    let s = import(&app, &other_t, "", "code,qty,name\nK1,10,o1\nK3,30,o3\n").await;
    assert_eq!(counts(&s), [2, 0, 0, 0], "{s}");
    // acme changes its K1 only.
    let s = import(&app, &acme_t, "", "code,qty,name\nK1,5,a1\nK2,2,a2\n").await;
    assert_eq!(counts(&s), [0, 1, 1, 0], "{s}");
    // Insert mode refuses only keys the organisation itself has.
    let s = import(
        &app,
        &other_t,
        "?mode=insert",
        "code,qty,name\nK2,20,o2\nK3,31,o3\n",
    )
    .await;
    assert_eq!(counts(&s), [1, 0, 0, 1], "{s}");
    assert_eq!(
        items(&app),
        vec![
            row(acme, "K1", 5, "a1"),
            row(acme, "K2", 2, "a2"),
            row(other, "K1", 10, "o1"),
            row(other, "K2", 20, "o2"),
            row(other, "K3", 30, "o3"),
        ]
    );
    // History is archived for the organisation whose row changed, and only for it.
    assert_eq!(
        app.db().rows(
            "SELECT _sluice_org, code, field, old_value, new_value FROM items_history ORDER BY id"
        ),
        vec![vec![
            Some(acme.to_string()),
            Some("K1".into()),
            Some("qty".into()),
            Some("1".into()),
            Some("5".into()),
        ]]
    );

    // Replace swaps the organisation's rows and leaves every other organisation's alone.
    let s = import(&app, &other_t, "?mode=replace", "code,qty,name\nK9,9,o9\n").await;
    assert_eq!(s["createdCount"], 1, "{s}");
    assert_eq!(
        items(&app),
        vec![
            row(acme, "K1", 5, "a1"),
            row(acme, "K2", 2, "a2"),
            row(other, "K9", 9, "o9"),
        ]
    );
    let s = import(&app, &acme_t, "?mode=replace", "code,qty,name\nK2,3,a2\n").await;
    assert_eq!(s["errorCount"], 0, "{s}");
    assert_eq!(
        items(&app),
        vec![row(acme, "K2", 3, "a2"), row(other, "K9", 9, "o9")]
    );
}

async fn tables_from_before_organisations_keep_their_rows(backend: Backend) {
    // The shape sluice gave a dataset table before rows carried an organisation: the key alone
    // is the primary key. An index of the app's own must survive the upgrade.
    let (int, stamp) = match backend {
        Backend::Sqlite => ("INTEGER", "TEXT"),
        Backend::Postgres => ("BIGINT", "TIMESTAMPTZ"),
    };
    let rowid = match backend {
        Backend::Sqlite => " WITHOUT ROWID",
        Backend::Postgres => "",
    };
    let history_id = match backend {
        Backend::Sqlite => "id INTEGER PRIMARY KEY",
        Backend::Postgres => "id BIGSERIAL PRIMARY KEY",
    };
    let setup = format!(
        "CREATE TABLE items (code TEXT NOT NULL, qty {int}, name TEXT, _sluice_job {int}, \
         _sluice_row {int}, _sluice_created_at {stamp}, _sluice_updated_at {stamp}, \
         _sluice_since_qty {stamp}, PRIMARY KEY (code)){rowid};
         CREATE INDEX items_by_name ON items (name);
         INSERT INTO items (code, qty, name) VALUES ('OLD1', 7, 'legacy'), ('OLD2', 8, 'legacy');
         CREATE TABLE items_history ({history_id}, code TEXT NOT NULL, field TEXT NOT NULL, \
         old_value TEXT, new_value TEXT, valid_from {stamp}, valid_to {stamp} NOT NULL, job_id {int} NOT NULL);
         INSERT INTO items_history (code, field, old_value, new_value, valid_to, job_id) \
         VALUES ('OLD1', 'qty', '6', '7', '2026-01-01', 1);"
    );
    let app = spawn_app(AppOptions {
        backend,
        datasets: Some(ITEMS.into()),
        setup_sql: Some(setup),
        batch_size: 2,
        ..Default::default()
    });
    // The rows and history belong to the default organisation, which the first token is of.
    assert_eq!(
        items(&app),
        vec![row(1, "OLD1", 7, "legacy"), row(1, "OLD2", 8, "legacy")]
    );
    assert_eq!(
        app.db()
            .value("SELECT count(*) FROM items_history WHERE _sluice_org = 1 AND code = 'OLD1'"),
        Some("1".into())
    );
    let index = match backend {
        Backend::Sqlite => {
            "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 'items_by_name'"
        }
        Backend::Postgres => "SELECT count(*) FROM pg_indexes WHERE indexname = 'items_by_name'",
    };
    assert_eq!(app.db().value(index), Some("1".into()));

    // The default organisation updates its rows as before; another one has its own OLD1.
    let s = import(&app, TOKEN, "", "code,qty,name\nOLD1,70,legacy\n").await;
    assert_eq!(counts(&s), [0, 1, 0, 0], "{s}");
    let (other, other_t) = org_with_admin(&app, "other");
    let s = import(&app, &other_t, "", "code,qty,name\nOLD1,1,mine\n").await;
    assert_eq!(counts(&s), [1, 0, 0, 0], "{s}");
    assert_eq!(
        items(&app),
        vec![
            row(1, "OLD1", 70, "legacy"),
            row(1, "OLD2", 8, "legacy"),
            row(other, "OLD1", 1, "mine"),
        ]
    );

    // A restart finds the table upgraded and changes nothing.
    let mut app = app;
    app.terminate();
    app.start();
    assert_eq!(items(&app).len(), 3);

    // New rows in batches of two (the server's --batch-size): after the first batch created every row, the next ones take
    // the writers' fast path (on PostgreSQL a COPY that leaves the timestamps to the columns'
    // defaults, which the upgrade gave the table). Every row is stamped, with the time of its
    // batch's ledger entries, as a rollback requires.
    let s = import(
        &app,
        &other_t,
        "?batchSize=2",
        "code,qty,name
N1,1,n
N2,2,n
N3,3,n
N4,4,n
N5,5,n
",
    )
    .await;
    assert_eq!(counts(&s), [5, 0, 0, 0], "{s}");
    let job = s["jobId"].as_i64().unwrap();
    assert_eq!(
        app.db().value(&format!(
            "SELECT count(*) FROM items WHERE _sluice_job = {job} AND _sluice_created_at IS NOT NULL \
             AND _sluice_updated_at = _sluice_created_at AND _sluice_since_qty = _sluice_updated_at"
        )),
        Some("5".into())
    );
    let ledger = format!("SELECT at, count(*) FROM ledger WHERE job_id = {job} GROUP BY at");
    let items = format!(
        "SELECT _sluice_updated_at, count(*) FROM items WHERE _sluice_job = {job} \
         GROUP BY _sluice_updated_at"
    );
    for (a, b) in [(&ledger, &items), (&items, &ledger)] {
        assert_eq!(
            app.db()
                .value(&format!("SELECT count(*) FROM ({a} EXCEPT {b}) d")),
            Some("0".into()),
            "the ledger's times and the rows' stamps differ"
        );
    }
}

async fn templates(app: &TestApp, token: &str) -> Value {
    let resp = app
        .http
        .get(app.url("/api/v1/datasets/items/templates"))
        .bearer_auth(token)
        .send()
        .await
        .expect("templates");
    let (code, body) = json_of(resp).await;
    assert_eq!(code, 200, "{body}");
    body["data"]["templates"].clone()
}

async fn save_template(app: &TestApp, token: &str, name: &str, mapping: Value) -> u16 {
    let resp = app
        .http
        .post(app.url("/api/v1/datasets/items/templates"))
        .bearer_auth(token)
        .json(&json!({"name": name, "mapping": mapping}))
        .send()
        .await
        .expect("save template");
    json_of(resp).await.0
}

async fn mapping_templates_belong_to_their_organisation(backend: Backend) {
    let app = spawn(backend, None);
    let (acme, acme_t) = org_with_admin(&app, "acme");
    let (_, other_t) = org_with_admin(&app, "other");
    let german = json!({"Artikel": "code", "Menge": "qty"});
    assert_eq!(
        save_template(&app, &acme_t, "Supplier", german.clone()).await,
        201
    );

    // Another organisation neither sees it nor can use it, in a preview or an import.
    assert_eq!(templates(&app, &other_t).await, json!([]));
    let file = "Artikel,Menge\nT1,4\n";
    let (code, body) = upload(&app, &other_t, "", file, &[("template", "Supplier")]).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (400, Some("unknown_template")),
        "{body}"
    );
    let form = reqwest::multipart::Form::new()
        .text("template", "Supplier")
        .part(
            "file",
            reqwest::multipart::Part::bytes(file.as_bytes().to_vec()).file_name("items.csv"),
        );
    let resp = app
        .http
        .post(app.url("/api/v1/import/items/preview"))
        .bearer_auth(&other_t)
        .multipart(form)
        .send()
        .await
        .expect("preview");
    let (code, body) = json_of(resp).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (400, Some("unknown_template")),
        "{body}"
    );

    // It may keep a template of the same name; acme's stays as it was.
    let english = json!({"Ref": "code"});
    assert_eq!(
        save_template(&app, &other_t, "Supplier", english.clone()).await,
        201
    );
    assert_eq!(templates(&app, &other_t).await[0]["mapping"], english);
    let mine = templates(&app, &acme_t).await;
    assert_eq!(mine.as_array().map(Vec::len), Some(1), "{mine}");
    assert_eq!(mine[0]["mapping"], german);

    // acme imports with it, into its own rows.
    let s = import_with(&app, &acme_t, "", file, &[("template", "Supplier")]).await;
    assert_eq!(counts(&s), [1, 0, 0, 0], "{s}");
    assert_eq!(items_of(&app), vec![(acme, "T1".to_string(), Some(4))]);
    assert!(templates(&app, &acme_t).await[0]["usedAt"].is_string());
    assert!(templates(&app, &other_t).await[0]["usedAt"].is_null());
}

/// (organisation, code, qty) of every row: for files without names.
fn items_of(app: &TestApp) -> Vec<(i64, String, Option<i64>)> {
    app.db()
        .rows("SELECT _sluice_org, code, qty FROM items ORDER BY _sluice_org, code")
        .into_iter()
        .map(|r| {
            (
                r[0].as_deref().and_then(|v| v.parse().ok()).expect("org"),
                r[1].clone().unwrap_or_default(),
                r[2].as_deref().and_then(|v| v.parse().ok()),
            )
        })
        .collect()
}

/// The same file in two organisations is two unrelated uploads: neither blocks the other's upload
/// or retry, and no answer names the other organisation's job.
async fn another_organisations_upload_of_the_same_file_stays_out_of_sight(backend: Backend) {
    // No workers: jobs stay where the test puts them.
    let app = spawn_app(AppOptions {
        backend,
        datasets: Some(ITEMS.into()),
        workers: 0,
        ..Default::default()
    });
    let (_, acme_t) = org_with_admin(&app, "acme");
    let (_, other_t) = org_with_admin(&app, "other");
    let file = "code,qty,name\nS1,1,same\n";
    let (code, body) = upload(&app, &acme_t, "", file, &[]).await;
    assert_eq!(code, 202, "{body}");
    let acme_job = job_id(&body);
    let act = |token: &str, path: String| {
        app.http
            .post(app.url(&path))
            .bearer_auth(token.to_string())
            .send()
    };
    let (code, body) = json_of(
        act(&acme_t, format!("/api/v1/import/{acme_job}/cancel"))
            .await
            .expect("cancel"),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = upload(&app, &other_t, "", file, &[]).await;
    assert_eq!(code, 202, "not a duplicate of acme's upload: {body}");
    let other_job = job_id(&body);
    let (code, body) = json_of(
        act(&acme_t, format!("/api/v1/import/{acme_job}/retry"))
            .await
            .expect("retry"),
    )
    .await;
    assert_eq!(
        code, 200,
        "other's active upload must not block acme's retry: {body}"
    );
    assert!(
        !body.to_string().contains(&format!("job {other_job}")),
        "{body}"
    );
    // Within one organisation the duplicate is still caught, naming its own job.
    let (code, body) = upload(&app, &acme_t, "", file, &[]).await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["error"]["jobId"], acme_job, "{body}");

    // The audit log has a line for every action that happened, written with it, and none for
    // the refused ones: the 409 upload above, and a retry of a job that is already pending.
    let (code, body) = json_of(
        act(
            &acme_t,
            format!("/api/v1/import/{acme_job}/retry?fromStart=true"),
        )
        .await
        .expect("retry"),
    )
    .await;
    assert_eq!(code, 409, "{body}");
    for path in ["cancel", "retry?fromStart=true"] {
        let (code, body) = json_of(
            act(&acme_t, format!("/api/v1/import/{acme_job}/{path}"))
                .await
                .expect("control"),
        )
        .await;
        assert_eq!(code, 200, "{path}: {body}");
    }
    let resp = app
        .http
        .get(app.url("/api/v1/audit"))
        .bearer_auth(&acme_t)
        .send()
        .await
        .expect("audit");
    let (code, body) = json_of(resp).await;
    assert_eq!(code, 200, "{body}");
    let mut lines: Vec<String> = body["data"]["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            format!(
                "{} {} {}",
                e["action"].as_str().unwrap_or_default(),
                e["target"].as_str().unwrap_or_default(),
                e["detail"].as_str().unwrap_or_default()
            )
        })
        .collect();
    lines.reverse();
    let job = format!("job:{acme_job}");
    let tail: Vec<&str> = lines.iter().map(|l| l.trim_end()).collect();
    assert!(tail[0].starts_with("user.create user:"), "{lines:?}");
    assert!(
        tail[0].ends_with("admin from the command line"),
        "{lines:?}"
    );
    assert!(tail[1].starts_with("token.create token:"), "{lines:?}");
    assert!(
        tail[2].starts_with(&format!("upload {job} items.csv")),
        "{lines:?}"
    );
    assert_eq!(
        tail[3..5],
        [format!("cancel {job}"), format!("retry {job}")],
        "{lines:?}"
    );
    assert_eq!(tail[5], format!("cancel {job}"), "{lines:?}");
    assert!(
        tail[6].starts_with(&format!("retry {job} new job ")),
        "{lines:?}"
    );
    assert_eq!(tail.len(), 7, "refused actions leave no line: {lines:?}");
}

conformance!(
    another_organisations_upload_of_the_same_file_stays_out_of_sight,
    each_organisation_has_its_own_rows,
    tables_from_before_organisations_keep_their_rows,
    mapping_templates_belong_to_their_organisation,
);
