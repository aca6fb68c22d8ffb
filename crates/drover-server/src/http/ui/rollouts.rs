//! Rollouts: every manifest's rollout with its state, revision and wave, and a rollout's page with its waves
//! counted by outcome (a bar each), its failing nodes with their reasons and why it stopped. Operators
//! pause, resume, abort and promote it from its page; the commands are the REST API's
//! (`Rollouts::rollout_command`), sent by htmx as the tasks page's Cancel is.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use drover_types::operator::Role;
use drover_types::rollout::{Outcome, RolloutCommand, RolloutState, RolloutStatus, WaveStatus};

use super::view::{self, Nav};
use crate::http::{ApiError, Caller, HttpState};

/// The outcomes in the order bars and tables show them: the CSS class of a bar's segment (also the JSON
/// field's name), the heading, and a badge's class.
const OUTCOMES: [(Outcome, &str, &str, &str); 5] = [
    (Outcome::Converged, "converged", "Converged", "ok"),
    (
        Outcome::ChangeFailed,
        "change_failed",
        "Change failed",
        "bad",
    ),
    (Outcome::InfraFailed, "infra_failed", "Infra failed", "warn"),
    (Outcome::Unreachable, "unreachable", "Unreachable", "muted"),
    (Outcome::Pending, "pending", "Pending", ""),
];

/// A wave's (or a rollout's) nodes with this outcome.
fn outcome_count(w: &WaveStatus, outcome: Outcome) -> usize {
    match outcome {
        Outcome::Converged => w.converged,
        Outcome::ChangeFailed => w.change_failed,
        Outcome::InfraFailed => w.infra_failed,
        Outcome::Unreachable => w.unreachable,
        Outcome::Pending => w.pending,
    }
}

fn outcome_name(outcome: Outcome) -> &'static str {
    OUTCOMES
        .iter()
        .find(|(o, ..)| *o == outcome)
        .map_or("?", |(_, _, name, _)| name)
}

fn outcome_class(outcome: Outcome) -> &'static str {
    OUTCOMES
        .iter()
        .find(|(o, ..)| *o == outcome)
        .map_or("", |(.., class)| class)
}

/// Every wave's counts added up.
fn totals(r: &RolloutStatus) -> WaveStatus {
    r.waves.iter().fold(WaveStatus::default(), |mut t, w| {
        t.nodes += w.nodes;
        t.converged += w.converged;
        t.change_failed += w.change_failed;
        t.infra_failed += w.infra_failed;
        t.unreachable += w.unreachable;
        t.pending += w.pending;
        t
    })
}

fn state_class(state: RolloutState) -> &'static str {
    match state {
        RolloutState::Complete => "ok",
        RolloutState::Progressing | RolloutState::Baking => "warn",
        RolloutState::Paused | RolloutState::Reverted => "bad",
        RolloutState::Aborted => "muted",
    }
}

/// One outcome's stretch of a bar: where it starts and how wide it is, in percent of the wave.
pub struct Segment {
    class: &'static str,
    name: &'static str,
    n: usize,
    x: String,
    width: String,
}

/// A bar of a wave's nodes by outcome, drawn as SVG (widths are attributes, not styles: the dashboard's
/// CSP allows no inline style). Only numbers and fixed class names reach the markup.
fn bar(w: &WaveStatus) -> Vec<Segment> {
    let total = w.nodes.max(1) as f64;
    let mut x = 0.0;
    OUTCOMES
        .iter()
        .filter_map(|(outcome, class, name, _)| {
            let n = outcome_count(w, *outcome);
            if n == 0 {
                return None;
            }
            let width = (n as f64 / total * 100.0).clamp(0.0, 100.0 - x);
            let s = Segment {
                class,
                name,
                n,
                x: format!("{x:.2}"),
                width: format!("{width:.2}"),
            };
            x += width;
            Some(s)
        })
        .collect()
}

fn rollout_href(name: &str) -> String {
    format!("/ui/rollouts/{}", drover_types::url::percent_encode(name))
}

/// "3 → 4", or "new → 4" for a manifest that had no earlier revision.
fn revisions(r: &RolloutStatus) -> String {
    match r.previous_revision {
        Some(p) => format!("{p} → {}", r.revision),
        None => format!("new → {}", r.revision),
    }
}

/// "2 of 3", the wave under way of all waves ("–" when the manifest selected no node).
fn wave_of(r: &RolloutStatus) -> String {
    if r.waves.is_empty() {
        "–".into()
    } else {
        format!("{} of {}", r.wave.min(r.waves.len()), r.waves.len())
    }
}

