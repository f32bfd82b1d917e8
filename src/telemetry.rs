//! Logging to stderr (stdout is for command output): human-readable by default,
//! JSON with `LOG_FORMAT=json`; `RUST_LOG` filters.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// The default filter: our crate at info, noisy dependencies quieter. The embedded
/// S3 endpoint logs refused signatures at ERROR, which are expected (expired links).
const DEFAULT_FILTER: &str = "info,data_export=info,sqlx=error,s3s=off,s3s_fs=warn,aws_smithy_runtime=warn,aws_sdk_s3=warn,apalis=warn,apalis_core=warn,apalis_postgres=warn,tower_sessions=warn,hyper=warn";

/// Installs the global subscriber once; later calls are ignored (tests call it often).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = if json {
        registry.with(fmt::layer().json().with_current_span(true).with_writer(std::io::stderr)).try_init()
    } else {
        registry.with(fmt::layer().with_target(false).with_writer(std::io::stderr)).try_init()
    };
}
