//! Response bodies read with a hard cap: whatever a peer announces or
//! sends, at most `cap` bytes are ever held, so a worker cannot make the
//! master read a 400 MiB answer into memory.
//!
//! Invariants: a `Content-Length` over the cap is refused before any body
//! byte is read; without one, chunks are counted and the read stops at the
//! first chunk that would pass the cap (the connection is dropped with the
//! response). Nothing of a refused body is kept or quoted.

use serde::de::DeserializeOwned;

use crate::PkiError;

/// The body of `resp`, at most `cap` bytes; [`PkiError::BodyTooLarge`]
/// when the peer announces or sends more. Time is bounded by the client's
/// own `timeout` (which covers the body), not here.
pub async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, PkiError> {
    let announced = resp.content_length();
    if let Some(n) = announced
        && n > cap as u64
    {
        return Err(PkiError::BodyTooLarge {
            cap,
            announced,
            read: 0,
        });
    }
    // Pre-sized for the announced length (at most the cap here), but no
    // more than 64 KiB before the bytes have arrived.
    let mut body = Vec::with_capacity(announced.map_or(0, |n| n.min(64 * 1024) as usize));
    while let Some(chunk) = resp.chunk().await? {
        if chunk.len() > cap - body.len() {
            return Err(PkiError::BodyTooLarge {
                cap,
                announced,
                read: body.len() + chunk.len(),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// At most `cap` bytes of an answer that is only ever quoted (an error
/// body): the rest is left unread, and a read error ends it early.
pub async fn read_prefix(mut resp: reqwest::Response, cap: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = cap - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == cap {
            break;
        }
    }
    body
}

/// [`read_capped`], then parsed as JSON; a body that does not parse is
/// [`PkiError::BadBody`] with serde's message sanitised (it may quote
/// the peer's text).
pub async fn read_json_capped<T: DeserializeOwned>(
    resp: reqwest::Response,
    cap: usize,
) -> Result<T, PkiError> {
    let body = read_capped(resp, cap).await?;
    serde_json::from_slice(&body)
        .map_err(|e| PkiError::BadBody(crate::text::sanitize(&e.to_string(), 200)))
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;

    use super::*;

    const TEN_MIB: usize = 10 << 20;
    const CAP: usize = 1 << 20;

    /// A plain-HTTP server on 127.0.0.1:0.
    async fn server() -> String {
        let app = Router::new()
            .route("/with-length", get(|| async { vec![b'x'; TEN_MIB] }))
            .route(
                "/chunked",
                get(|| async {
                    let chunks =
                        (0..TEN_MIB / 65536).map(|_| Ok::<_, std::io::Error>(vec![b'y'; 65536]));
                    Body::from_stream(futures_util::stream::iter(chunks))
                }),
            )
            .route("/exact", get(|| async { vec![b'z'; CAP] }))
            .route(
                "/exact-chunked",
                get(|| async {
                    let chunks = (0..CAP / 1000 + 1).map(|i| {
                        let n = if i == CAP / 1000 { CAP % 1000 } else { 1000 };
                        Ok::<_, std::io::Error>(vec![b'z'; n])
                    });
                    Body::from_stream(futures_util::stream::iter(chunks))
                }),
            )
            .route("/one-over", get(|| async { vec![b'z'; CAP + 1] }))
            .route(
                "/json",
                get(|| async { r#"{"status":"ok","error":"fine"}"# }),
            )
            .route(
                "/json-hostile",
                get(|| async { "{\"status\":\"\\u001b]52;c;cm0gLXJm\\u0007\\u001b[2J\"}" }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    async fn get_resp(base: &str, path: &str) -> reqwest::Response {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("{base}{path}"))
            .send()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn an_announced_length_over_the_cap_is_refused_unread() {
        let base = server().await;
        let resp = get_resp(&base, "/with-length").await;
        assert_eq!(resp.content_length(), Some(TEN_MIB as u64));
        match read_capped(resp, CAP).await {
            Err(PkiError::BodyTooLarge {
                cap: CAP,
                announced: Some(n),
                read: 0,
            }) => assert_eq!(n, TEN_MIB as u64),
            other => panic!("{other:?}"),
        }
        let err = read_capped(get_resp(&base, "/one-over").await, CAP)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("1048576"), "{err}");
    }

    #[tokio::test]
    async fn a_streamed_body_stops_at_the_cap() {
        let base = server().await;
        let resp = get_resp(&base, "/chunked").await;
        assert_eq!(resp.content_length(), None);
        match read_capped(resp, CAP).await {
            Err(PkiError::BodyTooLarge {
                announced: None,
                read,
                ..
            }) => assert!(read > CAP && read <= CAP + 65536, "{read}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_body_of_exactly_the_cap_is_read_whole() {
        let base = server().await;
        for path in ["/exact", "/exact-chunked"] {
            let body = read_capped(get_resp(&base, path).await, CAP).await.unwrap();
            assert_eq!(body.len(), CAP, "{path}");
            assert!(body.iter().all(|b| *b == b'z'));
        }
        let err = read_capped(get_resp(&base, "/exact-chunked").await, CAP - 1)
            .await
            .unwrap_err();
        assert!(matches!(err, PkiError::BodyTooLarge { .. }), "{err}");
    }

    #[tokio::test]
    async fn json_is_parsed_under_the_cap_and_its_errors_sanitised() {
        let base = server().await;
        let ok: crate::wire::ErrorBody = read_json_capped(get_resp(&base, "/json").await, 1024)
            .await
            .unwrap();
        assert_eq!((ok.status.as_str(), ok.error.as_str()), ("ok", "fine"));
        let err = read_json_capped::<crate::wire::ErrorBody>(get_resp(&base, "/json").await, 10)
            .await
            .unwrap_err();
        assert!(matches!(err, PkiError::BodyTooLarge { .. }), "{err}");
        // serde quotes the unknown variant: the escapes must not get through.
        let err = read_json_capped::<crate::wire::OpResponse>(
            get_resp(&base, "/json-hostile").await,
            1024,
        )
        .await
        .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, PkiError::BadBody(_)), "{msg}");
        assert!(msg.contains("unknown variant"), "{msg}");
        assert!(!msg.chars().any(char::is_control), "{msg:?}");
        assert!(msg.contains("\\u{1b}]52"), "{msg}");
    }
}