pub struct RolloutRow {
    name: String,
    href: String,
    manifest_href: String,
    state: &'static str,
    class: &'static str,
    revisions: String,
    wave: String,
    nodes: usize,
    converged: usize,
    failed: usize,
    unreachable: usize,
    pending: usize,
    bar: Vec<Segment>,
    updated: String,
}

fn row(r: &RolloutStatus) -> RolloutRow {
    let t = totals(r);
    RolloutRow {
        href: rollout_href(&r.manifest),
        manifest_href: format!(
            "/ui/manifests/{}",
            drover_types::url::percent_encode(&r.manifest)
        ),
        state: r.state.as_str(),
        class: state_class(r.state),
        revisions: revisions(r),
        wave: wave_of(r),
        nodes: t.nodes,
        converged: t.converged,
        failed: t.change_failed + t.infra_failed,
        unreachable: t.unreachable,
        pending: t.pending,
        bar: bar(&t),
        updated: view::ago(Some(r.updated_at)),
        name: r.manifest.clone(),
    }
}

#[derive(Template)]
#[template(path = "rollouts_live.html")]
pub struct ListLive {
    rows: Vec<RolloutRow>,
}

#[derive(Template)]
#[template(path = "rollouts.html")]
pub struct ListPage {
    live: String,
}

/// `GET /ui/rollouts`: every rollout.
pub async fn list(State(s): State<HttpState>, caller: Caller, headers: HeaderMap) -> Response {
    let mut rollouts = match s.fleet.rollouts.rollouts().await {
        Ok(r) => r,
        Err(e) => return view::failed(&caller, e.into()),
    };
    rollouts.sort_by(|a, b| a.manifest.cmp(&b.manifest));
    let live = ListLive {
        rows: rollouts.iter().map(row).collect(),
    };
    let body = ListPage {
        live: live.render().unwrap_or_default(),
    };
    view::live_or_page(&headers, "Rollouts", Nav::Rollouts, &caller, &body, &live)
}

pub struct WaveRow {
    number: usize,
    nodes: usize,
    /// (count, badge class, heading) per outcome, in `OUTCOMES`' order.
    counts: Vec<(usize, &'static str, &'static str)>,
    bar: Vec<Segment>,
    phase: &'static str,
    phase_class: &'static str,
    current: bool,
}

/// Where wave `number` (from 1) stands in the rollout.
fn phase(number: usize, r: &RolloutStatus, w: &WaveStatus) -> (&'static str, &'static str) {
    if w.reverted {
        return ("reverted", "bad");
    }
    if r.state == RolloutState::Complete || number < r.wave {
        return ("through", "ok");
    }
    if number > r.wave {
        return ("waiting", "muted");
    }
    match r.state {
        RolloutState::Progressing => ("under way", "warn"),
        RolloutState::Baking => ("baking", "warn"),
        RolloutState::Paused => ("paused", "bad"),
        RolloutState::Reverted => ("stopped", "bad"),
        RolloutState::Aborted => ("aborted", "muted"),
        RolloutState::Complete => ("through", "ok"),
    }
}

pub struct FailingRow {
    node: String,
    href: String,
    wave: usize,
    outcome: &'static str,
    class: &'static str,
    reason: String,
}

/// A command an operator may give the rollout in its state.
pub struct Button {
    label: &'static str,
    href: String,
    class: &'static str,
    confirm: &'static str,
}

fn buttons(r: &RolloutStatus) -> Vec<Button> {
    let under_way = matches!(r.state, RolloutState::Progressing | RolloutState::Baking);
    let paused = r.state == RolloutState::Paused;
    let ended = r.state.is_final();
    let button = |command: RolloutCommand, label, class, confirm| Button {
        label,
        href: format!("{}/{}", rollout_href(&r.manifest), command.as_str()),
        class,
        confirm,
    };
    let mut out = Vec::new();
    if under_way {
        out.push(button(
            RolloutCommand::Pause,
            "Pause",
            "",
            "Pause this rollout? Nodes keep what they have until it resumes.",
        ));
    }
    if paused {
        out.push(button(
            RolloutCommand::Resume,
            "Resume",
            "",
            "Resume this rollout from its current wave?",
        ));
    }
    if !ended {
        out.push(button(
            RolloutCommand::Promote,
            "Promote",
            "",
            "Promote: skip the bake and start the next wave now?",
        ));
        out.push(button(
            RolloutCommand::Abort,
            "Abort",
            "danger",
            "Abort this rollout for good? Nodes keep what they have.",
        ));
    }
    // A completed rollout that holds nodes back (`on_unreachable: hold`) releases them on Promote.
    if r.state == RolloutState::Complete && r.held > 0 {
        out.push(button(
            RolloutCommand::Promote,
            "Promote",
            "",
            "Promote: give the held nodes the revision now?",
        ));
    }
    out
}

