//! API-key discovery, matching the official client so `wandb login` keeps working for tessera.
//!
//! The Python client reads `$WANDB_API_KEY` first and otherwise asks `requests`' netrc lookup
//! for the base URL's host (`machine api.wandb.ai ... password KEY`, written by `wandb login`),
//! using `$NETRC` when set and `~/.netrc` (or `~/_netrc`) otherwise.

use std::path::{Path, PathBuf};

use url::Url;

/// Finds the API key the official client uses: `$WANDB_API_KEY`, else the `password` of the
/// netrc entry for `base_url`'s host (`machine api.wandb.ai` for the cloud) in `$NETRC` or
/// `~/.netrc`. Returns `None` when neither gives a non-empty key.
pub fn api_key_from_environment(base_url: &Url) -> Option<String> {
    let env_key = std::env::var("WANDB_API_KEY").ok();
    resolve_api_key(env_key.as_deref(), &netrc_candidates(), base_url)
}

/// The netrc files to try, in order: `$NETRC` alone when set, else the home directory's files.
fn netrc_candidates() -> Vec<PathBuf> {
    if let Some(path) = std::env::var_os("NETRC").filter(|p| !p.is_empty()) {
        return vec![PathBuf::from(path)];
    }
    let home = std::env::var_os("HOME").or_else(|| std::env::var_os("USERPROFILE")).filter(|h| !h.is_empty());
    home.map(PathBuf::from).map(|h| vec![h.join(".netrc"), h.join("_netrc")]).unwrap_or_default()
}

/// The environment-free core of [`api_key_from_environment`], so tests need not touch env vars.
pub(crate) fn resolve_api_key(env_key: Option<&str>, netrc_files: &[PathBuf], base_url: &Url) -> Option<String> {
    if let Some(key) = env_key.map(str::trim).filter(|k| !k.is_empty()) {
        return Some(key.to_owned());
    }
    let host = base_url.host_str()?;
    netrc_files.iter().find_map(|path| netrc_password_in_file(path, host))
}

fn netrc_password_in_file(path: &Path, host: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    netrc_password(&text, host)
}

/// One `machine` (or `default`, when `machine` is `None`) entry.
#[derive(Default)]
struct Entry {
    machine: Option<String>,
    password: Option<String>,
}

/// The password for `host` in netrc `text`, falling back to the `default` entry.
///
/// Follows Python's `netrc` module (which the official client relies on): tokens may span
/// lines, `login`/`user`/`account` values are skipped, `macdef` bodies run to the next blank
/// line, `#` starts a comment, and a later entry for the same machine wins.
pub(crate) fn netrc_password(text: &str, host: &str) -> Option<String> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut expecting: Option<String> = None;
    let mut in_macro = false;
    for line in text.lines() {
        if in_macro {
            in_macro = !line.trim().is_empty();
            continue;
        }
        for token in tokens(line) {
            if let Some(keyword) = expecting.take() {
                match keyword.as_str() {
                    "machine" => entries.push(Entry { machine: Some(token), password: None }),
                    "password" => {
                        if let Some(entry) = entries.last_mut() {
                            entry.password = Some(token);
                        }
                    }
                    "macdef" => {
                        in_macro = true;
                        break;
                    }
                    _ => {}
                }
                continue;
            }
            if token.starts_with('#') {
                break;
            }
            match token.as_str() {
                "default" => entries.push(Entry::default()),
                "machine" | "login" | "user" | "password" | "account" | "macdef" => expecting = Some(token),
                _ => {}
            }
        }
    }
    let exact = entries.iter().rev().find(|e| e.machine.as_deref() == Some(host));
    let entry = exact.or_else(|| entries.iter().rev().find(|e| e.machine.is_none()))?;
    entry.password.clone().filter(|p| !p.is_empty())
}

/// Whitespace-separated tokens of one line; a token starting with `"` runs to the closing quote
/// (with `\` escapes), like Python's shlex-based netrc lexer.
fn tokens(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let Some(first) = chars.next() else { break };
        let mut token = String::new();
        if first == '"' {
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => token.extend(chars.next()),
                    c => token.push(c),
                }
            }
        } else {
            token.push(first);
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                token.push(c);
            }
        }
        out.push(token);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cloud() -> Url {
        Url::parse("https://api.wandb.ai").expect("literal URL")
    }

    #[test]
    fn one_line_entry() {
        let text = "machine api.wandb.ai login user password KEY123\n";
        assert_eq!(netrc_password(text, "api.wandb.ai").as_deref(), Some("KEY123"));
    }

    #[test]
    fn multi_line_entry_as_wandb_login_writes_it() {
        let text = "machine example.com\n  login bob\n  password other\nmachine api.wandb.ai\n  login user\n  password KEY456\n";
        assert_eq!(netrc_password(text, "api.wandb.ai").as_deref(), Some("KEY456"));
        assert_eq!(netrc_password(text, "example.com").as_deref(), Some("other"));
    }

    #[test]
    fn unknown_host_falls_back_to_default_or_none() {
        let text = "machine api.wandb.ai login user password KEY\n";
        assert_eq!(netrc_password(text, "localhost"), None);
        let text = "machine api.wandb.ai login user password KEY\ndefault login anon password DEF\n";
        assert_eq!(netrc_password(text, "localhost").as_deref(), Some("DEF"));
    }

    #[test]
    fn comments_macros_quotes_and_last_entry_wins() {
        let text = "# a comment machine api.wandb.ai password NOPE\n\
                    machine api.wandb.ai login u password OLD\n\
                    macdef init\n\
                    machine api.wandb.ai password IN_MACRO\n\
                    \n\
                    machine api.wandb.ai login u password \"NEW KEY\" # trailing\n";
        assert_eq!(netrc_password(text, "api.wandb.ai").as_deref(), Some("NEW KEY"));
    }

    #[test]
    fn entry_without_password_gives_none() {
        assert_eq!(netrc_password("machine api.wandb.ai login user\n", "api.wandb.ai"), None);
    }

    #[test]
    fn env_key_wins_over_netrc_and_host_selects_entry() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("netrc");
        std::fs::write(
            &path,
            "machine api.wandb.ai login user password FROM_NETRC\nmachine localhost password LOCAL\n",
        )
        .expect("write netrc");
        let files = [dir.path().join("missing"), path];
        assert_eq!(resolve_api_key(Some(" FROM_ENV "), &files, &cloud()).as_deref(), Some("FROM_ENV"));
        assert_eq!(resolve_api_key(Some(""), &files, &cloud()).as_deref(), Some("FROM_NETRC"));
        assert_eq!(resolve_api_key(None, &files, &cloud()).as_deref(), Some("FROM_NETRC"));
        let local = Url::parse("http://localhost:8080").expect("literal URL");
        assert_eq!(resolve_api_key(None, &files, &local).as_deref(), Some("LOCAL"));
        assert_eq!(resolve_api_key(None, &[], &cloud()), None);
    }
}
