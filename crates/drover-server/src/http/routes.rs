//! The one place a route is declared: each registration names the handler, who may call it and, for a
//! documented route, the handler's `#[utoipa::path]` struct (`__path_<fn>`), whose attribute gives the path,
//! the method and the OpenAPI operation. From the same registrations come the router
//! ([`Routes::into_router`]), the role table the server checks (`auth::ROUTE_ROLES`) and the OpenAPI
//! document (`openapi`), so none of them can name a route the others lack.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{MethodFilter, MethodRouter, on};
use drover_types::operator::Role;
use utoipa::openapi::OpenApi as Document;
use utoipa::openapi::path::HttpMethod;
use utoipa::openapi::{Components, RefOr, Schema};

use super::HttpState;

/// What `#[utoipa::path]` generates for a handler `f`: the struct `__path_f`, which gives the path, the
/// methods and the operation (`utoipa::Path`), the operation's tags and the schemas its types need. The
/// last two are traits of utoipa's hidden `__dev` module, called here as utoipa's own `OpenApi` derive
/// calls them (and utoipa-axum, which this crate does not use); utoipa's version is pinned in Cargo.lock.
pub(crate) trait Documented:
    utoipa::Path + utoipa::__dev::SchemaReferences + utoipa::__dev::Tags<'static>
{
}

impl<P> Documented for P where
    P: utoipa::Path + utoipa::__dev::SchemaReferences + utoipa::__dev::Tags<'static>
{
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: the route checks any token itself (MIaaS agents, the dashboard's login), or needs none.
    Open,
    /// An operator token whose role is this one or above (checked by `auth::check_role`).
    Needs(Role),
}

/// One method of one route, as registered.
#[derive(Debug, Clone)]
pub struct Route {
    pub method: Method,
    /// The route pattern, as axum's `MatchedPath` gives it (`/api/v1/nodes/{id}`).
    pub path: String,
    pub access: Access,
    /// Whether the OpenAPI document describes it (every route but the dashboard's and the tampering ones).
    pub documented: bool,
    /// The handler's type name, and its `#[utoipa::path]` struct's when documented: a test checks that a
    /// registration pairs a handler with its own attribute.
    pub handler: &'static str,
    pub doc_struct: Option<&'static str>,
}

/// Every registered route and what its registrations add to the OpenAPI document.
pub struct RouteTable {
    routes: Vec<Route>,
    docs: Vec<fn(&mut Document)>,
}

impl RouteTable {
    /// Every route, in the order registered.
    pub fn iter(&self) -> std::slice::Iter<'_, Route> {
        self.routes.iter()
    }

    /// Adds every documented route's operation, and the schemas it refers to, to `doc`.
    pub(crate) fn document(&self, doc: &mut Document) {
        for add in &self.docs {
            add(doc);
        }
    }
}

/// Which gate a route is served behind.
#[derive(Clone, Copy)]
enum Gate {
    /// An operator token (`auth::authorize`).
    Operator,
    /// The dashboard's: a cookie or a bearer token (`ui::require`).
    Page,
    /// None.
    Open,
}

/// The routes being registered, by gate, and the table of them; see the module's notes.
#[derive(Default)]
pub(crate) struct Routes {
    operator: Router<HttpState>,
    pages: Router<HttpState>,
    open: Router<HttpState>,
    routes: Vec<Route>,
    docs: Vec<fn(&mut Document)>,
}

