//! Demo data: orgs `acme` and `globex` with every module on and every section
//! filled, scaled by the member count, generated inside PostgreSQL (no row-by-row
//! round trips), plus the demo accounts.

use std::time::Instant;

use anyhow::Context;
use sqlx::PgPool;

use crate::{
    auth::password,
    orgs::{self, OrgSlug, modules::Module},
    storage::Storage,
};

/// The demo orgs: (slug, name).
pub const DEMO_ORGS: [(&str, &str); 2] = [("acme", "Acme Association"), ("globex", "Globex Society")];
/// Default members per org.
pub const DEFAULT_MEMBERS: u32 = 1_000;
/// Largest accepted member count.
pub const MAX_MEMBERS: u32 = 5_000_000;

/// A demo account.
pub struct DemoAccount {
    pub email: &'static str,
    pub name: &'static str,
    pub platform_admin: bool,
    /// (org slug, role).
    pub memberships: &'static [(&'static str, &'static str)],
}

/// The demo accounts, all with the demo password.
pub const DEMO_ACCOUNTS: [DemoAccount; 4] = [
    DemoAccount { email: "platform@example.test", name: "Pat Platform", platform_admin: true, memberships: &[] },
    DemoAccount {
        email: "admin@acme.test",
        name: "Ada Acme",
        platform_admin: false,
        memberships: &[("acme", "admin")],
    },
    DemoAccount {
        email: "admin@globex.test",
        name: "Gil Globex",
        platform_admin: false,
        memberships: &[("globex", "admin")],
    },
    DemoAccount {
        email: "member@acme.test",
        name: "Max Member",
        platform_admin: false,
        memberships: &[("acme", "member")],
    },
];

/// What a seed run did.
#[derive(Debug)]
pub struct SeedReport {
    pub rows: i64,
    pub seconds: f64,
}

/// Seeds (or re-seeds: the demo orgs are recreated) with `members` per org, and sets
/// the demo accounts' password.
pub async fn run(pool: &PgPool, storage: &Storage, members: u32, demo_password: &str) -> anyhow::Result<SeedReport> {
    anyhow::ensure!((1..=MAX_MEMBERS).contains(&members), "--members must be from 1 to {MAX_MEMBERS} (got {members})");
    let started = Instant::now();
    let hash = password::hash(demo_password)?;
    let fast = fast_mode_allowed(pool).await;
    let mut orgs_made = Vec::new();
    for (slug, name) in DEMO_ORGS {
        let slug = OrgSlug::parse(slug).context("demo slug")?;
        // A closed org's row is its receipt's tombstone: never removed, its slug never reused.
        if let Some(why) = orgs::closed_slug_refusal(pool, slug.as_str()).await? {
            anyhow::bail!("cannot recreate the demo org: {why}");
        }
        remove_org(pool, slug.as_str(), fast).await?;
        orgs_made.push(orgs::provision(pool, storage, &slug, name).await?);
    }
    // The orgs are independent: fill them at once, one connection each.
    let fills = orgs_made.iter().map(|org| fill_org(pool, org.id, &org.slug, members, fast));
    futures::future::try_join_all(fills).await?;
    for org in &orgs_made {
        orgs::modules::set(pool, org.id, None, &Module::ALL).await?;
    }
    seed_accounts(pool, &hash).await?;
    let mut rows = 0i64;
    for org in &orgs_made {
        rows += section_counts(pool, org.id).await?.iter().map(|(_, n)| n).sum::<i64>();
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(SeedReport { rows, seconds })
}

/// Members of each org that `seed --orgs` adds.
pub const TENANT_MEMBERS: u32 = 10;
/// The most orgs `seed --orgs` adds at once.
pub const MAX_TENANTS: u32 = 100_000;

/// What `seed --orgs` did.
#[derive(Debug)]
pub struct TenantsReport {
    pub created: u32,
    pub existing: u32,
    pub seconds: f64,
}

/// Adds orgs `tenant-1` ... `tenant-N` for scale tests: [`TENANT_MEMBERS`] members
/// each (the first of them an org admin), every module on, the bucket provisioned.
/// An org that exists already is left as it is, so running it again adds none twice.
pub async fn tenants(pool: &PgPool, storage: &Storage, n: u32) -> anyhow::Result<TenantsReport> {
    use futures::StreamExt;
    anyhow::ensure!((1..=MAX_TENANTS).contains(&n), "--orgs must be from 1 to {MAX_TENANTS} (got {n})");
    let started = Instant::now();
    let fast = fast_mode_allowed(pool).await;
    // An org whose fill did not finish (a run cut short) has no members: it is
    // filled again.
    let existing: Vec<(String,)> = sqlx::query_as(
        "select o.slug from organizations o
         where o.slug like 'tenant-%' and exists (select 1 from memberships m where m.org_id = o.id)",
    )
    .fetch_all(pool)
    .await?;
    let existing: std::collections::HashSet<String> = existing.into_iter().map(|r| r.0).collect();
    let missing: Vec<u32> = (1..=n).filter(|i| !existing.contains(&format!("tenant-{i}"))).collect();
    let created = missing.len() as u32;
    let mut adds = futures::stream::iter(missing)
        .map(|i| async move {
            let slug = OrgSlug::parse(&format!("tenant-{i}")).context("tenant slug")?;
            let org = orgs::provision(pool, storage, &slug, &format!("Tenant {i}")).await?;
            fill_org(pool, org.id, &org.slug, TENANT_MEMBERS, fast).await?;
            sqlx::query("update memberships set role = 'admin' where org_id = $1 and member_no = 'M00000001'")
                .bind(org.id)
                .execute(pool)
                .await?;
            orgs::modules::set(pool, org.id, None, &Module::ALL).await?;
            anyhow::Ok(())
        })
        .buffer_unordered(4);
    while let Some(done) = adds.next().await {
        done?;
    }
    Ok(TenantsReport { created, existing: n - created, seconds: started.elapsed().as_secs_f64() })
}

/// Generates one org's rows in one transaction.
async fn fill_org(pool: &PgPool, org_id: i64, slug: &str, members: u32, fast: bool) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    if fast {
        // The generated rows are consistent by construction, so the per-row
        // foreign-key triggers can be skipped for this transaction (about 2.5x
        // faster). Needs superuser; otherwise they run.
        sqlx::query("set local session_replication_role = replica").execute(&mut *tx).await?;
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(org_sql(org_id, slug, members)))
        .execute(&mut *tx)
        .await
        .with_context(|| format!("seeding {slug}"))?;
    tx.commit().await?;
    Ok(())
}

