//! Password hashing on a small fixed pool of threads, each reusing one
//! argon2 working memory.
//!
//! argon2id with the default parameters works in 19 MiB. Run with
//! `web::block`, every hash allocated those blocks afresh on whichever
//! blocking thread ran it; glibc keeps freed memory in per-thread arenas,
//! so each new blocking thread kept its 19 MiB for good and a burst of
//! concurrent failed logins grew the platform by hundreds of megabytes
//! that never came back. Here as many threads as cores each allocate one
//! [`HashMemory`] at start and reuse it: the memory of password checks is
//! fixed at `cores × 19 MiB`, whatever the load.
//!
//! Work waits for a thread in a FIFO of permits (so it cannot grow without
//! bound either); a job that cannot start within [`WAIT`] is answered 503.

use std::sync::{Arc, mpsc};
use std::time::Duration;

use tend_core::auth::HashMemory;
use tend_core::error::ApiError;
use tokio::sync::{Semaphore, oneshot};

/// How long a password check may wait for a hashing thread before the
/// answer is 503: a login that waits longer has usually been given up on.
pub const WAIT: Duration = Duration::from_secs(5);

type Job = Box<dyn FnOnce(&mut HashMemory) + Send>;

pub struct Hashers {
    jobs: mpsc::SyncSender<Job>,
    /// One permit per thread: a job is sent only once a thread is free for
    /// it, so the channel never holds more than the threads can take.
    free: Arc<Semaphore>,
}

impl Hashers {
    /// Starts `threads` hashing threads (at least one).
    pub fn start(threads: usize) -> Hashers {
        let threads = threads.max(1);
        let (jobs, queue) = mpsc::sync_channel::<Job>(threads);
        let queue = Arc::new(std::sync::Mutex::new(queue));
        for n in 0..threads {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("tend-hash-{n}"))
                .spawn(move || {
                    let mut memory = HashMemory::new();
                    loop {
                        // The lock is held only while taking a job, never
                        // while hashing.
                        let job = match queue.lock() {
                            Ok(q) => q.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(&mut memory),
                            // The sender is gone: the service is stopping.
                            Err(_) => return,
                        }
                    }
                })
                .expect("a hashing thread starts");
        }
        Hashers {
            jobs,
            free: Arc::new(Semaphore::new(threads)),
        }
    }

    /// As many threads as cores: argon2 is CPU-bound, more threads would
    /// only share the cores and hold more memory.
    pub fn per_core() -> Hashers {
        Hashers::start(std::thread::available_parallelism().map_or(2, |n| n.get()))
    }

    /// Runs `work` on a hashing thread with that thread's memory; 503 when
    /// no thread is free within [`WAIT`].
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut HashMemory) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let busy =
            || ApiError::Unavailable("too many password checks at once; try again shortly".into());
        let permit = tokio::time::timeout(WAIT, self.free.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(busy)?;
        let (done, answer) = oneshot::channel();
        let job: Job = Box::new(move |memory| {
            // The caller may have gone (a closed connection); nothing to do.
            let _ = done.send(work(memory));
            // Freed when the work is done, not when the caller stops
            // waiting, so the channel never holds more than the threads.
            drop(permit);
        });
        self.jobs.try_send(job).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => busy(),
            mpsc::TrySendError::Disconnected(_) => {
                ApiError::Unavailable("the service is stopping".into())
            }
        })?;
        answer
            .await
            .map_err(|_| ApiError::Internal(anyhow::anyhow!("a hashing thread died")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_run_on_the_pool_and_verify() {
        let pool = Hashers::start(2);
        let hash = pool
            .run(|m| tend_core::auth::hash_password_in(m, "a long passphrase"))
            .await
            .unwrap();
        let checks = (0..4).map(|i| {
            let hash = hash.clone();
            let pool = &pool;
            async move {
                let password = if i % 2 == 0 {
                    "a long passphrase"
                } else {
                    "wrong"
                };
                pool.run(move |m| tend_core::auth::verify_password_in(m, password, &hash))
                    .await
                    .unwrap()
            }
        });
        let got = futures_util::future::join_all(checks).await;
        assert_eq!(got, [true, false, true, false]);
    }
}
