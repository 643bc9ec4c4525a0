//! The dashboard: one page with its script and style, compiled into the binary and served on
//! control's API port without the token (they hold no data: the page asks the API for it, with the
//! token the operator gives it). Nodes with their healing ladder and rollout (and its buttons), the
//! event map, and the journal live over the SSE stream.

/// A file of the dashboard.
pub struct Asset {
    pub content_type: &'static str,
    pub body: &'static str,
}

/// What the page may load and reach: only this origin, no inline script, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// The file served at `path`, if it is one of the dashboard's.
pub fn asset(path: &str) -> Option<Asset> {
    let (content_type, body) = match path {
        "/" | "/dashboard" => ("text/html; charset=utf-8", include_str!("dashboard/index.html")),
        "/dashboard.js" => ("text/javascript; charset=utf-8", include_str!("dashboard/dashboard.js")),
        "/dashboard.css" => ("text/css; charset=utf-8", include_str!("dashboard/dashboard.css")),
        _ => return None,
    };
    Some(Asset { content_type, body })
}
