//! `GET /api/v1/openapi.json`: the OpenAPI document of this API, generated from the handlers'
//! `#[utoipa::path]` annotations and the types' `ToSchema` derives, never written by hand. Its operations
//! are those of the registered routes (`http::routes`), and the role each operator route needs comes from
//! [`ROUTE_ROLES`](super::ROUTE_ROLES), the table the server enforces, built from the same registrations.
//! The document is open: it describes the API's shape, nothing of the fleet, and clients read it before
//! they have a token.

use std::sync::OnceLock;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use utoipa::openapi::OpenApi as Document;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::auth::{ROUTE_ROLES, required_role};

/// The name of the bearer security scheme in the document.
const BEARER: &str = "bearer";

#[derive(OpenApi)]
#[openapi(info(
    title = "drover",
    description = "The drover control plane's REST API (docs/api.md). Operator routes take an operator \
token as `Authorization: Bearer`; the roles a route accepts are the scopes of its `bearer` requirement \
(viewer < operator < admin: a higher role may do what a lower one may). The MIaaS agent routes take a join \
token or a node token."
))]
struct ApiDoc;

/// Adds the bearer scheme and, on every operator route, the role `ROUTE_ROLES` says it needs.
struct Roles;

impl Modify for Roles {
    fn modify(&self, doc: &mut Document) {
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                BEARER,
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        doc.info.version = drover_types::VERSION.to_string();
        for (path, item) in doc.paths.paths.iter_mut() {
            for (method, op) in operations(item) {
                let Some(role) = required_role(&method, path) else {
                    continue;
                };
                let allowed: Vec<&str> = drover_types::operator::Role::ALL
                    .into_iter()
                    .filter(|r| *r >= role)
                    .map(|r| r.as_str())
                    .collect();
                op.security = Some(vec![SecurityRequirement::new(BEARER, allowed)]);
                let note = format!("Needs the `{role}` role (or above).");
                op.description = Some(match op.description.take() {
                    Some(d) if !d.is_empty() => format!("{d}\n\n{note}"),
                    _ => note,
                });
            }
        }
    }
}

/// Every operation of a path item, with its method.
fn operations(
    item: &mut utoipa::openapi::PathItem,
) -> Vec<(axum::http::Method, &mut utoipa::openapi::path::Operation)> {
    use axum::http::Method;
    [
        (Method::GET, &mut item.get),
        (Method::PUT, &mut item.put),
        (Method::POST, &mut item.post),
        (Method::DELETE, &mut item.delete),
        (Method::PATCH, &mut item.patch),
        (Method::HEAD, &mut item.head),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.as_mut().map(|op| (m, op)))
    .collect()
}

/// The document, built once.
pub fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = ApiDoc::openapi();
        ROUTE_ROLES.document(&mut doc);
        Roles.modify(&mut doc);
        doc.to_pretty_json().unwrap_or_else(|e| {
            tracing::error!("cannot serialize the OpenAPI document: {e}");
            "{}".to_string()
        })
    })
}

#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    operation_id = "openapi",
    responses((status = 200, description = "this document", content_type = "application/json", body = Object))
)]
pub async fn openapi_json() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], document())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;
    use crate::http::Access;

    /// Whether a route belongs in the document: the dashboard's pages are HTML for people
    /// (docs/dashboard.md), and the tampering routes exist only in test builds.
    fn documented_route(path: &str) -> bool {
        path != "/ui" && !path.starts_with("/ui/") && !path.starts_with("/api/v1/tamper/")
    }

    fn doc() -> Value {
        serde_json::from_str(document()).unwrap()
    }

    /// (METHOD, path) of every operation in the document.
    fn documented(doc: &Value) -> BTreeSet<(String, String)> {
        let mut routes = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if method != "parameters" {
                    routes.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        routes
    }

    #[test]
    fn the_document_has_exactly_the_routes_the_server_knows() {
        for r in ROUTE_ROLES.iter() {
            assert_eq!(
                r.documented,
                documented_route(&r.path),
                "{} {} is registered {} the document",
                r.method,
                r.path,
                if r.documented { "in" } else { "out of" }
            );
        }
        let served: BTreeSet<(String, String)> = ROUTE_ROLES
            .iter()
            .filter(|r| r.documented)
            .map(|r| (r.method.to_string(), r.path.clone()))
            .collect();
        let documented = documented(&doc());
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let unserved: Vec<_> = documented.difference(&served).collect();
        assert!(
            undocumented.is_empty(),
            "served but not in the document: {undocumented:?}"
        );
        assert!(
            unserved.is_empty(),
            "documented but served by no route: {unserved:?}"
        );
    }

    #[test]
    fn operator_routes_carry_their_role_and_open_routes_none() {
        let doc = doc();
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        for r in ROUTE_ROLES.iter().filter(|r| r.documented) {
            let (method, path) = (&r.method, &r.path);
            let op = &doc["paths"][path][method.as_str().to_lowercase()];
            // utoipa's `paths(...)` tagged an untagged handler with its module; registrations do not.
            assert!(op["tags"][0].is_string(), "{method} {path} has no tag");
            match r.access {
                Access::Needs(role) => {
                    let scopes = &op["security"][0]["bearer"];
                    assert_eq!(scopes[0], role.as_str(), "{method} {path}: {op}");
                    assert!(
                        op["description"]
                            .as_str()
                            .unwrap()
                            .contains(&format!("`{role}` role")),
                        "{method} {path}"
                    );
                }
                Access::Open => {
                    assert!(op.is_object(), "{method} {path}");
                    assert!(op["security"].is_null(), "{method} {path} is open");
                }
            }
        }
        // An admin route accepts only admins; a viewer route every role.
        assert_eq!(
            doc["paths"]["/api/v1/tokens"]["post"]["security"][0]["bearer"],
            serde_json::json!(["admin"])
        );
        assert_eq!(
            doc["paths"]["/api/v1/nodes"]["get"]["security"][0]["bearer"],
            serde_json::json!(["viewer", "operator", "admin"])
        );
        assert!(doc["paths"]["/health"]["get"]["security"].is_null());
    }

    #[test]
    fn every_schema_reference_resolves() {
        fn refs(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        out.push(r.clone());
                    }
                    m.values().for_each(|v| refs(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let doc = doc();
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(all.len() > 20, "the types are referenced: {all:?}");
        for r in all {
            let name = r.strip_prefix("#/components/schemas/").unwrap();
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "{r} is not in components"
            );
        }
        assert_eq!(doc["info"]["version"], drover_types::VERSION);
    }
}
