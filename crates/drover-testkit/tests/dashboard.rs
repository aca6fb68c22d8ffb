//! The dashboard in a real browser: a server with a few agents and tasks, opened in headless Chromium
//! (Debian's `chromium`, installed by scripts/testbed.sh) driven over the DevTools protocol. It checks what
//! the pages show (node names, statuses, a task's output, live updates, cancelling), that nothing scrolls
//! sideways on a phone, and saves screenshots at 1280×800 and 390×844 under target/screenshots/.
//! Beside the browser, plain HTTP checks the login, the roles and the CSRF rule.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use drover_testkit::{Agent, Server, TIMEOUT, wait_for};
use serde_json::{Value, json};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// Where the screenshots go: `target/screenshots` (beside the test binaries' profile dir).
fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/dashboard-… → target
    let target = exe.ancestors().nth(3).unwrap().to_path_buf();
    let dir = target.join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A headless Chromium and one page of it, driven over the DevTools protocol.
struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Browser {
    fn start() -> Self {
        let found = Command::new("chromium")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "chromium is not installed: run scripts/testbed.sh (it installs Debian's chromium package)"
        );
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new("chromium")
            .args([
                "--headless",
                "--disable-gpu",
                "--no-sandbox",
                "--no-first-run",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
                "--window-size=1280,800",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group, so dropping the browser ends its helpers too.
            .process_group(0)
            .spawn()
            .unwrap();
        let mut child = child;
        // Chromium names its DevTools address on stderr.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let browser_url = rx
            .recv_timeout(TIMEOUT)
            .expect("chromium did not say where DevTools listens");
        let port = browser_url
            .trim_start_matches("ws://")
            .split(['/', ':'])
            .nth(1)
            .unwrap()
            .to_string();
        let list_url = format!("http://127.0.0.1:{port}/json/list");
        let page = wait_for("chromium's page target", TIMEOUT, || {
            let list: Value = reqwest::blocking::get(&list_url).ok()?.json().ok()?;
            list.as_array()?
                .iter()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_string))
        })
        .unwrap();
        let (ws, _) = tungstenite::connect(page.as_str()).unwrap();
        let mut b = Browser {
            child,
            _profile: profile,
            ws,
            next_id: 0,
        };
        b.call("Page.enable", json!({}));
        b.call("Runtime.enable", json!({}));
        b
    }

    /// Sends a command and returns its result (events in between are skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.try_call(method, params)
            .unwrap_or_else(|e| panic!("{method} failed: {e}"))
    }

    /// Sends a command and returns its result or its error (a page being replaced answers with one).
    fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params});
        self.ws.send(Message::text(msg.to_string())).unwrap();
        loop {
            let Message::Text(text) = self.ws.read().unwrap() else {
                continue;
            };
            let v: Value = serde_json::from_str(text.as_str()).unwrap();
            if v["id"] == id {
                return match v.get("error") {
                    Some(e) => Err(e.clone()),
                    None => Ok(v["result"].clone()),
                };
            }
        }
    }

    /// Evaluates a JavaScript expression in the page and returns its value.
    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        r["result"]["value"].clone()
    }

    /// As `eval`, but `Null` while no page can answer (one is being replaced after a form's submit).
    fn try_eval(&mut self, expression: &str) -> Value {
        self.try_call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        )
        .map(|r| r["result"]["value"].clone())
        .unwrap_or(Value::Null)
    }

    fn size(&mut self, width: u32, height: u32, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        );
    }

    /// Opens a URL and waits until the page is loaded and its text contains `text`.
    fn open(&mut self, url: &str, text: &str) -> String {
        self.call("Page.navigate", json!({"url": url}));
        self.wait_text(text, &format!("{url} to show {text:?}"))
    }

    /// Waits until the page's text contains `text` (it changes without reloads: htmx polls).
    fn wait_text(&mut self, text: &str, what: &str) -> String {
        let mut last = String::new();
        let found = wait_for(what, TIMEOUT, || {
            let ready = self.try_eval("document.readyState") == "complete";
            last = self
                .try_eval("document.body ? document.body.innerText : ''")
                .as_str()
                .unwrap_or_default()
                .to_string();
            (ready && last.contains(text)).then(|| last.clone())
        });
        found.unwrap_or_else(|e| panic!("{e}; the page showed:\n{last}"))
    }

    /// Saves a screenshot of the viewport.
    fn screenshot(&mut self, path: &Path) {
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = drover_types::base64::decode(r["data"].as_str().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// Fails when the page is wider than the viewport (it would scroll sideways).
    fn assert_no_sideways_scroll(&mut self, page: &str) {
        let widths =
            self.eval("JSON.stringify([document.documentElement.scrollWidth, window.innerWidth])");
        let widths: Vec<u64> = serde_json::from_str(widths.as_str().unwrap()).unwrap();
        assert!(
            widths[0] <= widths[1],
            "{page} is {} px wide in a {} px viewport: it scrolls sideways",
            widths[0],
            widths[1]
        );
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group of a child we spawned and have not reaped.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// A one-time link that opens `next` logged in with `token`.
fn login_link(server: &Server, token: &str, next: &str) -> String {
    let reply = server
        .request(
            "POST",
            &format!("/ui/login-link?next={next}"),
            Some(token),
            None,
        )
        .unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    format!(
        "{}{}",
        server.api_url(),
        reply.body["path"].as_str().unwrap()
    )
}

#[test]
fn the_dashboard_shows_the_fleet_nodes_and_tasks_in_a_real_browser() {
    let server = Server::start().unwrap();
    let admin = server.admin_token();
    let _web1 = server.agent("web-1", &["--allow-shell", "--label", "role=web"]);
    let _web2 = server.agent("web-2", &["--label", "role=web"]);
    let _db1 = server.agent("db-1", &["--label", "role=db"]);
    let task = server
        .create_task(json!({"target": {"node": "web-1"},
            "spec": {"kind": "exec", "shell": "echo hello from the dashboard test; echo a warning >&2"}}))
        .unwrap();
    let task_id = task["id"].as_str().unwrap().to_string();
    server.wait_task_done(&task_id).unwrap();

    let shots = screenshot_dir();
    let mut b = Browser::start();

    // Desktop: the fleet, with every node and its status, after logging in through a one-time link: the
    // link opens a page naming whose login it is, and its button logs in.
    b.size(1280, 800, false);
    let text = b.open(&login_link(&server, &admin, "/ui/"), "Log in as admin");
    assert!(text.contains("role admin"), "{text}");
    b.screenshot(&shots.join("login-link-1280x800.png"));
    b.eval("document.querySelector('form[action=\"/ui/login\"] button').click(); true");
    let text = b.wait_text("db-1", "the fleet after pressing the login link's button");
    for name in ["web-1", "web-2", "db-1", "Ready", "role=web", "1–3 of 3"] {
        assert!(
            text.contains(name),
            "the fleet page lacks {name:?}:\n{text}"
        );
    }
    b.screenshot(&shots.join("fleet-1280x800.png"));

    // Filtered by label: the db node is not listed.
    let url = format!("{}/ui/?label=role%3Dweb", server.api_url());
    let text = b.open(&url, "web-2");
    assert!(
        !text.contains("db-1"),
        "a label filter lists other nodes:\n{text}"
    );

    // A node: capabilities, charts drawn as SVG, its recent task.
    let url = format!("{}/ui/nodes/web-1", server.api_url());
    let text = b.open(&url, "Recent tasks");
    assert!(
        text.contains("Capabilities") && text.contains("echo hello"),
        "{text}"
    );
    let lines = b.eval("document.querySelectorAll('svg.spark polyline').length");
    assert!(lines.as_u64().unwrap_or(0) >= 1, "no chart has a line");
    // Sessions say when their data last changed and that it is still checked (payloads are sent only
    // when they change, so an old one is not a stale one).
    let text = b.wait_text("unchanged for", "the sessions' data age");
    assert!(text.contains("every 10s (node heard from"), "{text}");
    let whole = b.eval(
        "Array.from(document.querySelectorAll('table.sessions td[data-label=Plugin], table.sessions td[data-label=State]')).every(c => { const r = document.createRange(); r.selectNodeContents(c); return r.getClientRects().length == 1; })",
    );
    assert_eq!(
        whole,
        Value::Bool(true),
        "a session's plugin or state wraps mid-word"
    );
    b.screenshot(&shots.join("node-1280x800.png"));

    // A finished task's output.
    let url = format!("{}/ui/tasks/{task_id}", server.api_url());
    let text = b.open(&url, "hello from the dashboard test");
    assert!(
        text.contains("Succeeded") && text.contains("a warning"),
        "{text}"
    );
    b.screenshot(&shots.join("task-1280x800.png"));

    // A running task: its output appears live, and an operator (the admin) cancels it with the button.
    let running = server
        .create_task(json!({"target": {"node": "web-1"},
            "spec": {"kind": "exec", "shell": "echo first-line; sleep 1; echo second-line; sleep 60"}}))
        .unwrap();
    let running_id = running["id"].as_str().unwrap();
    let url = format!("{}/ui/tasks/{running_id}", server.api_url());
    b.open(&url, "first-line");
    b.wait_text(
        "second-line",
        "the running task's second line, without a reload",
    );
    // The confirmation dialog says yes on its own here.
    b.eval("window.confirm = () => true; document.querySelector('button.danger').click(); true");
    b.wait_text("Cancelled", "the task cancelled from the page");
    let done = server.wait_task_done(running_id).unwrap();
    assert_eq!(done["runs"][0]["state"], "Cancelled");

    // Tasks, manifests and the audit log read.
    let text = b.open(&format!("{}/ui/tasks", server.api_url()), "echo first-line");
    assert!(
        text.contains("Cancelled") && text.contains("Succeeded"),
        "{text}"
    );
    b.screenshot(&shots.join("tasks-1280x800.png"));
    b.open(&format!("{}/ui/manifests", server.api_url()), "No manifest");
    let out = server.cli(&["action", "web-1", "ping"]).unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = b.open(&format!("{}/ui/audit", server.api_url()), "action.call");
    assert!(text.contains("task.create"), "{text}");
    // The action column never breaks a word beside a long detail ("action.ca / ll").
    let whole = b.eval(
        "Array.from(document.querySelectorAll('td[data-label=Action] code')).every(c => c.getClientRects().length == 1)",
    );
    assert_eq!(whole, Value::Bool(true), "an audit action wraps mid-word");
    let one_line = b.eval(
        "Array.from(document.querySelectorAll('td[data-label=Target]')).every(c => { const r = document.createRange(); r.selectNodeContents(c); return c.textContent.length > 12 || r.getClientRects().length == 1; })",
    );
    assert_eq!(one_line, Value::Bool(true), "a short audit target wraps");
    b.screenshot(&shots.join("audit-1280x800.png"));

    // A phone: the same pages, without sideways scrolling.
    b.size(390, 844, true);
    for (page, url, text) in [
        ("fleet", format!("{}/ui/", server.api_url()), "db-1"),
        (
            "node",
            format!("{}/ui/nodes/web-1", server.api_url()),
            "Recent tasks",
        ),
        (
            "task",
            format!("{}/ui/tasks/{task_id}", server.api_url()),
            "a warning",
        ),
        (
            "tasks",
            format!("{}/ui/tasks", server.api_url()),
            "Cancelled",
        ),
        (
            "audit",
            format!("{}/ui/audit", server.api_url()),
            "task.cancel",
        ),
    ] {
        b.open(&url, text);
        b.assert_no_sideways_scroll(page);
        b.screenshot(&shots.join(format!("{page}-390x844.png")));
    }
}

/// The raw HTTP side: `/` for programs, the login, roles, and the CSRF rule for changes made with the cookie.
#[test]
fn the_dashboard_checks_who_calls_and_refuses_changes_from_elsewhere() {
    let server = Server::start().unwrap();
    let admin = server.admin_token();
    let _a = server.agent("box", &["--allow-shell"]);
    let http = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = |p: &str| format!("{}{p}", server.api_url());

    // `/`: JSON for a program, the dashboard for a browser.
    let root: Value = http.get(url("/")).send().unwrap().json().unwrap();
    assert_eq!(root["name"], "drover");
    assert!(root["version"].is_string());
    let r = http
        .get(url("/"))
        .header("accept", "text/html,application/xhtml+xml")
        .send()
        .unwrap();
    assert_eq!(r.headers()["location"], "/ui/");

    // No login: pages send to the login form; htmx is told to go there.
    let r = http.get(url("/ui/")).send().unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/ui/login");
    let r = http
        .get(url("/ui/"))
        .header("hx-request", "true")
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["hx-redirect"], "/ui/login");

    // A wrong token is refused at the form; a right one sets the cookie.
    let r = http
        .post(url("/ui/login"))
        .form(&[("token", "drvop.nope")])
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("set-cookie").is_none());
    let viewer = server
        .post(
            "/api/v1/operators",
            Some(&admin),
            &json!({"name": "vera", "role": "viewer"}),
        )
        .unwrap();
    assert_eq!(viewer.status, 201, "{viewer:?}");
    let viewer_token = viewer.body["token"].as_str().unwrap().to_string();
    let r = http
        .post(url("/ui/login"))
        .form(&[("token", viewer_token.as_str())])
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    let session = cookie.split(';').next().unwrap().to_string();

    // A viewer sees, but may not cancel: no button, and the route is refused.
    let task = server
        .create_task(
            json!({"target": {"node": "box"}, "spec": {"kind": "exec", "shell": "sleep 60"}}),
        )
        .unwrap();
    let id = task["id"].as_str().unwrap();
    let page = http
        .get(url(&format!("/ui/tasks/{id}")))
        .header("cookie", &session)
        .send()
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(!page.text().unwrap().contains("Cancel task"));
    let r = http
        .post(url(&format!("/ui/tasks/{id}/cancel")))
        .header("cookie", &session)
        .header("hx-request", "true")
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().unwrap().contains("needs the `operator` role"));

    // The admin's cookie: a change without htmx's header, or from another origin, is refused; from the
    // dashboard it goes through.
    let r = http
        .post(url("/ui/login"))
        .form(&[("token", admin.as_str())])
        .send()
        .unwrap();
    let admin_session = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let cancel = url(&format!("/ui/tasks/{id}/cancel"));
    let r = http
        .post(&cancel)
        .header("cookie", &admin_session)
        .send()
        .unwrap();
    assert_eq!(r.status(), 403, "a plain cross-site form post");
    let r = http
        .post(&cancel)
        .header("cookie", &admin_session)
        .header("hx-request", "true")
        .header("origin", "https://evil.example")
        .send()
        .unwrap();
    assert_eq!(r.status(), 403, "another origin");
    let still = server.get(&format!("/api/v1/tasks/{id}")).unwrap();
    assert_eq!(
        still.body["runs"][0]["state"], "Running",
        "refused changes change nothing"
    );
    let origin = server.api_url();
    let r = http
        .post(&cancel)
        .header("cookie", &admin_session)
        .header("hx-request", "true")
        .header("origin", origin.trim_end_matches('/'))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let done = server.wait_task_done(id).unwrap();
    assert_eq!(done["runs"][0]["state"], "Cancelled");

    // Logging out clears the cookie; a revoked operator's cookie stops working at once.
    let r = http.post(url("/ui/logout")).send().unwrap();
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let r = server
        .request("DELETE", "/api/v1/operators/vera", Some(&admin), None)
        .unwrap();
    assert!(r.status < 300, "{r:?}");
    let r = http
        .get(url("/ui/"))
        .header("cookie", &session)
        .send()
        .unwrap();
    assert_eq!(r.status(), 303, "a revoked operator's session");

    // A login link opens only dashboard pages, and never the login pages themselves.
    for next in [
        "https://evil.example/",
        "/ui/login",
        "/ui/login%3Fcode%3Dabc",
        "/ui/%6Cogin",
        "/ui/x/../login",
    ] {
        let r = server
            .request(
                "POST",
                &format!("/ui/login-link?next={next}"),
                Some(&admin),
                None,
            )
            .unwrap();
        assert_eq!(r.status, 400, "next={next}: {r:?}");
        assert_eq!(r.body["field"], "next", "{r:?}");
    }
}