#[derive(Template)]
#[template(path = "rollout_live.html")]
pub struct RolloutLive {
    self_url: String,
    /// Polled often while its waves move, less once it stopped.
    active: bool,
    state: &'static str,
    class: &'static str,
    wave: String,
    baking: String,
    reason: String,
    error: String,
    buttons: Vec<Button>,
    outcomes: Vec<(&'static str, &'static str)>,
    waves: Vec<WaveRow>,
    failing: Vec<FailingRow>,
    /// Failing nodes in all, when more than `failing` lists.
    failed_total: usize,
}

#[derive(Template)]
#[template(path = "rollout.html")]
pub struct RolloutPage {
    name: String,
    manifest_href: String,
    revisions: String,
    started_by: String,
    started: String,
    covered: Vec<(String, String)>,
    live: String,
}

fn rollout_live(r: &RolloutStatus, caller: &Caller, error: String) -> RolloutLive {
    let waves = r
        .waves
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let (phase, phase_class) = phase(i + 1, r, w);
            WaveRow {
                number: i + 1,
                nodes: w.nodes,
                counts: OUTCOMES
                    .iter()
                    .map(|(o, _, name, class)| (outcome_count(w, *o), *class, *name))
                    .collect(),
                bar: bar(w),
                phase,
                phase_class,
                current: i + 1 == r.wave && !r.state.is_final(),
            }
        })
        .collect();
    let failing = r
        .failing
        .iter()
        .map(|f| FailingRow {
            href: format!("/ui/nodes/{}", drover_types::url::percent_encode(&f.node)),
            node: f.node.clone(),
            wave: f.wave,
            outcome: outcome_name(f.outcome),
            class: outcome_class(f.outcome),
            reason: f.reason.clone().unwrap_or_default(),
        })
        .collect();
    let t = totals(r);
    RolloutLive {
        self_url: rollout_href(&r.manifest),
        active: matches!(r.state, RolloutState::Progressing | RolloutState::Baking),
        state: r.state.as_str(),
        class: state_class(r.state),
        wave: wave_of(r),
        baking: match (r.state, r.baking_since) {
            (RolloutState::Baking, Some(t)) => format!("baking since {}", view::ago(Some(t))),
            _ => String::new(),
        },
        reason: r.reason.clone().unwrap_or_default(),
        error,
        buttons: if caller.role >= Role::Operator {
            buttons(r)
        } else {
            Vec::new()
        },
        outcomes: OUTCOMES
            .iter()
            .map(|(_, class, name, _)| (*class, *name))
            .collect(),
        waves,
        failing,
        failed_total: t.change_failed + t.infra_failed,
    }
}

/// A rollout's page (or its live part for htmx), with `error` from a command that was refused.
async fn show(
    s: &HttpState,
    caller: &Caller,
    headers: &HeaderMap,
    name: &str,
    error: String,
) -> Response {
    let r = match s.fleet.rollouts.rollout_status(name).await {
        Ok(r) => r,
        Err(e) => return view::failed(caller, e.into()),
    };
    let live = rollout_live(&r, caller, error);
    let body = RolloutPage {
        name: r.manifest.clone(),
        manifest_href: format!(
            "/ui/manifests/{}",
            drover_types::url::percent_encode(&r.manifest)
        ),
        revisions: revisions(&r),
        started_by: r.started_by.clone(),
        started: view::time(r.started_at),
        covered: r
            .covered
            .iter()
            .map(|(facet, values)| {
                let values: Vec<&str> = values.iter().map(String::as_str).collect();
                (facet.clone(), values.join(", "))
            })
            .collect(),
        live: live.render().unwrap_or_default(),
    };
    view::live_or_page(headers, "Rollout", Nav::Rollouts, caller, &body, &live)
}

/// `GET /ui/rollouts/{name}`.
pub async fn page(
    State(s): State<HttpState>,
    caller: Caller,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    show(&s, &caller, &headers, &name, String::new()).await
}

