//! Work done on this thread while a future runs elsewhere: a connector's call that
//! waits on a thread of its own (a file connector's, on the blocking pool) is polled
//! once to start it, the work is done, and the call is awaited after.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

/// Polls `future` once more unless it answered already (`done`).
pub(crate) async fn poll_once<F: Future>(
    mut future: Pin<&mut F>,
    done: Poll<F::Output>,
) -> Poll<F::Output> {
    match done {
        Poll::Ready(output) => Poll::Ready(output),
        Poll::Pending => std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await,
    }
}

/// What `future` answered, waiting for it unless it answered already (`done`).
pub(crate) async fn finish<F: Future>(future: Pin<&mut F>, done: Poll<F::Output>) -> F::Output {
    match done {
        Poll::Ready(output) => output,
        Poll::Pending => future.await,
    }
}
