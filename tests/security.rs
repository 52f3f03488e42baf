//! Tenant isolation and the security of every route (issue 7, seed 002), on both backends.
//!
//! Organisations, users and tokens are made with the real `sluice org|user|token` commands on
//! the test's database; then every job route is tried by every kind of attacker: no token, an
//! expired token, a revoked token, another organisation's admin, and a member acting on another
//! member's job. Another organisation's job must answer exactly like a job that does not exist.
//! Also: the audit log, the rate limit, and formula injection in the rejected-rows download.

#[macro_use]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use common::*;

const ITEMS: &str = r#"
[datasets.items]
key = ["code"]
[datasets.items.fields]
code = { type = "text", required = true }
qty = { type = "integer" }
name = { type = "text" }
"#;

/// How a request authenticates.
#[derive(Clone, Copy, Debug)]
enum Auth<'a> {
    None,
    Bearer(&'a str),
    Cookie(&'a str),
}

async fn call(app: &TestApp, method: Method, path: &str, auth: Auth<'_>) -> (u16, String) {
    call_with(app, method, path, auth, None).await
}

async fn call_with(
    app: &TestApp,
    method: Method,
    path: &str,
    auth: Auth<'_>,
    body: Option<&Value>,
) -> (u16, String) {
    let mut req = app.http.request(method, app.url(path));
    if let Some(body) = body {
        req = req.json(body);
    }
    req = match auth {
        Auth::None => req,
        Auth::Bearer(t) => req.bearer_auth(t),
        Auth::Cookie(t) => req.header("cookie", format!("token={t}")),
    };
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

async fn call_json(app: &TestApp, method: Method, path: &str, auth: Auth<'_>) -> (u16, Value) {
    let (status, body) = call(app, method, path, auth).await;
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (status, json)
}

async fn upload_as(app: &TestApp, token: &str, name: &str, csv: &str) -> i64 {
    let (code, body) = app
        .upload_text_as(token, "/api/v1/import/items", name, csv, &[])
        .await;
    assert_eq!(code, 202, "{body}");
    job_id(&body)
}

fn spawn(backend: Backend, extra_args: &[&str]) -> TestApp {
    spawn_app(AppOptions {
        backend,
        datasets: Some(ITEMS.into()),
        extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
}

/// The routes that name a job: method, path pattern (`{id}` is replaced), and whether the route
/// changes the job (creator or admin only).
const JOB_ROUTES: &[(&str, &str, bool)] = &[
    ("GET", "/api/v1/import/status/{id}", false),
    ("GET", "/api/v1/import/{id}/errors", false),
    ("GET", "/api/v1/import/{id}/errors?format=csv", false),
    ("GET", "/api/v1/import/{id}/events", false),
    ("POST", "/api/v1/import/{id}/cancel", true),
    ("POST", "/api/v1/import/{id}/pause", true),
    ("POST", "/api/v1/import/{id}/resume", true),
    ("POST", "/api/v1/import/{id}/retry", true),
    ("POST", "/api/v1/import/{id}/retry?fromStart=true", true),
    ("DELETE", "/api/v1/import/{id}", true),
];

/// The routes that name no job.
const OTHER_ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/import/jobs"),
    ("GET", "/api/v1/import/stats"),
    ("GET", "/api/v1/datasets"),
    ("GET", "/api/v1/audit"),
    ("POST", "/api/v1/import/items"),
];

/// An admin route: method, path aimed at acme, path aimed at nothing, and their JSON bodies.
type AdminRoute = (&'static str, String, String, Option<Value>, Option<Value>);

fn method(m: &str) -> Method {
    Method::from_bytes(m.as_bytes()).expect("method")
}

/// The organisations, users and tokens every matrix runs with: acme (alice and bob, members;
/// carol, admin) and other (mallory, admin); alice's tokens include a revoked one and one that
/// expires 3 s after it was made.
struct Cast {
    acme: i64,
    other: i64,
    alice: i64,
    bob: i64,
    carol: i64,
    alice_t: String,
    alice_tid: i64,
    bob_t: String,
    carol_t: String,
    mallory_t: String,
    revoked_t: String,
    revoked_id: i64,
    expired_t: String,
    expiry_starts: Instant,
}

async fn cast(app: &TestApp) -> Cast {
    let acme = created(app, &["org", "create", "acme"]);
    let other = created(app, &["org", "create", "other"]);
    let (acme_s, other_s) = (acme.to_string(), other.to_string());
    let alice = created(
        app,
        &[
            "user", "create", "--org", "acme", "--name", "alice", "--role", "member",
        ],
    );
    let bob = created(
        app,
        &[
            "user", "create", "--org", &acme_s, "--name", "bob", "--role", "member",
        ],
    );
    let carol = created(
        app,
        &[
            "user", "create", "--org", "acme", "--name", "carol", "--role", "admin",
        ],
    );
    let mallory = created(
        app,
        &[
            "user", "create", "--org", &other_s, "--name", "mallory", "--role", "admin",
        ],
    );
    let (alice_t, alice_tid) = token_for(app, alice, &[]);
    let (bob_t, _) = token_for(app, bob, &["--expires", "30d"]);
    let (carol_t, _) = token_for(app, carol, &[]);
    let (mallory_t, _) = token_for(app, mallory, &[]);
    let (revoked_t, revoked_id) = token_for(app, alice, &[]);
    let (expired_t, _) = token_for(app, alice, &["--expires", "3s"]);
    let expiry_starts = Instant::now();

    // Both short-lived tokens work until they are revoked or expire.
    for t in [&revoked_t, &expired_t] {
        let (code, _) = call(app, Method::GET, "/api/v1/import/jobs", Auth::Bearer(t)).await;
        assert_eq!(code, 200);
    }
    sluice(app, &["token", "revoke", &revoked_id.to_string()]);
    Cast {
        acme,
        other,
        alice,
        bob,
        carol,
        alice_t,
        alice_tid,
        bob_t,
        carol_t,
        mallory_t,
        revoked_t,
        revoked_id,
        expired_t,
        expiry_starts,
    }
}

/// Waits until the short-lived token made at `since` has expired.
async fn until_expired(since: Instant) {
    if let Some(left) = Duration::from_millis(3_300).checked_sub(since.elapsed()) {
        tokio::time::sleep(left).await;
    }
}

async fn every_route_refuses_every_attacker(backend: Backend) {
    let app = spawn(backend, &[]);
    let Cast {
        acme,
        other,
        alice,
        bob,
        carol,
        alice_t,
        alice_tid,
        bob_t,
        carol_t,
        mallory_t,
        revoked_t,
        revoked_id,
        expired_t,
        expiry_starts,
    } = cast(&app).await;
    // The same name again is refused.
    let dup = Command::new(binary())
        .args(["org", "create", "acme", "--data-dir"])
        .arg(app.data_dir())
        .args(
            app.database_url()
                .map(|u| vec!["--database-url".to_string(), u])
                .unwrap_or_default(),
        )
        .output()
        .expect("run sluice");
    assert!(!dup.status.success());

    // Alice imports; one row is rejected.
    let job = upload_as(
        &app,
        &alice_t,
        "a.csv",
        "code,qty,name\nA1,1,x\nA2,oops,y\n",
    )
    .await;
    let done = app.wait_done_as(&alice_t, job).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["errorCount"], 1, "{done}");
    assert_eq!(
        done["userId"], alice,
        "the job records who started it: {done}"
    );
    assert_eq!(done["userName"], "alice", "{done}");
    // The admin of the default organisation does not see it either.
    let (code, _) = app.get_json(&format!("/api/v1/import/status/{job}")).await;
    assert_eq!(code, 404);

    until_expired(expiry_starts).await;

    let missing = 987_654;
    let mut cases = 0u32;
    let mut unauthorized_bodies = std::collections::BTreeSet::new();
    for &(m, pattern, changes) in JOB_ROUTES {
        let path = pattern.replace("{id}", &job.to_string());
        let missing_path = pattern.replace("{id}", &missing.to_string());

        for auth in [
            Auth::None,
            Auth::Bearer(&expired_t),
            Auth::Cookie(&revoked_t),
        ] {
            let (code, body) = call(&app, method(m), &path, auth).await;
            assert_eq!(code, 401, "{m} {path} with {auth:?}: {body}");
            unauthorized_bodies.insert(body);
            cases += 1;
        }

        // Another organisation (an admin there): exactly the answer for a missing job.
        let (code, body) = call(&app, method(m), &path, Auth::Bearer(&mallory_t)).await;
        let (missing_code, missing_body) =
            call(&app, method(m), &missing_path, Auth::Bearer(&mallory_t)).await;
        assert_eq!(code, 404, "{m} {path} from another org: {body}");
        assert_eq!(missing_code, 404, "{missing_body}");
        assert_eq!(
            body, missing_body,
            "{m} {path}: a foreign job must look missing"
        );
        assert!(
            !body.contains("a.csv") && !body.contains(&job.to_string()),
            "{body}"
        );
        cases += 1;

        // A member on another member's job: reads are fine, changes are 403.
        let (code, body) = call(&app, method(m), &path, Auth::Bearer(&bob_t)).await;
        if changes {
            assert_eq!(code, 403, "{m} {path} by another member: {body}");
            let json: Value = serde_json::from_str(&body).expect("json");
            assert_eq!(json["error"]["code"], "forbidden", "{body}");
        } else {
            assert_eq!(code, 200, "{m} {path} by another member: {body}");
        }
        cases += 1;
    }
    for &(m, path) in OTHER_ROUTES {
        for auth in [
            Auth::None,
            Auth::Bearer(&expired_t),
            Auth::Cookie(&revoked_t),
        ] {
            let (code, body) = call(&app, method(m), path, auth).await;
            assert_eq!(code, 401, "{m} {path} with {auth:?}: {body}");
            unauthorized_bodies.insert(body);
            cases += 1;
        }
        cases += 2; // another organisation and another member: checked one by one below
    }
    // Signing in (`POST /api/v1/session`) with no token, or a dead one in the body or the
    // headers: the same 401 as everywhere, and no cookie.
    let session_attempts = [
        (Auth::None, None),
        (Auth::Bearer(&expired_t), None),
        (Auth::Cookie(&revoked_t), None),
        (Auth::None, Some(serde_json::json!({"token": expired_t}))),
        (Auth::None, Some(serde_json::json!({"token": revoked_t}))),
    ];
    for (auth, body) in &session_attempts {
        let mut req = app.http.post(app.url("/api/v1/session"));
        if let Some(body) = body {
            req = req.json(body);
        }
        req = match *auth {
            Auth::None => req,
            Auth::Bearer(t) => req.bearer_auth(t),
            Auth::Cookie(t) => req.header("cookie", format!("token={t}")),
        };
        let resp = req.send().await.expect("request");
        assert_eq!(
            resp.status().as_u16(),
            401,
            "session with {auth:?} {body:?}"
        );
        assert!(
            resp.headers().get("set-cookie").is_none(),
            "no cookie for {auth:?} {body:?}"
        );
        unauthorized_bodies.insert(resp.text().await.expect("body"));
        cases += 1;
    }
    // Admin routes: a target of acme (alice and her token), and one that does not exist.
    let admin_routes: [AdminRoute; 3] = [
        (
            "POST",
            "/api/v1/admin/tokens".into(),
            "/api/v1/admin/tokens".into(),
            Some(serde_json::json!({"userId": alice, "expires": "1h"})),
            Some(serde_json::json!({"userId": 987_654, "expires": "1h"})),
        ),
        (
            "DELETE",
            format!("/api/v1/admin/tokens/{alice_tid}"),
            "/api/v1/admin/tokens/987654".into(),
            None,
            None,
        ),
        (
            "POST",
            "/api/v1/admin/users".into(),
            "/api/v1/admin/users".into(),
            Some(serde_json::json!({"name": "eve", "role": "admin"})),
            Some(serde_json::json!({"name": "eve", "role": "admin"})),
        ),
    ];
    for (m, path, missing_path, body, missing_body) in &admin_routes {
        for auth in [
            Auth::None,
            Auth::Bearer(&expired_t),
            Auth::Cookie(&revoked_t),
        ] {
            let (code, text) = call_with(&app, method(m), path, auth, body.as_ref()).await;
            assert_eq!(code, 401, "{m} {path} with {auth:?}: {text}");
            unauthorized_bodies.insert(text);
            cases += 1;
        }
        // A member may not manage tokens or users.
        let (code, text) =
            call_with(&app, method(m), path, Auth::Bearer(&bob_t), body.as_ref()).await;
        assert_eq!(code, 403, "{m} {path} by a member: {text}");
        cases += 1;
        // Another organisation's admin: acme's user and token look missing; a user it
        // creates lands in its own organisation.
        let (code, text) = call_with(
            &app,
            method(m),
            path,
            Auth::Bearer(&mallory_t),
            body.as_ref(),
        )
        .await;
        if path.ends_with("/users") {
            assert_eq!(code, 201, "{text}");
            let json: Value = serde_json::from_str(&text).expect("json");
            let eve = json["data"]["id"].as_i64().expect("id");
            let (code, _) = call_with(
                &app,
                Method::POST,
                "/api/v1/admin/tokens",
                Auth::Bearer(&carol_t),
                Some(&serde_json::json!({"userId": eve})),
            )
            .await;
            assert_eq!(
                code, 404,
                "acme's admin cannot make a token for another org's user"
            );
        } else {
            let (missing_code, missing_text) = call_with(
                &app,
                method(m),
                missing_path,
                Auth::Bearer(&mallory_t),
                missing_body.as_ref(),
            )
            .await;
            assert_eq!((code, missing_code), (404, 404), "{text} {missing_text}");
            assert_eq!(
                text, missing_text,
                "{m} {path}: acme's user/token must look missing"
            );
        }
        cases += 1;
    }
    // Alice's token survived all that.
    let (code, _) = call(
        &app,
        Method::GET,
        "/api/v1/import/jobs",
        Auth::Bearer(&alice_t),
    )
    .await;
    assert_eq!(code, 200);
    // An admin of acme issues and revokes a token through the API.
    let (code, text) = call_with(
        &app,
        Method::POST,
        "/api/v1/admin/tokens",
        Auth::Bearer(&carol_t),
        Some(&serde_json::json!({"userId": bob, "expires": "1h", "label": "ci"})),
    )
    .await;
    assert_eq!(code, 201, "{text}");
    let issued: Value = serde_json::from_str(&text).expect("json");
    let (api_t, api_tid) = (
        issued["data"]["token"].as_str().expect("token").to_string(),
        issued["data"]["id"].as_i64().expect("id"),
    );
    let (code, _) = call(
        &app,
        Method::GET,
        "/api/v1/import/jobs",
        Auth::Bearer(&api_t),
    )
    .await;
    assert_eq!(code, 200);
    let (code, text) = call(
        &app,
        Method::DELETE,
        &format!("/api/v1/admin/tokens/{api_tid}"),
        Auth::Bearer(&carol_t),
    )
    .await;
    assert_eq!(code, 200, "{text}");
    let (code, _) = call(
        &app,
        Method::GET,
        "/api/v1/import/jobs",
        Auth::Bearer(&api_t),
    )
    .await;
    assert_eq!(code, 401);

    // No 401 tells an expired token from a revoked or a missing one.
    assert_eq!(unauthorized_bodies.len(), 1, "{unauthorized_bodies:?}");

    // Lists and figures of another organisation hold none of acme's jobs; a member sees them.
    let (_, list) = call_json(
        &app,
        Method::GET,
        "/api/v1/import/jobs",
        Auth::Bearer(&mallory_t),
    )
    .await;
    assert_eq!(list["data"]["total"], 0, "{list}");
    let (_, list) = call_json(
        &app,
        Method::GET,
        "/api/v1/import/jobs",
        Auth::Bearer(&bob_t),
    )
    .await;
    assert_eq!(list["data"]["jobs"][0]["jobId"], job, "{list}");
    let (_, stats) = call_json(
        &app,
        Method::GET,
        "/api/v1/import/stats",
        Auth::Bearer(&mallory_t),
    )
    .await;
    assert_eq!(stats["data"]["total"], 0, "{stats}");
    let (_, stats) = call_json(
        &app,
        Method::GET,
        "/api/v1/import/stats",
        Auth::Bearer(&bob_t),
    )
    .await;
    assert_eq!(stats["data"]["total"], 1, "{stats}");
    let (code, _) = call(
        &app,
        Method::GET,
        "/api/v1/datasets",
        Auth::Bearer(&mallory_t),
    )
    .await;
    assert_eq!(code, 200);
    let (code, _) = call(&app, Method::GET, "/api/v1/datasets", Auth::Bearer(&bob_t)).await;
    assert_eq!(code, 200);
    // The audit log: members are refused; another organisation's admin sees only its own.
    let (code, body) = call_json(&app, Method::GET, "/api/v1/audit", Auth::Bearer(&bob_t)).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let (code, body) =
        call_json(&app, Method::GET, "/api/v1/audit", Auth::Bearer(&mallory_t)).await;
    assert_eq!(code, 200);
    let foreign = body["data"]["entries"].as_array().expect("entries");
    assert!(foreign.iter().all(|e| e["orgId"] == other), "{body}");
    // Uploads by another organisation or member make their own jobs, invisible to acme's
    // others only when in another organisation.
    let theirs = upload_as(
        &app,
        &mallory_t,
        "a.csv",
        "code,qty,name\nA1,1,x\nA2,oops,y\n",
    )
    .await;
    let (code, _) = call(
        &app,
        Method::GET,
        &format!("/api/v1/import/status/{theirs}"),
        Auth::Bearer(&alice_t),
    )
    .await;
    assert_eq!(
        code, 404,
        "the same file in another organisation is its own job"
    );
    let bobs = upload_as(&app, &bob_t, "b.csv", "code,qty,name\nB1,1,x\n").await;
    app.wait_done_as(&alice_t, bobs).await;

    println!("route × attacker cases tried: {cases}");
    // Five attackers on every job route, every other route and the three admin routes, and
    // five dead sign-ins.
    assert_eq!(
        cases,
        ((JOB_ROUTES.len() + OTHER_ROUTES.len() + 3) * 5 + session_attempts.len()) as u32
    );

    // Nothing the attackers tried changed the job.
    let after = app.wait_done_as(&alice_t, job).await;
    assert_eq!(after["status"], "completed", "{after}");
    assert_eq!(after["attempts"], done["attempts"], "{after}");

    // The creator and an admin of the organisation may act; it is all in the audit log.
    let (code, body) = call(
        &app,
        Method::DELETE,
        &format!("/api/v1/import/{job}"),
        Auth::Bearer(&alice_t),
    )
    .await;
    assert_eq!(code, 200, "the creator deletes her job: {body}");
    let (code, body) = call(
        &app,
        Method::DELETE,
        &format!("/api/v1/import/{bobs}"),
        Auth::Bearer(&carol_t),
    )
    .await;
    assert_eq!(code, 200, "an admin deletes a member's job: {body}");
    let (code, body) = call_json(&app, Method::GET, "/api/v1/audit", Auth::Bearer(&carol_t)).await;
    assert_eq!(code, 200, "{body}");
    let entries = body["data"]["entries"].as_array().expect("entries");
    let line = |action: &str, user: i64, target: String| {
        entries
            .iter()
            .any(|e| e["action"] == action && e["userId"] == user && e["target"] == target)
    };
    assert!(line("upload", alice, format!("job:{job}")), "{body}");
    assert!(line("upload", bob, format!("job:{bobs}")), "{body}");
    assert!(line("delete", alice, format!("job:{job}")), "{body}");
    assert!(line("delete", carol, format!("job:{bobs}")), "{body}");
    assert!(
        entries.iter().any(|e| e["action"] == "token.revoke"
            && e["target"] == format!("token:{revoked_id}")
            && e["userId"].is_null()),
        "{body}"
    );
    let token_creations = entries
        .iter()
        .filter(|e| e["action"] == "token.create")
        .count();
    assert_eq!(
        token_creations, 6,
        "alice ×3, bob, carol from the CLI, bob's by API: {body}"
    );
    assert!(
        line("token.create", carol, format!("token:{api_tid}")),
        "{body}"
    );
    assert!(
        line("token.revoke", carol, format!("token:{api_tid}")),
        "{body}"
    );
    assert!(entries.iter().all(|e| e["orgId"] == acme), "{body}");
    // Refused attempts are not in the log as actions.
    assert!(
        !entries
            .iter()
            .any(|e| e["userId"] == bob && e["action"] != "upload"),
        "{body}"
    );
}

async fn a_token_over_its_rate_gets_429_with_retry_after(backend: Backend) {
    let app = spawn(backend, &["--rate-limit", "2"]);
    let user = created(
        &app,
        &[
            "user", "create", "--org", "default", "--name", "robot", "--role", "member",
        ],
    );
    let (robot, _) = token_for(&app, user, &[]);
    let mut limited = None;
    for _ in 0..20 {
        let resp = app
            .http
            .get(app.url("/api/v1/import/jobs"))
            .bearer_auth(&robot)
            .send()
            .await
            .expect("request");
        if resp.status().as_u16() == 429 {
            limited = Some(resp);
            break;
        }
        assert_eq!(resp.status().as_u16(), 200);
    }
    let resp = limited.expect("20 requests at once exceed 2 per second (burst 4)");
    let retry_after: u64 = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!(retry_after >= 1);
    let (_, body) = json_of(resp).await;
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    // Another token has its own bucket.
    let (code, _) = app.get_json("/api/v1/import/jobs").await;
    assert_eq!(code, 200);
}

async fn rejected_rows_download_neutralises_formulas(backend: Backend) {
    let app = spawn(backend, &[]);
    let csv = "code,qty,name\n\
               =HYPERLINK(\"http://evil\"),x,@SUM(A1)\n\
               +cmd,bad,-5\n\
               ok,1,fine\n";
    let (code, body) = app
        .upload_bytes("items", "f.csv", csv.as_bytes().to_vec(), &[])
        .await;
    assert_eq!(code, 202, "{body}");
    let job = job_id(&body);
    let done = app.wait_done(job, Duration::from_secs(60)).await;
    assert_eq!(done["errorCount"], 2, "{done}");
    let text = app.errors_csv(job).await;
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(text.as_bytes());
    let rows: Vec<Vec<String>> = reader
        .records()
        .map(|r| r.expect("record").iter().map(str::to_string).collect())
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert_eq!(
        rows[0][..3],
        ["'=HYPERLINK(\"http://evil\")", "x", "'@SUM(A1)"],
        "{text}"
    );
    assert_eq!(rows[1][..3], ["'+cmd", "bad", "'-5"], "{text}");
    for row in &rows {
        for cell in row {
            assert!(
                !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "`{cell}` in {text}"
            );
        }
    }
}

async fn an_uploaded_file_name_never_becomes_a_path(backend: Backend) {
    let app = spawn(backend, &[]);
    for (i, (name, shown)) in [
        ("../../../escape.csv", "escape.csv"),
        ("..\\..\\win.csv", "win.csv"),
        ("/etc/passwd", "passwd"),
    ]
    .into_iter()
    .enumerate()
    {
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(format!("code,qty,name\nA{i},1,x\n").into_bytes())
                .file_name(name.to_string()),
        );
        let resp = app
            .http
            .post(app.url("/api/v1/import/items"))
            .bearer_auth(TOKEN)
            .multipart(form)
            .send()
            .await
            .expect("upload");
        let (code, body) = json_of(resp).await;
        assert_eq!(code, 202, "{body}");
        let done = app.wait_done(job_id(&body), Duration::from_secs(60)).await;
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["filename"], shown, "{done}");
    }
    let escaped: Vec<_> = walk(app.dir.path())
        .into_iter()
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            ["escape.csv", "win.csv", "passwd"].contains(&n)
        })
        .collect();
    assert!(escaped.is_empty(), "{escaped:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

async fn every_response_carries_security_headers(backend: Backend) {
    let app = spawn(backend, &[]);
    for (path, token, status) in [
        ("/healthz", None, 200),
        ("/api/v1/import/jobs", Some(TOKEN), 200),
        ("/api/v1/import/jobs", None, 401),
        ("/api/v1/import/status/42", Some(TOKEN), 404),
        ("/nowhere", None, 404),
    ] {
        let mut req = app.http.get(app.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("request");
        assert_eq!(resp.status().as_u16(), status, "{path}");
        let h = resp.headers();
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
        assert_eq!(get("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(get("x-frame-options"), "DENY", "{path}");
        assert_eq!(get("referrer-policy"), "no-referrer", "{path}");
        assert!(
            get("content-security-policy").contains("default-src 'none'"),
            "{path}"
        );
        assert_eq!(get("cache-control"), "no-store", "{path}");
        // Error bodies name no SQL, file or source location.
        let body = resp.text().await.expect("body");
        for leak in ["SELECT", "sqlite", "postgres", "/tmp", ".rs:", "panicked"] {
            assert!(!body.contains(leak), "{path}: {body}");
        }
    }
}

async fn an_organisations_limits_bound_its_uploads(backend: Backend) {
    let app = spawn(backend, &[]);
    created(
        &app,
        &[
            "org",
            "create",
            "small",
            "--max-upload-mb",
            "1",
            "--max-rows",
            "3",
        ],
    );
    let user = created(
        &app,
        &[
            "user", "create", "--org", "small", "--name", "sam", "--role", "member",
        ],
    );
    let (sam, _) = token_for(&app, user, &[]);
    let rows = |n: usize| {
        let mut csv = String::from("code,qty,name\n");
        for i in 0..n {
            csv.push_str(&format!("C{i},1,x\n"));
        }
        csv
    };
    let send = |token: String, csv: String| {
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(csv.into_bytes()).file_name("l.csv"),
        );
        app.http
            .post(app.url("/api/v1/import/items"))
            .bearer_auth(token)
            .multipart(form)
            .send()
    };
    // Three rows pass, four are refused before any job exists.
    let (code, body) = json_of(send(sam.clone(), rows(3)).await.expect("upload")).await;
    assert_eq!(code, 202, "{body}");
    let (code, body) = json_of(send(sam.clone(), rows(4)).await.expect("upload")).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (400, Some("too_many_rows")),
        "{body}"
    );
    // Over a megabyte: 413 for the small organisation, accepted for the default one.
    let big = rows(0)
        + &(0..11_000)
            .map(|i| format!("B{i},1,{}\n", "y".repeat(100)))
            .collect::<String>();
    assert!(big.len() > 1024 * 1024);
    let (code, body) = json_of(send(sam.clone(), big.clone()).await.expect("upload")).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (413, Some("file_too_large")),
        "{body}"
    );
    let (code, body) = json_of(send(TOKEN.to_string(), big).await.expect("upload")).await;
    assert_eq!(code, 202, "{body}");
    // Lifting the row limit lets the four rows in.
    sluice(&app, &["org", "limits", "small", "--max-upload-mb", "1"]);
    let (code, body) = json_of(send(sam, rows(4)).await.expect("upload")).await;
    assert_eq!(code, 202, "{body}");
}

/// What one attacker must get from an organisation-scoped route.
enum Expect {
    /// This status.
    Code(u16),
    /// 404 with exactly the body of the same route aimed at nothing (`missing_path`).
    LooksMissing,
}

/// An organisation-scoped route: method, path aimed at acme's resource, path aimed at nothing,
/// body, and what another organisation's admin and a member of acme get.
struct ScopedRoute {
    method: &'static str,
    path: String,
    missing_path: String,
    body: Option<Vec<u8>>,
    json: bool,
    foreign: Expect,
    member: Expect,
}

async fn send_raw(app: &TestApp, route: &ScopedRoute, path: &str, auth: Auth<'_>) -> (u16, String) {
    let mut req = app.http.request(method(route.method), app.url(path));
    if let Some(body) = &route.body {
        req = req.body(body.clone());
        if route.json {
            req = req.header("content-type", "application/json");
        }
    }
    req = match auth {
        Auth::None => req,
        Auth::Bearer(t) => req.bearer_auth(t),
        Auth::Cookie(t) => req.header("cookie", format!("token={t}")),
    };
    let resp = req.send().await.expect("request");
    (resp.status().as_u16(), resp.text().await.expect("body"))
}

/// Everything the global event stream sends within `for_ms` (it never ends by itself).
async fn stream_text(app: &TestApp, token: &str, for_ms: u64) -> String {
    let mut resp = app
        .http
        .get(app.url("/api/v1/events?after=0"))
        .bearer_auth(token)
        .send()
        .await
        .expect("open event stream");
    assert_eq!(resp.status().as_u16(), 200);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(for_ms);
    let mut text = String::new();
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, resp.chunk()).await {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text
}

/// The routes that hold an organisation's things other than jobs — templates, previews with a
/// template, webhooks and their deliveries, the global event stream — tried by the same five
/// attackers as the job routes.
async fn organisation_resources_refuse_every_attacker(backend: Backend) {
    // The webhooks point at 127.0.0.1:9, where deliveries simply fail.
    let app = spawn(backend, &["--webhook-allow-private"]);
    let Cast {
        acme,
        alice,
        alice_t,
        bob_t,
        carol_t,
        mallory_t,
        revoked_t,
        revoked_id,
        expired_t,
        expiry_starts,
        ..
    } = cast(&app).await;
    // acme's things: a template, a webhook, a finished job.
    let (code, text) = call_with(
        &app,
        Method::POST,
        "/api/v1/datasets/items/templates",
        Auth::Bearer(&carol_t),
        Some(&serde_json::json!({"name": "acme-map", "mapping": {"Artikel": "code"}})),
    )
    .await;
    assert_eq!(code, 201, "{text}");
    let (code, hook) = call_with(
        &app,
        Method::POST,
        "/api/v1/webhooks",
        Auth::Bearer(&carol_t),
        Some(&serde_json::json!({"url": "http://127.0.0.1:9/acme-hook"})),
    )
    .await;
    assert_eq!(code, 201, "{hook}");
    let hook: Value = serde_json::from_str(&hook).expect("json");
    let hook = hook["data"]["id"].as_i64().expect("webhook id");
    let job = upload_as(&app, &alice_t, "a.csv", "code,qty,name\nA1,1,x\n").await;
    app.wait_done_as(&alice_t, job).await;
    until_expired(expiry_starts).await;

    let json_body = |v: Value| Some(v.to_string().into_bytes());
    let routes = [
        ScopedRoute {
            method: "GET",
            path: "/api/v1/datasets/items/templates".into(),
            missing_path: String::new(),
            body: None,
            json: false,
            foreign: Expect::Code(200),
            member: Expect::Code(200),
        },
        ScopedRoute {
            method: "POST",
            path: "/api/v1/import/items/preview?template=acme-map&filename=p.csv".into(),
            missing_path: String::new(),
            body: Some(b"Artikel,qty\nP1,1\n".to_vec()),
            json: false,
            foreign: Expect::Code(400),
            member: Expect::Code(200),
        },
        ScopedRoute {
            method: "POST",
            path: "/api/v1/datasets/items/templates".into(),
            missing_path: String::new(),
            body: json_body(serde_json::json!({"name": "acme-map", "mapping": {"X": "code"}})),
            json: true,
            foreign: Expect::Code(201),
            member: Expect::Code(201),
        },
        ScopedRoute {
            method: "GET",
            path: "/api/v1/webhooks".into(),
            missing_path: String::new(),
            body: None,
            json: false,
            foreign: Expect::Code(200),
            member: Expect::Code(403),
        },
        ScopedRoute {
            method: "POST",
            path: "/api/v1/webhooks".into(),
            missing_path: String::new(),
            body: json_body(serde_json::json!({"url": "http://127.0.0.1:9/other-hook"})),
            json: true,
            foreign: Expect::Code(201),
            member: Expect::Code(403),
        },
        ScopedRoute {
            method: "GET",
            path: "/api/v1/me".into(),
            missing_path: String::new(),
            body: None,
            json: false,
            foreign: Expect::Code(200),
            member: Expect::Code(200),
        },
        ScopedRoute {
            method: "GET",
            path: "/api/v1/admin/users".into(),
            missing_path: String::new(),
            body: None,
            json: false,
            foreign: Expect::Code(200),
            member: Expect::Code(403),
        },
        ScopedRoute {
            method: "GET",
            path: "/api/v1/admin/tokens".into(),
            missing_path: String::new(),
            body: None,
            json: false,
            foreign: Expect::Code(200),
            member: Expect::Code(403),
        },
        ScopedRoute {
            method: "GET",
            path: format!("/api/v1/webhooks/{hook}/deliveries"),
            missing_path: "/api/v1/webhooks/987654/deliveries".into(),
            body: None,
            json: false,
            foreign: Expect::LooksMissing,
            member: Expect::Code(403),
        },
        ScopedRoute {
            method: "DELETE",
            path: format!("/api/v1/webhooks/{hook}"),
            missing_path: "/api/v1/webhooks/987654".into(),
            body: None,
            json: false,
            foreign: Expect::LooksMissing,
            member: Expect::Code(403),
        },
    ];
    let mut cases = 0u32;
    for route in &routes {
        let (m, path) = (route.method, route.path.as_str());
        for auth in [
            Auth::None,
            Auth::Bearer(&expired_t),
            Auth::Cookie(&revoked_t),
        ] {
            let (code, text) = send_raw(&app, route, path, auth).await;
            assert_eq!(code, 401, "{m} {path} with {auth:?}: {text}");
            cases += 1;
        }
        for (who, token, expect) in [
            ("another organisation", &mallory_t, &route.foreign),
            ("a member", &bob_t, &route.member),
        ] {
            let (code, text) = send_raw(&app, route, path, Auth::Bearer(token)).await;
            match expect {
                Expect::Code(want) => assert_eq!(code, *want, "{m} {path} by {who}: {text}"),
                Expect::LooksMissing => {
                    let (_, missing) =
                        send_raw(&app, route, &route.missing_path, Auth::Bearer(token)).await;
                    assert_eq!(code, 404, "{m} {path} by {who}: {text}");
                    assert_eq!(
                        text, missing,
                        "{m} {path}: acme's webhook must look missing"
                    );
                }
            }
            // Nothing of acme's shows in another organisation's answers.
            if token == &mallory_t {
                assert!(
                    !["acme-hook", "\"Artikel\"", "alice", "carol"]
                        .iter()
                        .any(|acme_thing| text.contains(acme_thing)),
                    "{m} {path} leaks acme's things to another organisation: {text}"
                );
            }
            cases += 1;
        }
    }
    // The global event stream: 401 without a valid token; another organisation's stream holds
    // none of acme's jobs, a member's holds them.
    for auth in [
        Auth::None,
        Auth::Bearer(&expired_t),
        Auth::Cookie(&revoked_t),
    ] {
        let (code, text) = call(&app, Method::GET, "/api/v1/events", auth).await;
        assert_eq!(code, 401, "events with {auth:?}: {text}");
        cases += 1;
    }
    let needle = format!("\"jobId\":{job}");
    let foreign = stream_text(&app, &mallory_t, 1_000).await;
    assert!(foreign.contains("event: ready"), "{foreign}");
    assert!(!foreign.contains(&needle), "{foreign}");
    let member = stream_text(&app, &bob_t, 1_000).await;
    assert!(member.contains(&needle), "{member}");
    cases += 2;

    // acme's things are as they were: one template with its own mapping, the webhook (carol's
    // and bob's attempts were refused; mallory's template and webhook are mallory's).
    let (_, list) = call_json(
        &app,
        Method::GET,
        "/api/v1/datasets/items/templates",
        Auth::Bearer(&carol_t),
    )
    .await;
    let list = list["data"]["templates"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(
        list[0]["mapping"],
        serde_json::json!({"X": "code"}),
        "bob saved over it"
    );
    let (_, hooks) = call_json(
        &app,
        Method::GET,
        "/api/v1/webhooks",
        Auth::Bearer(&carol_t),
    )
    .await;
    let hooks = hooks["data"]["webhooks"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    assert_eq!(hooks[0]["id"], hook);

    // Who am I: each token speaks for its own user and organisation.
    let (_, me) = call_json(&app, Method::GET, "/api/v1/me", Auth::Bearer(&carol_t)).await;
    assert_eq!(
        (
            &me["data"]["userName"],
            &me["data"]["orgName"],
            &me["data"]["role"]
        ),
        (&json!("carol"), &json!("acme"), &json!("admin")),
        "{me}"
    );
    let (_, me) = call_json(&app, Method::GET, "/api/v1/me", Auth::Cookie(&bob_t)).await;
    assert_eq!(
        (
            &me["data"]["userName"],
            &me["data"]["role"],
            &me["data"]["orgId"]
        ),
        (&json!("bob"), &json!("member"), &json!(acme)),
        "{me}"
    );

    // An admin lists the organisation's users and tokens: their state, never the secrets.
    let (_, users) = call_json(
        &app,
        Method::GET,
        "/api/v1/admin/users",
        Auth::Bearer(&carol_t),
    )
    .await;
    let names: Vec<&str> = users["data"]["users"]
        .as_array()
        .map(|u| u.iter().filter_map(|u| u["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["alice", "bob", "carol"], "{users}");
    let (code, text) = call(
        &app,
        Method::GET,
        "/api/v1/admin/tokens",
        Auth::Bearer(&carol_t),
    )
    .await;
    assert_eq!(code, 200, "{text}");
    assert!(!text.contains("slc_") && !text.contains("Hash"), "{text}");
    let tokens: Value = serde_json::from_str(&text).expect("json");
    let tokens = tokens["data"]["tokens"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let of_alice: Vec<&Value> = tokens.iter().filter(|t| t["userId"] == alice).collect();
    assert_eq!(of_alice.len(), 3, "{text}");
    let revoked = tokens
        .iter()
        .find(|t| t["id"] == revoked_id)
        .expect("revoked token");
    assert!(revoked["revokedAt"].is_string(), "{revoked}");
    assert!(
        of_alice.iter().any(|t| t["expiresAt"].is_string()),
        "{text}"
    );
    assert!(
        of_alice.iter().all(|t| t["lastUsedAt"].is_string()),
        "all were used: {text}"
    );
    assert!(tokens.iter().all(|t| t["orgId"] == acme), "{text}");
    // The same from the command line, with each token's state.
    let (listed, _) = sluice(&app, &["token", "list", "--org", "acme"]);
    let states: Vec<(String, String)> = listed
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[1].to_string(), f[3].to_string())
        })
        .collect();
    let alice_s = alice.to_string();
    let mut alices: Vec<&str> = states
        .iter()
        .filter(|(u, _)| *u == alice_s)
        .map(|(_, s)| s.as_str())
        .collect();
    alices.sort_unstable();
    assert_eq!(alices, ["expired", "live", "revoked"], "{listed}");
    assert!(!listed.contains("slc_"), "{listed}");
    let (listed, _) = sluice(&app, &["user", "list", "--org", "other"]);
    assert!(
        listed.contains("mallory") && !listed.contains("alice"),
        "{listed}"
    );
    let (listed, _) = sluice(&app, &["org", "list"]);
    assert!(
        listed.contains("\tacme\t") && listed.contains("\tdefault\t"),
        "{listed}"
    );

    println!("organisation-resource route × attacker cases tried: {cases}");
    assert_eq!(cases, ((routes.len() + 1) * 5) as u32);
}

conformance!(
    organisation_resources_refuse_every_attacker,
    events_and_webhooks_stay_inside_the_organisation,
    an_organisations_limits_bound_its_uploads,
    every_response_carries_security_headers,
    an_uploaded_file_name_never_becomes_a_path,
    every_route_refuses_every_attacker,
    a_token_over_its_rate_gets_429_with_retry_after,
    rejected_rows_download_neutralises_formulas,
);

/// Live events and webhooks stay inside the organisation: another organisation's job stream is
/// a 404, the global stream never shows a foreign job, and webhooks are for admins and hear only
/// of their own organisation's jobs.
async fn events_and_webhooks_stay_inside_the_organisation(backend: Backend) {
    // The webhook below names a local port.
    let app = spawn(backend, &["--webhook-allow-private"]);
    created(&app, &["org", "create", "acme"]);
    created(&app, &["org", "create", "other"]);
    let alice = created(
        &app,
        &[
            "user", "create", "--org", "acme", "--name", "alice", "--role", "member",
        ],
    );
    let carol = created(
        &app,
        &[
            "user", "create", "--org", "acme", "--name", "carol", "--role", "admin",
        ],
    );
    let mallory = created(
        &app,
        &[
            "user", "create", "--org", "other", "--name", "mallory", "--role", "admin",
        ],
    );
    let (alice_t, _) = token_for(&app, alice, &[]);
    let (carol_t, _) = token_for(&app, carol, &[]);
    let (mallory_t, _) = token_for(&app, mallory, &[]);

    // Mallory listens to every event she may see, from before acme's import starts.
    let (_, ready) = call_json(
        &app,
        Method::GET,
        "/api/v1/import/jobs",
        Auth::Bearer(&mallory_t),
    )
    .await;
    assert_eq!(ready["data"]["total"], 0);
    let job = upload_as(&app, &alice_t, "a.csv", "code,name\n1,a\n2,b\n").await;
    app.wait_done_as(&alice_t, job).await;

    let (code, body) = call(
        &app,
        Method::GET,
        &format!("/api/v1/import/{job}/events"),
        Auth::Bearer(&mallory_t),
    )
    .await;
    let (missing_code, missing) = call(
        &app,
        Method::GET,
        "/api/v1/import/999999/events",
        Auth::Bearer(&mallory_t),
    )
    .await;
    assert_eq!((code, body.as_str()), (missing_code, missing.as_str()));
    assert_eq!(code, 404);
    // Her global stream, replayed from the start, has no event of acme's job.
    let resp = app
        .http
        .get(app.url("/api/v1/events?after=0"))
        .bearer_auth(&mallory_t)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut stream = resp;
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < deadline {
        if let Ok(Ok(Some(chunk))) =
            tokio::time::timeout(Duration::from_millis(300), stream.chunk()).await
        {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
    assert!(
        !text.contains(&format!("\"jobId\":{job}")),
        "foreign job in the stream: {text}"
    );
    // Alice's (same organisation) stream does show it.
    let (code, _) = call(
        &app,
        Method::GET,
        &format!("/api/v1/import/{job}/events"),
        Auth::Bearer(&alice_t),
    )
    .await;
    assert_eq!(code, 200);

    // Webhooks: members may not register them; admins see only their organisation's.
    let hook = |token: &str| {
        app.http
            .post(app.url("/api/v1/webhooks"))
            .bearer_auth(token)
            .json(
                &serde_json::json!({"url": "http://127.0.0.1:9/hook", "events": ["job.completed"]}),
            )
            .send()
    };
    assert_eq!(hook(&alice_t).await.unwrap().status().as_u16(), 403);
    assert_eq!(hook(&carol_t).await.unwrap().status().as_u16(), 201);
    let (_, mine) = call_json(
        &app,
        Method::GET,
        "/api/v1/webhooks",
        Auth::Bearer(&mallory_t),
    )
    .await;
    assert_eq!(mine["data"]["webhooks"], serde_json::json!([]));
    let (_, theirs) = call_json(
        &app,
        Method::GET,
        "/api/v1/webhooks",
        Auth::Bearer(&carol_t),
    )
    .await;
    let id = theirs["data"]["webhooks"][0]["id"].as_i64().unwrap();
    let (code, _) = call(
        &app,
        Method::DELETE,
        &format!("/api/v1/webhooks/{id}"),
        Auth::Bearer(&mallory_t),
    )
    .await;
    assert_eq!(code, 404);
    let (code, _) = call(
        &app,
        Method::GET,
        &format!("/api/v1/webhooks/{id}/deliveries"),
        Auth::Bearer(&mallory_t),
    )
    .await;
    assert_eq!(code, 404);
}
