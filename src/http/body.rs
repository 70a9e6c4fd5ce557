//! Request bodies under time limits. Every body passes [`TimedBody`]: a client that sends
//! nothing for [`BodyLimits::idle`], or takes longer than [`BodyLimits::total`] for the whole
//! body, gets 408 (its connection is then closed), so a body that never ends holds no
//! budget, memory or connection for long.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::error::ApiError;

/// How long a request body may take.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Longest wait for the next byte.
    pub idle: Duration,
    /// Longest time for the whole body.
    pub total: Duration,
}

impl Default for BodyLimits {
    fn default() -> Self {
        BodyLimits { idle: Duration::from_secs(10), total: Duration::from_secs(120) }
    }
}

/// Why a body was cut off: too slow.
#[derive(Debug, thiserror::Error)]
#[error("the request body {0}")]
pub struct SlowBody(&'static str);

/// See the module docs.
#[derive(Debug)]
pub struct TimedBody {
    inner: Body,
    idle_for: Duration,
    idle: Pin<Box<Sleep>>,
    deadline: Pin<Box<Sleep>>,
}

impl TimedBody {
    fn new(inner: Body, limits: BodyLimits) -> TimedBody {
        let now = Instant::now();
        TimedBody {
            inner,
            idle_for: limits.idle,
            idle: Box::pin(tokio::time::sleep_until(now + limits.idle)),
            deadline: Box::pin(tokio::time::sleep_until(now + limits.total)),
        }
    }
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(axum::Error::new(SlowBody("took longer than its time limit")))));
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let next = Instant::now() + self.idle_for;
                self.idle.as_mut().reset(next);
                Poll::Ready(frame)
            }
            Poll::Pending => {
                if self.idle.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(axum::Error::new(SlowBody("stopped arriving")))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The middleware that puts every request body under `limits`.
pub(super) async fn timed(State(limits): State<BodyLimits>, request: Request, next: Next) -> Response {
    next.run(request.map(|b| Body::new(TimedBody::new(b, limits)))).await
}

/// Whether `e` or an error it wraps is a `T`.
fn caused_by<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut at = Some(e);
    while let Some(e) = at {
        if e.is::<T>() {
            return true;
        }
        at = e.source();
    }
    false
}

/// Whether `e` or an error it wraps is a [`SlowBody`].
pub(super) fn is_slow(e: &(dyn std::error::Error + 'static)) -> bool {
    caused_by::<SlowBody>(e)
}

/// The whole of `body`, at most `limit` bytes; refused as [`refusal`] says.
pub(super) async fn read_all(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| refusal(&e, limit))
}

/// The answer to a body that could not be read: 408 if it was too slow, 413 past `limit`
/// bytes, 400 otherwise.
pub(super) fn refusal(e: &(dyn std::error::Error + 'static), limit: usize) -> ApiError {
    if is_slow(e) {
        ApiError::new(StatusCode::REQUEST_TIMEOUT, e.to_string())
    } else if caused_by::<http_body_util::LengthLimitError>(e) {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is larger than {limit} bytes"))
    } else {
        ApiError::bad_request("the body could not be read")
    }
}
