//! What every handler of the admin API can reach: the pool, the token
//! keys, the bound on password hashing, and the process's shutdown.

use actix_web::web;
use tend_core::auth::AdminTokens;
use tend_core::db::Pool;
use tend_core::error::ApiError;
use tend_core::shutdown::Shutdown;
use tend_core::signing::InstructionSigner;
use tend_core::store::ArtifactStore;

pub(crate) struct State {
    pub pool: Pool,
    pub tokens: AdminTokens,
    /// Signs every command when it is queued.
    pub signer: InstructionSigner,
    /// Bounds concurrent argon2 work. Each hash takes about 19 MiB and a
    /// core for tens of milliseconds; unbounded, a flood of logins would
    /// exhaust memory. Two per core keeps the cores busy and no more.
    pub hashing: tokio::sync::Semaphore,
    /// `/readyz` answers 503 once the drain has begun.
    pub shutdown: Shutdown,
    /// Where uploads go.
    pub store: ArtifactStore,
    /// The largest artifact an upload may bring.
    pub artifact_max_bytes: u64,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<tend_core::http::Cidr>,
    /// Each user's token generation: which admin tokens still stand.
    pub sessions: crate::sessions::Sessions,
}

pub(crate) type Shared = web::Data<State>;

impl State {
    pub fn new(
        pool: Pool,
        tokens: AdminTokens,
        signer: InstructionSigner,
        shutdown: Shutdown,
        store: ArtifactStore,
        artifact_max_bytes: u64,
        trusted_proxies: Vec<tend_core::http::Cidr>,
    ) -> State {
        State {
            pool,
            tokens,
            signer,
            hashing: tokio::sync::Semaphore::new(
                2 * std::thread::available_parallelism().map_or(2, |n| n.get()),
            ),
            shutdown,
            store,
            artifact_max_bytes,
            trusted_proxies,
            sessions: Default::default(),
        }
    }

    /// Runs argon2 work on a blocking thread, at most a few at a time; 503
    /// when the queue does not move within a few seconds.
    pub async fn hash_work<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let wait = std::time::Duration::from_secs(5);
        let _permit = tokio::time::timeout(wait, self.hashing.acquire())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| {
                ApiError::Unavailable("too many password checks at once; try again shortly".into())
            })?;
        Ok(web::block(work).await?)
    }
}
