//! `api_key_from_environment` against real env vars and a temp netrc file. This binary is the
//! only one that mutates the environment, and a mutex serialises its tests.

use std::sync::{Mutex, PoisonError};

use tessera_wandb::api_key_from_environment;
use url::Url;

static ENV_LOCK: Mutex<()> = Mutex::new(());

fn set(name: &str, value: Option<&str>) {
    // SAFETY: every test in this binary holds ENV_LOCK while touching the environment, and no
    // other thread reads it meanwhile.
    unsafe {
        match value {
            Some(value) => std::env::set_var(name, value),
            None => std::env::remove_var(name),
        }
    }
}

#[test]
fn wandb_api_key_takes_precedence_over_netrc() {
    let _lock = ENV_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    let dir = tempfile::tempdir().expect("temp dir");
    let netrc = dir.path().join("netrc");
    std::fs::write(&netrc, "machine api.wandb.ai login user password NETRC_KEY\n").expect("write");
    set("NETRC", netrc.to_str());
    set("WANDB_API_KEY", Some("ENV_KEY"));
    let cloud = Url::parse("https://api.wandb.ai").expect("url");
    assert_eq!(api_key_from_environment(&cloud).as_deref(), Some("ENV_KEY"));
    set("WANDB_API_KEY", None);
    assert_eq!(api_key_from_environment(&cloud).as_deref(), Some("NETRC_KEY"));
    set("NETRC", None);
}

#[test]
fn netrc_multi_line_entry_for_the_base_url_host() {
    let _lock = ENV_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    let dir = tempfile::tempdir().expect("temp dir");
    let netrc = dir.path().join("netrc");
    std::fs::write(
        &netrc,
        "machine api.wandb.ai\n  login user\n  password CLOUD_KEY\nmachine wandb.internal\n  login user\n  password LOCAL_KEY\n",
    )
    .expect("write");
    set("WANDB_API_KEY", None);
    set("NETRC", netrc.to_str());
    let cloud = Url::parse("https://api.wandb.ai").expect("url");
    let local = Url::parse("http://wandb.internal:8080").expect("url");
    let other = Url::parse("https://elsewhere.example").expect("url");
    assert_eq!(api_key_from_environment(&cloud).as_deref(), Some("CLOUD_KEY"));
    assert_eq!(api_key_from_environment(&local).as_deref(), Some("LOCAL_KEY"));
    assert_eq!(api_key_from_environment(&other), None);
    set("NETRC", dir.path().join("missing").to_str());
    assert_eq!(api_key_from_environment(&cloud), None);
    set("NETRC", None);
}
