//! Work done on this thread while a future runs elsewhere: a connector's call that
//! waits on a thread of its own (a file connector's, on the blocking pool) is polled
//! once to start it, the work is done, and the call is awaited after ([`Pump`]). A
//! listing, which asks for its next page before it takes the last, holds its polls
//! itself ([`poll_once`], [`finish`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

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

/// A future polled now and then from work done on this thread: a connector's calls
/// that follow one another (each relation's updates) go out as soon as the one before
/// answered, not once the work is done. Polled with the waker of the task that awaits
/// it, which the work holds up anyway.
pub(crate) struct Pump<'f, F: Future> {
    future: Pin<&'f mut F>,
    answered: Poll<F::Output>,
    waker: Waker,
}

impl<'f, F: Future> Pump<'f, F> {
    /// Polls `future` once, to start it.
    pub async fn start(mut future: Pin<&'f mut F>) -> Pump<'f, F> {
        let (answered, waker) = std::future::poll_fn(|cx| {
            let answered = future.as_mut().poll(cx);
            Poll::Ready((answered, cx.waker().clone()))
        })
        .await;
        Pump {
            future,
            answered,
            waker,
        }
    }

    /// Polls the future once more unless it answered already.
    pub fn poll(&mut self) {
        if self.answered.is_pending() {
            let mut cx = Context::from_waker(&self.waker);
            self.answered = self.future.as_mut().poll(&mut cx);
        }
    }

    /// What the future answered, waiting for it unless it answered already.
    pub async fn finish(self) -> F::Output {
        finish(self.future, self.answered).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// Pending until its flag is set: a call another thread answers.
    struct Call<'a>(&'a AtomicBool);

    impl Future for Call<'_> {
        type Output = ();

        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            match self.0.load(Ordering::SeqCst) {
                true => Poll::Ready(()),
                false => Poll::Pending,
            }
        }
    }

    #[tokio::test]
    async fn a_pumped_future_makes_its_next_call_from_the_work_done_beside_it() {
        let (first, second) = (AtomicBool::new(false), AtomicBool::new(false));
        let answered = AtomicUsize::new(0);
        let calls = async {
            Call(&first).await;
            answered.fetch_add(1, Ordering::SeqCst);
            Call(&second).await;
            answered.fetch_add(1, Ordering::SeqCst);
            7
        };
        let mut calls = std::pin::pin!(calls);
        let mut pump = Pump::start(calls.as_mut()).await;
        assert_eq!(answered.load(Ordering::SeqCst), 0);
        pump.poll();
        assert_eq!(
            answered.load(Ordering::SeqCst),
            0,
            "the first call has not answered"
        );
        // The first call answers while this thread works: the next goes out at once.
        first.store(true, Ordering::SeqCst);
        pump.poll();
        assert_eq!(answered.load(Ordering::SeqCst), 1);
        second.store(true, Ordering::SeqCst);
        pump.poll();
        assert_eq!(pump.finish().await, 7);
        assert_eq!(answered.load(Ordering::SeqCst), 2);
    }
}
