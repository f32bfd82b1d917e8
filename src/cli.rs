//! The command line: `data-export [serve|worker|migrate|seed|export|prune|schedule-now|verify-storage|verify|convert|import|activate|token|org]`.

use std::{io::Write, path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use tokio::sync::watch;

use crate::{
    config::Config,
    exports::{job::ExportJob, org_snapshot, runs},
    jobs::Job,
    orgs::OrgSlug,
    platform, seed, settings,
    snapshot::sink::Sink,
    startup::{self, Services},
    workers,
};

#[derive(Parser, Debug)]
#[command(name = "data-export", version, about = "Org snapshot exports for a membership platform")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Web UI, JSON API, workers and scheduler in one process (the default).
    Serve,
    /// Workers only (run as many as you like).
    Worker,
    /// Run migrations and exit.
    Migrate,
    /// Demo data: orgs acme and globex with every module on and every section filled;
    /// with --orgs N, instead adds small orgs tenant-1 ... tenant-N for scale tests.
    Seed {
        /// Members per org; every section scales with it.
        #[arg(long, default_value_t = seed::DEFAULT_MEMBERS)]
        members: u32,
        /// Add orgs tenant-1 ... tenant-N (10 members each, every module on, buckets
        /// provisioned); those that exist are left as they are.
        #[arg(long)]
        orgs: Option<u32>,
    },
    /// One snapshot, synchronously, through the same pipeline; prints a JSON summary.
    Export {
        /// The org's slug.
        #[arg(long)]
        org: String,
        /// Write the .json.gz here instead of the org's bucket (records no run).
        #[arg(long)]
        out: Option<PathBuf>,
        /// With --out: print where each stage of the pipeline spent its time (a
        /// table and a chart) to standard error.
        #[arg(long, requires = "out")]
        timeline: bool,
    },
    /// Apply retention to completed scheduled exports (or, with --dry-run, list what
    /// each rule keeps and what would be removed).
    Prune {
        /// Change nothing; print each export with the rule that keeps it or "will be removed".
        #[arg(long)]
        dry_run: bool,
        /// Only this org (its slug).
        #[arg(long)]
        org: Option<String>,
    },
    /// Fire a schedule slot now, as the preset would at its time: one scheduled export
    /// per org with Data Export on, carried out by the running workers. Prints a JSON line.
    ScheduleNow,
    /// Write, read back and delete a probe object; mark the backup configuration verified.
    VerifyStorage,
    /// Check a snapshot file: one whole gzip member, the JSON Schema, every section's
    /// length against `counts`, and the SHA-256 when given. Needs no database.
    Verify {
        /// The .json.gz file (as downloaded or written by `export --out`).
        file: PathBuf,
        /// The SHA-256 recorded for it (the run's `sha256` in the API or history).
        #[arg(long)]
        sha256: Option<String>,
    },
    /// Convert a snapshot file into a zip of tables, one per section, for
    /// spreadsheets or analysis (docs/tables-format.md). Needs no database; prints a
    /// JSON line.
    Convert {
        /// The .json.gz file (as downloaded or written by `export --out`).
        file: PathBuf,
        /// `csv` (spreadsheets) or `parquet` (DuckDB, pandas, Polars).
        #[arg(long = "to")]
        to: String,
        /// The zip to write (replaced only once the conversion is whole).
        #[arg(long)]
        out: PathBuf,
    },
    /// Restore a snapshot file into a new org, all or nothing (docs/restore.md);
    /// prints a JSON report.
    Import {
        /// The .json.gz file (as downloaded or written by `export --out`).
        file: PathBuf,
        /// The new org's slug (it must not be taken).
        #[arg(long)]
        org: String,
        /// The new org's name (default: the name in the file).
        #[arg(long)]
        name: Option<String>,
        /// Read and check the whole file and report what would be done; keep nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Activate memberships a restore left suspended (docs/restore.md): the people
    /// given by --email, or with --all every suspended membership of the org. Prints
    /// a JSON line.
    Activate {
        /// The org's slug.
        #[arg(long)]
        org: String,
        /// The person's email (repeat for several).
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        email: Vec<String>,
        /// Every suspended membership of the org.
        #[arg(long)]
        all: bool,
    },
    /// Personal API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Close an organization for good, cancel its closing, or print its receipt
    /// (docs/runbooks/offboarding.md).
    Org {
        #[command(subcommand)]
        command: OrgCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum OrgCommand {
    /// Close the org: a final export is made and verified, then it waits the grace
    /// period (members refused), then housekeeping erases it. Prints a JSON line.
    Close {
        /// The org's slug.
        slug: String,
        /// Days to wait after the final export is verified, 0 to 3650 (default
        /// CLOSE_GRACE_DAYS); 0 erases at the next housekeeping run.
        #[arg(long, value_name = "N", allow_hyphen_values = true)]
        grace_days: Option<String>,
    },
    /// Cancel the org's closing during its grace period; it is as it was. Prints a JSON line.
    Reopen {
        /// The org's slug.
        slug: String,
    },
    /// Print the receipt of an erased org (JSON).
    Receipt {
        /// The org's slug.
        slug: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Print a new token for the user with this email (shown once).
    Create {
        #[arg(long)]
        email: String,
        #[arg(long, default_value = "cli")]
        name: String,
        /// Limit the token to this org (the user must be an active member of it).
        #[arg(long)]
        org: Option<String>,
        /// Days until the token expires, 1 to 365 (default 90).
        #[arg(long, value_name = "DAYS", allow_hyphen_values = true)]
        expires_in: Option<String>,
    },
    /// List the user's tokens, one JSON line each (never the token nor its hash).
    List {
        #[arg(long)]
        email: String,
    },
    /// Revoke a token by its id (from `token list`); it is refused from its next request.
    Revoke {
        /// The token's id.
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
}

/// Runs a parsed command line.
pub async fn run(cli: Cli, config: Config) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => startup::serve(config, true).await,
        Command::Worker => startup::serve(config, false).await,
        Command::Migrate => {
            let services = Services::start(config).await?;
            println!("migrations applied");
            services.shutdown().await;
            Ok(())
        }
        Command::Seed { orgs: Some(n), .. } => {
            if !(1..=seed::MAX_TENANTS).contains(&n) {
                bail!("--orgs must be from 1 to {} (got {n})", seed::MAX_TENANTS);
            }
            let services = Services::start(config).await?;
            let result = seed::tenants(&services.state.pool, &services.state.storage, n).await;
            services.shutdown().await;
            let report = result?;
            println!(
                "{}",
                serde_json::json!({ "orgs": n, "created": report.created, "existing": report.existing,
                    "seconds": to_ms(report.seconds) })
            );
            Ok(())
        }
        Command::Seed { members, orgs: None } => {
            if !(1..=seed::MAX_MEMBERS).contains(&members) {
                bail!("--members must be from 1 to {} (got {members})", seed::MAX_MEMBERS);
            }
            let services = Services::start(config).await?;
            let state = services.state.clone();
            let (password, generated) = match &state.config.demo_password {
                Some(p) => (p.clone(), false),
                None => (startup::random_password(), true),
            };
            let result = seed::run(&state.pool, &state.storage, members, &password).await;
            services.shutdown().await;
            let report = result?;
            println!(
                "{}",
                serde_json::json!({ "members_per_org": members, "rows": report.rows, "seconds": to_ms(report.seconds),
                    "rows_per_second": (report.rows as f64 / report.seconds.max(1e-9)).round() })
            );
            if generated {
                eprintln!("demo accounts' password (DEMO_PASSWORD was unset): {password}");
            }
            Ok(())
        }
        Command::Export { org, out, timeline } => export(config, &org, out, timeline).await,
        Command::Prune { dry_run, org } => {
            let slug = match &org {
                Some(o) => Some(OrgSlug::parse(o).with_context(|| format!("{o:?} is not a valid org slug"))?),
                None => None,
            };
            let services = Services::start(config).await?;
            let result = prune(&services, slug.as_ref(), dry_run).await;
            services.shutdown().await;
            result
        }
        Command::ScheduleNow => {
            let services = Services::start(config).await?;
            let result = schedule_now(&services.state).await;
            services.shutdown().await;
            result
        }
        Command::VerifyStorage => {
            let services = Services::start(config).await?;
            let outcome = verify_storage(&services.state).await;
            services.shutdown().await;
            outcome
        }
        Command::Verify { file, sha256 } => verify_file(&file, sha256.as_deref()).await,
        Command::Convert { file, to, out } => convert_file(&file, &to, &out).await,
        Command::Import { file, org, name, dry_run } => import_file(config, &file, org, name, dry_run).await,
        Command::Token { command } => token(config, command).await,
        Command::Activate { org, email, all } => activate(config, &org, email, all).await,
        Command::Org { command } => org(config, command).await,
    }
}

/// `verify-storage`: the platform's bucket and endpoint (which decides "verified"),
/// then every org's bucket, here and now; prints each failing org bucket. Exits
/// non-zero when the platform's own check fails; failing org buckets are printed
/// and refuse only their orgs' exports.
async fn verify_storage(state: &crate::state::AppState) -> anyhow::Result<()> {
    let endpoint = state.storage.identity().to_string();
    if let Err(e) = settings::backup::verify(state, None).await? {
        bail!("storage verification failed: {e}");
    }
    println!("storage verified: {endpoint}");
    let started = chrono::Utc::now();
    let (checked, failed) = platform::buckets::check_all(state, started).await?;
    println!("org buckets checked: {checked}, failing: {failed}");
    for (slug, error) in platform::buckets::failing(&state.pool, 1000).await? {
        println!("  {slug}: {}", error.unwrap_or_default());
    }
    Ok(())
}

/// Fires a slot at this second (`schedule-now`), audit-logged as `schedule.fired_now`.
async fn schedule_now(state: &crate::state::AppState) -> anyhow::Result<()> {
    let (slot, outcome) = platform::scheduler::fire_now(state).await?;
    let details = serde_json::json!({ "slot": slot, "started": outcome.started });
    crate::audit::write(&state.pool, None, None, "schedule.fired_now", &format!("schedule:{slot}"), details).await?;
    println!(
        "{}",
        serde_json::json!({ "slot": slot, "started": outcome.started, "skipped": outcome.skipped, "reason": outcome.reason })
    );
    if let Some(reason) = outcome.reason {
        bail!("the slot was skipped: {reason}");
    }
    Ok(())
}

async fn prune(services: &Services, slug: Option<&OrgSlug>, dry_run: bool) -> anyhow::Result<()> {
    let state = &services.state;
    let org_id = match slug {
        Some(slug) => Some(
            crate::orgs::find_by_slug(&state.pool, slug.as_str())
                .await?
                .with_context(|| format!("no organization {:?}", slug.as_str()))?
                .id,
        ),
        None => None,
    };
    let (settings, plans) = platform::pruner::plan(&state.pool, org_id).await?;
    let p = settings.retention;
    println!(
        "retention: daily {} / weekly {} / monthly {}, timezone {}{}",
        p.daily,
        p.weekly,
        p.monthly,
        settings.timezone.name(),
        if dry_run { " (dry run: nothing is changed)" } else { "" }
    );
    for plan in &plans {
        for d in &plan.decisions {
            let at = d.at.with_timezone(&settings.timezone).format("%Y-%m-%d %H:%M %Z");
            println!("{:<12} {}  {at}  {}", plan.slug, d.id, d.describe());
        }
    }
    let to_remove: usize = plans.iter().map(|p| p.removals()).sum();
    if dry_run {
        println!("{to_remove} export(s) would be removed");
        return Ok(());
    }
    let removed = platform::pruner::apply(state, org_id).await?;
    println!("{} export(s) removed", removed.len());
    Ok(())
}

async fn export(config: Config, org: &str, out: Option<PathBuf>, timeline: bool) -> anyhow::Result<()> {
    let slug = OrgSlug::parse(org).with_context(|| format!("{org:?} is not a valid org slug"))?;
    if let Some(path) = &out {
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
        if !parent.is_dir() {
            bail!("cannot write {}: the directory {} does not exist", path.display(), parent.display());
        }
    }
    let services = Services::start(config).await?;
    let result = export_with(&services, &slug, out, timeline).await;
    services.shutdown().await;
    let summary = result?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{summary}")?;
    Ok(())
}

async fn export_with(
    services: &Services,
    slug: &OrgSlug,
    out: Option<PathBuf>,
    timeline: bool,
) -> anyhow::Result<serde_json::Value> {
    let state = &services.state;
    let org = crate::orgs::find_by_slug(&state.pool, slug.as_str()).await?;
    let org = org.with_context(|| format!("no organization with slug {:?}", slug.as_str()))?;
    match out {
        Some(path) => {
            // Straight through the pipeline to a file: no run, no bucket.
            let id = ulid::Ulid::generate().to_string();
            let opening = std::time::Instant::now();
            let snapshot = org_snapshot::open(&state.pool, org.id).await?.with_level(state.config.export_gzip_level);
            let (open_seconds, connections) = (opening.elapsed().as_secs_f64(), snapshot.connections());
            let (progress, _rx) = watch::channel(0);
            let upload = Sink::File(path.clone()).start().await?;
            let outcome = snapshot.write(&id, upload, &progress).await?;
            if timeline {
                eprint!("{}", outcome.timeline);
            }
            Ok(serde_json::json!({
                "id": id, "org": org.slug, "file": path, "rows": outcome.rows, "bytes": outcome.size_bytes,
                "sha256": outcome.sha256, "seconds": to_ms(outcome.seconds),
                "stages": outcome.timeline.to_json(), "open_seconds": to_ms(open_seconds), "connections": connections,
                "publish_seconds": to_ms(outcome.timeline.publish.as_secs_f64()),
            }))
        }
        None => {
            // A recorded run through the job queue, run by this process's workers.
            if !settings::backup::is_ready(state).await? {
                bail!(
                    "the backup configuration is not active and verified: run `data-export verify-storage` first, or use --out FILE"
                );
            }
            let run = crate::exports::start::create_manual_unattributed(
                &state.pool,
                org.id,
                state.config.export_max_attempts,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.public_message()))?;
            let stop = tokio_util::sync::CancellationToken::new();
            // Only the export queue's workers: this process is here for this run.
            let workers = tokio::spawn(workers::run(state.clone(), stop.clone(), Some(&[ExportJob::QUEUE])));
            let started = std::time::Instant::now();
            // A primary-key read 100 times a second (about 0.1 ms each): cheap, and
            // the command sees the run's end within 10 ms.
            let ended = async {
                loop {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    let r = runs::get_any(&state.pool, &run.id).await?.context("the run disappeared")?;
                    if !r.is_active() {
                        return anyhow::Ok(r);
                    }
                }
            }
            .await;
            // The workers stop however the wait ended.
            stop.cancel();
            let _ = workers.await;
            let done = ended?;
            if done.status != runs::RunStatus::Completed {
                bail!("export {} {}: {}", done.id, done.status, done.error.unwrap_or_default());
            }
            Ok(serde_json::json!({
                "id": done.id, "org": org.slug, "bucket": org.bucket, "key": done.object_key, "rows": done.rows_written,
                "bytes": done.size_bytes, "sha256": done.sha256, "seconds": to_ms(started.elapsed().as_secs_f64()),
            }))
        }
    }
}

/// Seconds rounded to the millisecond, as the commands print them.
fn to_ms(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

/// `data-export import FILE --org SLUG [--name NAME] [--dry-run]`: prints the report
/// as one JSON line, or fails with the one-line reason (and nothing is left behind).
async fn import_file(
    config: Config,
    file: &std::path::Path,
    org: String,
    name: Option<String>,
    dry_run: bool,
) -> anyhow::Result<()> {
    if OrgSlug::parse(&org).is_none() {
        bail!("{org:?} is not a valid org slug (3 to 40 of a-z, 0-9 and '-', not starting or ending with '-')");
    }
    if file.is_dir() {
        bail!("{} is a directory, not a snapshot file", file.display());
    }
    let f = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let services = Services::start(config).await?;
    let request = crate::imports::Request {
        slug: org,
        name,
        dry_run,
        actor: None,
        via: "cli",
        source_export_id: None,
        import_id: None,
        attempt: 0,
        expect: None,
    };
    let result = crate::imports::import(&services.state, f, request).await;
    services.shutdown().await;
    match result {
        Ok(report) => {
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Err(e) => bail!("import of {} failed, nothing was kept: {e}", file.display()),
    }
}

/// `data-export org close|reopen|receipt SLUG`: bad arguments and unknown orgs are
/// refused before anything is written.
async fn org(config: Config, command: OrgCommand) -> anyhow::Result<()> {
    use crate::closing::{self, Requester, Via};
    let raw = match &command {
        OrgCommand::Close { slug, .. } | OrgCommand::Reopen { slug } | OrgCommand::Receipt { slug } => slug.clone(),
    };
    let slug = OrgSlug::parse(&raw).with_context(|| format!("{raw:?} is not a valid org slug"))?;
    let grace = match &command {
        OrgCommand::Close { grace_days: Some(g), .. } => {
            Some(closing::parse_grace_days(g).map_err(|e| anyhow::anyhow!("--grace-days: {e}"))?)
        }
        _ => None,
    };
    let services = Services::start(config).await?;
    let state = services.state.clone();
    let by = Requester { user_id: None, email: None, via: Via::Cli };
    let result = async {
        if closing::find(&state.pool, slug.as_str()).await?.is_none() {
            bail!("no organization has the slug {:?}", slug.as_str());
        }
        let answer = match command {
            OrgCommand::Close { .. } => {
                closing::close(&state, slug.as_str(), slug.as_str(), grace, &by).await?.api_json()
            }
            OrgCommand::Reopen { .. } => closing::reopen(&state, slug.as_str(), &by).await?.api_json(),
            OrgCommand::Receipt { .. } => closing::receipt(&state.pool, slug.as_str()).await?.with_context(|| {
                format!("the organization {:?} is not erased: it has no receipt yet", slug.as_str())
            })?,
        };
        anyhow::Ok(answer)
    }
    .await;
    services.shutdown().await;
    println!("{}", serde_json::to_string(&result?)?);
    Ok(())
}

/// `data-export activate --org SLUG (--email E ... | --all)`: prints
/// `{"org","activated":[emails]}`; a refusal activates nobody.
async fn activate(config: Config, org: &str, emails: Vec<String>, all: bool) -> anyhow::Result<()> {
    use crate::imports::members::{self, Whom};
    let slug = OrgSlug::parse(org).with_context(|| format!("--org: {org:?} is not a valid org slug"))?;
    let whom = if all { Whom::AllSuspended } else { Whom::Emails(emails) };
    let services = Services::start(config).await?;
    let result = members::activate(&services.state.pool, &slug, &whom, None).await;
    services.shutdown().await;
    let activated = result?;
    println!("{}", serde_json::json!({ "org": slug.as_str(), "activated": activated }));
    Ok(())
}

/// `data-export token create|list|revoke`: bad arguments are refused before the
/// database is opened, and a refusal writes nothing.
async fn token(config: Config, command: TokenCommand) -> anyhow::Result<()> {
    use crate::auth::tokens::{self, ExpiryDays, Revocation, Spec};
    match command {
        TokenCommand::Create { email, name, org, expires_in } => {
            let name = tokens::parse_name(&name).map_err(|e| anyhow::anyhow!("--name: {e}"))?;
            let expires_in = match &expires_in {
                Some(raw) => ExpiryDays::parse(raw).map_err(|e| anyhow::anyhow!("--expires-in: {e}"))?,
                None => ExpiryDays::default(),
            };
            let org = match &org {
                Some(o) => Some(OrgSlug::parse(o).with_context(|| format!("--org: {o:?} is not a valid org slug"))?),
                None => None,
            };
            let spec = Spec { name, org, expires_in };
            let services = Services::start(config).await?;
            let created = tokens::create_for_email(&services.state.pool, &email, &spec, "cli").await;
            services.shutdown().await;
            let t = created?.map_err(|refusal| anyhow::anyhow!("{refusal}; no token was created"))?;
            println!("{}", t.token);
            let scope =
                spec.org.as_ref().map_or("every org of the user".to_string(), |o| format!("org {}", o.as_str()));
            eprintln!(
                "token {} created for {email} ({scope}), expires {}; it is shown only this once",
                t.id,
                t.expires_at.format("%Y-%m-%d %H:%M UTC")
            );
            Ok(())
        }
        TokenCommand::List { email } => {
            let services = Services::start(config).await?;
            let listed = tokens::list_for_email(&services.state.pool, &email).await;
            services.shutdown().await;
            let list = listed?.with_context(|| format!("no user with email {email:?}"))?;
            let now = chrono::Utc::now();
            for t in &list {
                let mut line = serde_json::to_value(t)?;
                line["status"] = t.status(now).as_str().into();
                println!("{line}");
            }
            if list.is_empty() {
                eprintln!("{email} has no tokens");
            }
            Ok(())
        }
        TokenCommand::Revoke { id } => {
            let n = id.trim().parse::<i64>().ok().filter(|n| *n > 0);
            let n =
                n.with_context(|| format!("{id:?} is not a token id (a positive whole number, see `token list`)"))?;
            let services = Services::start(config).await?;
            let done = tokens::revoke(&services.state.pool, n, None, None, "cli").await;
            services.shutdown().await;
            match done? {
                Revocation::Revoked => println!("token {n} revoked"),
                Revocation::Already(at) => {
                    println!("token {n} was already revoked at {}; nothing changed", at.format("%Y-%m-%d %H:%M UTC"))
                }
                Revocation::NotFound => bail!("no token with id {n}"),
            }
            Ok(())
        }
    }
}

/// `data-export verify FILE [--sha256 HEX]`: prints the report as one JSON line, or
/// fails with what is wrong.
async fn verify_file(file: &std::path::Path, sha256: Option<&str>) -> anyhow::Result<()> {
    if let Some(s) = sha256
        && (s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        bail!("--sha256 must be 64 hexadecimal characters (got {s:?})");
    }
    let f = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let expected = sha256.map(str::to_string);
    let report = tokio::task::spawn_blocking(move || crate::snapshot::verify::verify(f, expected.as_deref())).await?;
    match report {
        Ok(r) => {
            println!("{}", serde_json::json!({ "ok": true, "file": file.display().to_string(), "report": r }));
            Ok(())
        }
        Err(e) => bail!("{} is not a valid snapshot: {e}", file.display()),
    }
}

/// `data-export convert FILE --to csv|parquet --out ZIP`: prints a JSON line, or
/// fails with what is wrong and leaves no file at ZIP.
async fn convert_file(file: &std::path::Path, to: &str, out: &std::path::Path) -> anyhow::Result<()> {
    let Some(format) = crate::tables::Format::parse(to) else {
        bail!("--to {to:?}: {}", crate::tables::FORMAT_HELP);
    };
    let started = std::time::Instant::now();
    let (input, output) = (file.to_path_buf(), out.to_path_buf());
    let summary = tokio::task::spawn_blocking(move || crate::tables::convert_file(&input, format, &output))
        .await?
        .with_context(|| format!("cannot convert {}", file.display()))?;
    let size = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    println!(
        "{}",
        serde_json::json!({ "ok": true, "file": file.display().to_string(), "out": out.display().to_string(),
            "size_bytes": size, "seconds": to_ms(started.elapsed().as_secs_f64()), "summary": summary })
    );
    Ok(())
}
