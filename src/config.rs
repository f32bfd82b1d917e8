//! Configuration from the environment (12-factor), each setting with a zero-config default.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context, bail};

/// Where the storage endpoint comes from.
#[derive(Clone, Debug)]
pub enum StorageSource {
    /// Start the embedded S3-compatible endpoint on loopback, data under `DATA_DIR/storage`.
    Embedded,
    /// An external S3-compatible endpoint from the `S3_*` variables.
    External(S3Settings),
}

/// Settings for an S3-compatible endpoint.
#[derive(Clone)]
pub struct S3Settings {
    /// The endpoint the server talks to, e.g. `https://s3.eu-west-1.amazonaws.com`.
    pub endpoint: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub force_path_style: bool,
    /// The endpoint presigned URLs are made for (what a browser can reach); defaults to `endpoint`.
    pub public_endpoint: Option<String>,
    /// `S3_EXPECTED_BUCKET_OWNER`: the account id that must own every bucket the
    /// product uses. Sent as `x-amz-expected-bucket-owner` on each bucket and object
    /// call where the endpoint supports it (AWS does), so that a bucket of the same
    /// name in another account is refused (403) even when it lets anyone in.
    pub expected_bucket_owner: Option<String>,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("force_path_style", &self.force_path_style)
            .field("public_endpoint", &self.public_endpoint)
            .field("expected_bucket_owner", &self.expected_bucket_owner)
            .finish_non_exhaustive()
    }
}

/// The deflate level of snapshot files when `EXPORT_GZIP_LEVEL` is not set (see
/// docs/benchmarks.md, "The levers, measured").
pub const DEFAULT_EXPORT_GZIP_LEVEL: u32 = 3;

/// The whole process configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// `DATABASE_URL`; `None` means the private cluster under `DATA_DIR/postgres`.
    pub database_url: Option<String>,
    /// `DATABASE_POOL_SIZE` (default 20): the most connections the process's pool
    /// holds to PostgreSQL (its listeners' own connections not counted).
    pub database_pool_size: u32,
    pub storage: StorageSource,
    /// `BIND`, default `127.0.0.1:3000`.
    pub bind: SocketAddr,
    /// `BOARD_BIND`, default `127.0.0.1:3001`.
    pub board_bind: SocketAddr,
    /// `BOARD_PUBLIC_URL`: how platform admins reach the job board; default: the
    /// scheme and host of `PUBLIC_URL` with the board's port.
    pub board_public_url: Option<String>,
    /// `DATA_DIR`, default `.data`.
    pub data_dir: PathBuf,
    /// `PUBLIC_URL`: how users reach the web UI; cookies are `Secure` when it is https.
    pub public_url: String,
    /// `DEMO_PASSWORD`: the demo accounts' password; random when unset.
    pub demo_password: Option<String>,
    /// `WORKER_CONCURRENCY`: export jobs run at once per process (default 2).
    pub worker_concurrency: usize,
    /// `HEARTBEAT_SECS` (default 30) and `MISSED_HEARTBEATS` (default 10): a job whose
    /// worker stopped beating for their product is re-enqueued.
    pub heartbeat_secs: u64,
    pub missed_heartbeats: u32,
    /// `EXPORT_MAX_ATTEMPTS` (default 3).
    pub export_max_attempts: u32,
    /// `EXPORT_GZIP_LEVEL`: the deflate level of every snapshot file (1..=9,
    /// default [`DEFAULT_EXPORT_GZIP_LEVEL`]): lower is faster and larger.
    pub export_gzip_level: u32,
    /// `PRIVACY_BUCKET` (default `data-export-privacy`).
    pub privacy_bucket: String,
    /// `IMPORT_MAX_BYTES`: the largest snapshot file a platform admin may upload to
    /// restore (default 4 GiB).
    pub import_max_bytes: u64,
    /// `VERIFY_TIMEOUT_SECS`: the longest a Verify of a stored export may run
    /// (default 1800, 30 minutes; 1..=86400).
    pub verify_timeout_secs: u64,
    /// `TRUSTED_PROXIES`: comma-separated CIDRs of reverse proxies whose
    /// `X-Forwarded-For` / `Forwarded` headers name the client (default: none, so
    /// the TCP peer is the client).
    pub trusted_proxies: Vec<Cidr>,
    /// `PASSWORD_HASH_WAIT_MS`: how long a sign-in waits for one of the password
    /// hashing slots (one per core) before it is answered 503 (default 3000; 0 means
    /// answer 503 at once when every slot is busy).
    pub password_hash_wait: Duration,
    /// How long a client may take, and how many may connect (slow-client limits).
    pub http: HttpLimits,
    /// How webhooks are delivered.
    pub webhooks: WebhookSettings,
    /// Where mail goes, from whom, and how its retries wait.
    pub mail: MailSettings,
    /// `STUCK_RUN_SECS` (default 900): a running export whose progress has not moved
    /// for this long is failed by housekeeping.
    pub stuck_run_secs: u64,
    /// `CLOSE_GRACE_DAYS` (default 30): how long a closing org waits, once its
    /// final export is verified, before it is erased (docs/runbooks/offboarding.md).
    pub close_grace_days: u32,
    /// `BUCKET_PREFIX` (default `org-`): org buckets are named this + the slug.
    pub bucket_prefix: String,
    /// `MANUAL_EXPORTS_PER_DAY` (default 24): manual exports an org may start in any
    /// 24 hours; past it, 429 with `Retry-After`.
    pub manual_exports_per_day: u32,
    /// `METRICS_TOKEN`: the bearer token `/metrics` asks for; unset, `/metrics` is 404.
    pub metrics_token: Option<String>,
    /// `BUCKET_CHECK_CONCURRENCY` (default 8): org buckets a Verify probes at once.
    pub bucket_check_concurrency: usize,
}