impl Routes {
    /// An operator route needing `role`, at the path and methods of its handler's `#[utoipa::path]`, in
    /// the OpenAPI document: `doc` is the struct that attribute generates, `__path_<handler>`.
    pub fn op<P: Documented, H: Handler<T, HttpState>, T: 'static>(
        self,
        role: Role,
        _doc: P,
        handler: H,
    ) -> Self {
        self.documented::<P, H, T>(Gate::Operator, Access::Needs(role), handler, None)
    }

    /// [`op`](Self::op) for a route whose body may exceed the server's `MAX_BODY_BYTES`, up to `limit`.
    pub fn op_body_limit<P: Documented, H: Handler<T, HttpState>, T: 'static>(
        self,
        role: Role,
        _doc: P,
        handler: H,
        limit: usize,
    ) -> Self {
        self.documented::<P, H, T>(Gate::Operator, Access::Needs(role), handler, Some(limit))
    }

    /// An operator route left out of the OpenAPI document: only the test-only tampering routes are.
    #[cfg(feature = "tamper")]
    pub fn op_undocumented<H: Handler<T, HttpState>, T: 'static>(
        self,
        method: Method,
        path: &str,
        role: Role,
        handler: H,
    ) -> Self {
        self.undocumented(Gate::Operator, method, path, Access::Needs(role), handler)
    }

    /// A dashboard page needing `role` (HTML for people, so not in the OpenAPI document).
    pub fn page<H: Handler<T, HttpState>, T: 'static>(
        self,
        method: Method,
        path: &str,
        role: Role,
        handler: H,
    ) -> Self {
        self.undocumented(Gate::Page, method, path, Access::Needs(role), handler)
    }

    /// A route anyone may call, at the path and methods of its handler's `#[utoipa::path]`, in the
    /// OpenAPI document.
    pub fn open<P: Documented, H: Handler<T, HttpState>, T: 'static>(
        self,
        _doc: P,
        handler: H,
    ) -> Self {
        self.documented::<P, H, T>(Gate::Open, Access::Open, handler, None)
    }

    /// A route anyone may call, left out of the OpenAPI document (the dashboard's login and static files).
    pub fn open_undocumented<H: Handler<T, HttpState>, T: 'static>(
        self,
        method: Method,
        path: &str,
        handler: H,
    ) -> Self {
        self.undocumented(Gate::Open, method, path, Access::Open, handler)
    }

    /// The router, the operator routes behind `operator_gate` and the dashboard's pages behind
    /// `page_gate` (given by the caller, so this registry knows no gate's module; axum refuses a route
    /// layer on a router without routes).
    pub fn into_router(
        self,
        operator_gate: impl FnOnce(Router<HttpState>) -> Router<HttpState>,
        page_gate: impl FnOnce(Router<HttpState>) -> Router<HttpState>,
    ) -> Router<HttpState> {
        let mut router = self.open;
        if self.operator.has_routes() {
            router = router.merge(operator_gate(self.operator));
        }
        if self.pages.has_routes() {
            router = router.merge(page_gate(self.pages));
        }
        router
    }

    pub fn into_table(self) -> RouteTable {
        RouteTable {
            routes: self.routes,
            docs: self.docs,
        }
    }

    fn documented<P: Documented, H: Handler<T, HttpState>, T: 'static>(
        mut self,
        gate: Gate,
        access: Access,
        handler: H,
        body_limit: Option<usize>,
    ) -> Self {
        let path = P::path();
        let methods: Vec<Method> = P::methods().into_iter().map(method).collect();
        let filters: Option<Vec<MethodFilter>> = methods.iter().map(|m| filter(m, &path)).collect();
        // `#[utoipa::path]` refuses an attribute that names no method, so `reduce` finds at least one.
        let Some(filter) = filters.and_then(|f| f.into_iter().reduce(MethodFilter::or)) else {
            return self;
        };
        let router = match body_limit {
            Some(limit) => on(filter, handler).layer(DefaultBodyLimit::max(limit)),
            None => on(filter, handler),
        };
        self.serve(gate, &path, router);
        self.routes.extend(methods.into_iter().map(|method| Route {
            method,
            path: path.clone(),
            access,
            documented: true,
            handler: std::any::type_name::<H>(),
            doc_struct: Some(std::any::type_name::<P>()),
        }));
        self.docs.push(add_to_document::<P>);
        self
    }

    fn undocumented<H: Handler<T, HttpState>, T: 'static>(
        mut self,
        gate: Gate,
        method: Method,
        path: &str,
        access: Access,
        handler: H,
    ) -> Self {
        let Some(filter) = filter(&method, path) else {
            return self;
        };
        self.serve(gate, path, on(filter, handler));
        self.routes.push(Route {
            method,
            path: path.to_string(),
            access,
            documented: false,
            handler: std::any::type_name::<H>(),
            doc_struct: None,
        });
        self
    }

    fn serve(&mut self, gate: Gate, path: &str, router: MethodRouter<HttpState>) {
        let group = match gate {
            Gate::Operator => &mut self.operator,
            Gate::Page => &mut self.pages,
            Gate::Open => &mut self.open,
        };
        *group = std::mem::take(group).route(path, router);
    }
}

/// The axum filter for `method`; `None` (logged: a registration's mistake, so the route is missing and
/// its tests fail at once) for a method axum cannot route on.
fn filter(method: &Method, path: &str) -> Option<MethodFilter> {
    MethodFilter::try_from(method.clone())
        .inspect_err(|e| tracing::error!(%method, path, "cannot serve this route: {e}"))
        .ok()
}

fn method(m: HttpMethod) -> Method {
    match m {
        HttpMethod::Get => Method::GET,
        HttpMethod::Post => Method::POST,
        HttpMethod::Put => Method::PUT,
        HttpMethod::Delete => Method::DELETE,
        HttpMethod::Options => Method::OPTIONS,
        HttpMethod::Head => Method::HEAD,
        HttpMethod::Patch => Method::PATCH,
        HttpMethod::Trace => Method::TRACE,
    }
}

/// What utoipa's `OpenApi` derive does for each handler of its `paths(...)`: the operation with its tags
/// under its path and methods, and the schemas it refers to in the components.
fn add_to_document<P: Documented>(doc: &mut Document) {
    let mut operation = P::operation();
    operation
        .tags
        .get_or_insert_with(Vec::new)
        .extend(P::tags().into_iter().map(String::from));
    doc.paths
        .add_path_operation(P::path(), P::methods(), operation);
    let mut schemas: Vec<(String, RefOr<Schema>)> = Vec::new();
    P::schemas(&mut schemas);
    doc.components
        .get_or_insert_with(Components::new)
        .schemas
        .extend(schemas);
}

#[cfg(test)]
mod tests {
    use super::super::ROUTE_ROLES;

    #[test]
    fn each_documented_route_is_served_by_the_handler_its_attribute_is_on() {
        for r in ROUTE_ROLES.iter() {
            if let Some(doc) = r.doc_struct {
                assert_eq!(
                    doc.replace("::__path_", "::"),
                    r.handler,
                    "{} {} pairs the handler {} with the `#[utoipa::path]` of another ({doc})",
                    r.method,
                    r.path,
                    r.handler
                );
            }
        }
    }
}