/// The cookie a response sets, as `name=value` for a `cookie` header, if any.
fn session_set(r: &reqwest::blocking::Response) -> Option<String> {
    let cookie = r.headers().get("set-cookie")?.to_str().unwrap();
    Some(cookie.split(';').next().unwrap().to_string())
}

/// An operator with `role`, and its token.
fn operator(server: &Server, name: &str, role: &str) -> String {
    let r = server
        .post(
            "/api/v1/operators",
            Some(&server.admin_token()),
            &json!({"name": name, "role": role}),
        )
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    r.body["token"].as_str().unwrap().to_string()
}

/// Issue 23, finding 8 (login CSRF, session fixation) and the CSRF check's scheme: another site's page
/// can neither post a login nor confirm a login link; opening a link sets nothing and names whose login
/// it is; only the confirming same-origin POST sets the cookie.
#[test]
fn a_login_from_another_site_is_refused_and_a_login_link_asks_first() {
    let server = Server::start().unwrap();
    let admin = server.admin_token();
    let mallory = operator(&server, "mallory", "viewer");
    let http = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = |p: &str| format!("{}{p}", server.api_url());
    let own_origin = server.api_url();

    // The attack: another site's page posts the attacker's token to the login form.
    for (origin, site) in [
        (Some("https://evil.example"), Some("cross-site")),
        (Some("https://evil.example"), None),
        (None, Some("cross-site")),
        (Some("null"), None),
    ] {
        let mut req = http
            .post(url("/ui/login"))
            .form(&[("token", mallory.as_str())]);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        if let Some(s) = site {
            req = req.header("sec-fetch-site", s);
        }
        let r = req.send().unwrap();
        assert_eq!(r.status(), 403, "origin {origin:?}, site {site:?}");
        assert!(session_set(&r).is_none(), "a refused login sets no cookie");
        let text = r.text().unwrap();
        assert!(
            text.contains("This login was refused") && text.contains("log in there"),
            "{text}"
        );
    }
    // The same login from the dashboard's own page, or from curl (neither header), works.
    let r = http
        .post(url("/ui/login"))
        .header("origin", &own_origin)
        .header("sec-fetch-site", "same-origin")
        .form(&[("token", mallory.as_str())])
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(session_set(&r).is_some());
    let r = http
        .post(url("/ui/login"))
        .form(&[("token", admin.as_str())])
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    let admin_session = session_set(&r).unwrap();

    // The attacker's login link: opening it sets nothing and names the attacker.
    let link = login_link(&server, &mallory, "/ui/tasks");
    let code = link.split("code=").nth(1).unwrap().to_string();
    let r = http.get(&link).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        session_set(&r).is_none(),
        "opening a login link sets no cookie"
    );
    let page = r.text().unwrap();
    assert!(
        page.contains("Log in as mallory?") && page.contains("viewer"),
        "{page}"
    );
    assert!(
        page.contains(&format!("name=\"code\" value=\"{code}\"")),
        "{page}"
    );
    // Its confirmation posted by another site's page is refused and leaves the code unused...
    let r = http
        .post(url("/ui/login"))
        .header("origin", "https://evil.example")
        .header("sec-fetch-site", "cross-site")
        .form(&[("code", code.as_str())])
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(session_set(&r).is_none());
    // ...and pressing the button on the page (same origin) logs in, once, at the link's page.
    let r = http
        .post(url("/ui/login"))
        .header("origin", &own_origin)
        .header("sec-fetch-site", "same-origin")
        .form(&[("code", code.as_str())])
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/ui/tasks");
    let session = session_set(&r).unwrap();
    assert!(session.starts_with("drover_session=drvop."), "{session}");
    let r = http
        .get(url("/ui/tasks"))
        .header("cookie", &session)
        .send()
        .unwrap();
    assert!(r.text().unwrap().contains("mallory"));
    let r = http
        .post(url("/ui/login"))
        .form(&[("code", code.as_str())])
        .send()
        .unwrap();
    assert_eq!(r.status(), 401, "a code works once");
    assert_eq!(http.get(&link).send().unwrap().status(), 401);

    // The CSRF check compares the scheme too: an https page may not act on this http dashboard.
    let _a = server.agent("box", &["--allow-shell"]);
    let task = server
        .create_task(
            json!({"target": {"node": "box"}, "spec": {"kind": "exec", "shell": "sleep 60"}}),
        )
        .unwrap();
    let id = task["id"].as_str().unwrap();
    let cancel = url(&format!("/ui/tasks/{id}/cancel"));
    let https_origin = own_origin.replacen("http://", "https://", 1);
    let r = http
        .post(&cancel)
        .header("cookie", &admin_session)
        .header("hx-request", "true")
        .header("origin", &https_origin)
        .send()
        .unwrap();
    assert_eq!(r.status(), 403, "{https_origin} on an http dashboard");
    let still = server.get(&format!("/api/v1/tasks/{id}")).unwrap();
    assert_eq!(still.body["runs"][0]["state"], "Running");
    let r = http
        .post(&cancel)
        .header("cookie", &admin_session)
        .header("hx-request", "true")
        .header("origin", &own_origin)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Issue 23, finding 7: a viewer asking for login links in a loop is refused after its own few, and the
