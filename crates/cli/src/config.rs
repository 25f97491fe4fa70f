//! The saved sign-in (`config.json`) and how a command decides which server and token to use.
//!
//! The file holds a bearer token, so it is created readable by its owner only and replaced
//! atomically: a crash halfway through a `login` must not leave a truncated file behind.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use reqwest::Url;
use serde::{Deserialize, Serialize};

/// Environment variable naming the folder that holds `config.json`.
pub const CONFIG_DIR_ENV: &str = "UPKEEP_CONFIG_DIR";
/// Environment variables that override the saved sign-in, for scripts and CI.
pub const SERVER_ENV: &str = "UPKEEP_SERVER";
pub const TOKEN_ENV: &str = "UPKEEP_TOKEN";

const FILE_NAME: &str = "config.json";

/// What `upkeep login` saves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub server: String,
    pub token: String,
    pub user: String,
}

/// The server and token a command talks with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub server: Url,
    pub token: String,
}

/// `$UPKEEP_CONFIG_DIR`, else the platform's configuration folder plus `upkeep`.
pub fn config_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = env(CONFIG_DIR_ENV) {
        return Ok(PathBuf::from(dir));
    }
    let base = dirs::config_dir()
        .with_context(|| format!("cannot tell where to keep the sign-in: set {CONFIG_DIR_ENV} to a folder"))?;
    Ok(base.join("upkeep"))
}

/// The saved sign-in in `dir`, or `None` when nobody has signed in yet.
pub fn load(dir: &Path) -> anyhow::Result<Option<Config>> {
    let path = dir.join(FILE_NAME);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let config = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a valid upkeep sign-in; sign in again with `upkeep login`",
            path.display()
        )
    })?;
    Ok(Some(config))
}

/// Saves `config` as `dir/config.json`: written to a temporary file next to it, flushed to disk,
/// then renamed over the old one, so readers see either the old or the new sign-in.
pub fn save(dir: &Path, config: &Config) -> anyhow::Result<PathBuf> {
    create_private_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(FILE_NAME);
    // The process id keeps two concurrent logins from writing into the same temporary file.
    let temp = dir.join(format!(".{FILE_NAME}.{}.tmp", std::process::id()));
    let mut text = serde_json::to_string_pretty(config)?;
    text.push('\n');
    let written = write_private(&temp, text.as_bytes()).and_then(|()| fs::rename(&temp, &path));
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(e).with_context(|| format!("saving the sign-in to {}", path.display()));
    }
    // Make the rename itself durable; a failure here loses nothing that was promised.
    #[cfg(unix)]
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(path)
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    // A leftover from a crashed run with the same process id would make `create_new` fail.
    let _ = fs::remove_file(path);
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    // Set at creation, not afterwards, so the token is never readable by others, not even briefly.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// `url` as people write it: without the trailing slash of a bare host.
pub fn show(url: &Url) -> &str {
    url.as_str().trim_end_matches('/')
}

/// Checks that `text` is an `http://` or `https://` URL of a server, without query or fragment,
/// and returns it without a trailing slash so URLs built on it and messages about it look alike.
pub fn parse_server_url(text: &str) -> anyhow::Result<Url> {
    let url = Url::parse(text.trim())
        .map_err(|e| anyhow::anyhow!("`{text}` is not a server URL ({e}); use e.g. https://updates.example.com"))?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!("`{text}` is not an http:// or https:// URL");
    }
    if url.host_str().is_none_or(str::is_empty) {
        bail!("`{text}` has no host name");
    }
    if url.query().is_some() || url.fragment().is_some() {
        bail!("`{text}` must not have a query (?…) or fragment (#…)");
    }
    if !url.username().is_empty() || url.password().is_some() {
        bail!("`{text}` must not carry a user name or password; sign in with `upkeep login`");
    }
    let trimmed = url.as_str().trim_end_matches('/').to_owned();
    Ok(Url::parse(&trimmed)?)
}