/// The default `BUCKET_PREFIX`: org buckets are `org-{slug}`.
pub const DEFAULT_BUCKET_PREFIX: &str = "org-";

/// Checks `BUCKET_PREFIX`: 1 to 23 of `a-z 0-9 -`, starting with a letter or digit,
/// so that prefix + the longest slug (40) is a valid S3 bucket name (at most 63).
fn parse_bucket_prefix(v: Option<String>) -> anyhow::Result<String> {
    let Some(raw) = v else { return Ok(DEFAULT_BUCKET_PREFIX.to_string()) };
    let p = raw.trim();
    let ok = (1..=23).contains(&p.len())
        && p.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && p.bytes().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !ok {
        bail!(
            "BUCKET_PREFIX must be 1 to 23 of a-z, 0-9 and '-', starting with a letter or digit (got {raw:?}), so that \
             prefix + slug is a valid bucket name"
        );
    }
    if ["xn--", "sthree-", "amzn-s3-demo-"].iter().any(|r| p.starts_with(r)) {
        bail!(
            "BUCKET_PREFIX must not start with xn--, sthree- or amzn-s3-demo- (S3 refuses such bucket names; got {raw:?})"
        );
    }
    Ok(p.to_string())
}

/// An address range such as `10.0.0.0/8` or `fd00::/8` (a bare address is one host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`, `x:y::/n` or a bare address. IPv4-mapped IPv6 ranges
    /// (`::ffff:10.0.0.0/104`) are kept as the IPv4 range they denote.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| format!("{text:?} is not an IP address or CIDR range"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{text:?} has a prefix length that is not 0 to {max}")),
            },
        };
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix - 96),
                None => (addr, prefix),
            },
            _ => (addr, prefix),
        };
        Ok(Self { network: mask(addr, prefix), prefix })
    }

    /// Whether `ip` is in the range (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.network.is_ipv4() && mask(ip, self.prefix) == self.network
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// `ip` with all but its first `prefix` bits cleared.
pub fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix.min(32))) };
            IpAddr::V4((u32::from(v4) & bits).into())
        }
        IpAddr::V6(v6) => {
            let bits = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix.min(128))) };
            IpAddr::V6((u128::from(v6) & bits).into())
        }
    }
}

fn parse_cidrs(name: &str, v: Option<String>) -> anyhow::Result<Vec<Cidr>> {
    let Some(v) = v else { return Ok(Vec::new()) };
    v.split(',')
        .filter(|part| !part.trim().is_empty())
        .map(|part| {
            Cidr::parse(part).map_err(|e| {
                anyhow::anyhow!("{name} must be comma-separated CIDR ranges such as 10.0.0.0/8,fd00::/8 ({e})")
            })
        })
        .collect()
}

/// Limits on clients of the two listeners (the web app and the job board).
#[derive(Clone, Debug)]
pub struct HttpLimits {
    /// `HEADER_READ_TIMEOUT_SECS` (default 10, at most 30): a connection that has not
    /// sent a whole request head this long after it opened (or after its previous
    /// answer, when kept alive) is closed. Both listeners.
    pub header_read_timeout: Duration,
    /// `REQUEST_TIMEOUT_SECS` (default 60): the longest a request of the web app may
    /// take until its answer starts; the snapshot upload is exempt. Also the grace
    /// that open requests get at shutdown (at most 30 s).
    pub request_timeout: Duration,
    /// `BODY_READ_TIMEOUT_SECS` (default 20): the longest a request body may pause
    /// between two reads (the web app, the upload included).
    pub body_read_timeout: Duration,
    /// `MAX_CONNECTIONS` (default 512): open connections the web app serves at
    /// once; more wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// `BOARD_MAX_CONNECTIONS` (default 64): the same for the job board's listener.
    pub board_max_connections: usize,
    /// `MAX_CONNECTIONS_PER_CLIENT` (default 32): connections one client address (an
    /// IPv6 /64) may hold open on a listener, and 4 and 8 times as many for the IPv6
    /// /56 and /48 that hold it; one more is closed at once. Peers in
    /// `TRUSTED_PROXIES` are not counted.
    pub max_connections_per_client: usize,
    /// `WRITE_STALL_TIMEOUT_SECS` (default 20): an answer the client reads none of
    /// for this long ends its connection.
    pub write_stall_timeout: Duration,
}

