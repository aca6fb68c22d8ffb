//! Secrets taken out of command lines before `list_processes` returns them: whoever may list processes
//! must not learn the agent's own join token, nor another program's password.
//!
//! Redacted: the value of a flag whose name mentions a token, password, secret, key or credential (`--token V`,
//! `--token=V`, `-password V`), `NAME=value` where NAME does, drover tokens (`drv1.…`) anywhere, and the
//! password in a URL's `user:password@`. Arguments that hold several words (`sh -c "…"`) are redacted word by
//! word. Over-redacting a harmless value is the accepted cost.

/// What a secret is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Words in a flag or variable name that mark its value as secret (compared lowercase).
const SECRET_WORDS: &[&str] = &["token", "password", "passwd", "secret", "key", "credential"];

/// Redacts `cmd` (a process's argv) in place.
pub fn command_line(cmd: &mut [String]) {
    let mut value_is_secret = false;
    for arg in cmd.iter_mut() {
        if arg.contains(char::is_whitespace) {
            // A whole script in one argument: redact its words as if they were arguments.
            let mut words: Vec<String> = arg.split_whitespace().map(str::to_string).collect();
            command_line(&mut words);
            *arg = words.join(" ");
            value_is_secret = false;
            continue;
        }
        let was_secret = std::mem::replace(&mut value_is_secret, false);
        if was_secret && !arg.starts_with("--") {
            *arg = REDACTED.to_string();
            continue;
        }
        if let Some(flag) = arg.strip_prefix('-') {
            let flag = flag.trim_start_matches('-');
            match flag.split_once('=') {
                Some((name, _)) if is_secret_name(name) => {
                    *arg = format!("{}={REDACTED}", &arg[..arg.len() - flag.len() + name.len()])
                }
                Some(_) => {}
                None => value_is_secret = is_secret_name(flag),
            }
        } else if let Some((name, _)) = arg.split_once('=')
            && is_env_name(name)
            && is_secret_name(name)
        {
            *arg = format!("{name}={REDACTED}");
        }
        redact_drover_tokens(arg);
        redact_url_password(arg);
    }
}

fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| name.contains(w))
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `drv1.<hex>.<hex>…` anywhere in `arg` becomes `drv1.[redacted]`.
fn redact_drover_tokens(arg: &mut String) {
    const PREFIX: &str = "drv1.";
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg.as_str();
    let mut changed = false;
    while let Some(at) = rest.find(PREFIX) {
        let after = &rest[at + PREFIX.len()..];
        let end = after
            .find(|c: char| !(c.is_ascii_hexdigit() || c == '.'))
            .unwrap_or(after.len());
        out.push_str(&rest[..at + PREFIX.len()]);
        if end > 0 {
            out.push_str(REDACTED);
            changed = true;
        }
        rest = &after[end..];
    }
    if changed {
        out.push_str(rest);
        *arg = out;
    }
}

/// `scheme://user:password@host` becomes `scheme://user:[redacted]@host`.
fn redact_url_password(arg: &mut String) {
    let Some(scheme_end) = arg.find("://") else {
        return;
    };
    let start = scheme_end + 3;
    let authority_end = arg[start..]
        .find(['/', '?', '#'])
        .map_or(arg.len(), |i| start + i);
    let Some(at) = arg[start..authority_end].rfind('@').map(|i| start + i) else {
        return;
    };
    if let Some(colon) = arg[start..at].find(':').map(|i| start + i) {
        arg.replace_range(colon + 1..at, REDACTED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redacted(args: &[&str]) -> Vec<String> {
        let mut cmd: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        command_line(&mut cmd);
        cmd
    }

    const TOKEN: &str = "drv1.0badc0de.0123456789abcdef0123456789abcdef";

    #[test]
    fn flag_values_and_tokens_are_redacted() {
        let out = redacted(&[
            "drover-agent",
            "--server",
            "https://cp:9090",
            "--token",
            TOKEN,
            "--label",
            "role=edge",
        ]);
        assert_eq!(
            out,
            [
                "drover-agent",
                "--server",
                "https://cp:9090",
                "--token",
                REDACTED,
                "--label",
                "role=edge"
            ]
        );
        let out = redacted(&[
            "app",
            &format!("--token={TOKEN}"),
            "--db-password",
            "hunter2",
            "-p",
            "8080",
            "--api-key=abc",
            "--Client-Secret",
            "s3",
        ]);
        assert_eq!(
            out,
            [
                "app",
                "--token=[redacted]",
                "--db-password",
                REDACTED,
                "-p",
                "8080",
                "--api-key=[redacted]",
                "--Client-Secret",
                REDACTED
            ]
        );
    }

    #[test]
    fn env_assignments_urls_scripts_and_stray_tokens_are_redacted() {
        let out = redacted(&[
            "env",
            "DROVER_TOKEN=abc",
            "AWS_SECRET_ACCESS_KEY=xyz",
            "HOME=/root",
            "postgres://app:hunter2@db:5432/x",
            &format!("prefix{TOKEN}suffix"),
            &format!("sh -c 'curl -H \"Authorization: Bearer {TOKEN}\" --password pw http://x'"),
        ]);
        assert_eq!(out[1], "DROVER_TOKEN=[redacted]");
        assert_eq!(out[2], "AWS_SECRET_ACCESS_KEY=[redacted]");
        assert_eq!(out[3], "HOME=/root");
        assert_eq!(out[4], "postgres://app:[redacted]@db:5432/x");
        assert_eq!(out[5], "prefixdrv1.[redacted]suffix");
        let joined = out.join(" ");
        assert!(
            !joined.contains("0badc0de") && !joined.contains("hunter2") && !joined.contains(" pw "),
            "{joined}"
        );
    }

    #[test]
    fn harmless_arguments_are_kept() {
        let args = [
            "nginx",
            "-g",
            "daemon off;",
            "--port=80",
            "--keep",
            "x",
            "/etc/tokens.d",
        ];
        let out = redacted(&args);
        assert_eq!(out[..2], ["nginx", "-g"]);
        assert_eq!(out[3..5], ["--port=80", "--keep"]);
        assert_eq!(out[6], "/etc/tokens.d");
    }
}