/// Chooses the server and token: `UPKEEP_SERVER` / `UPKEEP_TOKEN` when set, else the saved
/// sign-in.
///
/// A saved token is only ever sent to the server it was issued by: when `UPKEEP_SERVER` points
/// elsewhere, the saved token is not used for it, so a typo cannot leak it to another host.
pub fn resolve(
    env_server: Option<String>,
    env_token: Option<String>,
    saved: Option<&Config>,
) -> anyhow::Result<Credentials> {
    const NOT_SIGNED_IN: &str = "not signed in: run `upkeep login --server URL --user NAME --password-stdin`";
    let saved_server = saved.map(|c| parse_server_url(&c.server));
    let server = match (&env_server, &saved_server) {
        (Some(text), _) => parse_server_url(text).with_context(|| format!("{SERVER_ENV} is not usable"))?,
        (None, Some(Ok(url))) => url.clone(),
        (None, Some(Err(e))) => {
            bail!("the saved sign-in has a bad server URL ({e}); sign in again with `upkeep login`")
        }
        (None, None) => bail!(NOT_SIGNED_IN),
    };
    let saved_server = saved_server.and_then(Result::ok);
    let token = match (env_token, saved) {
        (Some(token), _) => token,
        (None, Some(config)) if saved_server.as_ref() == Some(&server) => config.token.clone(),
        (None, Some(_)) => {
            let server = show(&server);
            bail!(
                "not signed in to {server} (the saved sign-in is for another server): set {TOKEN_ENV} or run `upkeep login --server {server} --user NAME --password-stdin`"
            )
        }
        (None, None) => bail!(NOT_SIGNED_IN),
    };
    Ok(Credentials { server, token })
}

/// Reads the server and token for a command from the environment and, when needed, the saved
/// sign-in (a missing or broken file does not matter when both variables are set).
pub fn credentials() -> anyhow::Result<Credentials> {
    let server = env(SERVER_ENV);
    let token = env(TOKEN_ENV);
    if server.is_some() && token.is_some() {
        return resolve(server, token, None);
    }
    let saved = load(&config_dir()?)?;
    resolve(server, token, saved.as_ref())
}

/// An environment variable's value; unset, empty and non-UTF-8 all count as not set.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Config {
        Config {
            server: "http://127.0.0.1:8080".into(),
            token: "upk_secret".into(),
            user: "admin".into(),
        }
    }

    #[test]
    fn config_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a").join("upkeep");
        assert_eq!(load(&nested).unwrap(), None);
        let path = save(&nested, &sample()).unwrap();
        assert_eq!(path, nested.join("config.json"));
        assert_eq!(load(&nested).unwrap(), Some(sample()));

        // Saving again replaces it and leaves no temporary file behind.
        let other = Config {
            user: "ops".into(),
            ..sample()
        };
        save(&nested, &other).unwrap();
        assert_eq!(load(&nested).unwrap(), Some(other));
        let names: Vec<_> = fs::read_dir(&nested).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["config.json"]);
    }

    #[cfg(unix)]
    #[test]
    fn config_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = save(dir.path(), &sample()).unwrap();
        assert_eq!(fs::metadata(path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn broken_config_says_so() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("config.json"), "{not json").unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains("upkeep login"), "{err:#}");
    }

    #[test]
    fn server_urls_are_checked_and_normalized() {
        assert_eq!(
            parse_server_url("http://host:8080/").unwrap().as_str(),
            "http://host:8080/"
        );
        assert_eq!(
            parse_server_url("https://host/upkeep/").unwrap().as_str(),
            "https://host/upkeep"
        );
        for bad in ["ftp://host", "host:8080", "", "http://host/?x=1", "https://u:p@host"] {
            assert!(parse_server_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn environment_overrides_the_saved_sign_in() {
        let saved = sample();
        let from_file = resolve(None, None, Some(&saved)).unwrap();
        assert_eq!(
            (from_file.server.as_str(), from_file.token.as_str()),
            ("http://127.0.0.1:8080/", "upk_secret")
        );

        let both = resolve(Some("https://other".into()), Some("upk_env".into()), Some(&saved)).unwrap();
        assert_eq!(
            (both.server.as_str(), both.token.as_str()),
            ("https://other/", "upk_env")
        );

        let token_only = resolve(None, Some("upk_env".into()), Some(&saved)).unwrap();
        assert_eq!(
            (token_only.server.as_str(), token_only.token.as_str()),
            ("http://127.0.0.1:8080/", "upk_env")
        );

        // The same server, spelled with a trailing slash, may use the saved token.
        let same = resolve(Some("http://127.0.0.1:8080/".into()), None, Some(&saved)).unwrap();
        assert_eq!(same.token, "upk_secret");
    }

    #[test]
    fn saved_token_never_goes_to_another_server() {
        let err = resolve(Some("https://elsewhere".into()), None, Some(&sample())).unwrap_err();
        assert!(err.to_string().contains("UPKEEP_TOKEN"), "{err}");
    }

    #[test]
    fn nobody_signed_in() {
        let err = resolve(None, None, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "not signed in: run `upkeep login --server URL --user NAME --password-stdin`"
        );
        assert!(resolve(Some("http://host".into()), None, None).is_err());
    }
}
