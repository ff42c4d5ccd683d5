//! The operator dashboard: `GET /` serves one static page (`dashboard.html`, inline CSS
//! and JavaScript, no build step, no external asset) that shows the agents and sends
//! commands through the operator API the hub already has.
//!
//! Auth: the page itself holds no data and is the same for everyone, so it is served
//! without a token. It asks for an operator token, keeps it in the tab's `sessionStorage`
//! and sends it as `Authorization: Bearer` on every `fetch()` to `GET /v1/agents`,
//! `POST /v1/agents/{agent}/commands` and `GET /v1/requests/{id}`, where the usual roles
//! apply (a `read` token gets `403` on a command, and the page shows the refusal). No
//! cookie is ever set, so a page of another site cannot make the browser act for the
//! operator (no CSRF), and without CORS headers it cannot read the API either.
//!
//! What must never happen: text from the API (agent ids, groups, heartbeat fields,
//! errors: all attacker-influenced) parsed as HTML. The page writes it with `textContent`
//! only, and the Content-Security-Policy ([`policy`]) allows exactly the page's own inline
//! script and style (by their SHA-256), `fetch()` to this origin, and nothing else: no
//! other script, no image, no frame, no form target, no framing by other sites.

use std::sync::OnceLock;

use http_types::{Response, StatusCode};

/// The page, served as is.
pub const PAGE: &str = include_str!("dashboard.html");

/// The `Content-Security-Policy` of the page, with `{script}` and `{style}` standing for
/// the `'sha256-...'` sources of its inline script and style.
const CSP: &str = "default-src 'none'; script-src {script}; style-src {style}; \
                   connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// `200` with the page and its security headers.
pub fn response() -> Response {
    let mut r = Response::new(StatusCode::Ok);
    r.set_body(PAGE);
    r.insert_header("Content-Type", "text/html; charset=utf-8");
    r.insert_header("Content-Security-Policy", policy());
    r.insert_header("X-Content-Type-Options", "nosniff");
    r.insert_header("X-Frame-Options", "DENY");
    r.insert_header("Referrer-Policy", "no-referrer");
    r.insert_header("Cache-Control", "no-store");
    r
}

/// The page's policy (worked out once).
pub fn policy() -> &'static str {
    static POLICY: OnceLock<String> = OnceLock::new();
    POLICY.get_or_init(|| {
        let hash = |tag| inline(PAGE, tag).map_or_else(|| "'none'".to_string(), sha256_source);
        CSP.replace("{script}", &hash("script"))
            .replace("{style}", &hash("style"))
    })
}

/// The text between `<tag>` and `</tag>`, when the page has exactly one such element.
fn inline<'a>(page: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = page.find(&open)? + open.len();
    let end = start + page[start..].find(&close)?;
    let once = page.matches(&open).count() == 1;
    once.then(|| &page[start..end])
}

/// A CSP hash source for `text`: `'sha256-<base64>'`.
fn sha256_source(text: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    format!("'sha256-{}'", crate::base64::encode(d.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_exactly_the_pages_own_script_and_style() {
        let p = policy();
        let script = inline(PAGE, "script").expect("one inline script");
        let style = inline(PAGE, "style").expect("one inline style");
        assert!(
            p.contains(&format!("script-src {};", sha256_source(script))),
            "{p}"
        );
        assert!(
            p.contains(&format!("style-src {};", sha256_source(style))),
            "{p}"
        );
        for must in [
            "default-src 'none'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "form-action 'none'",
            "base-uri 'none'",
        ] {
            assert!(p.contains(must), "{must} missing: {p}");
        }
        assert!(!p.contains("unsafe"), "{p}");
        // Known vector: SHA-256 of the empty string.
        assert_eq!(
            sha256_source(""),
            "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='"
        );
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        let lower = PAGE.to_ascii_lowercase();
        for bad in [
            "http:", "https:", "//cdn", "src=", "href=", "@import", "url(", "<link", "<iframe",
        ] {
            assert!(!lower.contains(bad), "the page contains `{bad}`");
        }
    }

    #[test]
    fn the_page_never_parses_api_text_as_html() {
        for bad in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
            "setTimeout('",
            "localStorage",
            "document.cookie",
        ] {
            assert!(!PAGE.contains(bad), "the page uses `{bad}`");
        }
        // No inline event handler attributes (the policy would block them anyway).
        let html_only = PAGE.replace(inline(PAGE, "script").unwrap(), "");
        for attr in [" onclick=", " onload=", " onsubmit=", " onerror="] {
            assert!(!html_only.contains(attr), "the page has `{attr}`");
        }
    }

    #[test]
    fn the_response_carries_the_policy_and_is_not_cached() {
        let r = response();
        assert_eq!(u16::from(r.status()), 200);
        let h = |n: &str| r.header(n).map(|v| v.as_str().to_string());
        assert_eq!(h("Content-Security-Policy").as_deref(), Some(policy()));
        assert_eq!(
            h("Content-Type").as_deref(),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(h("X-Content-Type-Options").as_deref(), Some("nosniff"));
        assert_eq!(h("Cache-Control").as_deref(), Some("no-store"));
        assert_eq!(h("X-Frame-Options").as_deref(), Some("DENY"));
    }

    #[test]
    fn inline_takes_one_element_only() {
        assert_eq!(inline("<a><b>x</b></a>", "b"), Some("x"));
        assert_eq!(inline("<b>x</b><b>y</b>", "b"), None);
        assert_eq!(inline("<b>x", "b"), None);
        assert_eq!(inline("none", "b"), None);
    }
}
