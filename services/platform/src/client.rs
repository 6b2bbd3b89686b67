//! Where a request came from, for the audit log and login throttling: the
//! client's address (through `TEND_TRUSTED_PROXIES` only) and the request
//! id its logs carry.

use std::future::{Ready, ready};
use std::net::IpAddr;

use actix_web::{FromRequest, HttpMessage, HttpRequest, dev::Payload};
use serde_json::Value;
use tend_core::db::audit::{Entry, Target};
use tend_core::error::ApiError;

use crate::caller::Caller;
use crate::state::Shared;

pub struct Client {
    pub address: Option<IpAddr>,
    pub request_id: Option<String>,
}

impl Client {
    /// An audit row of `caller`'s action from this client.
    pub fn audit<'a>(
        &'a self,
        caller: &Caller,
        action: &'a str,
        target: Target,
        summary: Value,
    ) -> Entry<'a> {
        Entry {
            tenant_id: caller.tenant(),
            actor_id: Some(caller.user()),
            action,
            target,
            address: self.address,
            request_id: self.request_id.as_deref(),
            summary,
        }
    }
}

impl FromRequest for Client {
    type Error = ApiError;
    type Future = Ready<Result<Client, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let trusted = req
            .app_data::<Shared>()
            .map(|s| s.trusted_proxies.as_slice())
            .unwrap_or_default();
        ready(Ok(Client {
            address: tend_core::http::client_address(req, trusted),
            request_id: req
                .extensions()
                .get::<tracing_actix_web::RequestId>()
                .map(|id| id.to_string()),
        }))
    }
}
