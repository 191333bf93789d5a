//! The `POST /update` body as multer parses it, bounded where multer is not:
//! [`Form`] feeds multer through a reader that refuses a preamble, boundary
//! line or part header running past [`MAX_PART_HEADER`] bytes without its
//! blank line (multer buffers it whole), and, when the form is dropped
//! before the body ended (any refusal, `busy`, a cap), drains the rest of
//! the body for a bounded time and size so the answer reaches the client
//! instead of a reset (`Broken pipe`). It also never hands multer the end
//! of the body in the same poll as data (see `Fed`): multer 3.1 then
//! fails a good form with "incomplete multipart stream".

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, BodyDataStream};
use axum::extract::{FromRequest, Request};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::guard::quote;
use crate::error::{AppError, UpdaterError};

/// Most bytes of preamble, boundary line and part headers before the blank
/// line that ends a part's headers. Real clients send a few hundred.
pub const MAX_PART_HEADER: usize = 64 * 1024;
/// A refused body is drained (read and dropped) at most this far ...
const DRAIN_MAX_BYTES: u64 = 64 << 20;
/// ... and for at most this long, then the connection is closed.
const DRAIN_MAX_TIME: Duration = Duration::from_secs(15);

/// The multipart form of a push, read field by field with
/// [`Form::next_field`].
pub struct Form {
    multipart: multer::Multipart<'static>,
    body: Arc<Mutex<Feed>>,
}

/// Why no [`Form`] could be made of a request (not multipart, no boundary).
#[derive(Debug)]
pub struct FormRejection(String);

impl std::fmt::Display for FormRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl IntoResponse for FormRejection {
    fn into_response(self) -> Response {
        AppError(UpdaterError::BadUpload(self.0)).into_response()
    }
}

impl<S: Send + Sync> FromRequest<S> for Form {
    type Rejection = FormRejection;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let boundary = parts
            .headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| FormRejection("no multipart/form-data content type".into()))
            .and_then(|ct| multer::parse_boundary(ct).map_err(|e| FormRejection(e.to_string())));
        match boundary {
            Ok(boundary) => Ok(Form::new(body, boundary)),
            Err(e) => {
                drain(Body::into_data_stream(body));
                Err(e)
            }
        }
    }
}

impl Form {
    fn new(body: Body, boundary: String) -> Form {
        let feed = Arc::new(Mutex::new(Feed {
            stream: Some(body.into_data_stream()),
            ended: false,
            headers: false,
            tail: [0; 3],
            since_blank: 0,
            blank_seen: false,
            refused: None,
            gave_data: false,
            burst: 0,
        }));
        let multipart = multer::Multipart::new(Fed(feed.clone()), boundary);
        Form {
            multipart,
            body: feed,
        }
    }

    /// The next field, `None` after the last. Its part header is bounded
    /// by [`MAX_PART_HEADER`]; an error says why multer stopped.
    pub async fn next_field(&mut self) -> Result<Option<multer::Field<'static>>, String> {
        lock(&self.body).begin_headers();
        let next = self.multipart.next_field().await;
        let refused = {
            let mut feed = lock(&self.body);
            feed.headers = false;
            feed.refused.clone()
        };
        next.map_err(|e| refused.unwrap_or_else(|| multer_cause(&e)))
    }
}

impl Drop for Form {
    fn drop(&mut self) {
        let mut feed = lock(&self.body);
        if !feed.ended
            && let Some(stream) = feed.stream.take()
        {
            drain(stream);
        }
    }
}

/// What multer's error says, with the transport's own error when the
/// body failed; quoted (capped, control characters replaced), since it can
/// carry a field name the peer chose.
pub fn multer_cause(e: &multer::Error) -> String {
    match e {
        multer::Error::StreamReadFailed(inner) => format!(
            "reading the body failed: {}",
            quote(inner.to_string().as_bytes())
        ),
        other => quote(other.to_string().as_bytes()),
    }
}

/// Read and drop what is left of a body on its own task, bounded by
/// [`DRAIN_MAX_BYTES`] and [`DRAIN_MAX_TIME`]: the client is still sending
/// when we answer early, and closing on unread data makes the kernel reset
/// the connection, which can destroy our answer before the client reads it.
fn drain(mut stream: BodyDataStream) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        let mut left = DRAIN_MAX_BYTES;
        let read = async {
            while let Some(Ok(chunk)) = stream.next().await {
                left = left.saturating_sub(chunk.len() as u64);
                if left == 0 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_MAX_TIME, read).await;
    });
}

fn lock(feed: &Mutex<Feed>) -> MutexGuard<'_, Feed> {
    // A panic while holding the lock cannot leave `Feed` half-updated in a
    // way that matters more than the bytes it guards: keep going.
    feed.lock().unwrap_or_else(|p| p.into_inner())
}