/// Whether this connection may skip foreign-key triggers (superusers only).
async fn fast_mode_allowed(pool: &PgPool) -> bool {
    sqlx::query_as::<_, (bool,)>("select rolsuper from pg_roles where rolname = current_user")
        .fetch_one(pool)
        .await
        .is_ok_and(|r| r.0)
}

/// Deletes an org and everything it owns. In fast mode the cascade triggers are
/// off, so every table with an `org_id` is emptied of the org's rows explicitly.
async fn remove_org(pool: &PgPool, slug: &str, fast: bool) -> anyhow::Result<()> {
    let Some((org_id,)) = sqlx::query_as::<_, (i64,)>("select id from organizations where slug = $1")
        .bind(slug)
        .fetch_optional(pool)
        .await?
    else {
        return Ok(());
    };
    let mut tx = pool.begin().await?;
    if fast {
        sqlx::query("set local session_replication_role = replica").execute(&mut *tx).await?;
        let tables: Vec<(String,)> = sqlx::query_as(
            "select table_name::text from information_schema.columns
             where table_schema = current_schema() and column_name = 'org_id'",
        )
        .fetch_all(&mut *tx)
        .await?;
        for (table,) in tables {
            // Table names come from the catalogue, quoted as identifiers.
            let sql = format!("delete from \"{}\" where org_id = $1", table.replace('"', "\"\""));
            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(org_id).execute(&mut *tx).await?;
        }
    }
    sqlx::query("delete from organizations where id = $1").bind(org_id).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

/// Whether the demo orgs exist (first start seeds when they do not).
pub async fn is_seeded(pool: &PgPool) -> sqlx::Result<bool> {
    let (n,): (i64,) = sqlx::query_as("select count(*) from organizations").fetch_one(pool).await?;
    Ok(n > 0)
}

async fn seed_accounts(pool: &PgPool, hash: &str) -> anyhow::Result<()> {
    for DemoAccount { email, name, platform_admin: platform, memberships } in DEMO_ACCOUNTS {
        let (user_id,): (i64,) = sqlx::query_as(
            "insert into users (email, display_name, password_hash) values ($1, $2, $3)
             on conflict (email) do update set password_hash = excluded.password_hash, display_name = excluded.display_name
             returning id",
        )
        .bind(email)
        .bind(name)
        .bind(hash)
        .fetch_one(pool)
        .await?;
        if platform {
            sqlx::query("insert into platform_admins (user_id) values ($1) on conflict do nothing")
                .bind(user_id)
                .execute(pool)
                .await?;
        }
        for (org, role) in memberships {
            let (first, last) = name.split_once(' ').unwrap_or((name, ""));
            sqlx::query(
                "with o as (select id from organizations where slug = $1)
                 , m as (
                    insert into memberships (org_id, user_id, role, member_no)
                    select o.id, $2, $3, 'DEMO-' || $2 from o
                    on conflict (org_id, user_id) do update set role = excluded.role, status = 'active'
                    returning org_id)
                 insert into user_profiles (org_id, user_id, first_name, last_name, email)
                 select m.org_id, $2, $4, $5, $6 from m
                 on conflict (org_id, user_id) do nothing",
            )
            .bind(org)
            .bind(user_id)
            .bind(role)
            .bind(first)
            .bind(last)
            .bind(email)
            .execute(pool)
            .await?;
        }
    }
    Ok(())
}

/// Rows per section (every section, whatever the modules) of an org, now.
pub async fn section_counts(pool: &PgPool, org_id: i64) -> sqlx::Result<Vec<(&'static str, i64)>> {
    let mut out = Vec::new();
    for s in crate::orgs::sections::SECTIONS {
        let (n,): (i64,) =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("select count(*) from {} where org_id = $1", s.table)))
                .bind(org_id)
                .fetch_one(pool)
                .await?;
        out.push((s.table, n));
    }
    Ok(out)
}

/// The SQL that fills one org. `org_id` and `n` are numbers and `slug` is a
/// validated slug, so formatting them in is safe.
fn org_sql(org_id: i64, slug: &str, n: u32) -> String {
    include_str!("org.sql").replace(":org_id", &org_id.to_string()).replace(":slug", slug).replace(":n", &n.to_string())
}
