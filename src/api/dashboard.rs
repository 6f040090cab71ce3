//! The web dashboard at `/`: static files from `web/`, embedded in the binary so it runs
//! from any working directory and needs no CDN. The page itself carries no data and is
//! served without authentication; every call it makes goes to the API, which checks its
//! own scopes (the page sends the key the user typed in). No handler here touches state.
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::{ApiError, AppState};

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

/// Everything under `/assets/`. Names are fixed, so a request can never reach the disk.
const ASSETS: &[Asset] = &[
    Asset { name: "app.js", content_type: "text/javascript; charset=utf-8", bytes: include_bytes!("../../web/app.js") },
    Asset { name: "style.css", content_type: "text/css; charset=utf-8", bytes: include_bytes!("../../web/style.css") },
    Asset {
        name: "uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../web/vendor/uPlot.iife.min.js"),
    },
    Asset {
        name: "uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../web/vendor/uPlot.min.css"),
    },
];

/// `index.html` refers to assets as `/assets/NAME?v=__ASSET_VERSION__`.
const INDEX_TEMPLATE: &str = include_str!("../../web/index.html");

/// Where the page may load from and connect to: this server only.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; connect-src 'self'; \
                                       object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// Assets change only with the binary, and the page names them with a hash of their
/// contents, so a browser may keep them for a year; the page itself is revalidated (ETag).
const ASSET_CACHE: &str = "public, max-age=31536000, immutable";
const PAGE_CACHE: &str = "no-cache";

/// The page with the asset version filled in, and its ETag; built on first request.
static INDEX: LazyLock<(String, String)> = LazyLock::new(|| {
    let version = hash(ASSETS.iter().map(|a| a.bytes));
    let page = INDEX_TEMPLATE.replace("__ASSET_VERSION__", &version);
    let etag = format!("\"{}\"", hash([page.as_bytes()]));
    (page, etag)
});

pub fn routes() -> Router<AppState> {
    Router::new().route("/", get(index)).route("/assets/{file}", get(asset))
}

/// A short content hash (stable for a given binary, which is all a cache key needs).
fn hash<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut hasher = DefaultHasher::new();
    for part in parts {
        part.hash(&mut hasher);
    }
    format!("{:016x}", hasher.finish())
}

async fn index(headers: HeaderMap) -> Response {
    let (page, etag) = &*INDEX;
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag || tag.trim() == "*"));
    let mut response =
        if fresh { StatusCode::NOT_MODIFIED.into_response() } else { (StatusCode::OK, page.clone()).into_response() };
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(PAGE_CACHE));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if let Ok(value) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, value);
    }
    response
}

async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    let asset = ASSETS.iter().find(|a| a.name == file).ok_or_else(|| ApiError::NotFound(format!("no asset {file}")))?;
    Ok((
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::CACHE_CONTROL, ASSET_CACHE),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        asset.bytes,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_every_asset_with_the_content_version() {
        let (page, _) = &*INDEX;
        assert!(!page.contains("__ASSET_VERSION__"));
        for name in ["app.js", "style.css", "uPlot.iife.min.js", "uPlot.min.css"] {
            assert!(page.contains(&format!("/assets/{name}?v=")), "{name} is not linked from index.html");
            assert!(ASSETS.iter().any(|a| a.name == name), "{name} is not embedded");
        }
    }
}