/// The body, shared between multer (through [`Fed`]) and the [`Form`]
/// (which takes it back to drain it).
struct Feed {
    stream: Option<BodyDataStream>,
    /// The body reached its end.
    ended: bool,
    /// Inside `next_field`: what arrives is boundary and part headers
    /// until a blank line.
    headers: bool,
    /// Last bytes of the previous chunk, for a blank line split across two.
    tail: [u8; 3],
    /// Bytes since the last blank line (or since `next_field` began).
    since_blank: usize,
    /// A blank line arrived during this `next_field`: multer has its
    /// headers, the rest is field data.
    blank_seen: bool,
    refused: Option<String>,
    /// The last item handed to multer was data (see [`Fed`]).
    gave_data: bool,
    /// Bytes handed to multer since it last saw `Pending` (see [`Fed`]).
    burst: usize,
}

impl Feed {
    fn begin_headers(&mut self) {
        self.headers = true;
        self.since_blank = 0;
        self.blank_seen = false;
        self.tail = [0; 3];
    }

    /// Account for `chunk` read while looking for a part header.
    fn check(&mut self, chunk: &[u8]) -> Result<(), String> {
        if !self.headers || self.blank_seen {
            return Ok(());
        }
        let mut window = Vec::with_capacity(3 + chunk.len().min(3));
        window.extend_from_slice(&self.tail);
        window.extend_from_slice(&chunk[..chunk.len().min(3)]);
        if memchr::memmem::find(&window, b"\r\n\r\n").is_some()
            || memchr::memmem::find(chunk, b"\r\n\r\n").is_some()
        {
            self.blank_seen = true;
            return Ok(());
        }
        self.since_blank += chunk.len();
        if chunk.len() >= 3 {
            self.tail.copy_from_slice(&chunk[chunk.len() - 3..]);
        } else {
            let mut t = self.tail.to_vec();
            t.extend_from_slice(chunk);
            self.tail.copy_from_slice(&t[t.len() - 3..]);
        }
        if self.since_blank > MAX_PART_HEADER {
            return Err(format!(
                "a multipart part header (with its boundary line) runs past {MAX_PART_HEADER} bytes without the blank line that ends it"
            ));
        }
        Ok(())
    }
}

/// multer's view of the body.
///
/// The end of the body is never handed out right after data: multer 3.1's
/// first-boundary search polls the body a second time when the boundary is
/// not in its buffer yet and, when that second poll brings the rest *and*
/// the end, fails with "incomplete multipart stream" without looking at
/// what it just read. That race (the first chunk holding part of the first
/// boundary line, the rest and the end arriving between two polls) was the
/// spurious 400 "bad multipart/form-data body" of issue 10. Answering
/// `Pending` once (and waking at once) before the end makes multer look
/// at its buffer again.
///
/// multer also reads the body for as long as it is ready, into one
/// buffer, before it hands out any of it: over a fast link that is
/// megabytes a poll (19 MB at the peak of a 1 GB push, measured with
/// heaptrack), and the updater's peak memory with it. After [`MAX_BURST`]
/// bytes `Fed` answers `Pending` once (waking at once), so each field
/// chunk is at most about twice that (multer may hold one burst back
/// while it looks for the boundary), and the bytes in flight to the
/// extractor stay within a few MiB (`CHANNEL_DEPTH` chunks). A 1 GB push's
/// peak RSS went from 31–41 MiB, growing push by push, to 20–26 MiB.
struct Fed(Arc<Mutex<Feed>>);

/// The most body bytes multer is handed in one poll (see [`Fed`]).
const MAX_BURST: usize = 256 * 1024;

