//! The docs' examples, run as written, so a renamed command or flag fails CI instead of a new user.
//!
//! Markers (HTML comments, invisible on GitHub) on the line before a fenced block:
//! - `<!-- doc-test -->`: the block runs as one bash script (`set -e`, so every command must exit 0),
//!   in a work dir shared by the doc's blocks; variables a block sets carry to the next block of its doc.
//! - `<!-- doc-test: file NAME -->`: the block is written to NAME in that work dir before any block runs.
//! - `<!-- doc-test: skip: REASON -->`: not run, for the reason given (it cannot run here).
//!
//! Every `sh` block of the docs below must carry one of them, so a new example is run or says why not.
//! The fleet they run on is the test's, started the way the README says: `drover up` (its REST and agent
//! addresses from `DROVER_LISTEN` and `DROVER_AGENT_LISTEN`, free ports, its data dir `DROVER_DATA_DIR`, a
//! temp dir; the CLI finds it through `DROVER_SERVER`), plus a node `pi-kitchen` (label `role=edge`, shell
//! and containers allowed, a Podman engine) enrolled with `drover token create` and `drover-agent --server
//! --token --label` as in the README, and a manifest giving it a container resource `web`. `HOME` is a temp
//! dir too. The binaries are the build's (`cargo build --workspace`), first on `PATH`.
//!
//! Not run, and why (each also says so at its marker):
//! - README "The two commands": a release build and the whole suite; this test starts `drover up` itself.
//! - README's `drover-agent --server https://SERVER:9090 ...`: meant for another host; pi-kitchen is the test's.
//! - README's `drover server --api-tls` and `drover login`: a second server, and a line needing what it prints.
//! - tasks.md's `tasks logs/cancel 3f2a9c1e` and `--follow` on a container: a placeholder id; a follow that
//!   never ends.
//! - desired-state.md's web.yaml: a systemd unit and a setup program this host does not have (no systemd in
//!   CI); the envelope example of the same page is applied in its place.
//! - operations.md's fuzz run: minutes long; systemd, PostgreSQL migration and TLS context blocks there are
//!   plain text blocks (no `sh`), shown as configuration rather than run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use drover_testkit::{Agent, BUSYBOX, Podman, TIMEOUT, bin, free_port, wait_for};
use serde_json::Value;

/// The docs whose examples run, in the order they run (the README last: its curl adds an HTTP node that
/// takes no manifests or tasks).
const DOCS: [&str; 4] = [
    "docs/operations.md",
    "docs/tasks.md",
    "docs/desired-state.md",
    "README.md",
];

/// How long one block may take.
const BLOCK_LIMIT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Marker {
    Run,
    File(String),
    Skip(String),
}

#[derive(Debug)]
struct Block {
    line: usize,
    info: String,
    marker: Option<Marker>,
    text: String,
}

/// The fenced blocks of a Markdown text, each with the marker on the line before it (blank lines between
/// are allowed).
fn blocks(markdown: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut marker: Option<Marker> = None;
    let mut open: Option<Block> = None;
    for (i, line) in markdown.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(block) = &mut open {
            if trimmed == "```" {
                out.extend(open.take());
            } else {
                block.text.push_str(line);
                block.text.push('\n');
            }
            continue;
        }
        if let Some(info) = trimmed.strip_prefix("```") {
            open = Some(Block {
                line: i + 1,
                info: info.trim().to_string(),
                marker: marker.take(),
                text: String::new(),
            });
        } else if let Some(m) = trimmed
            .strip_prefix("<!-- doc-test")
            .and_then(|m| m.strip_suffix("-->"))
        {
            let m = m.trim().trim_start_matches(':').trim();
            marker = Some(if m.is_empty() {
                Marker::Run
            } else if let Some(name) = m.strip_prefix("file ") {
                Marker::File(name.trim().to_string())
            } else {
                Marker::Skip(
                    m.trim_start_matches("skip")
                        .trim_start_matches(':')
                        .trim()
                        .to_string(),
                )
            });
        } else if !trimmed.is_empty() {
            marker = None;
        }
    }
    out
}

