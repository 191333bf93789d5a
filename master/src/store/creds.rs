//! Store credentials: `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and
//! `AWS_SESSION_TOKEN`) from the environment, else the `[default]` profile
//! (or `$AWS_PROFILE`) of an AWS shared credentials file (INI:
//! `aws_access_key_id = …`, `aws_secret_access_key = …`,
//! `aws_session_token = …`). Read when needed, kept in memory only.

use std::path::Path;

use rusty_s3::Credentials;

use crate::error::{Error, Result};

/// Largest credentials file read.
const MAX_FILE: u64 = 1 << 20;

/// The credentials to use: the environment's, else `file`'s.
pub(super) fn load(file: Option<&Path>) -> Result<Credentials> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let (Some(key), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        return Ok(match env("AWS_SESSION_TOKEN") {
            Some(token) => Credentials::new_with_token(key, secret, token),
            None => Credentials::new(key, secret),
        });
    }
    let Some(path) = file else {
        return Err(Error::State(
            "no store credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or record a credentials file with `swarm store set … --credentials-file FILE`".into(),
        ));
    };
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    if len > MAX_FILE {
        return Err(Error::State(format!(
            "{}: larger than {MAX_FILE} bytes: not a credentials file",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".to_owned());
    parse(&text, &profile).ok_or_else(|| {
        Error::State(format!(
            "{}: no aws_access_key_id and aws_secret_access_key in profile [{profile}]",
            path.display()
        ))
    })
}

/// The profile's credentials in an INI text.
fn parse(text: &str, profile: &str) -> Option<Credentials> {
    let (mut key, mut secret, mut token) = (None, None, None);
    let mut inside = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            inside = name == profile || name == format!("profile {profile}");
            continue;
        }
        if !inside {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_owned();
            match k.trim() {
                "aws_access_key_id" => key = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    let (key, secret) = (key?, secret?);
    Some(match token {
        Some(t) => Credentials::new_with_token(key, secret, t),
        None => Credentials::new(key, secret),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_of_a_credentials_file() {
        let text = "[other]\naws_access_key_id=X\naws_secret_access_key=Y\n\n[default]\n# c\naws_access_key_id = GK1\naws_secret_access_key = s3cr3t\n";
        let c = parse(text, "default").unwrap();
        assert_eq!((c.key(), c.secret(), c.token()), ("GK1", "s3cr3t", None));
        assert_eq!(parse(text, "other").unwrap().key(), "X");
        assert!(parse(text, "none").is_none());
    }
}
