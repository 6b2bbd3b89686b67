//! The admin API's request and response bodies, with their validation and
//! their OpenAPI schemas.

mod artifacts;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tend_core::auth::Role;
use tend_core::db::{commands::Command, devices::Device};
use tend_core::error::ApiError;
use tend_proto::CommandKind;
use tend_proto::params::CommandParams;
use utoipa::ToSchema;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, OneOfBuilder, Ref, Schema};
use uuid::Uuid;

pub use self::artifacts::*;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"username": "jane", "password": "a-long-unusual-passphrase-7"}))]
pub struct Login {
    pub username: String,
    pub password: String,
}

#[derive(Serialize, ToSchema)]
pub struct AccessToken {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the token expires.
    pub expires_in: u64,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "acme", "admin": {"username": "acme-admin", "password": "a-long-unusual-passphrase-7"}}))]
pub struct NewTenant {
    pub name: String,
    /// The tenant's first admin.
    pub admin: NewTenantAdmin,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenantAdmin {
    pub username: String,
    pub password: String,
}

#[derive(Serialize, ToSchema)]
pub struct TenantOut {
    pub id: Uuid,
    pub name: String,
}

/// `POST /gateway-tokens`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "gateway"}))]
pub struct NewGatewayToken {
    /// What the token is for (a site, a gateway); "gateway" if not given.
    pub name: Option<String>,
}

/// A gateway token. `token` is present only in the answer that created it.
#[derive(Serialize, ToSchema)]
pub struct GatewayTokenOut {
    pub id: Uuid,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

impl From<tend_core::db::ddi::GatewayToken> for GatewayTokenOut {
    fn from(t: tend_core::db::ddi::GatewayToken) -> Self {
        GatewayTokenOut {
            id: t.id,
            name: t.name,
            token: None,
            created_by: t.created_by,
            created_at: t.created_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct GatewayTokenList {
    pub items: Vec<GatewayTokenOut>,
}

/// `POST /enrolment-tokens`: every field is optional.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"device_type": "kiosk", "uses": 10, "expires_in_s": 86400}))]
pub struct NewEnrolmentToken {
    /// The only device type that may enrol with it; any if not given.
    pub device_type: Option<String>,
    /// Given to every device it enrols, over the labels the device asks for.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// How many devices it may enrol (1 to 100000); any number until it
    /// expires if not given.
    pub uses: Option<i32>,
    /// Seconds until it expires (default 86400, one day; at most 31536000,
    /// a year).
    pub expires_in_s: Option<i64>,
    /// Accept its devices at once instead of leaving them `pending` for an
    /// admin (default false).
    #[serde(default)]
    pub auto_accept: bool,
}

pub const DEFAULT_ENROLMENT_EXPIRES_IN_S: i64 = 86_400;
pub const MAX_ENROLMENT_EXPIRES_IN_S: i64 = 365 * 86_400;
pub const MAX_ENROLMENT_USES: i32 = 100_000;

/// An enrolment token. `token` is present only in the answer that created
/// it.
#[derive(Serialize, ToSchema)]
pub struct EnrolmentTokenOut {
    pub id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    pub device_type: Option<String>,
    #[schema(value_type = Object)]
    pub labels: Value,
    /// How many devices it may enrol in all; null: any number.
    pub uses: Option<i32>,
    /// How many more it may enrol; null: any number.
    pub uses_left: Option<i32>,
    /// How many it enrolled.
    pub used: i32,
    pub auto_accept: bool,
    pub expires_at: DateTime<Utc>,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    /// Set once revoked: it enrols nobody from then on.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<tend_core::db::enrolment::EnrolmentToken> for EnrolmentTokenOut {
    fn from(t: tend_core::db::enrolment::EnrolmentToken) -> Self {
        EnrolmentTokenOut {
            id: t.id,
            token: None,
            device_type: t.device_type,
            labels: t.labels,
            uses: t.uses,
            uses_left: t.uses_left,
            used: t.used,
            auto_accept: t.auto_accept,
            expires_at: t.expires_at,
            created_by: t.created_by,
            created_at: t.created_at,
            revoked_at: t.revoked_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct EnrolmentTokenList {
    pub items: Vec<EnrolmentTokenOut>,
    pub next_cursor: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"username": "jane", "password": "a-long-unusual-passphrase-7", "role": "operator"}))]
pub struct NewUser {
    pub username: String,
    pub password: String,
    #[schema(value_type = String, example = "operator")]
    pub role: Role,
}

/// A user as the API shows it: never its password hash.
#[derive(Serialize, ToSchema)]
pub struct UserOut {
    pub id: Uuid,
    pub username: String,
    #[schema(value_type = String)]
    pub role: Role,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
}

impl From<tend_core::db::users::User> for UserOut {
    fn from(u: tend_core::db::users::User) -> UserOut {
        UserOut {
            id: u.id,
            username: u.username,
            role: u.role,
            disabled: u.disabled,
            created_at: u.created_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct UserList {
    pub items: Vec<UserOut>,
    pub next_cursor: Option<String>,
}

/// A change of a user; each field is optional, and at least one is needed.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"role": "viewer"}))]
pub struct UserChange {
    /// `admin`, `operator` or `viewer`.
    #[schema(value_type = Option<String>, example = "viewer")]
    pub role: Option<Role>,
    pub disabled: Option<bool>,
    /// A new password, under the password policy.
    pub password: Option<String>,
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "kiosk-17", "device_type": "kiosk", "labels": {"site": "station-3"}}))]
pub struct NewDevice {
    pub name: String,
    pub device_type: String,
    /// Free key/value labels to select devices by (`?label=site:north`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Serialize, ToSchema)]
pub struct DeviceOut {
    pub id: Uuid,
    pub name: String,
    pub device_type: String,
    #[schema(value_type = Object)]
    pub labels: Value,
    /// `online`, `offline`, or `unknown` (never seen).
    pub status: &'static str,
    pub last_seen_at: Option<DateTime<Utc>>,
    /// What the agent last sent: versions, uptime, inventory.
    #[schema(value_type = Object)]
    pub reported: Value,
    pub created_at: DateTime<Utc>,
    /// `{name: {version, updated_at}}`: the components the agent last
    /// reported (`agent` is always one of them); `updated_at` is when the
    /// version last changed.
    #[schema(value_type = Object)]
    pub components: Value,
    /// `accepted` (may connect), `pending` (enrolled itself and waits for
    /// an admin) or `rejected` (never connects again).
    pub admission: &'static str,
}

impl From<Device> for DeviceOut {
    fn from(d: Device) -> Self {
        DeviceOut {
            id: d.id,
            name: d.name,
            device_type: d.device_type,
            labels: d.labels,
            status: d.status.as_str(),
            last_seen_at: d.last_seen_at,
            reported: d.reported,
            created_at: d.created_at,
            components: d.components,
            admission: d.admission.as_str(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct Credentials {
    pub device_id: Uuid,
    /// Shown once: only its hash is stored.
    pub secret: String,
}

#[derive(Serialize, ToSchema)]
pub struct CreatedDevice {
    #[serde(flatten)]
    pub device: DeviceOut,
    pub credentials: Credentials,
}

/// The most devices one bulk request may register.
pub const MAX_BULK_DEVICES: usize = 1000;

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"devices": [{"name": "kiosk-18", "device_type": "kiosk"}]}))]
pub struct NewDevices {
    /// 1 to 1000 devices, each as for `POST /devices`.
    pub devices: Vec<NewDevice>,
}

#[derive(Serialize, ToSchema)]
pub struct CreatedDevices {
    /// The devices with their credentials, in the order of the request.
    pub items: Vec<CreatedDevice>,
}

#[derive(Serialize, ToSchema)]
pub struct DeviceList {
    pub items: Vec<DeviceOut>,
    pub next_cursor: Option<String>,
}

/// Serialized only to fingerprint an idempotent request.
#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"kind": "reboot", "params": {}}))]
pub struct NewCommand {
    /// `reboot`, `shutdown`, `log_query`, `upgrade` or `restore`.
    pub kind: String,
    #[schema(schema_with = command_params_schema)]
    pub params: Option<Value>,
    /// Seconds the device has to finish once it received the command
    /// (default 600, at most 86400).
    pub timeout_s: Option<i64>,
    /// Seconds the command may wait for its device before it expires
    /// (default 604800, one week; at most 2592000, 30 days).
    pub expires_in_s: Option<i64>,
}

/// A command request checked as every route that queues one checks it.
pub struct CheckedCommand {
    /// The params as sent (`{}` when absent).
    pub params: Value,
    pub checked: CommandParams,
    pub timeout_s: i32,
    pub expires_in_s: i32,
}

impl NewCommand {
    /// The kind, its params and both durations checked (422 otherwise).
    pub fn check(&self) -> Result<CheckedCommand, ApiError> {
        let params = self
            .params
            .clone()
            .unwrap_or_else(|| Value::Object(Default::default()));
        let checked = check_command(&self.kind, &params)?;
        let timeout_s = check_seconds(
            "timeout_s",
            self.timeout_s,
            DEFAULT_TIMEOUT_S,
            MAX_TIMEOUT_S,
        )?;
        let expires_in_s = check_seconds(
            "expires_in_s",
            self.expires_in_s,
            DEFAULT_EXPIRES_IN_S,
            MAX_EXPIRES_IN_S,
        )?;
        Ok(CheckedCommand {
            params,
            checked,
            timeout_s,
            expires_in_s,
        })
    }
}

/// Which devices a batch reaches: every condition given must hold. At
/// least one is required, so that `{}` sent by mistake never reaches the
/// whole fleet.
#[derive(Deserialize, Serialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct CommandSelector {
    pub device_type: Option<String>,
    /// Every pair must match.
    pub labels: Option<BTreeMap<String, String>>,
    /// `online`, `offline` or `unknown`.
    pub status: Option<String>,
    /// `NAME:VERSION`: devices running that version of that component.
    pub component: Option<String>,
    /// Devices of the tenant among these ids (at most 10000); other ids are
    /// never selected.
    pub device_ids: Option<Vec<Uuid>>,
}

/// The most ids a selector may name: the request stays well within the
/// API's body limit, and larger fleets are selected by type or label.
pub const MAX_SELECTOR_IDS: usize = 10_000;

/// Serialized to store the batch's request and to fingerprint an
/// idempotent request.
#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "selector": {"device_type": "kiosk"},
    "command": {"kind": "reboot", "params": {}}
}))]
pub struct NewCommandBatch {
    pub selector: CommandSelector,
    pub command: NewCommand,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct CommandBatchCreated {
    pub batch_id: Uuid,
    /// Devices the selector matched.
    pub matched: i64,
    /// Commands queued: fewer than `matched` when devices could not take
    /// the command.
    pub queued: i64,
    /// Matched devices that got no command, by reason: `not_accepted`
    /// (pending or rejected), `decommissioned` (named by id), `device_type`
    /// (the artifact is not made for it), `denylisted`, `component_busy`
    /// (an upgrade or restore of the component is already open).
    #[schema(value_type = Object)]
    pub skipped: BTreeMap<String, i64>,
}

#[derive(Serialize, ToSchema)]
pub struct CommandBatchOut {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub matched: i64,
    /// The batch's commands by status.
    #[schema(value_type = Object)]
    pub by_status: BTreeMap<String, i64>,
}

pub const DEFAULT_TIMEOUT_S: i64 = 600;
pub const MAX_TIMEOUT_S: i64 = tend_proto::command::MAX_TIMEOUT_S as i64;
pub const DEFAULT_EXPIRES_IN_S: i64 = 7 * 86_400;
pub const MAX_EXPIRES_IN_S: i64 = 30 * 86_400;

#[derive(Serialize, ToSchema)]
pub struct CommandOut {
    pub id: Uuid,
    pub device_id: Uuid,
    pub kind: String,
    #[schema(value_type = Object)]
    pub params: Value,
    /// queued, delivered, in_progress, succeeded, failed, rejected,
    /// timed_out, expired or cancelled.
    pub status: &'static str,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub timeout_s: i32,
    pub expires_at: DateTime<Utc>,
    /// `{output, error, detail}` as the agent reported it, or null.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// Follows the command through every service's logs (W3C trace id: the
    /// `traceparent` the admin sent, else the id of the request).
    pub trace_id: Option<String>,
    /// The command's number, in creation order: a hawkBit DDI device
    /// knows an `upgrade` by it (its `actionId`).
    pub seq: i64,
}

impl From<Command> for CommandOut {
    fn from(c: Command) -> Self {
        CommandOut {
            id: c.id,
            device_id: c.device_id,
            kind: c.kind,
            params: c.params,
            status: c.status.as_str(),
            created_at: c.created_at,
            delivered_at: c.delivered_at,
            started_at: c.started_at,
            finished_at: c.finished_at,
            timeout_s: c.timeout_s,
            expires_at: c.expires_at,
            result: c.result,
            trace_id: c.trace_id,
            seq: c.seq,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct CommandList {
    pub items: Vec<CommandOut>,
    pub next_cursor: Option<String>,
}

fn unprocessable(msg: impl Into<String>) -> ApiError {
    ApiError::Unprocessable(msg.into())
}

/// A display name: 1 to 200 characters, no control characters.
pub fn check_name(field: &str, v: &str) -> Result<(), ApiError> {
    let n = v.chars().count();
    if v.trim().is_empty() || n > 200 || v.chars().any(char::is_control) {
        return Err(unprocessable(format!(
            "{field} must be 1 to 200 printable characters"
        )));
    }
    Ok(())
}

/// A login name: 1 to 64 of letters, digits, `.`, `_`, `-` and `@`.
pub fn check_username(v: &str) -> Result<(), ApiError> {
    if v.is_empty()
        || v.len() > 64
        || !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
    {
        return Err(unprocessable(
            "username must be 1 to 64 of letters, digits, '.', '_', '-' and '@'",
        ));
    }
    Ok(())
}

/// The shortest password tend accepts: long enough that guessing it online
/// or offline is hopeless without it being among the common ones below.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// The longest, in bytes: argon2 hashes anything, but a client has no use
/// for more and should not make the server read it.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// The most common passwords, one a line, lower case (the list Django
/// ships, from leaked password dumps): refused whatever their case.
const COMMON_PASSWORDS: &str = include_str!("../common-passwords.txt");

fn is_common_password(v: &str) -> bool {
    static SET: std::sync::OnceLock<std::collections::HashSet<&'static str>> =
        std::sync::OnceLock::new();
    SET.get_or_init(|| COMMON_PASSWORDS.lines().collect())
        .contains(v.to_lowercase().as_str())
}

/// The password policy: 12 to 1024 characters, and not among the most
/// common passwords. For every password an admin sets, the bootstrap
/// admin's included.
pub fn check_password(v: &str) -> Result<(), ApiError> {
    if v.chars().count() < MIN_PASSWORD_CHARS || v.len() > MAX_PASSWORD_BYTES {
        return Err(unprocessable(format!(
            "password must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_BYTES} characters"
        )));
    }
    if is_common_password(v) {
        return Err(unprocessable(
            "password is among the most common passwords; choose another",
        ));
    }
    Ok(())
}

/// A device type is a token devices are grouped by (`kiosk`, `camera-v2`).
pub fn check_device_type(v: &str) -> Result<(), ApiError> {
    if !tend_proto::device::is_device_type(v) {
        return Err(unprocessable(
            "device_type must be 1 to 64 of letters, digits, '.', '_' and '-'",
        ));
    }
    Ok(())
}

pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if labels.len() > 64 {
        return Err(unprocessable("at most 64 labels"));
    }
    for (k, v) in labels {
        if k.is_empty()
            || k.len() > 63
            || !k
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
        {
            return Err(unprocessable(format!(
                "label key {k:?} must be 1 to 63 of letters, digits, '.', '_', '-' and '/'"
            )));
        }
        if v.len() > 255 || v.chars().any(char::is_control) {
            return Err(unprocessable(format!(
                "label {k:?} must have a value of at most 255 printable characters"
            )));
        }
    }
    Ok(())
}

/// The kinds this platform accepts, and their params checked now rather
/// than discovered on the device, by the rules the agent applies too
/// ([`tend_proto::params::parse`]).
pub fn check_command(kind: &str, params: &Value) -> Result<CommandParams, ApiError> {
    let kind = kind.parse::<CommandKind>().map_err(|_| {
        unprocessable(format!(
            "unknown kind {kind:?}: expected reboot, shutdown, log_query, upgrade or restore"
        ))
    })?;
    tend_proto::params::parse(kind, params).map_err(|e| unprocessable(e.to_string()))
}

/// The OpenAPI schema of `NewCommand.params`: what [`check_command`]
/// accepts, by kind.
fn command_params_schema() -> Schema {
    let none = ObjectBuilder::new()
        .description(Some("`reboot` and `shutdown`: no params (`{}`)"))
        .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)))
        .build();
    Schema::OneOf(
        OneOfBuilder::new()
            .item(none)
            .item(Ref::from_schema_name("LogQueryParams"))
            .item(Ref::from_schema_name("UpgradeParams"))
            .item(Ref::from_schema_name("RestoreParams"))
            .description(Some(
                "The kind's params: `{}` (or absent) for `reboot` and `shutdown`, \
                 a `LogQueryParams` for `log_query`, an `UpgradeParams` for `upgrade`, \
                 a `RestoreParams` for `restore`",
            ))
            .build(),
    )
}

/// A positive number of seconds within `max`, or the default.
pub fn check_seconds(field: &str, v: Option<i64>, default: i64, max: i64) -> Result<i32, ApiError> {
    let v = v.unwrap_or(default);
    if !(1..=max).contains(&v) {
        return Err(unprocessable(format!(
            "{field} must be a whole number of seconds from 1 to {max}"
        )));
    }
    Ok(v as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_password_must_be_long_and_not_a_common_one_in_any_case() {
        assert!(check_password("correct-horse-battery").is_ok());
        assert!(
            check_password(&"é".repeat(12)).is_ok(),
            "characters, not bytes"
        );
        for bad in [
            "short-pass",
            "qwerty123456",
            "Qwerty123456",
            "1Q2W3E4R5T6Y",
            "QAZWSXEDCRFV",
        ] {
            assert!(check_password(bad).is_err(), "{bad}");
        }
        assert!(check_password(&"x".repeat(1025)).is_err());
        assert!(check_password(&"x".repeat(1024)).is_ok());
        assert!(COMMON_PASSWORDS.lines().count() > 10_000);
        assert!(COMMON_PASSWORDS.lines().all(|l| l == l.to_lowercase()));
    }

    #[test]
    fn commands_are_checked_by_the_protocol_and_unknown_kinds_named() {
        assert!(matches!(
            check_command("log_query", &json!({ "source": "app" })),
            Ok(CommandParams::LogQuery(_))
        ));
        assert!(check_command("reboot", &json!({"force": true})).is_err());
        let Err(ApiError::Unprocessable(why)) = check_command("rm -rf", &json!({})) else {
            panic!("an unknown kind is a 422");
        };
        assert!(
            why.contains("expected reboot, shutdown, log_query, upgrade or restore"),
            "{why}"
        );
    }

    #[test]
    fn seconds_must_be_positive_and_bounded() {
        assert_eq!(check_seconds("t", None, 600, 86_400).unwrap(), 600);
        assert_eq!(check_seconds("t", Some(5), 600, 86_400).unwrap(), 5);
        assert!(check_seconds("t", Some(0), 600, 86_400).is_err());
        assert!(check_seconds("t", Some(-3), 600, 86_400).is_err());
        assert!(check_seconds("t", Some(86_401), 600, 86_400).is_err());
    }

    #[test]
    fn names_labels_and_usernames_are_bounded() {
        assert!(check_name("name", "Kiosk 12, north wing").is_ok());
        assert!(check_name("name", " ").is_err());
        assert!(check_name("name", &"x".repeat(201)).is_err());
        assert!(check_username("alice@example").is_ok());
        assert!(check_username("bob smith").is_err());
        assert!(check_device_type("kiosk-v2").is_ok());
        assert!(check_device_type("kiosk v2").is_err());
        let mut labels = BTreeMap::new();
        labels.insert("site".to_owned(), "north".to_owned());
        assert!(check_labels(&labels).is_ok());
        labels.insert("bad key".to_owned(), "x".to_owned());
        assert!(check_labels(&labels).is_err());
    }
}