/// A process group started by the test, stopped (SIGTERM, then SIGKILL) when dropped.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let pgid = self.0.id() as i32;
        // SAFETY: kill(2) on a process group this test created.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: as above.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

struct Env {
    vars: BTreeMap<String, String>,
    root: PathBuf,
}

impl Env {
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        // The CLI and server read these; the caller's own must not leak into the docs' fleet.
        for var in [
            "DROVER_TOKEN",
            "DROVER_CONTEXT",
            "DROVER_SIGN_KEY",
            "DROVER_CONFIG",
        ] {
            cmd.env_remove(var);
        }
        cmd.envs(&self.vars).current_dir(self.root.join("work"));
        cmd
    }

    fn drover(&self, args: &[&str]) -> Output {
        self.command("drover")
            .args(args)
            .output()
            .expect("drover runs")
    }

    fn nodes(&self) -> Vec<Value> {
        let out = self.drover(&["nodes", "-o", "json"]);
        if !out.status.success() {
            return Vec::new();
        }
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    fn wait_ready(&self, name: &str) {
        wait_for(&format!("node {name} Ready"), TIMEOUT * 2, || {
            self.nodes()
                .iter()
                .any(|n| n["name"] == name && n["status"] == "Ready")
                .then_some(())
        })
        .unwrap();
    }

    /// Runs one block as a bash script; variables it sets are saved for the doc's next block.
    fn run_block(&self, doc: &str, block: &Block, saved: &Path) -> Result<(), String> {
        let script = format!(
            "set -e\nset -a\n[ -f {saved} ] && . {saved}\nset -x\n{}\nset +x\nexport -p > {saved}\n",
            block.text,
            saved = shell_quote(saved),
        );
        let mut child = self
            .command("bash")
            .arg("-c")
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start bash: {e}"))?;
        let started = Instant::now();
        // Output is read after the end: examples print little.
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if started.elapsed() > BLOCK_LIMIT => {
                    let _ = child.kill();
                    break None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => return Err(e.to_string()),
            }
        };
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        let report = || {
            format!(
                "{doc}:{}: ```{}\n{}--- stdout\n{}--- stderr\n{}",
                block.line,
                block.info,
                block.text,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        };
        // Shown with --nocapture: what each example printed.
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        match status {
            Some(s) if s.success() => Ok(()),
            Some(s) => Err(format!("exited {s}: {}", report())),
            None => Err(format!("ran past {BLOCK_LIMIT:?}: {}", report())),
        }
    }
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn every_sh_block_is_run_or_says_why_not() {
    for doc in DOCS {
        let text = std::fs::read_to_string(repo_root().join(doc)).unwrap();
        for b in blocks(&text) {
            if b.info == "sh" {
                assert!(
                    b.marker.is_some(),
                    "{doc}:{}: a `sh` block needs `<!-- doc-test -->` or `<!-- doc-test: skip: WHY -->` before it",
                    b.line
                );
            }
            if let Some(Marker::Skip(why)) = &b.marker {
                assert!(!why.is_empty(), "{doc}:{}: a skip says why", b.line);
            }
        }
    }
}

#[test]
fn the_docs_examples_run_as_written() {
    let podman = Podman::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    for dir in ["data", "home", "work"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    let bin_dir = bin("drover").unwrap().parent().unwrap().to_path_buf();
    let (api, agents) = (free_port(), free_port());
    let vars: BTreeMap<String, String> = [
        (
            "PATH",
            format!(
                "{}:{}",
                bin_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        ),
        ("HOME", root.join("home").display().to_string()),
        ("DROVER_DATA_DIR", root.join("data").display().to_string()),
        ("DROVER_LISTEN", format!("127.0.0.1:{api}")),
        ("DROVER_AGENT_LISTEN", format!("127.0.0.1:{agents}")),
        ("DROVER_SERVER", format!("http://127.0.0.1:{api}")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let env = Env { vars, root };

    // `drover up`, as the README starts it.
    let log = std::fs::File::create(env.root.join("up.log")).unwrap();
    let up = {
        use std::os::unix::process::CommandExt;
        let mut cmd = env.command("drover");
        cmd.arg("up")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0);
        Background(cmd.spawn().unwrap())
    };
    let host = hostname();
    env.wait_ready(&host);

    // pi-kitchen, enrolled as the README says.
    let token = env.drover(&["token", "create", "--ttl", "1h", "--label", "role=edge"]);
    assert!(token.status.success(), "{token:?}");
    let token = String::from_utf8_lossy(&token.stdout).trim().to_string();
    let agent_server = format!("https://127.0.0.1:{agents}");
    let _kitchen = Agent::start_raw(
        [
            "--server",
            &agent_server,
            "--token",
            &token,
            "--name",
            "pi-kitchen",
            "--label",
            "site=kitchen",
            "--heartbeat-interval",
            "1s",
            "--allow-shell",
            "--allow-kind",
            "container",
        ]
        .map(String::from)
        .to_vec(),
        &[("DOCKER_HOST", &podman.docker_host())],
    )
    .unwrap();
    env.wait_ready("pi-kitchen");

    // The container docs/tasks.md reads the logs of: a manifest's container resource `web`.
    let manifest = env.root.join("work/containers.yaml");
    std::fs::write(
        &manifest,
        format!(
            "name: containers\nselector: {{role: edge}}\nresources:\n  - id: web\n    container:\n      image: {BUSYBOX}\n      pull: never\n      command: [sh, -c, \"echo serving; trap 'exit 0' TERM; while true; do sleep 1; done\"]\n"
        ),
    )
    .unwrap();
    let applied = env.drover(&[
        "apply",
        "-f",
        manifest.to_str().unwrap(),
        "--wait",
        "--timeout",
        "90s",
    ]);
    assert!(applied.status.success(), "{applied:?}");

    let mut failures = Vec::new();
    let mut ran = 0;
    for doc in DOCS {
        let text = std::fs::read_to_string(repo_root().join(doc)).unwrap();
        let blocks = blocks(&text);
        for b in &blocks {
            if let Some(Marker::File(name)) = &b.marker {
                std::fs::write(env.root.join("work").join(name), &b.text).unwrap();
            }
        }
        let saved = env
            .root
            .join(format!("{}.env", doc.replace(['/', '.'], "_")));
        for b in blocks.iter().filter(|b| b.marker == Some(Marker::Run)) {
            ran += 1;
            eprintln!("running {doc}:{}", b.line);
            if let Err(e) = env.run_block(doc, b, &saved) {
                failures.push(e);
            }
        }
    }
    drop(up);
    drop(_kitchen);
    // The README's tour alone has six runnable blocks: none may go unnoticed by a marker typo.
    assert!(ran >= 9, "only {ran} doc blocks ran");
    // The engine is the host's: what the docs' manifest made must not outlive the test.
    let _ = podman.podman(&["rm", "-f", "-t", "0", "drover-web"]);
    assert!(
        failures.is_empty(),
        "{} doc block(s) failed:\n\n{}\n\n--- drover up's log (tail)\n{}",
        failures.len(),
        failures.join("\n\n"),
        drover_testkit::tail(
            &std::fs::read_to_string(env.root.join("up.log")).unwrap_or_default(),
            40
        )
    );
}

fn hostname() -> String {
    let out = Command::new("hostname").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn markers_are_read() {
    let md = "<!-- doc-test -->\n```sh\na\n```\n\n<!-- doc-test: skip: no host -->\n\n```sh\nb\n```\ntext\n```sh\nc\n```\n<!-- doc-test: file x.yaml -->\n```yaml\nd: 1\n```\n";
    let b = blocks(md);
    assert_eq!(b.len(), 4);
    assert_eq!(b[0].marker, Some(Marker::Run));
    assert_eq!(b[1].marker, Some(Marker::Skip("no host".into())));
    assert_eq!(b[2].marker, None);
    assert_eq!(b[3].marker, Some(Marker::File("x.yaml".into())));
    assert_eq!(b[3].text, "d: 1\n");
}