impl HttpLimits {
    fn from_lookup(non_empty: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let secs = |name: &str, default: u64, max: u64| -> anyhow::Result<Duration> {
            parse_num(name, non_empty(name), default, 1..=max).map(Duration::from_secs)
        };
        Ok(Self {
            header_read_timeout: secs("HEADER_READ_TIMEOUT_SECS", 10, 30)?,
            request_timeout: secs("REQUEST_TIMEOUT_SECS", 60, 3600)?,
            body_read_timeout: secs("BODY_READ_TIMEOUT_SECS", 20, 3600)?,
            max_connections: parse_num("MAX_CONNECTIONS", non_empty("MAX_CONNECTIONS"), 512, 1..=100_000)?,
            board_max_connections: parse_num(
                "BOARD_MAX_CONNECTIONS",
                non_empty("BOARD_MAX_CONNECTIONS"),
                64,
                1..=100_000,
            )?,
            max_connections_per_client: parse_num(
                "MAX_CONNECTIONS_PER_CLIENT",
                non_empty("MAX_CONNECTIONS_PER_CLIENT"),
                32,
                1..=100_000,
            )?,
            write_stall_timeout: secs("WRITE_STALL_TIMEOUT_SECS", 20, 3600)?,
        })
    }
}

/// Mail: `SMTP_URL`, `SMTP_CA_FILE`, `MAIL_FROM` and `MAIL_RETRY_SCHEDULE_SECS`.
#[derive(Clone, Debug)]
pub struct MailSettings {
    /// `SMTP_URL`; `None` writes each mail as an `.eml` file under `DATA_DIR/outbox`.
    pub smtp: Option<Smtp>,
    /// `MAIL_FROM` (default [`DEFAULT_MAIL_FROM`]).
    pub from: lettre::message::Mailbox,
    /// `MAIL_RETRY_SCHEDULE_SECS`: the waits before each retry of a mail the server
    /// did not take (default 30 s, 2 min, 10 min, 1 h, 6 h); after the last, it is
    /// given up.
    pub retry_schedule: Vec<Duration>,
}

/// The default of `MAIL_FROM`.
pub const DEFAULT_MAIL_FROM: &str = "Data Export <data-export@localhost>";

/// An SMTP server from `SMTP_URL`.
#[derive(Clone)]
pub struct Smtp {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    /// The URL's user and password (percent-decoded), for AUTH.
    pub credentials: Option<(String, String)>,
    /// `SMTP_CA_FILE`: PEM certificates trusted besides the Mozilla roots (a private CA).
    pub extra_roots_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for Smtp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        f.debug_struct("Smtp")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("user", &self.credentials.as_ref().map(|(u, _)| u))
            .field("extra_roots", &self.extra_roots_pem.is_some())
            .finish()
    }
}

/// How the connection to the SMTP server is protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// `smtp://…?tls=none`: never TLS (a local mail catcher).
    Plain,
    /// `smtp://…?tls=opportunistic` (default port 25): STARTTLS when the server
    /// offers it, its certificate then checked; plain text otherwise, so anyone on
    /// the path can strip the offer. Only when asked for by name.
    StartTlsWhenOffered,
    /// `smtp://…` (default port 25) and `smtp://…?tls=required` (default port
    /// 587): STARTTLS with a valid certificate, or no mail is sent.
    StartTlsRequired,
    /// `smtps://…` (default port 465): TLS from the first byte.
    ImplicitTls,
}

impl MailSettings {
    fn from_lookup(non_empty: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let from = non_empty("MAIL_FROM").unwrap_or_else(|| DEFAULT_MAIL_FROM.into());
        let from = from.trim().parse().map_err(|e| {
            anyhow::anyhow!(
                "MAIL_FROM must be an address such as {DEFAULT_MAIL_FROM:?} or ops@example.com ({e}; got {from:?})"
            )
        })?;
        let extra_roots_pem = match non_empty("SMTP_CA_FILE") {
            None => None,
            Some(path) => Some(read_pem_certificates(&path)?),
        };
        let smtp = match non_empty("SMTP_URL") {
            None => {
                if extra_roots_pem.is_some() {
                    bail!("SMTP_CA_FILE is set but SMTP_URL is not: set SMTP_URL too, or unset SMTP_CA_FILE");
                }
                None
            }
            Some(raw) => Some(parse_smtp_url(raw.trim(), extra_roots_pem)?),
        };
        let retry_schedule = match non_empty("MAIL_RETRY_SCHEDULE_SECS") {
            None => [30, 120, 600, 3600, 6 * 3600].map(Duration::from_secs).to_vec(),
            Some(v) => {
                let waits: Option<Vec<Duration>> = v
                    .split(',')
                    .map(|part| part.trim().parse::<u64>().ok().filter(|n| (1..=86_400).contains(n)))
                    .map(|n| n.map(Duration::from_secs))
                    .collect();
                match waits {
                    Some(w) if w.len() <= 20 => w,
                    _ => bail!(
                        "MAIL_RETRY_SCHEDULE_SECS must be up to 20 comma-separated waits in seconds, each 1 to 86400, such as 30,120,600 (got {v:?})"
                    ),
                }
            }
        };
        Ok(Self { smtp, from, retry_schedule })
    }
}

