//! The admin API's routes and the OpenAPI document generated from them.

mod artifacts;
mod audit;
mod batches;
mod commands;
mod devices;
mod enrolment_tokens;
mod gateway_tokens;
mod session;
mod tenants;
mod users;

use actix_web::{App, HttpResponse, web};
use tend_core::db;
use tend_core::error::ApiError;
use tend_core::http;
use utoipa::openapi::OpenApi as Document;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_actix_web::AppExt;
use utoipa_actix_web::service_config::ServiceConfig;
use utoipa_swagger_ui::SwaggerUi;

use crate::state::Shared;

/// Every `/api/v1` route. Registered once for serving and once for the
/// OpenAPI document, so the document cannot miss a route.
fn api(cfg: &mut ServiceConfig) {
    cfg.service(session::login)
        .service(tenants::create)
        .service(users::create)
        .service(users::list)
        .service(users::update)
        .service(users::remove)
        .service(devices::create)
        // Before `/devices/{id}`, so that "bulk" is never read as an id.
        .service(devices::create_bulk)
        .service(devices::list)
        .service(devices::get)
        .service(devices::decommission)
        .service(devices::accept)
        .service(devices::reject)
        .service(enrolment_tokens::create)
        .service(enrolment_tokens::list)
        .service(enrolment_tokens::revoke)
        .service(commands::create)
        // Before `/commands/{id}…`, so that "bulk" is never read as an id.
        .service(batches::create)
        .service(batches::get)
        .service(commands::list_for_device)
        .service(commands::get)
        .service(commands::output)
        .service(commands::cancel)
        .service(artifacts::create)
        .service(artifacts::list)
        .service(artifacts::get)
        .service(artifacts::update)
        .service(artifacts::remove)
        .service(artifacts::upload)
        .service(artifacts::denylist)
        .service(artifacts::denylist_entry)
        .service(artifacts::deny)
        .service(artifacts::allow)
        .service(gateway_tokens::create)
        .service(gateway_tokens::list)
        .service(gateway_tokens::revoke)
        .service(audit::list);
}

/// Registers every route; `doc` is this API's OpenAPI document, served at
/// `/api/v1/openapi.json` and browsable with Swagger UI at `/docs/` (its
/// files are compiled in, so it works offline). `/metrics` is not among
/// them: it has a port of its own ([`tend_core::metrics_port`]).
pub fn configure(cfg: &mut web::ServiceConfig, doc: Document) {
    cfg.route("/healthz", web::get().to(http::healthz))
        .route("/readyz", web::get().to(readyz))
        .route(
            "/docs",
            web::get().to(|| async {
                HttpResponse::PermanentRedirect()
                    .insert_header(("location", "/docs/"))
                    .finish()
            }),
        )
        // Before the /api/v1 scope, which would otherwise take the request.
        .service(SwaggerUi::new("/docs/{_:.*}").url("/api/v1/openapi.json", doc))
        .service(web::scope("/api/v1").configure(|c| api(&mut ServiceConfig::new(c))));
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tend admin API",
        description = "Queue remote commands for a fleet of unattended devices and follow them to their end."
    ),
    modifiers(&BearerAuth),
    components(schemas(
        tend_proto::LogQueryParams,
        tend_proto::params::UpgradeParams,
        tend_proto::params::RestoreParams,
        tend_proto::params::RestoreSource,
        tend_proto::params::ArtifactRef,
    )),
    tags(
        (name = "auth", description = "Log in"),
        (name = "tenants", description = "Tenants (system admins)"),
        (name = "users", description = "Admin users and their roles"),
        (name = "devices", description = "Devices and their credentials"),
        (name = "commands", description = "Remote commands and their lifecycle"),
        (name = "artifacts", description = "Software images, their release and their denylists"),
        (name = "gateway-tokens", description = "Tokens of hawkBit DDI gateways"),
        (name = "audit", description = "Who did what, from where, and when"),
        (name = "enrolment", description = "Enrolment tokens: devices that give themselves an identity"),
    )
)]
struct Doc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document of the admin API.
pub fn openapi() -> Document {
    let (_, mut doc) = App::new()
        .into_utoipa_app()
        .openapi(Doc::openapi())
        .service(utoipa_actix_web::scope("/api/v1").configure(api))
        .split_for_parts();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}