/// The commands the page's buttons send. `undo` is not one: it applies the previous revision again as a
/// new one, a change to the manifest, made with `drover rollout undo`.
fn dashboard_command(text: &str) -> Option<RolloutCommand> {
    RolloutCommand::parse(text).filter(|c| {
        matches!(
            c,
            RolloutCommand::Pause
                | RolloutCommand::Resume
                | RolloutCommand::Abort
                | RolloutCommand::Promote
        )
    })
}

/// `POST /ui/rollouts/{name}/{command}` (htmx, operators): gives the command, then answers the rollout's
/// live part. A command the rollout's state refuses (it changed since the page was drawn) is said there.
pub async fn command(
    State(s): State<HttpState>,
    caller: Caller,
    headers: HeaderMap,
    Path((name, command)): Path<(String, String)>,
) -> Response {
    let Some(command) = dashboard_command(&command) else {
        return view::message(
            StatusCode::NOT_FOUND,
            Some(&caller),
            "No such rollout command here: use pause, resume, abort or promote.",
        );
    };
    let error = match s
        .fleet
        .rollouts
        .rollout_command(&caller.name, &name, command)
        .await
    {
        Ok(_) => String::new(),
        Err(e) => match ApiError::from(e) {
            e @ ApiError::BadRequest { .. } => e.to_string(),
            e => return view::failed(&caller, e),
        },
    };
    show(&s, &caller, &headers, &name, error).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: RolloutState, wave: usize, waves: Vec<WaveStatus>) -> RolloutStatus {
        RolloutStatus {
            manifest: "web".into(),
            state,
            revision: 4,
            previous_revision: Some(3),
            wave,
            waves,
            covered: Default::default(),
            failing: Vec::new(),
            held: 0,
            reason: None,
            baking_since: None,
            started_by: "admin".into(),
            started_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        }
    }

    fn wave(converged: usize, change_failed: usize, pending: usize) -> WaveStatus {
        WaveStatus {
            nodes: converged + change_failed + pending,
            converged,
            change_failed,
            pending,
            ..Default::default()
        }
    }

    #[test]
    fn a_bar_is_split_by_outcome_and_never_wider_than_its_wave() {
        let segments = bar(&wave(1, 1, 1));
        let shown: Vec<(&str, &str, &str)> = segments
            .iter()
            .map(|s| (s.class, s.x.as_str(), s.width.as_str()))
            .collect();
        assert_eq!(
            shown,
            [
                ("converged", "0.00", "33.33"),
                ("change_failed", "33.33", "33.33"),
                ("pending", "66.67", "33.33")
            ]
        );
        assert!(bar(&WaveStatus::default()).is_empty(), "an empty wave");
    }

    #[test]
    fn buttons_follow_the_state_and_waves_say_where_they_stand() {
        let labels = |state| -> Vec<&str> {
            buttons(&status(state, 1, vec![wave(1, 0, 0)]))
                .iter()
                .map(|b| b.label)
                .collect()
        };
        assert_eq!(labels(RolloutState::Baking), ["Pause", "Promote", "Abort"]);
        assert_eq!(labels(RolloutState::Paused), ["Resume", "Promote", "Abort"]);
        assert!(labels(RolloutState::Complete).is_empty());
        let mut holding = status(RolloutState::Complete, 1, vec![wave(1, 0, 0)]);
        holding.held = 2;
        let held: Vec<&str> = buttons(&holding).iter().map(|b| b.label).collect();
        assert_eq!(held, ["Promote"], "held nodes are released by Promote");
        assert!(labels(RolloutState::Aborted).is_empty());
        let b = buttons(&status(RolloutState::Paused, 1, vec![]));
        assert_eq!(b[0].href, "/ui/rollouts/web/resume");

        let r = status(
            RolloutState::Paused,
            2,
            vec![wave(1, 0, 0), wave(0, 1, 3), wave(0, 0, 5)],
        );
        let phases: Vec<&str> = r
            .waves
            .iter()
            .enumerate()
            .map(|(i, w)| phase(i + 1, &r, w).0)
            .collect();
        assert_eq!(phases, ["through", "paused", "waiting"]);
        assert_eq!(wave_of(&r), "2 of 3");
        assert_eq!(revisions(&r), "3 → 4");
        assert_eq!(dashboard_command("undo"), None);
        assert_eq!(dashboard_command("pause"), Some(RolloutCommand::Pause));
    }
}