/// admin still gets one that works.
#[test]
fn a_viewer_cannot_crowd_out_anyone_elses_login_links() {
    let server = Server::start().unwrap();
    let admin = server.admin_token();
    let vera = operator(&server, "vera", "viewer");
    let http = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // The attack, bounded: 1,030 requests as in the finding, stopping at the first refusal.
    let started = std::time::Instant::now();
    let mut issued = 0;
    let refusal = loop {
        let r = server
            .request("POST", "/ui/login-link", Some(&vera), None)
            .unwrap();
        if r.status != 200 {
            break r;
        }
        issued += 1;
        assert!(issued < 1030, "a viewer got {issued} login links");
    };
    eprintln!(
        "a viewer got {issued} login links, then {} in {:?}",
        refusal.status,
        started.elapsed()
    );
    assert_eq!(issued, 8, "the per-operator cap");
    assert_eq!(refusal.status, 409);
    let message = refusal.body["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("vera already has 8 login links waiting"),
        "{refusal:?}"
    );

    // The admin still gets a link, and it logs in.
    let link = login_link(&server, &admin, "/ui/audit");
    let r = http.get(&link).send().unwrap();
    assert!(r.text().unwrap().contains("Log in as admin?"));
    let code = link.split("code=").nth(1).unwrap();
    let r = http
        .post(format!("{}/ui/login", server.api_url()))
        .header("origin", server.api_url())
        .form(&[("code", code)])
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/ui/audit");
    let session = session_set(&r).unwrap();
    let r = http
        .get(format!("{}/ui/audit", server.api_url()))
        .header("cookie", &session)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// `GET /api/v1/nodes` in pages: a page of the matching nodes, their count, and a link to the next page;
/// without parameters, every node as before.
#[test]
fn the_rest_node_list_is_paged_and_filtered() {
    let server = Server::start().unwrap();
    let admin = server.admin_token();
    let _agents: Vec<Agent> = ["n-a", "n-b", "n-c"]
        .iter()
        .map(|n| server.agent(n, &["--label", "tier=x"]))
        .collect();
    assert_eq!(server.nodes().unwrap().len(), 3);
    let http = reqwest::blocking::Client::new();
    let get = |p: &str| {
        http.get(format!("{}{p}", server.api_url()))
            .bearer_auth(&admin)
            .send()
            .unwrap()
    };
    let r = get("/api/v1/nodes?limit=2");
    assert_eq!(r.headers()["x-total-count"], "3");
    let link = r.headers()["link"].to_str().unwrap().to_string();
    assert_eq!(link, "</api/v1/nodes?limit=2&offset=2>; rel=\"next\"");
    let page: Vec<Value> = r.json().unwrap();
    let names: Vec<_> = page.iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["n-a", "n-b"]);
    let r = get("/api/v1/nodes?limit=2&offset=2");
    assert!(
        r.headers().get("link").is_none(),
        "the last page links no further"
    );
    let page: Vec<Value> = r.json().unwrap();
    assert_eq!(page.len(), 1);
    let r = get("/api/v1/nodes?status=Ready&label=tier%3Dx");
    assert_eq!(r.headers()["x-total-count"], "3");
    let r = get("/api/v1/nodes?status=Offline");
    assert_eq!(r.headers()["x-total-count"], "0");
    let r = get("/api/v1/nodes?status=sideways");
    assert_eq!(r.status(), 400);
    let body: Value = r.json().unwrap();
    assert_eq!(body["field"], "status", "{body}");
    let r = get("/api/v1/nodes?label=not%20a%20label");
    assert_eq!(r.status(), 400);
}

