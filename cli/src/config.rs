//! Where the server is and which token to send: `--url`, `GANTRY_URL` / `GANTRY_TOKEN`, the
//! login saved in the user's config directory, or the local stack `deploy/local/up.sh` runs.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::client::{Error, Result};

/// What `gantry login` saves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    /// The server's URL.
    pub url: String,
    /// The API token.
    pub token: String,
}

/// The server and token a command uses, and where they came from.
#[derive(Debug, Clone)]
pub struct Target {
    /// The server's URL.
    pub url: String,
    /// The API token, if any.
    pub token: Option<String>,
    /// Where they came from, for `gantry login --show`-like messages and errors.
    pub source: String,
}

/// The login file: `$GANTRY_CONFIG`, else `<config dir>/gantry/config.json`.
pub fn path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("GANTRY_CONFIG") {
        return Ok(PathBuf::from(p));
    }
    dirs::config_dir()
        .map(|d| d.join("gantry").join("config.json"))
        .ok_or_else(|| Error::msg("no config directory: set HOME or GANTRY_CONFIG"))
}

/// The saved login, if there is one.
pub fn load() -> Result<Option<Saved>> {
    let p = path()?;
    match fs::read(&p) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::msg(format!("{} is not a gantry login ({e})", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::msg(format!("reading {}: {e}", p.display()))),
    }
}

/// Save a login, readable by its owner only.
pub fn save(saved: &Saved) -> Result<PathBuf> {
    let p = path()?;
    if let Some(dir) = p.parent() {
        if !dir.exists() {
            fs::create_dir_all(dir)?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
    }
    let tmp = p.with_extension("json.tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::msg(format!("writing {}: {e}", tmp.display())))?;
    f.write_all(&serde_json::to_vec_pretty(saved).map_err(|e| Error::msg(e.to_string()))?)?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    drop(f);
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))?;
    fs::rename(&tmp, &p).map_err(|e| Error::msg(format!("writing {}: {e}", p.display())))?;
    Ok(p)
}

/// Forget the saved login; whether there was one.
pub fn remove() -> Result<bool> {
    let p = path()?;
    match fs::remove_file(&p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::msg(format!("removing {}: {e}", p.display()))),
    }
}

/// The local stack's addresses file (`$GANTRY_STATE_DIR/env`, else `.gantry/env` in this
/// directory or one above it), as `deploy/local/up.sh` writes it.
fn local_stack_env() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("GANTRY_STATE_DIR") {
        let p = Path::new(&dir).join("env");
        return p.is_file().then_some(p);
    }
    let cwd = std::env::current_dir().ok()?;
    cwd.ancestors()
        .map(|d| d.join(".gantry").join("env"))
        .find(|p| p.is_file())
}

fn read_env_file(p: &Path) -> Option<(String, Option<String>)> {
    let text = fs::read_to_string(p).ok()?;
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    Some((get("GANTRY_API_URL")?, get("GANTRY_ADMIN_API_TOKEN")))
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

/// The server and token for a command: `url_flag`, else `GANTRY_URL`, else the saved login,
/// else the local stack. The token is `GANTRY_TOKEN`, else the one saved with that same URL: a
/// token is never sent to a server other than the one it was saved for.
pub fn target(url_flag: Option<&str>) -> Result<Target> {
    let saved = load()?;
    let token_env = env("GANTRY_TOKEN");
    let explicit = url_flag
        .map(|u| (u.to_owned(), "--url"))
        .or_else(|| env("GANTRY_URL").map(|u| (u, "GANTRY_URL")));
    if let Some((url, from)) = explicit {
        let url = url.trim_end_matches('/').to_owned();
        let (token, source) = match token_env {
            Some(t) => (Some(t), format!("{from} and GANTRY_TOKEN")),
            None => match saved.filter(|s| s.url.trim_end_matches('/') == url) {
                Some(s) => (Some(s.token), format!("{from} and the saved login")),
                None => (None, from.to_owned()),
            },
        };
        return Ok(Target { url, token, source });
    }
    if let Some(s) = saved {
        let p = path()?;
        return Ok(Target {
            url: s.url,
            token: token_env.or(Some(s.token)),
            source: format!("the login saved in {}", p.display()),
        });
    }
    if let Some(p) = local_stack_env() {
        if let Some((url, token)) = read_env_file(&p) {
            return Ok(Target {
                url,
                token: token_env.or(token),
                source: format!("the local stack ({})", p.display()),
            });
        }
    }
    Err(Error::msg(
        "no Gantry server configured: run `gantry login --url URL`, or set GANTRY_URL and \
         GANTRY_TOKEN",
    ))
}