/// `smtp://[user:pass@]host[:port][?tls=required|opportunistic|none]` or
/// `smtps://[user:pass@]host[:port]`. A plain `smtp://host` requires STARTTLS:
/// falling back to plain text when the server does not offer it would let anyone
/// on the path strip the offer, so that takes `tls=opportunistic`, by name.
fn parse_smtp_url(raw: &str, extra_roots_pem: Option<Vec<u8>>) -> anyhow::Result<Smtp> {
    let shape = "smtp://host:port, smtp://host:port?tls=opportunistic or smtps://user:password@host:port";
    let shown = redact_url(raw);
    let url =
        url::Url::parse(raw).map_err(|e| anyhow::anyhow!("SMTP_URL must look like {shape} ({e}; got {shown:?})"))?;
    let host = match url.host() {
        Some(url::Host::Domain(d)) if !d.is_empty() => d.to_string(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        _ => bail!("SMTP_URL must name a host, like {shape} (got {shown:?})"),
    };
    if url.path().len() > 1 || url.fragment().is_some() {
        bail!("SMTP_URL must have no path, like {shape} (got {shown:?})");
    }
    let mut tls = None;
    for (k, v) in url.query_pairs() {
        if k != "tls" || tls.is_some() {
            bail!("SMTP_URL takes one query setting, tls=required, tls=opportunistic or tls=none (got {shown:?})");
        }
        tls = Some(v.into_owned());
    }
    let (security, default_port) = match (url.scheme(), tls.as_deref()) {
        // The port stays what each form had before STARTTLS became the default,
        // so no deployment's mail moves to another port.
        ("smtp", None) => (SmtpSecurity::StartTlsRequired, 25),
        ("smtp", Some("required")) => (SmtpSecurity::StartTlsRequired, 587),
        ("smtp", Some("opportunistic")) => (SmtpSecurity::StartTlsWhenOffered, 25),
        ("smtp", Some("none")) => (SmtpSecurity::Plain, 25),
        ("smtps", None) => (SmtpSecurity::ImplicitTls, 465),
        ("smtp" | "smtps", Some(other)) => bail!(
            "SMTP_URL's tls= must be required, opportunistic or none, with smtp:// only (got {other:?} in {shown:?})"
        ),
        (other, _) => bail!("SMTP_URL must start with smtp:// or smtps:// (got {other}:// in {shown:?})"),
    };
    let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8().map(|c| c.into_owned());
    let credentials = match (url.username(), url.password()) {
        ("", None) => None,
        (user, Some(pass)) if !user.is_empty() => Some((
            decode(user).with_context(|| format!("SMTP_URL's user is not UTF-8 (got {shown:?})"))?,
            decode(pass).with_context(|| format!("SMTP_URL's password is not UTF-8 (got {shown:?})"))?,
        )),
        _ => bail!("SMTP_URL must give both a user and a password, or neither (got {shown:?})"),
    };
    // A password is sent only over TLS: a server that does not offer STARTTLS (or a
    // network that strips the offer) must get nothing rather than it.
    if credentials.is_some() && matches!(security, SmtpSecurity::Plain | SmtpSecurity::StartTlsWhenOffered) {
        bail!(
            "SMTP_URL has a password and tls={}, which could send it in clear: drop the tls= setting (STARTTLS required) or use smtps://",
            if security == SmtpSecurity::Plain { "none" } else { "opportunistic" }
        );
    }
    Ok(Smtp { host, port: url.port().unwrap_or(default_port), security, credentials, extra_roots_pem })
}

/// The PEM file of `SMTP_CA_FILE`: readable, with at least one certificate.
fn read_pem_certificates(path: &str) -> anyhow::Result<Vec<u8>> {
    let pem = std::fs::read(path).with_context(|| format!("SMTP_CA_FILE {path:?} cannot be read"))?;
    let has_one = String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----");
    if !has_one || lettre::transport::smtp::client::Certificate::from_pem(&pem).is_err() {
        bail!("SMTP_CA_FILE {path:?} must hold PEM certificates (-----BEGIN CERTIFICATE-----)");
    }
    Ok(pem)
}

/// The `Strict-Transport-Security` both listeners send when `PUBLIC_URL` is https:
/// a year, subdomains too.
pub const HSTS: &str = "max-age=31536000; includeSubDomains";

/// The default of `IMPORT_MAX_BYTES`: 4 GiB.
pub const DEFAULT_IMPORT_MAX_BYTES: u64 = 4 * 1024 * 1024 * 1024;

impl Config {
    /// Reads the environment. Errors name the variable and the fix.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads settings through `get`, so tests can pass a map.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let non_empty = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let database_url = non_empty("DATABASE_URL");
        if let Some(url) = &database_url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            bail!("DATABASE_URL must start with postgres:// or postgresql:// (got {:?})", redact_url(url));
        }
        let storage = match non_empty("S3_ENDPOINT") {
            None => StorageSource::Embedded,
            Some(endpoint) => {
                if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                    bail!("S3_ENDPOINT must be an http:// or https:// URL (got {endpoint:?})");
                }
                let need = |k: &str| non_empty(k).with_context(|| format!("{k} must be set when S3_ENDPOINT is set"));
                StorageSource::External(S3Settings {
                    endpoint,
                    region: non_empty("S3_REGION").unwrap_or_else(|| "us-east-1".into()),
                    access_key_id: need("S3_ACCESS_KEY_ID")?,
                    secret_access_key: need("S3_SECRET_ACCESS_KEY")?,
                    force_path_style: parse_bool("S3_FORCE_PATH_STYLE", non_empty("S3_FORCE_PATH_STYLE"), false)?,
                    public_endpoint: non_empty("S3_PUBLIC_ENDPOINT"),
                    expected_bucket_owner: match non_empty("S3_EXPECTED_BUCKET_OWNER") {
                        Some(o) if o.trim().len() <= 64 && o.trim().bytes().all(|b| b.is_ascii_alphanumeric()) => {
                            Some(o.trim().to_string())
                        }
                        Some(o) => {
                            bail!("S3_EXPECTED_BUCKET_OWNER must be an account id, letters and digits (got {o:?})")
                        }
                        None => None,
                    },
                })
            }
        };
        let bind = parse_addr("BIND", non_empty("BIND"), "127.0.0.1:3000")?;
        let board_bind = parse_addr("BOARD_BIND", non_empty("BOARD_BIND"), "127.0.0.1:3001")?;
        let data_dir = PathBuf::from(non_empty("DATA_DIR").unwrap_or_else(|| ".data".into()));
        let public_url = non_empty("PUBLIC_URL").unwrap_or_else(|| format!("http://{bind}"));
        if !(public_url.starts_with("http://") || public_url.starts_with("https://")) {
            bail!("PUBLIC_URL must be an http:// or https:// URL (got {public_url:?})");
        }
        let board_public_url = non_empty("BOARD_PUBLIC_URL");
        if let Some(u) = &board_public_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            bail!("BOARD_PUBLIC_URL must be an http:// or https:// URL (got {u:?})");
        }
        if let Some(u) = &board_public_url
            && public_url.starts_with("https://")
            && u.starts_with("http://")
        {
            // HSTS covers every port of the host, and the `__Host-` session cookie is
            // never sent over http: such a board could never be reached.
            bail!(
                "BOARD_PUBLIC_URL must be https:// when PUBLIC_URL is (got {u:?}): browsers keep an https site's \
                 host on https (HSTS) and send its session cookie only over https"
            );
        }
        let database_pool_size = parse_num("DATABASE_POOL_SIZE", non_empty("DATABASE_POOL_SIZE"), 20, 2..=1000)?;
        let bucket_prefix = parse_bucket_prefix(non_empty("BUCKET_PREFIX"))?;
        let privacy_bucket = non_empty("PRIVACY_BUCKET").unwrap_or_else(|| "data-export-privacy".into());
        if privacy_bucket.starts_with(&bucket_prefix) {
            bail!(
                "PRIVACY_BUCKET ({privacy_bucket:?}) must not start with BUCKET_PREFIX ({bucket_prefix:?}): an org's \
                 bucket could then be the platform's"
            );
        }
        Ok(Self {
            database_url,
            database_pool_size,
            board_public_url: board_public_url.map(|u| u.trim_end_matches('/').to_string()),
            storage,
            bind,
            board_bind,
            data_dir,
            public_url: public_url.trim_end_matches('/').to_string(),
            demo_password: non_empty("DEMO_PASSWORD"),
            worker_concurrency: parse_num("WORKER_CONCURRENCY", non_empty("WORKER_CONCURRENCY"), 2, 1..=64)?,
            heartbeat_secs: parse_num("HEARTBEAT_SECS", non_empty("HEARTBEAT_SECS"), 30, 1..=3600)?,
            missed_heartbeats: parse_num("MISSED_HEARTBEATS", non_empty("MISSED_HEARTBEATS"), 10, 1..=1000)?,
            export_max_attempts: parse_num("EXPORT_MAX_ATTEMPTS", non_empty("EXPORT_MAX_ATTEMPTS"), 3, 1..=25)?,
            export_gzip_level: parse_num(
                "EXPORT_GZIP_LEVEL",
                non_empty("EXPORT_GZIP_LEVEL"),
                DEFAULT_EXPORT_GZIP_LEVEL,
                1..=9,
            )?,
            privacy_bucket,
            import_max_bytes: parse_bytes("IMPORT_MAX_BYTES", non_empty("IMPORT_MAX_BYTES"), DEFAULT_IMPORT_MAX_BYTES)?,
            verify_timeout_secs: parse_num("VERIFY_TIMEOUT_SECS", non_empty("VERIFY_TIMEOUT_SECS"), 1800, 1..=86_400)?,
            trusted_proxies: parse_cidrs("TRUSTED_PROXIES", non_empty("TRUSTED_PROXIES"))?,
            password_hash_wait: Duration::from_millis(parse_num(
                "PASSWORD_HASH_WAIT_MS",
                non_empty("PASSWORD_HASH_WAIT_MS"),
                3000,
                0..=60_000,
            )?),
            http: HttpLimits::from_lookup(non_empty)?,
            webhooks: WebhookSettings::from_lookup(non_empty)?,
            mail: MailSettings::from_lookup(non_empty)?,
            stuck_run_secs: parse_num("STUCK_RUN_SECS", non_empty("STUCK_RUN_SECS"), 900, 60..=86_400)?,
            close_grace_days: parse_num("CLOSE_GRACE_DAYS", non_empty("CLOSE_GRACE_DAYS"), 30, 0..=3650)?,
            bucket_prefix,
            manual_exports_per_day: parse_num(
                "MANUAL_EXPORTS_PER_DAY",
                non_empty("MANUAL_EXPORTS_PER_DAY"),
                24,
                1..=10_000,
            )?,
            metrics_token: non_empty("METRICS_TOKEN").map(|t| t.trim().to_string()),
            bucket_check_concurrency: parse_num(
                "BUCKET_CHECK_CONCURRENCY",
                non_empty("BUCKET_CHECK_CONCURRENCY"),
                8,
                1..=256,
            )?,
        })
    }

    /// Whether session cookies carry `Secure`.
    /// The scheme, host and port of `PUBLIC_URL`, without a path: where the embedded
    /// storage's download links point (the web listener answers them at `/{bucket}/{key}`).
    pub fn public_origin(&self) -> String {
        match url::Url::parse(&self.public_url) {
            Ok(u) => u.origin().ascii_serialization(),
            Err(_) => self.public_url.clone(),
        }
    }

    pub fn cookies_secure(&self) -> bool {
        self.public_url.starts_with("https://")
    }

    /// Whether answers carry `Strict-Transport-Security` ([`HSTS`]: the site is https).
    pub fn sends_hsts(&self) -> bool {
        self.public_url.starts_with("https://")
    }
}

