//! The object store releases are published to (issue 16): `swarm store
//! set/show/unset/gc`, the configuration recorded in `$SWARM_HOME/store.json`
//! (bucket, prefix, endpoint, region, URL style, and the path of a
//! credentials file: never a credential), and the credentials read at use
//! from `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN` or
//! that file. [`s3`] speaks S3 (signed with rusty-s3, sent with reqwest);
//! [`publish`] uploads a release's objects and index; [`gc`] removes what no
//! recent release references.
//!
//! Invariant: credentials stay in this module's memory; what leaves it for
//! a worker is presigned URLs for single objects ([`s3::Store::presign_get`]).

mod creds;
pub(crate) mod gc;
pub(crate) mod publish;
pub(crate) mod s3;

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cli::{StoreCommand, StoreSetArgs};
use crate::error::{Error, Result};
use crate::home::Home;
use crate::output::{self, outln};

pub(crate) use s3::Store;

/// The file under `$SWARM_HOME` that records the store.
const CONFIG_FILE: &str = "store.json";

/// The store as `swarm store set` recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoreConfig {
    pub(crate) bucket: String,
    /// Key prefix (no leading or trailing `/`; may be empty).
    pub(crate) prefix: String,
    pub(crate) endpoint: String,
    /// The endpoint the URLs for workers are signed for (default: `endpoint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) worker_endpoint: Option<String>,
    pub(crate) region: String,
    pub(crate) path_style: bool,
    /// An AWS-style credentials file to read the key from (its path only).
    #[serde(default)]
    pub(crate) credentials_file: Option<PathBuf>,
}

impl StoreConfig {
    /// `s3://BUCKET/PREFIX`.
    pub(crate) fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// The recorded store, if any.
pub(crate) fn configured(home: &Home) -> Result<Option<StoreConfig>> {
    let path = home.root().join(CONFIG_FILE);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Error::State(format!(
                "{}: {e}; fix it or run `swarm store set` again",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&path, e)),
    }
}

/// The recorded store opened with its credentials, if one is recorded.
pub(crate) fn open(home: &Home) -> Result<Option<Store>> {
    match configured(home)? {
        Some(config) => Store::new(config).map(Some),
        None => Ok(None),
    }
}

/// `swarm store …`.
pub(crate) fn run(home: &Home, command: &StoreCommand) -> Result<u8> {
    match command {
        StoreCommand::Set(args) => set(home, args).map(|()| 0),
        StoreCommand::Show { json } => show(home, *json).map(|()| 0),
        StoreCommand::Unset { json } => unset(home, *json).map(|()| 0),
        StoreCommand::Gc(args) => gc::gc(home, args),
    }
}

/// Parse `s3://BUCKET[/PREFIX]`.
fn parse_url(url: &str) -> Result<(String, String)> {
    let rest = url.strip_prefix("s3://").ok_or_else(|| {
        Error::usage(format!(
            "store {url:?}: write it s3://BUCKET/PREFIX (e.g. s3://releases/swarm)"
        ))
    })?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !ok {
        return Err(Error::usage(format!(
            "store {url:?}: {bucket:?} is not a bucket name (3 to 63 lowercase letters, digits, `-` or `.`)"
        )));
    }
    let prefix = prefix.trim_matches('/');
    if prefix.split('/').any(|c| c == ".." || c == ".") || prefix.contains("//") {
        return Err(Error::usage(format!(
            "store {url:?}: the prefix may not hold `.`, `..` or empty components"
        )));
    }
    Ok((bucket.to_owned(), prefix.to_owned()))
}

fn set(home: &Home, args: &StoreSetArgs) -> Result<()> {
    let (bucket, prefix) = parse_url(&args.url)?;
    let endpoint = http_url("--endpoint", &args.endpoint)?;
    let worker_endpoint = match &args.worker_endpoint {
        Some(u) => Some(http_url("--worker-endpoint", u)?),
        None => None,
    };
    let credentials_file = match &args.credentials_file {
        Some(p) => Some(
            std::path::absolute(p).map_err(|e| Error::usage(format!("--credentials-file: {e}")))?,
        ),
        None => None,
    };
    let config = StoreConfig {
        bucket,
        prefix,
        endpoint,
        worker_endpoint,
        region: args.region.clone(),
        path_style: args.path_style,
        credentials_file,
    };
    write(home.root(), &config)?;
    if args.json {
        output::json(&config)?;
    } else {
        outln!("store {} at {} recorded", config.url(), config.endpoint)?;
    }
    Ok(())
}

/// An http(s) URL with a host, without its trailing `/`.
fn http_url(flag: &str, url: &str) -> Result<String> {
    reqwest::Url::parse(url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .map(|u| u.as_str().trim_end_matches('/').to_owned())
        .ok_or_else(|| {
            Error::usage(format!(
                "{flag} {url:?}: give the store's http(s) URL, e.g. https://s3.eu-west-1.amazonaws.com"
            ))
        })
}

fn write(root: &Path, config: &StoreConfig) -> Result<()> {
    let path = root.join(CONFIG_FILE);
    let tmp = root.join(format!(".{CONFIG_FILE}.{}", std::process::id()));
    let bytes = serde_json::to_vec_pretty(config).map_err(|e| Error::Other(e.to_string()))?;
    fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
}

#[derive(Serialize)]
struct Shown<'a> {
    store: Option<&'a StoreConfig>,
    url: Option<String>,
}

fn show(home: &Home, json: bool) -> Result<()> {
    let config = configured(home)?;
    if json {
        return output::json(&Shown {
            store: config.as_ref(),
            url: config.as_ref().map(StoreConfig::url),
        });
    }
    match config {
        None => outln!(
            "no store: `swarm update` pushes over mTLS (swarm store set s3://BUCKET/PREFIX --endpoint URL)"
        ),
        Some(c) => {
            outln!("store        {}", c.url())?;
            outln!("endpoint     {}", c.endpoint)?;
            if let Some(w) = &c.worker_endpoint {
                outln!("for workers  {w}")?;
            }
            outln!("region       {}", c.region)?;
            outln!(
                "url style    {}",
                if c.path_style { "path" } else { "virtual-host" }
            )?;
            outln!(
                "credentials  {}",
                c.credentials_file.as_ref().map_or_else(
                    || "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY".to_owned(),
                    |p| format!("{} (unless AWS_ACCESS_KEY_ID is set)", p.display())
                )
            )
        }
    }
}

fn unset(home: &Home, json: bool) -> Result<()> {
    let path = home.root().join(CONFIG_FILE);
    let removed = match fs::remove_file(&path) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(Error::io(&path, e)),
    };
    if json {
        return output::json(&serde_json::json!({ "removed": removed }));
    }
    if removed {
        outln!("store removed: `swarm update` pushes over mTLS again")
    } else {
        outln!("no store was set")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls() {
        assert_eq!(
            parse_url("s3://rel-1/a/b/").unwrap(),
            ("rel-1".into(), "a/b".into())
        );
        assert_eq!(parse_url("s3://rel").unwrap(), ("rel".into(), "".into()));
        assert!(parse_url("http://rel/x").is_err());
        assert!(parse_url("s3://Rel/x").is_err());
        assert!(parse_url("s3://rel/../x").is_err());
    }
}