/// A task on several agents and a manifest on them, read a page at a time: a task's runs counted by state
/// and paged (REST and the dashboard), the task list's runs counted, a manifest's nodes counted by state
/// and paged, and `drover nodes` / `drover tasks` reading those lists.
#[test]
fn a_task_and_a_manifest_on_several_agents_are_read_a_page_at_a_time() {
    let server = Server::start().unwrap();
    let admin = server.admin_token();
    let files = tempfile::tempdir().unwrap();
    let root = files.path().to_str().unwrap().to_string();
    // Two agents run shell tasks and may write under `root`; the third may do neither.
    let allowed = [
        "--allow-shell",
        "--allow-path",
        &root,
        "--resync-interval",
        "500ms",
    ];
    let _agents = [
        server.agent("p-a", &allowed),
        server.agent("p-b", &allowed),
        server.agent("p-c", &["--resync-interval", "500ms"]),
    ];
    let http = reqwest::blocking::Client::new();
    let get = |p: &str| {
        http.get(format!("{}{p}", server.api_url()))
            .bearer_auth(&admin)
            .send()
            .unwrap()
    };

    // A task on all three: two succeed, the third refuses the shell.
    let task = server
        .create_task(json!({"target": "all", "spec": {"kind": "exec", "shell": "true"}}))
        .unwrap();
    let id = task["id"].as_str().unwrap().to_string();
    server.wait_task_done(&id).unwrap();

    // Its runs, two a page, with the count and a link to the rest.
    let r = get(&format!("/api/v1/tasks/{id}/runs?limit=2"));
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-total-count"], "3");
    let link = r.headers()["link"].to_str().unwrap().to_string();
    assert_eq!(
        link,
        format!("</api/v1/tasks/{id}/runs?limit=2&offset=2>; rel=\"next\"")
    );
    let first: Vec<Value> = r.json().unwrap();
    let next = link.trim_start_matches('<').split('>').next().unwrap();
    let r = get(next);
    assert!(
        r.headers().get("link").is_none(),
        "the last page links no further"
    );
    let rest: Vec<Value> = r.json().unwrap();
    let mut names: Vec<&str> = first
        .iter()
        .chain(&rest)
        .map(|r| r["node_name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["p-a", "p-b", "p-c"]);
    // Filtered by state, by a prefix of the task's id.
    let r = get(&format!("/api/v1/tasks/{}/runs?state=refused", &id[..8]));
    assert_eq!(r.headers()["x-total-count"], "1");
    let refused: Vec<Value> = r.json().unwrap();
    assert_eq!(refused[0]["node_name"], "p-c");
    let r = get(&format!("/api/v1/tasks/{id}/runs?state=sideways"));
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().unwrap()["field"], "state");

    // The list: every run counted, the runs listed as asked.
    let list: Vec<Value> = get("/api/v1/tasks?limit=1&runs=1").json().unwrap();
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["runs_total"], 3);
    assert_eq!(list[0]["run_counts"], json!({"Succeeded": 2, "Refused": 1}));
    assert_eq!(list[0]["state"], "Failed");
    assert_eq!(list[0]["runs"].as_array().unwrap().len(), 1);
    let list: Vec<Value> = get("/api/v1/tasks?limit=1").json().unwrap();
    assert_eq!(
        list[0]["runs"].as_array().unwrap().len(),
        3,
        "a small task lists every run"
    );

    // The dashboard: counts at the top, the runs of one state.
    let page = get(&format!("/ui/tasks/{id}?state=Refused"))
        .text()
        .unwrap();
    for text in [
        "<span>All</span><b>3</b>",
        "<span>Succeeded</span><b>2</b>",
        "<span>Refused</span><b>1</b>",
        "p-c",
        "1–1 of 1",
    ] {
        assert!(
            page.contains(text),
            "the task's page lacks {text:?}:\n{page}"
        );
    }
    assert!(
        !page.contains("p-a"),
        "a state filter lists other runs:\n{page}"
    );

    // A manifest on all three: Ready on two, Refused on the third (outside what it may write).
    let path = files.path().join("motd");
    let manifest = json!({"name": "motd", "resources": [
        {"id": "motd", "file": {"path": path.to_str().unwrap(), "content": "hello\n"}}]});
    let r = server
        .post("/api/v1/manifests", Some(&admin), &manifest)
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    wait_for("the manifest on every node", TIMEOUT, || {
        let page = get("/api/v1/status?manifest=motd&state=Ready");
        let refused = get("/api/v1/status?manifest=motd&state=Refused");
        (page.headers()["x-total-count"] == "2" && refused.headers()["x-total-count"] == "1")
            .then_some(())
    })
    .unwrap();
    let r = get("/api/v1/status?manifest=motd&limit=2");
    assert_eq!(r.headers()["x-total-count"], "3");
    assert_eq!(
        r.headers()["link"],
        "</api/v1/status?limit=2&offset=2&manifest=motd>; rel=\"next\""
    );
    let reports: Vec<Value> = r.json().unwrap();
    let names: Vec<_> = reports
        .iter()
        .map(|r| r["node_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["p-a", "p-b"]);
    assert_eq!(reports[0]["resources"][0]["manifest"], "motd");
    let all: Vec<Value> = get("/api/v1/status").json().unwrap();
    assert_eq!(all.len(), 3, "without parameters, every node as before");

    let page = get("/ui/manifests").text().unwrap();
    for text in ["Ready 2", "Refused 1", "/ui/manifests/motd?state=Refused"] {
        assert!(
            page.contains(text),
            "the manifests page lacks {text:?}:\n{page}"
        );
    }
    let page = get("/ui/manifests/motd?state=Refused").text().unwrap();
    for text in [
        "<span>All</span><b>3</b>",
        "<span>Ready</span><b>2</b>",
        "p-c",
        "1–1 of 1",
    ] {
        assert!(
            page.contains(text),
            "the manifest's page lacks {text:?}:\n{page}"
        );
    }
    assert!(!page.contains("p-b"), "{page}");

    // The CLI reads the node list in pages and the task list with its counts.
    let out = server
        .cli(&["nodes", "list", "--page-size", "2", "-o", "json"])
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let nodes: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(nodes.len(), 3);
    let out = server.cli(&["tasks"]).unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&id[..8]) && text.contains("Failed"), "{text}");
}