fn parse_bool(name: &str, v: Option<String>, default: bool) -> anyhow::Result<bool> {
    match v.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => Ok(default),
        Some("1" | "true" | "yes" | "on") => Ok(true),
        Some("0" | "false" | "no" | "off") => Ok(false),
        Some(other) => bail!("{name} must be true or false (got {other:?})"),
    }
}

fn parse_addr(name: &str, v: Option<String>, default: &str) -> anyhow::Result<SocketAddr> {
    let v = v.unwrap_or_else(|| default.into());
    v.parse().with_context(|| format!("{name} must be an address like 127.0.0.1:3000 (got {v:?})"))
}

fn parse_num<T>(name: &str, v: Option<String>, default: T, range: std::ops::RangeInclusive<T>) -> anyhow::Result<T>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let Some(v) = v else { return Ok(default) };
    match v.trim().parse::<T>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => bail!("{name} must be a whole number from {} to {} (got {v:?})", range.start(), range.end()),
    }
}

/// A size in bytes: a whole number above 0.
fn parse_bytes(name: &str, v: Option<String>, default: u64) -> anyhow::Result<u64> {
    let Some(v) = v else { return Ok(default) };
    match v.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => bail!("{name} must be a whole number of bytes above 0, such as 4294967296 for 4 GiB (got {v:?})"),
    }
}

