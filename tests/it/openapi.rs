//! The OpenAPI document at `/openapi.json` against the routes the service really serves
//! (`support::ROUTES`, which `service::every_route_checks_its_scope` requests one by one),
//! and the `/docs` page.
use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::app::{spawn_app_with_keys, Backend, TestApp};
use crate::support::{Need, ROUTES};

const KEYS: &str = "read:read-key-0123456789,write:write-key-0123456789,admin:admin-key-0123456789";

const METHODS: [&str; 8] = ["get", "put", "post", "delete", "patch", "head", "options", "trace"];

/// Fetches the document without a key (it is open, like `/healthz`).
async fn document(app: &TestApp) -> Value {
    let response = app.client.get(app.url("/openapi.json")).send().await.expect("sent");
    assert_eq!(response.status(), 200);
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    assert!(content_type.starts_with("application/json"), "{content_type}");
    response.json().await.expect("the document is JSON")
}

/// Follows a local `$ref` (`#/components/...`) to what it names.
fn resolve<'a>(doc: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference.strip_prefix('#').unwrap_or_else(|| panic!("non-local $ref {reference}"));
            let target = doc.pointer(pointer).unwrap_or_else(|| panic!("$ref {reference} names nothing"));
            resolve(doc, target)
        }
        None => node,
    }
}

/// Every `$ref` anywhere in `node`.
fn refs<'a>(node: &'a Value, out: &mut Vec<&'a str>) {
    match node {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                out.push(r);
            }
            map.values().for_each(|v| refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_exactly_the_served_routes_with_their_scopes_and_responses() {
    let app = spawn_app_with_keys(Backend::Sqlite, Some(KEYS)).await.expect("sqlite");
    let doc = document(&app).await;
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "{}", doc["openapi"]);
    assert_eq!(doc["info"]["title"], "tsad");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));

    let paths = doc["paths"].as_object().expect("paths");
    let documented: BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| {
            let item = item.as_object().expect("path item");
            METHODS.iter().filter(|m| item.contains_key(**m)).map(|m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let served: BTreeSet<(String, String)> =
        ROUTES.iter().filter(|r| r.in_openapi).map(|r| (r.method.to_string(), r.template.to_string())).collect();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let not_served: Vec<_> = documented.difference(&served).collect();
    assert!(undocumented.is_empty(), "served but not in /openapi.json: {undocumented:?}");
    assert!(not_served.is_empty(), "in /openapi.json but not a route: {not_served:?}");

    for route in ROUTES.iter().filter(|r| r.in_openapi) {
        let what = format!("{} {}", route.method, route.template);
        let op = &doc["paths"][route.template][route.method.to_lowercase()];
        let responses = op["responses"].as_object().unwrap_or_else(|| panic!("{what}: no responses"));
        let codes: Vec<u16> =
            responses.keys().map(|c| c.parse().unwrap_or_else(|_| panic!("{what}: code {c}"))).collect();
        assert!(codes.iter().any(|c| (200..300).contains(c)), "{what}: no 2xx response in {codes:?}");
        match route.need.scope() {
            None => {
                assert!(op["security"].is_null() || op["security"] == json!([]), "{what} is open: {}", op["security"]);
            }
            Some(scope) => {
                assert_eq!(op["security"], json!([{ "api_key": [scope] }]), "{what}");
                for code in [401, 403] {
                    assert!(codes.contains(&code), "{what}: no {code} response in {codes:?}");
                }
            }
        }
        if route.need != Need::Open {
            assert!(codes.iter().any(|c| (400..500).contains(c)), "{what}: no 4xx response");
        }
        // Errors are problem+json with the Problem schema.
        for (code, response) in responses.iter().filter(|(c, _)| !c.starts_with('2')) {
            let response = resolve(&doc, response);
            let schema = &response["content"]["application/problem+json"]["schema"];
            assert_eq!(schema["$ref"], "#/components/schemas/Problem", "{what} {code}: {response}");
        }
        // Every `{name}` of the path is a declared path parameter, and nothing else is.
        let in_path: BTreeSet<&str> =
            route.template.split('/').filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).collect();
        let declared: BTreeSet<&str> = op["parameters"]
            .as_array()
            .map(|ps| ps.iter().map(|p| resolve(&doc, p)))
            .into_iter()
            .flatten()
            .filter(|p| p["in"] == "path")
            .map(|p| p["name"].as_str().expect("parameter name"))
            .collect();
        assert_eq!(in_path, declared, "{what}: path parameters");
    }

    let scheme = &doc["components"]["securitySchemes"]["api_key"];
    assert_eq!((scheme["type"].as_str(), scheme["scheme"].as_str()), (Some("http"), Some("bearer")), "{scheme}");
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for reference in all {
        resolve(&doc, &json!({ "$ref": reference }));
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_page_is_one_page_that_loads_nothing_from_elsewhere() {
    let app = spawn_app_with_keys(Backend::Sqlite, Some(KEYS)).await.expect("sqlite");
    let response = app.client.get(app.url("/docs")).send().await.expect("sent");
    assert_eq!(response.status(), 200);
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert!(header("content-type").starts_with("text/html"), "{}", header("content-type"));
    assert!(header("content-security-policy").contains("default-src 'none'"), "{}", header("content-security-policy"));
    let page = response.text().await.expect("page");
    assert!(page.contains("fetch(\"openapi.json\")"), "the page renders /openapi.json");
    for outside in ["src=\"http", "href=\"http", "src=\"//", "href=\"//", "@import", "url(http"] {
        assert!(!page.contains(outside), "the page loads something from elsewhere: {outside}");
    }
    app.stop().await;
}
