//! The web console at `/ui`: a few HTML pages (overview, transactions, one transaction,
//! participants, coordinators) with their script and style, all embedded in the binary.
//!
//! The pages carry no data. Their script reads the HTTP/JSON API under `/v1` with the token the
//! user typed (kept in `sessionStorage`, sent as `Authorization: Bearer`), so every read and every
//! operation goes through the API's own checks: roles, namespaces, validation. No cookie is ever
//! set, so another site cannot make the browser act for the user (no CSRF), and the script builds
//! the page with `textContent` and DOM nodes only, so user-supplied text is never parsed as HTML.
//! The page shells are rendered by an auto-escaping template; the one value from the request (the
//! transaction id in the path) is read by the script, not put into the HTML.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use minijinja::{context, Environment};

const LAYOUT: &str = include_str!("layout.html");
const SCRIPT: &str = include_str!("console.js");
const STYLE: &str = include_str!("console.css");
/// The tab icon: without one the browser asks for /favicon.ico and logs the 404 as an error.
const ICON: &str = "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 16 16\">\
<rect width=\"16\" height=\"16\" rx=\"3\" fill=\"#1d2330\"/>\
<rect x=\"3\" y=\"7\" width=\"10\" height=\"2\" fill=\"#6aa0ff\"/></svg>";

/// Only this origin's script, style and API; no inline script, no frames. A second fence behind
/// the escaping: even markup that slipped into the page could not run.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// A page: its name (the script picks its code by it), title and navigation entry.
struct Page {
    name: &'static str,
    title: &'static str,
}

const OVERVIEW: Page = Page {
    name: "overview",
    title: "Overview",
};
const TRANSACTIONS: Page = Page {
    name: "transactions",
    title: "Transactions",
};
const TRANSACTION: Page = Page {
    name: "transaction",
    title: "Transaction",
};
const PARTICIPANTS: Page = Page {
    name: "participants",
    title: "Participants",
};
const COORDINATORS: Page = Page {
    name: "coordinators",
    title: "Coordinators",
};

/// The `/ui` routes.
pub fn router() -> Router {
    Router::new()
        .route("/ui", get(|| async { page(&OVERVIEW) }))
        .route("/ui/", get(|| async { Redirect::permanent("/ui") }))
        .route("/ui/transactions", get(|| async { page(&TRANSACTIONS) }))
        .route(
            "/ui/transactions/{id}",
            // The id is the script's to read from the address; it never enters the HTML.
            get(|Path(_id): Path<String>| async { page(&TRANSACTION) }),
        )
        .route("/ui/participants", get(|| async { page(&PARTICIPANTS) }))
        .route("/ui/coordinators", get(|| async { page(&COORDINATORS) }))
        .route(
            "/ui/assets/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/ui/assets/console.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route(
            "/ui/assets/icon.svg",
            get(|| async { asset("image/svg+xml", ICON) }),
        )
}

/// The shell of `page`.
fn render(page: &Page) -> Result<String, minijinja::Error> {
    let mut env = Environment::new();
    // The name ends in .html, so every `{{ }}` is HTML-escaped.
    env.add_template("layout.html", LAYOUT)?;
    env.get_template("layout.html")?.render(context! {
        page => page.name,
        title => page.title,
        version => env!("CARGO_PKG_VERSION"),
        nav => [&OVERVIEW, &TRANSACTIONS, &PARTICIPANTS, &COORDINATORS]
            .iter()
            .map(|p| context! { name => p.name, title => p.title })
            .collect::<Vec<_>>(),
    })
}

fn page(page: &Page) -> Response {
    match render(page) {
        Ok(html) => {
            let mut response =
                ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response();
            secure(&mut response);
            response
        }
        // The templates are constants checked by the tests; this is a bug, said plainly.
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("console page {}: {e}\n", page.name),
        )
            .into_response(),
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    secure(&mut response);
    response
}

fn secure(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // A new binary may bring a new script: always ask, never serve a stale copy.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_renders_with_its_name_and_the_embedded_assets() {
        for p in [
            &OVERVIEW,
            &TRANSACTIONS,
            &TRANSACTION,
            &PARTICIPANTS,
            &COORDINATORS,
        ] {
            let html = render(p).expect("renders");
            assert!(
                html.contains(&format!("data-page=\"{}\"", p.name)),
                "{html}"
            );
            assert!(html.contains("/ui/assets/console.js"));
            assert!(!html.contains("{{") && !html.contains("{%"));
            // Nothing is fetched from another origin.
            assert!(!html.contains("http://") && !html.contains("https://"));
        }
        // The SVG namespace is a name, not an address the browser fetches.
        let script = SCRIPT.replace("http://www.w3.org/2000/svg", "");
        assert!(!script.contains("http://") && !script.contains("https://"));
    }

    #[test]
    fn template_values_are_html_escaped() {
        let mut env = Environment::new();
        env.add_template("t.html", "{{ v }}").expect("parses");
        let out = env
            .get_template("t.html")
            .expect("exists")
            .render(context! { v => "<script>x</script>" })
            .expect("renders");
        assert_eq!(out, "&lt;script&gt;x&lt;&#x2f;script&gt;");
    }
}