impl Stream for Fed {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut feed = lock(&self.0);
        if let Some(why) = &feed.refused {
            return Poll::Ready(Some(Err(std::io::Error::other(why.clone()))));
        }
        if feed.burst >= MAX_BURST {
            feed.burst = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let Some(stream) = feed.stream.as_mut() else {
            return Poll::Ready(None);
        };
        match stream.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(chunk))) => match feed.check(&chunk) {
                Ok(()) => {
                    feed.gave_data = true;
                    feed.burst += chunk.len();
                    Poll::Ready(Some(Ok(chunk)))
                }
                Err(why) => {
                    feed.refused = Some(why.clone());
                    Poll::Ready(Some(Err(std::io::Error::other(why))))
                }
            },
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(std::io::Error::other(e)))),
            Poll::Ready(None) if feed.gave_data => {
                // Hand out the end on the next poll, without polling the
                // finished body again.
                feed.gave_data = false;
                feed.stream = None;
                feed.ended = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Ready(None) => {
                feed.stream = None;
                feed.ended = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                feed.burst = 0;
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed() -> Feed {
        let mut f = Feed {
            stream: None,
            ended: false,
            headers: false,
            tail: [0; 3],
            since_blank: 0,
            blank_seen: false,
            refused: None,
            gave_data: false,
            burst: 0,
        };
        f.begin_headers();
        f
    }

    #[test]
    fn a_part_header_without_its_blank_line_is_refused_past_the_cap() {
        let mut f = feed();
        let line = vec![b'a'; 1024];
        let mut refused = None;
        for _ in 0..100 {
            if let Err(why) = f.check(&line) {
                refused = Some(why);
                break;
            }
        }
        let why = refused.expect("the header was never refused");
        assert!(why.contains("without the blank line"), "{why}");
        assert!(f.since_blank <= MAX_PART_HEADER + 1024);
    }

    #[test]
    fn a_blank_line_split_across_chunks_ends_the_header() {
        let mut f = feed();
        f.check(&vec![b'h'; MAX_PART_HEADER - 10]).unwrap();
        f.check(b"x\r\n\r").unwrap();
        f.check(b"\n").unwrap();
        // Field data after the header is not counted.
        f.check(&vec![b'd'; 4 * MAX_PART_HEADER]).unwrap();
        let mut f = feed();
        f.check(b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nvalue")
            .unwrap();
        f.check(&vec![b'd'; 4 * MAX_PART_HEADER]).unwrap();
    }

    /// The body as it arrives in the race: part of the first boundary,
    /// then (after a `Pending`) the rest of the form and its end at once.
    fn racing_body() -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        let mut step = 0;
        futures_util::stream::poll_fn(move |cx| {
            step += 1;
            match step {
                1 => Poll::Ready(Some(Ok(Bytes::from_static(b"--bou")))),
                2 => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                3 => Poll::Ready(Some(Ok(Bytes::from_static(
                    b"ndary\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nv\r\n--boundary--\r\n",
                )))),
                _ => Poll::Ready(None),
            }
        })
    }

    #[tokio::test]
    async fn multer_alone_fails_a_good_form_in_the_race() {
        // Why Fed defers the end: multer 3.1 itself refuses this good form.
        let mut m = multer::Multipart::new(racing_body(), "boundary");
        let r = m
            .next_field()
            .await
            .map(|f| f.map(|f| f.name().map(str::to_owned)));
        assert!(
            matches!(r, Err(multer::Error::IncompleteStream)),
            "multer no longer has the bug: {r:?}"
        );
    }

    #[tokio::test]
    async fn a_good_form_in_the_race_is_read_whole() {
        let mut form = Form::new(Body::from_stream(racing_body()), "boundary".into());
        let mut field = form
            .next_field()
            .await
            .expect("the form is good")
            .expect("a field");
        assert_eq!(field.name(), Some("a"));
        assert_eq!(field.chunk().await.unwrap().as_deref(), Some(&b"v"[..]));
        assert!(field.chunk().await.unwrap().is_none());
        drop(field);
        assert!(form.next_field().await.expect("the end").is_none());
    }

    /// A form whose one field is `n` chunks of 64 KiB, every one ready at
    /// once (a fast link): the field's chunks, as read.
    async fn chunks_of_a_ready_body(n: usize, fed: bool) -> Vec<usize> {
        let head = Bytes::from_static(b"--b\r\nContent-Disposition: form-data; name=\"t\"\r\n\r\n");
        let tail = Bytes::from_static(b"\r\n--b--\r\n");
        let body = std::iter::once(head)
            .chain((0..n).map(|i| Bytes::from(vec![(i % 251) as u8; 64 * 1024])))
            .chain(std::iter::once(tail))
            .map(Ok::<_, std::io::Error>);
        let stream = futures_util::stream::iter(body);
        let mut sizes = Vec::new();
        let mut seen = 0usize;
        let mut check = |c: &[u8]| {
            for (k, b) in c.iter().enumerate() {
                assert_eq!(
                    *b,
                    (((seen + k) / (64 * 1024)) % 251) as u8,
                    "byte {}",
                    seen + k
                );
            }
            seen += c.len();
            sizes.push(c.len());
        };
        if fed {
            let mut form = Form::new(Body::from_stream(stream), "b".into());
            let mut field = form.next_field().await.unwrap().unwrap();
            while let Some(c) = field.chunk().await.unwrap() {
                check(&c);
            }
        } else {
            let mut m = multer::Multipart::new(stream, "b");
            let mut field = m.next_field().await.unwrap().unwrap();
            while let Some(c) = field.chunk().await.unwrap() {
                check(&c);
            }
        }
        assert_eq!(seen, n * 64 * 1024, "the whole field, in order");
        sizes
    }

    #[tokio::test]
    async fn a_ready_body_reaches_the_extractor_in_bounded_chunks() {
        // multer alone reads all that is ready into one chunk ...
        let alone = chunks_of_a_ready_body(256, false).await;
        assert!(
            alone.iter().max().copied().unwrap_or(0) >= 8 * MAX_BURST,
            "multer no longer buffers what is ready: {alone:?}"
        );
        // ... through Fed, no chunk is over two bursts (multer may keep
        // one burst back while it looks for the boundary) and a body chunk.
        let fed = chunks_of_a_ready_body(256, true).await;
        let max = fed.iter().max().copied().unwrap_or(0);
        assert!(max <= 2 * MAX_BURST + 64 * 1024, "a chunk of {max} bytes");
    }

    #[test]
    fn outside_next_field_nothing_is_counted() {
        let mut f = feed();
        f.headers = false;
        f.check(&vec![b'd'; 4 * MAX_PART_HEADER]).unwrap();
    }
}
