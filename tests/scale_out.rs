//! Scale-out on PostgreSQL: nodes share nothing but the database. An API-only node and worker
//! processes with data directories of their own import a file together.

#[macro_use]
mod common;

use common::*;

#[tokio::test]
async fn workers_without_a_shared_disk_read_uploads_from_the_database() {
    if !postgres_wanted() {
        return;
    }
    let app = spawn_app(AppOptions {
        backend: Backend::Postgres,
        workers: 0,
        batch_size: 1000,
        ..Default::default()
    });
    let elsewhere = tempfile::tempdir().unwrap();
    app.spawn_worker_in(&elsewhere.path().join("node-b"), 1);
    app.spawn_worker_in(&elsewhere.path().join("node-c"), 1);
    let (file, expect) = generate(
        app.dir.path(),
        "p.csv",
        &["--rows", "20000", "--error-rate", "0.02", "--seed", "41"],
    );
    let (code, body) = app.upload("products", &file).await;
    assert_eq!(code, 202, "{body}");
    // The API node keeps nothing on its disk: the file is in the database.
    assert_eq!(
        std::fs::read_dir(app.data_dir().join("blobs"))
            .unwrap()
            .count(),
        0
    );
    let s = app.wait_done(job_id(&body), MINUTE).await;
    assert_eq!(s["status"], "completed", "{s}");
    assert_eq!(s["createdCount"], expect["valid_rows"]);
    assert_eq!(s["errorCount"], expect["invalid_rows"]);
    // The workers' local copies are gone after the run.
    for node in ["node-b", "node-c"] {
        let dir = elsewhere.path().join(node).join("blobs");
        let left = std::fs::read_dir(&dir).map_or(0, |d| d.count());
        assert_eq!(left, 0, "{node} kept a copy");
    }
    let (_, errors) = app
        .get_json(&format!(
            "/api/v1/import/{}/errors?format=json&limit=1",
            job_id(&body)
        ))
        .await;
    assert_eq!(errors["data"]["total"], expect["invalid_rows"]);
}
