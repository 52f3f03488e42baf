//! The web UI's files are served from the binary without a token, with security headers, while
//! the API behind them still needs one.

mod common;

use common::*;

#[tokio::test]
async fn the_ui_and_the_js_client_are_served_without_a_token_with_security_headers() {
    let app = spawn_app(AppOptions::default());
    for (path, kind, needle) in [
        ("/", "text/html", "<script src=\"/app.js\" defer></script>"),
        (
            "/app.js",
            "text/javascript",
            "EventSource('/api/v1/events')",
        ),
        ("/app.css", "text/css", ".progress"),
        ("/icon.svg", "image/svg+xml", "<svg"),
        ("/sluice.js", "text/javascript", "uploadAndMonitor"),
    ] {
        let resp = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        let h = resp.headers().clone();
        assert!(
            h["content-type"].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{csp}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["x-frame-options"], "DENY");
        let body = resp.text().await.unwrap();
        assert!(body.contains(needle), "{path} lacks {needle}");
    }
    // No inline script or style in the page: the CSP would block them.
    let page = app
        .http
        .get(app.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!page.contains("<script>") && !page.contains("style="));
    // The data stays behind the token.
    for path in ["/api/v1/events", "/api/v1/import/jobs", "/api/v1/datasets"] {
        let resp = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{path}");
    }
    let resp = app
        .http
        .get(app.url("/api/v1/datasets"))
        .header("Cookie", format!("token={TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}
