//! The REST API under /api/v1 (JSON). Operator routes need an operator token (or the bootstrap admin
//! token) whose role allows the route (see `http::auth`); the MIaaS agent routes use join tokens and node
//! tokens; `/health` and `/ready` are open. One file per resource, named as its path; every route is
//! registered in `routes` (see `http::routes`).

pub(super) mod actions;
pub(super) mod audit;
pub(super) mod blobs;
mod json;
pub(super) mod manifests;
pub(super) mod meta;
pub(super) mod miaas;
pub(super) mod nodes;
pub(super) mod operators;
mod paging;
pub(super) mod rollouts;
pub(super) mod sessions;
#[cfg(feature = "tamper")]
mod tamper;
pub(super) mod tasks;
pub(super) mod tokens;

use drover_types::limits::MAX_MESSAGE;
use drover_types::operator::Role::{Admin, Operator, Viewer};

use super::routes::Routes;

/// Registers the REST routes: the operator routes, each with the role it needs (viewers read; operators
/// change what runs on nodes; admins manage who may do anything, join tokens and operators, and remove
/// nodes), the MIaaS agent routes (they check join and node tokens themselves) and the open meta routes.
/// Path, method and OpenAPI entry come from each handler's `#[utoipa::path]`.
pub(super) fn routes(r: Routes) -> Routes {
    #[cfg(feature = "tamper")]
    let r = tamper::routes(r);
    r.open(meta::__path_health, meta::health)
        .open(meta::__path_ready, meta::ready)
        .open(miaas::__path_register, miaas::register)
        .open(miaas::__path_heartbeat, miaas::heartbeat)
        .op(Viewer, operators::__path_whoami, operators::whoami)
        .op(Viewer, nodes::__path_list, nodes::list)
        .op(Viewer, nodes::__path_get, nodes::get)
        .op(Viewer, nodes::__path_metrics, nodes::metrics)
        .op(Viewer, nodes::__path_status, nodes::status)
        .op(Viewer, actions::__path_list, actions::list)
        .op(Viewer, sessions::__path_list, sessions::list)
        .op(Viewer, sessions::__path_get, sessions::get)
        .op(Viewer, sessions::__path_history, sessions::history)
        .op(Viewer, tasks::__path_list, tasks::list)
        .op(Viewer, tasks::__path_get, tasks::get)
        .op(Viewer, tasks::__path_runs, tasks::runs)
        .op(Viewer, tasks::__path_output, tasks::output)
        .op(Viewer, audit::__path_list, audit::list)
        .op(Viewer, manifests::__path_list, manifests::list)
        .op(Viewer, manifests::__path_get, manifests::get)
        .op(Viewer, manifests::__path_status, manifests::status)
        .op(
            Viewer,
            manifests::__path_status_events,
            manifests::status_events,
        )
        .op(Viewer, rollouts::__path_list, rollouts::list)
        .op(Viewer, rollouts::__path_get, rollouts::get)
        .op(Viewer, rollouts::__path_history, rollouts::history)
        .op(Operator, rollouts::__path_command, rollouts::command)
        .op(Operator, actions::__path_call, actions::call)
        .op(Operator, actions::__path_cancel, actions::cancel)
        .op(
            Operator,
            sessions::__path_terminate_all,
            sessions::terminate_all,
        )
        .op(Operator, sessions::__path_terminate, sessions::terminate)
        .op(Operator, sessions::__path_message, sessions::message)
        .op(Operator, nodes::__path_label, nodes::label)
        .op(Operator, tasks::__path_create, tasks::create)
        .op(Operator, tasks::__path_cancel, tasks::cancel)
        .op(Operator, manifests::__path_apply, manifests::apply)
        .op(Operator, manifests::__path_delete, manifests::delete)
        // Blobs are bigger than any other body (`MAX_BODY_BYTES`).
        .op_body_limit(Operator, blobs::__path_put, blobs::put, MAX_MESSAGE)
        .op(Admin, nodes::__path_delete, nodes::delete)
        .op(Admin, nodes::__path_accept_labels, nodes::accept_labels)
        .op(Admin, tokens::__path_list, tokens::list)
        .op(Admin, tokens::__path_create, tokens::create)
        .op(Admin, tokens::__path_revoke, tokens::revoke)
        .op(Admin, operators::__path_list, operators::list)
        .op(Admin, operators::__path_create, operators::create)
        .op(Admin, operators::__path_revoke, operators::revoke)
}
