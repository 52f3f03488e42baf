//! The web UI's session cookie through the real server, on both backends:
//! `POST /api/v1/session` sets an HttpOnly, SameSite=Strict `token` cookie for a live token and
//! nothing for a dead one, the cookie authenticates requests, `DELETE /api/v1/session` clears it,
//! and cookie-authenticated changes from another origin are refused.

#[macro_use]
mod common;

use std::time::Duration;

use common::*;
use reqwest::header::{HeaderMap, SET_COOKIE};
use serde_json::{Value, json};

/// The `Set-Cookie` headers of a response.
fn set_cookies(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

/// The attributes of a `Set-Cookie` value, lower-cased names: `token=v; HttpOnly` →
/// [("token", "v"), ("httponly", "")].
fn attributes(cookie: &str) -> Vec<(String, String)> {
    cookie
        .split(';')
        .map(|kv| {
            let (k, v) = kv.trim().split_once('=').unwrap_or((kv.trim(), ""));
            (k.to_string(), v.to_string())
        })
        .enumerate()
        .map(|(i, (k, v))| (if i == 0 { k } else { k.to_ascii_lowercase() }, v))
        .collect()
}

fn attribute<'a>(attrs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

async fn sign_in(app: &TestApp, body: Value) -> (u16, Vec<String>, Value) {
    let resp = app
        .http
        .post(app.url("/api/v1/session"))
        .json(&body)
        .send()
        .await
        .expect("sign in");
    let cookies = set_cookies(resp.headers());
    let (code, body) = json_of(resp).await;
    (code, cookies, body)
}

async fn with_cookie(app: &TestApp, path: &str, token: &str) -> u16 {
    app.http
        .get(app.url(path))
        .header("cookie", format!("token={token}"))
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

/// A new token for the user, through the admin API.
async fn new_token(app: &TestApp, user: i64, expires: &str) -> (String, i64) {
    let (code, body) = json_of(
        app.post("/api/v1/admin/tokens")
            .json(&json!({"userId": user, "expires": expires}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    (
        body["data"]["token"].as_str().unwrap().to_string(),
        body["data"]["id"].as_i64().unwrap(),
    )
}

async fn signing_in_sets_an_http_only_strict_cookie_that_authenticates(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        ..Default::default()
    });
    let (code, cookies, body) = sign_in(&app, json!({"token": TOKEN})).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["success"], true, "{body}");
    assert_eq!(body["data"]["role"], "admin", "{body}");
    let user = body["data"]["userId"].as_i64().expect("userId");
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    let attrs = attributes(&cookies[0]);
    assert_eq!(attrs[0], ("token".to_string(), TOKEN.to_string()));
    assert_eq!(attribute(&attrs, "httponly"), Some(""), "{cookies:?}");
    assert_eq!(attribute(&attrs, "samesite"), Some("Strict"), "{cookies:?}");
    assert_eq!(attribute(&attrs, "path"), Some("/"), "{cookies:?}");
    // Plain HTTP, and a token that never expires: no Secure, and a browser-session cookie.
    assert_eq!(attribute(&attrs, "secure"), None, "{cookies:?}");
    assert_eq!(attribute(&attrs, "max-age"), None, "{cookies:?}");

    // The cookie authenticates, as the UI's requests and its EventSource send it.
    assert_eq!(with_cookie(&app, "/api/v1/import/jobs", TOKEN).await, 200);
    assert_eq!(
        with_cookie(&app, "/api/v1/import/jobs", "slc_nope").await,
        401
    );

    // The token as a Bearer header, without a body, works too; behind an HTTPS proxy the
    // cookie is Secure.
    let resp = app
        .http
        .post(app.url("/api/v1/session"))
        .bearer_auth(TOKEN)
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let cookies = set_cookies(resp.headers());
    let attrs = attributes(&cookies[0]);
    assert_eq!(attrs[0].1, TOKEN);
    assert_eq!(attribute(&attrs, "secure"), Some(""), "{cookies:?}");

    // A token that expires in an hour gets a cookie that lasts no longer.
    let (hourly, _) = new_token(&app, user, "1h").await;
    let (code, cookies, body) = sign_in(&app, json!({"token": hourly})).await;
    assert_eq!(code, 200, "{body}");
    assert!(body["data"]["expiresAt"].is_string(), "{body}");
    let attrs = attributes(&cookies[0]);
    let max_age: i64 = attribute(&attrs, "max-age")
        .expect("Max-Age")
        .parse()
        .unwrap();
    assert!((3500..=3600).contains(&max_age), "{max_age}");
    assert_eq!(with_cookie(&app, "/api/v1/datasets", &hourly).await, 200);

    // Signing out clears the cookie.
    let resp = app
        .http
        .delete(app.url("/api/v1/session"))
        .header("cookie", format!("token={TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    let cookies = set_cookies(resp.headers());
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    let attrs = attributes(&cookies[0]);
    assert_eq!(attrs[0], ("token".to_string(), String::new()));
    assert_eq!(attribute(&attrs, "max-age"), Some("0"), "{cookies:?}");
    assert_eq!(attribute(&attrs, "httponly"), Some(""), "{cookies:?}");
    assert_eq!(attribute(&attrs, "path"), Some("/"), "{cookies:?}");
}

async fn a_dead_or_missing_token_gets_401_and_no_cookie(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        ..Default::default()
    });
    let (_, _, me) = sign_in(&app, json!({"token": TOKEN})).await;
    let user = me["data"]["userId"].as_i64().unwrap();
    let (revoked, revoked_id) = new_token(&app, user, "1h").await;
    let resp = app
        .http
        .delete(app.url(&format!("/api/v1/admin/tokens/{revoked_id}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let (expired, _) = new_token(&app, user, "1s").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The 401 every other route gives.
    let (code, elsewhere) = json_of(
        app.http
            .get(app.url("/api/v1/import/jobs"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 401);
    for body in [
        json!({"token": "slc_0000000000000000000000000000000000000000000000000000000000000000"}),
        json!({"token": revoked}),
        json!({"token": expired}),
        json!({"token": ""}),
    ] {
        let (code, cookies, answer) = sign_in(&app, body.clone()).await;
        assert_eq!(code, 401, "{body}: {answer}");
        assert!(cookies.is_empty(), "{body}: {cookies:?}");
        assert_eq!(answer, elsewhere, "{body}");
    }
    // No token at all, and a dead one as a Bearer header.
    for bearer in [None, Some(expired.as_str())] {
        let mut req = app.http.post(app.url("/api/v1/session"));
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 401);
        assert!(set_cookies(resp.headers()).is_empty());
    }
    // Not JSON: a 400 and no cookie.
    let resp = app
        .http
        .post(app.url("/api/v1/session"))
        .body("token=abc")
        .send()
        .await
        .unwrap();
    assert!(set_cookies(resp.headers()).is_empty());
    let (code, body) = json_of(resp).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (400, Some("invalid_body"))
    );
    // The cookies of the dead tokens do not authenticate either.
    assert_eq!(
        with_cookie(&app, "/api/v1/import/jobs", &revoked).await,
        401
    );
    assert_eq!(
        with_cookie(&app, "/api/v1/import/jobs", &expired).await,
        401
    );
}

async fn cookie_authenticated_changes_from_another_origin_are_refused(backend: Backend) {
    let app = spawn_app(AppOptions {
        backend,
        ..Default::default()
    });
    let (file, _) = generate(app.dir.path(), "p.csv", &["--rows", "100"]);
    let job = job_id(&app.upload("products", &file).await.1);
    app.wait_done(job, MINUTE).await;
    let own_origin = app.base.clone(); // http://127.0.0.1:PORT
    let delete = |origin: Option<&str>, cookie: bool| {
        let mut req = app.http.delete(app.url(&format!("/api/v1/import/{job}")));
        req = if cookie {
            req.header("cookie", format!("token={TOKEN}"))
        } else {
            req.bearer_auth("slc_wrong")
                .header("cookie", format!("token={TOKEN}"))
        };
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.send()
    };
    for origin in ["http://evil.example", "null", "http://127.0.0.1:1"] {
        let (code, body) = json_of(delete(Some(origin), true).await.unwrap()).await;
        assert_eq!(
            (code, body["error"]["code"].as_str()),
            (403, Some("cross_origin_request")),
            "{origin}: {body}"
        );
    }
    // Reads with the cookie are not affected, and the job is still there.
    let resp = app
        .http
        .get(app.url(&format!("/api/v1/import/status/{job}")))
        .header("cookie", format!("token={TOKEN}"))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    // A Bearer header is what counts when there is one (here a wrong one: 401, not 403).
    let resp = delete(Some("http://evil.example"), false).await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    // Signing in or out from another site's page is refused too, with no cookie.
    for method in [reqwest::Method::POST, reqwest::Method::DELETE] {
        let resp = app
            .http
            .request(method.clone(), app.url("/api/v1/session"))
            .header("origin", "http://evil.example")
            .json(&json!({"token": TOKEN}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 403, "{method}");
        assert!(set_cookies(resp.headers()).is_empty(), "{method}");
    }
    // The server's own pages send their own origin: allowed.
    let (code, body) = json_of(delete(Some(&own_origin), true).await.unwrap()).await;
    assert_eq!(code, 200, "{body}");
    let (code, _) = app.get_json(&format!("/api/v1/import/status/{job}")).await;
    assert_eq!(code, 404);
    // A Bearer request from anywhere is not a browser's ambient credential: not checked.
    let job = job_id(&app.upload("products", &file).await.1);
    app.wait_done(job, MINUTE).await;
    let resp = app
        .http
        .delete(app.url(&format!("/api/v1/import/{job}")))
        .bearer_auth(TOKEN)
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

conformance!(
    signing_in_sets_an_http_only_strict_cookie_that_authenticates,
    a_dead_or_missing_token_gets_401_and_no_cookie,
    cookie_authenticated_changes_from_another_origin_are_refused,
);