/// How webhooks are delivered.
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    /// `WEBHOOK_ALLOW_PRIVATE`: deliver to loopback, private, link-local and other
    /// non-public addresses too (default false; for development and tests only).
    pub allow_private: bool,
    /// `WEBHOOK_TIMEOUT_SECS`: the longest one attempt may take, connecting,
    /// sending and reading the answer's head (default 10, 1..=60).
    pub timeout: Duration,
    /// `WEBHOOK_RETRY_SCHEDULE_SECS`: the pause before each retry, comma-separated
    /// (default `5,300,1800,7200,18000,36000,36000`, the Standard Webhooks schedule:
    /// 8 attempts over about 27 hours). After the last one the endpoint is marked
    /// failing and the org's admins are told by email.
    pub retry_schedule: Vec<Duration>,
}

impl WebhookSettings {
    /// The default retry schedule, in seconds.
    pub const DEFAULT_SCHEDULE: &str = "5,300,1800,7200,18000,36000,36000";

    fn from_lookup(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let raw = get("WEBHOOK_RETRY_SCHEDULE_SECS").unwrap_or_else(|| Self::DEFAULT_SCHEDULE.into());
        let retry_schedule = raw
            .split(',')
            .map(|p| p.trim().parse::<u64>().ok().filter(|s| *s <= 7 * 86_400).map(Duration::from_secs))
            .collect::<Option<Vec<_>>>()
            .filter(|v| v.len() <= 20)
            .with_context(|| {
                format!(
                    "WEBHOOK_RETRY_SCHEDULE_SECS must be up to 20 comma-separated pauses in seconds, each at most \
                     604800, such as {} (got {raw:?})",
                    Self::DEFAULT_SCHEDULE
                )
            })?;
        Ok(Self {
            allow_private: parse_bool("WEBHOOK_ALLOW_PRIVATE", get("WEBHOOK_ALLOW_PRIVATE"), false)?,
            timeout: Duration::from_secs(parse_num("WEBHOOK_TIMEOUT_SECS", get("WEBHOOK_TIMEOUT_SECS"), 10, 1..=60)?),
            retry_schedule,
        })
    }
}

