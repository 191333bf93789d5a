//! A request body that errors out when its peer stalls or trickles: an idle
//! limit between pieces and a whole-body deadline from a minimum rate.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Bytes, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::ServeLimits;

/// The error a timed-out body yields; handlers see it as a failed read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BodyTimeout {
    #[error("request body stalled: no data for {0:?}")]
    Idle(Duration),
    #[error(
        "request body too slow: {received} bytes in {elapsed:?}, below the minimum of {min_rate} bytes/s"
    )]
    TooSlow {
        received: u64,
        elapsed: Duration,
        min_rate: u64,
    },
}

/// `B` with the body bounds of [`ServeLimits`] applied.
pub(crate) struct TimedBody<B> {
    inner: B,
    sleep: Pin<Box<Sleep>>,
    started: Instant,
    last: Instant,
    received: u64,
    idle: Duration,
    min_rate: u64,
    grace: Duration,
    failed: Option<BodyTimeout>,
}

impl<B> TimedBody<B> {
    pub(crate) fn new(inner: B, limits: &ServeLimits) -> Self {
        let now = Instant::now();
        let mut body = TimedBody {
            inner,
            sleep: Box::pin(tokio::time::sleep_until(now)),
            started: now,
            last: now,
            received: 0,
            idle: limits.body_idle_timeout,
            min_rate: limits.body_min_rate,
            grace: limits.body_rate_grace,
            failed: None,
        };
        let deadline = body.deadline();
        body.sleep.as_mut().reset(deadline);
        body
    }

    /// When the rate rule fails given what arrived so far.
    fn rate_deadline(&self) -> Option<Instant> {
        let min_rate = self.min_rate.max(1);
        let allowed = Duration::from_secs(self.received / min_rate)
            + Duration::from_nanos((self.received % min_rate) * 1_000_000_000 / min_rate);
        self.started.checked_add(self.grace)?.checked_add(allowed)
    }

    fn idle_deadline(&self) -> Option<Instant> {
        self.last.checked_add(self.idle)
    }

    fn deadline(&self) -> Instant {
        match (self.idle_deadline(), self.rate_deadline()) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            // Both overflowed: nothing can trip within the life of the process.
            (None, None) => self.last + Duration::from_secs(100 * 365 * 24 * 3600),
        }
    }

    fn timeout(&self, now: Instant) -> BodyTimeout {
        match self.idle_deadline() {
            Some(d) if d <= now => BodyTimeout::Idle(self.idle),
            _ => BodyTimeout::TooSlow {
                received: self.received,
                elapsed: now.saturating_duration_since(self.started),
                min_rate: self.min_rate,
            },
        }
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(e) = &this.failed {
            // Keep failing: a consumer must never mistake a cut body for a whole one.
            return Poll::Ready(Some(Err(Box::new(e.clone()))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received = this.received.saturating_add(data.len() as u64);
                }
                this.last = Instant::now();
                let deadline = this.deadline();
                this.sleep.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(()) => {
                    let e = this.timeout(Instant::now());
                    this.failed = Some(e.clone());
                    Poll::Ready(Some(Err(Box::new(e))))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    type Tx = tokio::sync::mpsc::Sender<Bytes>;

    /// A body fed chunk by chunk through a channel; ends when the sender drops.
    struct Chunks(tokio::sync::mpsc::Receiver<Bytes>);
    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
        }
    }

    fn body(limits: &ServeLimits) -> (Tx, TimedBody<Chunks>) {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        (tx, TimedBody::new(Chunks(rx), limits))
    }

    fn limits(idle: u64, rate: u64, grace: u64) -> ServeLimits {
        ServeLimits {
            body_idle_timeout: Duration::from_secs(idle),
            body_min_rate: rate,
            body_rate_grace: Duration::from_secs(grace),
            ..ServeLimits::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_errors_after_the_idle_limit() {
        let (tx, mut b) = body(&limits(5, 1, 1000));
        tx.send(Bytes::from_static(b"abc")).await.unwrap();
        assert!(b.frame().await.unwrap().is_ok());
        let t0 = Instant::now();
        let err = b.frame().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("stalled"), "{err}");
        assert_eq!(Instant::now() - t0, Duration::from_secs(5));
        // And it keeps failing rather than looking like a clean end.
        assert!(b.frame().await.unwrap().is_err());
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_under_the_minimum_rate_errors_after_grace_plus_its_due_time() {
        // 100 B/s minimum after 10 s; one byte a second never goes idle.
        let (tx, mut b) = body(&limits(5, 100, 10));
        let feeder = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if tx.send(Bytes::from_static(b"x")).await.is_err() {
                    break;
                }
            }
        });
        let t0 = Instant::now();
        let mut n = 0u64;
        let err = loop {
            match b.frame().await.unwrap() {
                Ok(_) => n += 1,
                Err(e) => break e,
            }
        };
        assert!(err.to_string().contains("too slow"), "{err}");
        let took = Instant::now() - t0;
        // It trips at grace + received/min_rate: just past 10 s.
        assert!(
            took >= Duration::from_secs(10) && took < Duration::from_secs(11),
            "{took:?} after {n} bytes"
        );
        drop(b);
        feeder.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_at_the_minimum_rate_completes() {
        let (tx, mut b) = body(&limits(5, 100, 2));
        tokio::spawn(async move {
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                tx.send(Bytes::from(vec![0u8; 200])).await.unwrap();
            }
        });
        let mut total = 0;
        while let Some(frame) = b.frame().await {
            total += frame.unwrap().into_data().map(|d| d.len()).unwrap_or(0);
        }
        assert_eq!(total, 4000);
    }
}
