//! The caretaker's HTTP views (issue 11, master only by [`pki::policy`]):
//! `GET /history?limit=N` (the journal), `GET /logs?lines=N[&follow=true]`
//! (the agent's output, streamed while followed), `POST /agent/restart`,
//! and how an operation's answer becomes a journal entry.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use pki::wire::{JournalEntry, OpResponse, OpStatus, WorkerHistory};
use pki::{Peer, PeerCert};

use crate::error::{AppError, Result, UpdaterError};
use crate::journal::{MAX_LIMIT, entry, record};
use crate::logs::MAX_LINES;
use crate::ops::OpResult;
use crate::state::{Daemon, blocking};

/// Entries `GET /history` returns without `limit`.
const DEFAULT_LIMIT: usize = 100;
/// Lines `GET /logs` returns without `lines`.
const DEFAULT_LINES: usize = 100;

/// `GET /history?limit=N` (1..=1000): the journal, newest last.
pub async fn history(
    State(app): State<Arc<Daemon>>,
    RawQuery(q): RawQuery,
) -> std::result::Result<Json<WorkerHistory>, AppError> {
    let mut limit = DEFAULT_LIMIT;
    for (k, v) in pairs(q.as_deref())? {
        match k.as_str() {
            "limit" => limit = number(&k, &v, MAX_LIMIT)?,
            _ => return Err(unknown(&k, "limit").into()),
        }
    }
    let journal = app.journal.clone();
    let entries = blocking(move || Ok(journal.read(limit))).await?;
    Ok(Json(WorkerHistory { entries }))
}

/// `GET /logs?lines=N&follow=true`: the last N (1..=10000) lines of the
/// agent's output as `text/plain`; followed, new lines stream until the
/// client hangs up.
pub async fn logs(
    State(app): State<Arc<Daemon>>,
    RawQuery(q): RawQuery,
) -> std::result::Result<Response, AppError> {
    let (mut lines, mut follow) = (DEFAULT_LINES, false);
    for (k, v) in pairs(q.as_deref())? {
        match k.as_str() {
            "lines" => lines = number(&k, &v, MAX_LINES)?,
            "follow" => {
                follow = match v.as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(UpdaterError::BadUpload(format!(
                            "follow={v:?}: say follow=true or follow=false"
                        ))
                        .into());
                    }
                }
            }
            _ => return Err(unknown(&k, "lines, follow").into()),
        }
    }
    let log = app.spawn_log.clone();
    let (tail, offset) = blocking(move || Ok(log.tail(lines))).await?;
    let head = Bytes::from(tail.concat());
    let body = if follow {
        let rx = app.spawn_log.follow(offset);
        let rest = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
        });
        let first = futures_util::stream::once(async move { Ok::<_, std::io::Error>(head) });
        Body::from_stream(futures_util::StreamExt::chain(first, rest))
    } else {
        Body::from(head)
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store")
        .body(body)
        .map_err(|e| AppError(UpdaterError::Internal(format!("building the answer: {e}"))))
}

/// `POST /agent/restart`: restart the agent on `current`, probed; journaled.
pub async fn agent_restart(
    State(app): State<Arc<Daemon>>,
    Peer(who): Peer,
    cert: PeerCert,
) -> std::result::Result<Response, AppError> {
    let guard = app.try_begin("restart")?;
    let d = app.clone();
    let by = cert.by(&who);
    // Detached, and journaled from the same task (see `detached`).
    let task = tokio::spawn(async move {
        let result = crate::ops::caretaker::restart(d.clone(), guard).await;
        // Outcomes as for the supervisor's own restarts: healthy or not.
        let mut e = of_result("restart", &by, &result);
        if let Ok((code, _)) = &result
            && *code != StatusCode::NOT_FOUND
        {
            e.outcome = if code.is_success() {
                "healthy"
            } else {
                "unhealthy"
            }
            .into();
        }
        record(&d.journal, e).await;
        result
    });
    let result = task
        .await
        .map_err(|e| UpdaterError::Internal(format!("restart task: {e}")))?;
    let (code, body) = result?;
    Ok((code, Json(body)).into_response())
}