/// `GET /readyz`: 503 while draining or without PostgreSQL, which every
/// route of the admin API needs. The platform uses neither Redis nor
/// RabbitMQ (events leave through the outbox table), so their outages
/// do not concern its readiness.
async fn readyz(state: Shared) -> HttpResponse {
    if state.shutdown.is_draining() {
        return http::draining();
    }
    let pg = db::ping(&state.pool).await.map_err(|e| e.to_string());
    http::readiness(vec![("postgres", pg)], Vec::new())
}

/// `?limit=&cursor=` of a list that has no other filter.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// 1 to 500, default 50.
    limit: Option<i64>,
    /// The previous page's `next_cursor`.
    cursor: Option<String>,
}

/// Reads `?limit=&cursor=`, bounded.
fn page_params(
    limit: Option<i64>,
    cursor: Option<&str>,
) -> Result<(i64, Option<db::page::Cursor>), ApiError> {
    let limit = limit.unwrap_or(db::page::DEFAULT_LIMIT);
    if !(1..=db::page::MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be from 1 to {}",
            db::page::MAX_LIMIT
        )));
    }
    let cursor = cursor
        .map(db::page::Cursor::decode)
        .transpose()
        .map_err(|_| ApiError::BadRequest("invalid cursor".into()))?;
    Ok((limit, cursor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_lists_every_admin_route() {
        let doc = serde_json::to_value(openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for (path, method) in [
            ("/api/v1/auth/login", "post"),
            ("/api/v1/tenants", "post"),
            ("/api/v1/users", "post"),
            ("/api/v1/users", "get"),
            ("/api/v1/users/{id}", "patch"),
            ("/api/v1/users/{id}", "delete"),
            ("/api/v1/devices", "post"),
            ("/api/v1/devices/bulk", "post"),
            ("/api/v1/devices", "get"),
            ("/api/v1/devices/{id}", "get"),
            ("/api/v1/devices/{id}", "delete"),
            ("/api/v1/devices/{id}/accept", "post"),
            ("/api/v1/devices/{id}/reject", "post"),
            ("/api/v1/enrolment-tokens", "post"),
            ("/api/v1/enrolment-tokens", "get"),
            ("/api/v1/enrolment-tokens/{id}", "delete"),
            ("/api/v1/devices/{id}/commands", "post"),
            ("/api/v1/devices/{id}/commands", "get"),
            ("/api/v1/commands/{id}", "get"),
            ("/api/v1/commands/{id}/output", "get"),
            ("/api/v1/commands/{id}/cancel", "post"),
            ("/api/v1/commands/bulk", "post"),
            ("/api/v1/command-batches/{id}", "get"),
            ("/api/v1/artifacts", "post"),
            ("/api/v1/artifacts", "get"),
            ("/api/v1/artifacts/{id}", "get"),
            ("/api/v1/artifacts/{id}", "patch"),
            ("/api/v1/artifacts/{id}", "delete"),
            ("/api/v1/artifacts/{id}/content", "put"),
            ("/api/v1/artifacts/{id}/denylist", "get"),
            ("/api/v1/artifacts/{id}/denylist/{device_id}", "get"),
            ("/api/v1/artifacts/{id}/denylist/{device_id}", "put"),
            ("/api/v1/artifacts/{id}/denylist/{device_id}", "delete"),
            ("/api/v1/audit", "get"),
        ] {
            assert!(
                paths.get(path).and_then(|p| p.get(method)).is_some(),
                "{method} {path} missing from the OpenAPI document"
            );
        }
    }

    #[test]
    fn command_params_are_documented_by_kind_from_the_protocols_types() {
        let doc = serde_json::to_value(openapi()).unwrap();
        let schemas = &doc["components"]["schemas"];
        let params = &schemas["NewCommand"]["properties"]["params"];
        let kinds = params["oneOf"].as_array().expect("params is a oneOf");
        assert_eq!(kinds[0]["additionalProperties"], false, "{params}");
        assert_eq!(kinds[1]["$ref"], "#/components/schemas/LogQueryParams");
        let query = &schemas["LogQueryParams"];
        assert_eq!(query["required"], serde_json::json!(["source"]), "{query}");
        assert_eq!(query["properties"]["max_lines"]["maximum"], 10_000);
    }
}
