//! What every handler of the admin API can reach: the pool, the token
//! keys, the password hashing threads and login throttle, and the
//! process's shutdown.

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
    /// Where argon2 work runs: one thread per core, each reusing its own
    /// 19 MiB of working memory ([`crate::hashing`]).
    pub hashers: crate::hashing::Hashers,
    /// Failed logins per username and address ([`crate::throttle`]).
    pub throttle: crate::throttle::LoginThrottle,
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
    /// Devices' latest heartbeats, from Redis ([`crate::presence`]).
    pub latest: crate::presence::LatestBeats,
}

pub(crate) type Shared = web::Data<State>;

impl State {
    #[expect(
        clippy::too_many_arguments,
        reason = "each is one part of the state, built once at startup"
    )]
    pub fn new(
        pool: Pool,
        tokens: AdminTokens,
        signer: InstructionSigner,
        shutdown: Shutdown,
        store: ArtifactStore,
        artifact_max_bytes: u64,
        trusted_proxies: Vec<tend_core::http::Cidr>,
        throttle: crate::throttle::LoginThrottle,
    ) -> State {
        State {
            pool,
            tokens,
            signer,
            hashers: crate::hashing::Hashers::per_core(),
            throttle,
            shutdown,
            store,
            artifact_max_bytes,
            trusted_proxies,
            sessions: Default::default(),
            latest: Default::default(),
        }
    }

    /// Runs argon2 work on a hashing thread, with that thread's memory;
    /// 503 when no thread is free within a few seconds.
    pub async fn hash_work<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut tend_core::auth::HashMemory) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        self.hashers.run(work).await
    }
}
