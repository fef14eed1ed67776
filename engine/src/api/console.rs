//! The web console: one page of HTML, CSS and JavaScript built into the binary (no Node
//! toolchain), served at `/ui/` on the socket and the TCP listener. The page holds no data; it
//! logs in with a token (kept in the tab's session storage) and calls the same API as the CLI,
//! with `Authorization: Bearer`. It renders every value as text, never as markup, and the
//! Content-Security-Policy allows only its own script and style.

use super::*;

const INDEX: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/app.js");
const STYLE: &str = include_str!("console/app.css");

/// Only the console's own files; nothing inline, no frames, no other origin.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                      connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub(super) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

pub(super) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

pub(super) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

pub(super) async fn to_console() -> Response {
    (StatusCode::FOUND, [(header::LOCATION, "/ui/")]).into_response()
}