/// Record an operation's outcome in the journal (`op`, or `unchanged`
/// when nothing changed).
pub async fn journal_op(app: &Daemon, op: &str, by: &str, result: &OpResult) {
    record(&app.journal, of_result(op, by, result)).await;
}

/// Run operation `op` detached from its connection, and journal its
/// outcome from the same task: a client that hangs up cancels neither the
/// operation nor its journal entry.
pub async fn detached<F>(app: &Arc<Daemon>, op: &'static str, by: String, run: F) -> OpResult
where
    F: std::future::Future<Output = OpResult> + Send + 'static,
{
    let d = app.clone();
    tokio::spawn(async move {
        let result = run.await;
        journal_op(&d, op, &by, &result).await;
        result
    })
    .await
    .map_err(|e| UpdaterError::Internal(format!("{op} task: {e}")))?
}

fn of_result(op: &str, by: &str, result: &OpResult) -> JournalEntry {
    match result {
        Ok((_, body)) => {
            let op = if body.status == OpStatus::Unchanged {
                "unchanged"
            } else {
                op
            };
            let sha = body.release.as_ref().map(|m| m.sha256.as_str());
            let detail = body.error.clone().unwrap_or_else(|| ok_detail(body));
            entry(op, by, sha, status_word(body.status), &detail)
        }
        Err(e) => entry(op, by, None, "error", &e.to_string()),
    }
}

fn ok_detail(body: &OpResponse) -> String {
    match &body.release {
        Some(m) => format!("release {} ({} files)", crate::short(&m.sha256), m.files),
        None => "ok".into(),
    }
}

/// `OpStatus` as it is on the wire (`rolled-back`).
fn status_word(s: OpStatus) -> &'static str {
    match s {
        OpStatus::Updated => "updated",
        OpStatus::Unchanged => "unchanged",
        OpStatus::RolledBack => "rolled-back",
        OpStatus::Busy => "busy",
        OpStatus::Error => "error",
    }
}

/// `key=value` pairs of a query string, percent-decoded (the
/// `application/x-www-form-urlencoded` rules, by `form_urlencoded`: the
/// parser `url` and reqwest use). A value that is not UTF-8 is refused.
fn pairs(q: Option<&str>) -> Result<Vec<(String, String)>> {
    let Some(q) = q else {
        return Ok(Vec::new());
    };
    form_urlencoded::parse(q.as_bytes())
        .map(|(k, v)| {
            if k.contains('\u{fffd}') || v.contains('\u{fffd}') {
                return Err(UpdaterError::BadUpload(
                    "the query string is not valid UTF-8".into(),
                ));
            }
            Ok((k.into_owned(), v.into_owned()))
        })
        .collect()
}

/// `value` as a count in 1..=`max`, or a 400 that says so.
fn number(key: &str, value: &str, max: usize) -> Result<usize> {
    match value.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(UpdaterError::BadUpload(format!(
            "{key}={:?}: give a whole number from 1 to {max}",
            value.chars().take(40).collect::<String>()
        ))),
    }
}

fn unknown(key: &str, known: &str) -> UpdaterError {
    UpdaterError::BadUpload(format!(
        "unknown query parameter {:?}; this endpoint takes {known}",
        key.chars().take(40).collect::<String>()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_checked() {
        assert_eq!(number("limit", "1000", 1000).unwrap(), 1000);
        for bad in ["0", "1001", "-1", "x", "", "1e3"] {
            assert!(number("limit", bad, 1000).is_err(), "{bad}");
        }
        let p = pairs(Some("lines=5&follow=true&x%3Dy=a+b")).unwrap();
        assert_eq!(p[2], ("x=y".to_owned(), "a b".to_owned()));
        assert!(pairs(Some("a=%ff")).is_err());
        assert!(pairs(Some("a=%4")).is_ok_and(|p| p[0].1 == "%4"));
    }
}