/// A database URL with any password replaced, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.find(':') {
                Some(colon) => format!("{}{}:***{}", &url[..scheme + 3], &creds[..colon], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> anyhow::Result<Config> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_are_zero_config() {
        let c = cfg(&[]).unwrap();
        assert!(c.database_url.is_none());
        assert_eq!(c.database_pool_size, 20);
        assert!(matches!(c.storage, StorageSource::Embedded));
        assert_eq!(c.bind.to_string(), "127.0.0.1:3000");
        assert_eq!(c.board_bind.to_string(), "127.0.0.1:3001");
        assert_eq!(c.data_dir, PathBuf::from(".data"));
        assert!(!c.cookies_secure());
        assert_eq!(c.import_max_bytes, 4_294_967_296);
        assert_eq!(c.export_gzip_level, 3);
        assert_eq!(cfg(&[("EXPORT_GZIP_LEVEL", "5")]).unwrap().export_gzip_level, 5);
        assert_eq!(c.http.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.http.request_timeout, Duration::from_secs(60));
        assert_eq!(c.http.body_read_timeout, Duration::from_secs(20));
        assert_eq!((c.http.max_connections, c.http.board_max_connections), (512, 64));
        assert!(!c.sends_hsts());
    }

    #[test]
    fn slow_client_limits_are_read_in_seconds_and_counts() {
        let c = cfg(&[
            ("HEADER_READ_TIMEOUT_SECS", "2"),
            ("REQUEST_TIMEOUT_SECS", "90"),
            ("BODY_READ_TIMEOUT_SECS", " 5 "),
            ("MAX_CONNECTIONS", "100"),
            ("BOARD_MAX_CONNECTIONS", "8"),
        ])
        .unwrap();
        assert_eq!(c.http.header_read_timeout, Duration::from_secs(2));
        assert_eq!(c.http.request_timeout, Duration::from_secs(90));
        assert_eq!(c.http.body_read_timeout, Duration::from_secs(5));
        assert_eq!((c.http.max_connections, c.http.board_max_connections), (100, 8));
    }

    #[test]
    fn webhook_settings_are_read_and_checked() {
        let c = cfg(&[]).unwrap();
        assert!(!c.webhooks.allow_private);
        assert_eq!(c.webhooks.timeout, Duration::from_secs(10));
        let total: u64 = c.webhooks.retry_schedule.iter().map(Duration::as_secs).sum();
        assert_eq!((c.webhooks.retry_schedule.len(), total), (7, 99_305), "8 attempts over about 27.6 hours");
        let c = cfg(&[("WEBHOOK_ALLOW_PRIVATE", "1"), ("WEBHOOK_RETRY_SCHEDULE_SECS", "0, 1,2")]).unwrap();
        assert!(c.webhooks.allow_private);
        assert_eq!(c.webhooks.retry_schedule, [0, 1, 2].map(Duration::from_secs));
        assert!(cfg(&[("WEBHOOK_RETRY_SCHEDULE_SECS", "")]).unwrap().webhooks.retry_schedule.len() == 7);
        for bad in ["5,x", "-1", "5,,5", "999999999"] {
            let e = cfg(&[("WEBHOOK_RETRY_SCHEDULE_SECS", bad)]).unwrap_err().to_string();
            assert!(e.contains("WEBHOOK_RETRY_SCHEDULE_SECS"), "{e}");
        }
        assert!(cfg(&[("WEBHOOK_TIMEOUT_SECS", "0")]).unwrap_err().to_string().contains("WEBHOOK_TIMEOUT_SECS"));
        assert!(cfg(&[("WEBHOOK_ALLOW_PRIVATE", "maybe")]).unwrap_err().to_string().contains("WEBHOOK_ALLOW_PRIVATE"));
    }

    #[test]
    fn the_upload_limit_is_read_in_bytes() {
        assert_eq!(cfg(&[("IMPORT_MAX_BYTES", " 1048576 ")]).unwrap().import_max_bytes, 1_048_576);
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (pairs, needle) in [
            (vec![("DATABASE_URL", "mysql://x")], "DATABASE_URL"),
            (vec![("BIND", "nope")], "BIND"),
            (vec![("S3_ENDPOINT", "ftp://x")], "S3_ENDPOINT"),
            (vec![("S3_ENDPOINT", "http://x")], "S3_ACCESS_KEY_ID"),
            (vec![("WORKER_CONCURRENCY", "0")], "WORKER_CONCURRENCY"),
            (vec![("HEARTBEAT_SECS", "-4")], "HEARTBEAT_SECS"),
            (vec![("BOARD_BIND", "localhost")], "BOARD_BIND"),
            (vec![("BOARD_PUBLIC_URL", "board.example")], "BOARD_PUBLIC_URL"),
            (vec![("IMPORT_MAX_BYTES", "0")], "IMPORT_MAX_BYTES"),
            (vec![("IMPORT_MAX_BYTES", "4GB")], "IMPORT_MAX_BYTES"),
            (vec![("IMPORT_MAX_BYTES", "-1")], "IMPORT_MAX_BYTES"),
            (vec![("HEADER_READ_TIMEOUT_SECS", "31")], "HEADER_READ_TIMEOUT_SECS"),
            (vec![("HEADER_READ_TIMEOUT_SECS", "0")], "HEADER_READ_TIMEOUT_SECS"),
            (vec![("REQUEST_TIMEOUT_SECS", "1m")], "REQUEST_TIMEOUT_SECS"),
            (vec![("BODY_READ_TIMEOUT_SECS", "-5")], "BODY_READ_TIMEOUT_SECS"),
            (vec![("MAX_CONNECTIONS", "0")], "MAX_CONNECTIONS"),
            (vec![("DATABASE_POOL_SIZE", "1")], "DATABASE_POOL_SIZE"),
            (vec![("DATABASE_POOL_SIZE", "many")], "DATABASE_POOL_SIZE"),
            (vec![("BOARD_MAX_CONNECTIONS", "many")], "BOARD_MAX_CONNECTIONS"),
            (vec![("MAX_CONNECTIONS_PER_CLIENT", "0")], "MAX_CONNECTIONS_PER_CLIENT"),
            (vec![("WRITE_STALL_TIMEOUT_SECS", "soon")], "WRITE_STALL_TIMEOUT_SECS"),
            (vec![("VERIFY_TIMEOUT_SECS", "0")], "VERIFY_TIMEOUT_SECS"),
            (vec![("EXPORT_GZIP_LEVEL", "0")], "EXPORT_GZIP_LEVEL"),
            (vec![("EXPORT_GZIP_LEVEL", "10")], "EXPORT_GZIP_LEVEL"),
            (vec![("EXPORT_GZIP_LEVEL", "fast")], "EXPORT_GZIP_LEVEL"),
            (
                vec![("PUBLIC_URL", "https://x.example"), ("BOARD_PUBLIC_URL", "http://x.example:3001")],
                "BOARD_PUBLIC_URL must be https",
            ),
        ] {
            let err = cfg(&pairs).unwrap_err().to_string();
            assert!(err.contains(needle), "{err} should name {needle}");
        }
    }

    #[test]
    fn trusted_proxies_are_cidr_ranges() {
        assert!(cfg(&[]).unwrap().trusted_proxies.is_empty());
        let c = cfg(&[("TRUSTED_PROXIES", " 10.0.0.0/8, 192.168.1.7 ,fd00::/8,::ffff:172.16.0.0/108,")]).unwrap();
        let shown: Vec<String> = c.trusted_proxies.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.0.0/8", "192.168.1.7/32", "fd00::/8", "172.16.0.0/12"]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let [ten, one, fd, mapped] = [0, 1, 2, 3].map(|i| c.trusted_proxies[i]);
        assert!(ten.contains(ip("10.255.1.2")) && !ten.contains(ip("11.0.0.1")));
        assert!(ten.contains(ip("::ffff:10.1.2.3")), "IPv4-mapped IPv6 counts as IPv4");
        assert!(one.contains(ip("192.168.1.7")) && !one.contains(ip("192.168.1.8")));
        assert!(fd.contains(ip("fd12::1")) && !fd.contains(ip("fe80::1")) && !fd.contains(ip("10.0.0.1")));
        assert!(mapped.contains(ip("172.31.255.255")) && !mapped.contains(ip("172.32.0.0")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(!Cidr::parse("0.0.0.0/0").unwrap().contains(ip("2001:db8::1")));
        for bad in ["10.0.0.0/33", "fd00::/129", "10.0.0/8", "proxy.local", "10.0.0.0/-1", "10.0.0.0/", "/8"] {
            let err = cfg(&[("TRUSTED_PROXIES", bad)]).unwrap_err().to_string();
            assert!(err.contains("TRUSTED_PROXIES") && err.contains(bad), "{err}");
        }
    }

    #[test]
    fn the_password_hash_wait_is_in_milliseconds() {
        assert_eq!(cfg(&[]).unwrap().password_hash_wait, Duration::from_secs(3));
        assert_eq!(cfg(&[("PASSWORD_HASH_WAIT_MS", "0")]).unwrap().password_hash_wait, Duration::ZERO);
        let err = cfg(&[("PASSWORD_HASH_WAIT_MS", "2s")]).unwrap_err().to_string();
        assert!(err.contains("PASSWORD_HASH_WAIT_MS"), "{err}");
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact_url("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
    }

    #[test]
    fn https_public_url_makes_cookies_secure() {
        assert!(cfg(&[("PUBLIC_URL", "https://x.example/")]).unwrap().cookies_secure());
        assert!(cfg(&[("PUBLIC_URL", "https://x.example/")]).unwrap().sends_hsts());
    }
}
