//! Every path in one place: the router's patterns and the templates' links both
//! come from here, so a renamed URL cannot leave a dead link.

pub const LOGIN: &str = "/login";
pub const LOGOUT: &str = "/logout";
pub const HOME: &str = "/";
pub const HEALTHZ: &str = "/healthz";
pub const READYZ: &str = "/readyz";
/// Prometheus metrics (only with `METRICS_TOKEN`).
pub const METRICS: &str = "/metrics";
pub const ASSET_CSS: &str = "/assets/app.css";
pub const ASSET_HTMX: &str = "/assets/htmx.min.js";

pub const ORG_MODULES: &str = "/orgs/{org}/settings/modules";
pub const ORG_BACKUPS: &str = "/orgs/{org}/settings/backups";
pub const ORG_EXPORTS: &str = "/orgs/{org}/exports";
pub const ORG_EXPORT_HISTORY: &str = "/orgs/{org}/exports/history";
pub const ORG_EXPORT_DOWNLOAD: &str = "/orgs/{org}/exports/{id}/download";
pub const ORG_EXPORT_DELETE: &str = "/orgs/{org}/exports/{id}/delete";
pub const ORG_EXPORT_VERIFY: &str = "/orgs/{org}/exports/{id}/verify";
pub const ORG_EXPORT_ROW: &str = "/orgs/{org}/exports/{id}/row";
pub const ORG_EXPORT_CANCEL: &str = "/orgs/{org}/exports/{id}/cancel";
/// An export's tables (`{format}`: `csv` or `parquet`): POST asks for them, the
/// download redirects to the zip.
pub const ORG_EXPORT_TABLES: &str = "/orgs/{org}/exports/{id}/tables/{format}";
pub const ORG_EXPORT_TABLES_DOWNLOAD: &str = "/orgs/{org}/exports/{id}/tables/{format}/download";
pub const ORG_NOTIFICATIONS: &str = "/orgs/{org}/settings/notifications";
pub const ORG_WEBHOOK_TEST: &str = "/orgs/{org}/settings/notifications/{id}/test";
pub const ORG_WEBHOOK_ROTATE: &str = "/orgs/{org}/settings/notifications/{id}/rotate";
pub const ORG_WEBHOOK_DELETE: &str = "/orgs/{org}/settings/notifications/{id}/delete";
/// Close the organization (org admins): the page, the request, and its cancel.
pub const ORG_CLOSE: &str = "/orgs/{org}/settings/close";
pub const ORG_REOPEN: &str = "/orgs/{org}/settings/close/reopen";

pub const PLATFORM_SETTINGS: &str = "/platform/settings";
pub const PLATFORM_BACKUP: &str = "/platform/settings/backup";
pub const PLATFORM_VERIFY: &str = "/platform/settings/backup/verify";
pub const PLATFORM_RETENTION: &str = "/platform/settings/retention";
pub const PLATFORM_SCHEDULE: &str = "/platform/settings/schedule";
pub const PLATFORM_ORGS: &str = "/platform/orgs";
/// One org's closing, from the org list (platform admins): its state or receipt,
/// the request, and its cancel.
pub const PLATFORM_ORG_CLOSE: &str = "/platform/orgs/{org}/close";
pub const PLATFORM_ORG_REOPEN: &str = "/platform/orgs/{org}/reopen";
pub const ME_PRIVACY: &str = "/me/privacy";
pub const ME_PRIVACY_HISTORY: &str = "/me/privacy/history";
pub const ME_PRIVACY_DOWNLOAD: &str = "/me/privacy/{id}/download";
pub const ME_TOKENS: &str = "/me/tokens";
pub const ME_TOKEN_REVOKE: &str = "/me/tokens/{id}/revoke";
pub const ME_NOTIFICATIONS: &str = "/me/notifications";
pub const PLATFORM_PRIVACY: &str = "/platform/privacy";
pub const PLATFORM_PRIVACY_RETENTION: &str = "/platform/privacy/retention";
pub const PLATFORM_PRIVACY_DOWNLOAD: &str = "/platform/privacy/{id}/download";
pub const PLATFORM_IMPORTS: &str = "/platform/imports";
pub const PLATFORM_IMPORT_UPLOAD: &str = "/platform/imports/upload";
pub const PLATFORM_IMPORT_ROW: &str = "/platform/imports/{id}/row";
pub const PLATFORM_IMPORT_CONFIRM: &str = "/platform/imports/{id}/confirm";
/// Redirects to the job board's own listener.
pub const PLATFORM_BOARD: &str = "/platform/board";
/// The job board UI's event stream, on the board's own listener (`board`).
pub const BOARD_EVENTS: &str = "/api/v1/events";

/// The JSON API is nested here; its patterns below are relative to it.
pub const API_PREFIX: &str = "/api/v1";
pub const API_EXPORTS: &str = "/orgs/{org}/exports";
pub const API_EXPORT: &str = "/orgs/{org}/exports/{id}";
pub const API_EXPORT_DOWNLOAD: &str = "/orgs/{org}/exports/{id}/download";
pub const API_EXPORT_VERIFY: &str = "/orgs/{org}/exports/{id}/verify";
pub const API_EXPORT_CANCEL: &str = "/orgs/{org}/exports/{id}/cancel";
pub const API_EXPORT_TABLES: &str = "/orgs/{org}/exports/{id}/tables";
pub const API_EXPORT_TABLE: &str = "/orgs/{org}/exports/{id}/tables/{format}";
pub const API_EXPORT_TABLE_DOWNLOAD: &str = "/orgs/{org}/exports/{id}/tables/{format}/download";
pub const API_WEBHOOKS: &str = "/orgs/{org}/webhooks";
pub const API_WEBHOOK: &str = "/orgs/{org}/webhooks/{id}";
pub const API_WEBHOOK_ROTATE: &str = "/orgs/{org}/webhooks/{id}/rotate";
pub const API_WEBHOOK_TEST: &str = "/orgs/{org}/webhooks/{id}/test";
pub const API_WEBHOOK_ATTEMPTS: &str = "/orgs/{org}/webhooks/{id}/attempts";
pub const API_IMPORTS: &str = "/platform/imports";
pub const API_IMPORT: &str = "/platform/imports/{id}";
pub const API_IMPORT_CONFIRM: &str = "/platform/imports/{id}/confirm";
pub const API_PLATFORM_ORGS: &str = "/platform/orgs";
pub const API_ORG_CLOSE: &str = "/orgs/{org}/close";
pub const API_ORG_REOPEN: &str = "/orgs/{org}/reopen";
pub const API_PLATFORM_ORG_RECEIPT: &str = "/platform/orgs/{org}/receipt";
/// The OpenAPI document of every route under `API_PREFIX` (docs/openapi.json).
pub const API_OPENAPI: &str = "/openapi.json";

/// Fills `{org}` and `{id}` in a pattern.
pub fn path(pattern: &str, org: &str, id: Option<&str>) -> String {
    let p = pattern.replace("{org}", org);
    match id {
        Some(id) => p.replace("{id}", id),
        None => p,
    }
}

/// A pattern with `{format}` filled (after [`path`]).
pub fn with_format(path: &str, format: &str) -> String {
    path.replace("{format}", format)
}

/// `/orgs/{org}/settings/modules`.
pub fn org_modules(org: &str) -> String {
    path(ORG_MODULES, org, None)
}

/// `/orgs/{org}/settings/backups`.
pub fn org_backups(org: &str) -> String {
    path(ORG_BACKUPS, org, None)
}