/// An agent labelled `role=web`, `tier=TIER`, whose shell jobs write under `dir` (`$NODE_DIR`); a "bad"
/// revision fails on it when `fail` (`$NODE_FAIL=1`).
fn web_node(server: &Server, name: &str, tier: &str, dir: &Path, fail: bool) -> Agent {
    let dir = dir.display().to_string();
    let env = [
        ("NODE_DIR", dir.as_str()),
        ("NODE_FAIL", if fail { "1" } else { "0" }),
    ];
    let args = [
        "--heartbeat-interval",
        "300ms",
        "--resync-interval",
        "500ms",
        "--allow-kind",
        "shell_job",
        "--allow-shell",
    ];
    server.attached_agent_with_env(
        name,
        json!({"labels": {"role": "web", "tier": tier}}),
        &args,
        &env,
    )
}

/// Revision `version` of the manifest `web`, rolled out canary first and baking `bake`; a `bad` one fails
/// on the nodes told to, printing `bad` (HTML, to see it escaped) to stderr.
fn web_revision(version: &str, bad: Option<&str>, bake: &str) -> Value {
    // A good revision's guard holds once the job ran (a job that runs at every pass is drift that does
    // not stay corrected); a bad one's never does on a failing node.
    let (command, unless) = match bad {
        None => (
            format!("echo {version} > \"$NODE_DIR/version\""),
            format!("grep -qx {version} \"$NODE_DIR/version\""),
        ),
        Some(why) => (
            format!(
                "echo {version} > \"$NODE_DIR/version\"; if [ \"$NODE_FAIL\" = 1 ]; then echo '{why}' >&2; exit 1; fi"
            ),
            format!("[ \"$NODE_FAIL\" != 1 ] && grep -qx {version} \"$NODE_DIR/version\""),
        ),
    };
    json!({
        "name": "web",
        "selector": {"role": "web"},
        "rollout": {
            "waves": [{"selector": {"tier": "canary"}}, {"percent": 100}],
            "bake": bake,
            "wave_deadline": "60s",
        },
        "resources": [{"id": "version", "shell_job": {
            "command": command,
            "unless": unless,
        }}],
    })
}

