//! `Idempotency-Key`: the first answer to a request, kept 24 hours so that a
//! client whose answer was lost can ask again and get it, without the work
//! being done twice.
//!
//! The key's row is inserted first, in the transaction that does the work:
//! a concurrent request with the same key waits on the row's lock until
//! that transaction ends, then reads the answer it stored (or, when it
//! rolled back, does the work itself). A failed request leaves no row, so
//! only answers of work done are returned again.

use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{GenericClient, Result};

/// How long an answer is returned again; older rows are swept, and a key
/// older than this is taken as new.
pub const KEEP_HOURS: i32 = 24;

/// Whose key it is: keys are scoped by tenant and by user.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub tenant_id: Uuid,
    pub user_id: Uuid,
    pub key: &'a str,
}

/// A stored answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: i16,
    pub body: serde_json::Value,
    /// What the work needs to rebuild secrets left out of `body`.
    pub nonce: Option<Vec<u8>>,
    pub secrets_key: Option<String>,
}

/// What [`claim`] found.
#[derive(Debug)]
pub enum Claim {
    /// The key is new (or expired): do the work and [`store`] its answer in
    /// this transaction.
    Fresh,
    /// The key was used for another request.
    Mismatch,
    /// The key's request was done: here is its answer.
    Replay(Answer),
}

/// SHA-256 of what makes two requests the same: the route and the body.
pub fn fingerprint(route: &str, body: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(route.as_bytes());
    h.update(b"\n");
    h.update(body);
    h.finalize().to_vec()
}

/// Claims a key for a request, waiting for a concurrent request with the
/// same key to end first. Call it first in the transaction of the work.
pub async fn claim(c: &impl GenericClient, scope: Scope<'_>, fingerprint: &[u8]) -> Result<Claim> {
    // A second round only when the row expired and was swept between the
    // two statements below, which a row claimed just now cannot be.
    for _ in 0..2 {
        if let Some(claim) = try_claim(c, scope, fingerprint).await? {
            return Ok(claim);
        }
    }
    Err(super::DbError::Corrupt(
        "an idempotency key vanished twice while being claimed".into(),
    ))
}

async fn try_claim(
    c: &impl GenericClient,
    scope: Scope<'_>,
    fingerprint: &[u8],
) -> Result<Option<Claim>> {
    let stmt = c
        .prepare_cached(
            "INSERT INTO idempotency_keys (tenant_id, user_id, key, fingerprint)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (tenant_id, user_id, key) DO UPDATE
                SET fingerprint = EXCLUDED.fingerprint, status = NULL, answer = NULL,
                    nonce = NULL, secrets_key = NULL, created_at = now()
                WHERE idempotency_keys.created_at < now() - make_interval(hours => $5)
             RETURNING 1",
        )
        .await?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [
        &scope.tenant_id,
        &scope.user_id,
        &scope.key,
        &fingerprint,
        &KEEP_HOURS,
    ];
    if c.query_opt(&stmt, &params).await?.is_some() {
        return Ok(Some(Claim::Fresh));
    }
    // Taken, and its transaction has committed (the insert waited for it):
    // this statement's snapshot sees the answer.
    let stmt = c
        .prepare_cached(
            "SELECT fingerprint, status, answer, nonce, secrets_key FROM idempotency_keys
             WHERE tenant_id = $1 AND user_id = $2 AND key = $3",
        )
        .await?;
    let Some(r) = c
        .query_opt(&stmt, &[&scope.tenant_id, &scope.user_id, &scope.key])
        .await?
    else {
        return Ok(None);
    };
    let stored: Vec<u8> = r.get(0);
    if stored != fingerprint {
        return Ok(Some(Claim::Mismatch));
    }
    let (status, body): (Option<i16>, Option<serde_json::Value>) = (r.get(1), r.get(2));
    match (status, body) {
        (Some(status), Some(body)) => Ok(Some(Claim::Replay(Answer {
            status,
            body,
            nonce: r.get(3),
            secrets_key: r.get(4),
        }))),
        _ => Err(super::DbError::Corrupt(
            "an idempotency key committed without its answer".into(),
        )),
    }
}

/// Stores the answer of a claimed key, in the transaction of the work.
pub async fn store(c: &impl GenericClient, scope: Scope<'_>, answer: &Answer) -> Result<()> {
    let stmt = c
        .prepare_cached(
            "UPDATE idempotency_keys SET status = $4, answer = $5, nonce = $6, secrets_key = $7
             WHERE tenant_id = $1 AND user_id = $2 AND key = $3",
        )
        .await?;
    c.execute(
        &stmt,
        &[
            &scope.tenant_id,
            &scope.user_id,
            &scope.key,
            &answer.status,
            &answer.body,
            &answer.nonce,
            &answer.secrets_key,
        ],
    )
    .await?;
    Ok(())
}

/// Deletes keys older than [`KEEP_HOURS`]; answers how many.
pub async fn sweep(c: &impl GenericClient) -> Result<u64> {
    let stmt = c
        .prepare_cached(
            "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => $1)",
        )
        .await?;
    Ok(c.execute(&stmt, &[&KEEP_HOURS]).await?)
}