/// Issue 25: a rollout's page shows its waves counted by outcome and its failing nodes (their reasons
/// escaped); an operator pauses, resumes and promotes it with the page's buttons; a viewer sees no button
/// and is refused the command; the manifests page and the navigation link to it.
#[test]
fn a_rollout_page_shows_its_waves_and_operators_pause_it() {
    let server = Server::start().unwrap();
    let admin = server.admin_token();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let _agents = [
        web_node(&server, "canary", "canary", dirs[0].path(), true),
        web_node(&server, "web-1", "main", dirs[1].path(), false),
        web_node(&server, "web-2", "main", dirs[2].path(), false),
    ];
    let apply = |m: &Value| {
        let r = server.post("/api/v1/manifests", Some(&admin), m).unwrap();
        assert_eq!(r.status, 200, "{r:?}");
    };
    let rollout = || server.get("/api/v1/rollouts/web").unwrap().body;
    let wait_state = |states: &[&str]| {
        wait_for(&format!("the rollout {states:?}"), TIMEOUT, || {
            Some(rollout()).filter(|r| states.iter().any(|s| r["state"] == *s))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", rollout()))
    };
    apply(&web_revision("v1", None, "1s"));
    wait_state(&["Complete"]);
    // v2 reaches the canary and bakes there for long: the page's buttons move it on.
    apply(&web_revision("v2", None, "10m"));
    wait_state(&["Baking"]);

    let shots = screenshot_dir();
    let mut b = Browser::start();
    b.size(1280, 800, false);
    b.open(
        &login_link(&server, &admin, "/ui/rollouts/web"),
        "Log in as admin",
    );
    b.eval("document.querySelector('form[action=\"/ui/login\"] button').click(); true");
    let text = b.wait_text("Baking", "the rollout's page after logging in");
    for want in [
        "wave 1 of 2",
        "Waves",
        "1 → 2",
        "baking",
        "waiting",
        "No node has failed",
    ] {
        assert!(
            text.contains(want),
            "the rollout's page lacks {want:?}:\n{text}"
        );
    }
    // Clicks a button of the live part once htmx has taken it up: one swapped in a moment ago (the page
    // polls) does nothing until then. Finding, checking and clicking run in one script turn, so no swap
    // comes between them.
    let click = |b: &mut Browser, label: &str| {
        wait_for(&format!("the {label} button, ready"), TIMEOUT, || {
            let clicked = b.eval(&format!(
                "window.confirm = () => true; (() => {{ const b = Array.from(document.querySelectorAll('#live button')).find(b => b.textContent == '{label}'); if (!b || !b['htmx-internal-data']) return false; b.click(); return true; }})()"
            ));
            (clicked == Value::Bool(true)).then_some(())
        })
        .unwrap();
    };
    let buttons = |b: &mut Browser| -> Vec<String> {
        let v = b.eval(
            "JSON.stringify(Array.from(document.querySelectorAll('#live button')).map(b => b.textContent))",
        );
        serde_json::from_str(v.as_str().unwrap()).unwrap()
    };
    // Waits until the page offers these buttons (htmx swaps the live part in after a command).
    let wait_buttons = |b: &mut Browser, want: &[&str]| {
        wait_for(&format!("the buttons {want:?}"), TIMEOUT, || {
            (buttons(b) == want).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", buttons(b), rollout()));
    };
    wait_buttons(&mut b, &["Pause", "Promote", "Abort"]);
    click(&mut b, "Pause");
    b.wait_text("paused by admin", "the rollout paused from its page");
    assert_eq!(rollout()["state"], "Paused");
    wait_buttons(&mut b, &["Resume", "Promote", "Abort"]);
    click(&mut b, "Resume");
    wait_buttons(&mut b, &["Pause", "Promote", "Abort"]);
    wait_state(&["Progressing", "Baking"]);
    // Promote skips the bake: the second wave starts, and after it bakes, a second promote completes it.
    click(&mut b, "Promote");
    b.wait_text("wave 2 of 2", "the second wave, promoted from the page");
    wait_state(&["Baking"]);
    b.wait_text("baking since", "the second wave baking");
    wait_buttons(&mut b, &["Pause", "Promote", "Abort"]);
    click(&mut b, "Promote");
    b.wait_text("Complete", "the rollout promoted to its end");
    assert_eq!(rollout()["state"], "Complete");
    assert!(
        buttons(&mut b).is_empty(),
        "an ended rollout offers nothing"
    );

    // A bad v3 fails on the canary: the rollout pauses, and the page names the node and its reason.
    apply(&web_revision("v3", Some("<b>broken</b> & gone"), "1s"));
    wait_state(&["Paused"]);
    let text = b.open(&format!("{}/ui/rollouts/web", server.api_url()), "canary");
    for want in [
        "Paused",
        "wave 1: 1 of 1 failed",
        "Change failed",
        "<b>broken</b> & gone",
    ] {
        assert!(
            text.contains(want),
            "the paused rollout's page lacks {want:?}:\n{text}"
        );
    }
    let bars =
        b.eval("document.querySelectorAll('table.waves svg.outcomes rect.change_failed').length");
    assert_eq!(bars, json!(1), "the first wave's bar shows its failure");
    b.screenshot(&shots.join("rollout-1280x800.png"));
    let text = b.open(&format!("{}/ui/rollouts", server.api_url()), "web");
    for want in ["Paused", "2 → 3", "1 of 2"] {
        assert!(
            text.contains(want),
            "the rollouts list lacks {want:?}:\n{text}"
        );
    }
    b.screenshot(&shots.join("rollouts-1280x800.png"));
    let nav = b.eval("document.querySelector('nav.main a[aria-current=page]').textContent");
    assert_eq!(nav, "Rollouts");
    b.open(&format!("{}/ui/manifests", server.api_url()), "rollout →");
    let linked = b.eval("!!document.querySelector('a[href=\"/ui/rollouts/web\"]')");
    assert_eq!(linked, json!(true), "the manifests page links the rollout");
    b.size(390, 844, true);
    for (page, url) in [
        ("rollout", "/ui/rollouts/web"),
        ("rollouts", "/ui/rollouts"),
    ] {
        b.open(&format!("{}{url}", server.api_url()), "Paused");
        b.assert_no_sideways_scroll(page);
        b.screenshot(&shots.join(format!("{page}-390x844.png")));
    }

    // What a node reported is escaped in the page's HTML.
    let http = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = |p: &str| format!("{}{p}", server.api_url());
    let html = http
        .get(url("/ui/rollouts/web"))
        .bearer_auth(&admin)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        html.contains("&#60;b&#62;broken&#60;/b&#62; &#38; gone"),
        "{html}"
    );
    assert!(
        !html.contains("<b>broken"),
        "a node's text reached the page unescaped"
    );

    // A viewer sees the page without buttons, and the command is refused.
    let viewer = operator(&server, "vera", "viewer");
    let login = |token: &str| {
        let r = http
            .post(url("/ui/login"))
            .form(&[("token", token)])
            .send()
            .unwrap();
        session_set(&r).unwrap()
    };
    let viewer_session = login(&viewer);
    let page = http
        .get(url("/ui/rollouts/web"))
        .header("cookie", &viewer_session)
        .send()
        .unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().unwrap();
    assert!(
        page.contains("wave 1 of 2") && !page.contains("hx-post"),
        "{page}"
    );
    let r = http
        .post(url("/ui/rollouts/web/resume"))
        .header("cookie", &viewer_session)
        .header("hx-request", "true")
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().unwrap().contains("needs the `operator` role"));
    // An operator's cookie without htmx's header (a cross-site form) is refused too; undo is not a
    // dashboard command; a refused command is said on the page.
    let op_session = login(&operator(&server, "olga", "operator"));
    let r = http
        .post(url("/ui/rollouts/web/resume"))
        .header("cookie", &op_session)
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        rollout()["state"],
        "Paused",
        "refused commands change nothing"
    );
    let hx = |path: &str| {
        http.post(url(path))
            .header("cookie", &op_session)
            .header("hx-request", "true")
            .send()
            .unwrap()
    };
    assert_eq!(hx("/ui/rollouts/web/undo").status(), 404);
    let r = hx("/ui/rollouts/web/pause");
    assert_eq!(r.status(), 200);
    assert!(
        r.text()
            .unwrap()
            .contains("only a rollout under way pauses"),
        "a refused command is said on the page"
    );
    let r = hx("/ui/rollouts/web/abort");
    assert_eq!(r.status(), 200);
    assert_eq!(rollout()["state"], "Aborted");
    let audit = server
        .get("/api/v1/audit?action=rollout.abort")
        .unwrap()
        .body;
    assert_eq!(audit[0]["actor"], "olga", "{audit}");
    assert_eq!(hx("/ui/rollouts/nothing/pause").status(), 404);
}
