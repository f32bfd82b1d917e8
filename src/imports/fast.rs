//! The fast write: the sections' rows written without PostgreSQL's per-row
//! foreign-key checks, because the engine has checked every reference itself.
//!
//! Before anything is written, every reference of every staged row has been
//! checked set-based, one anti-join per foreign key: a row's reference to another
//! section must be a row of the file (`Table::check`), a person must have an
//! account (`check_people`), the org id is the file's own and becomes the new
//! org's. The existing accounts the rows point at are locked (`FOR KEY SHARE`, as
//! the foreign-key triggers would lock them), so that none can be deleted before the
//! commit. Then the sections are written with `session_replication_role = replica`
//! for the length of the writes, which turns off the foreign-key triggers (and every
//! ordinary trigger: see [`KNOWN_TRIGGERS`]) but not the unique, check and not-null
//! constraints. All of it happens in the import's one transaction: all or nothing
//! holds.
//!
//! The fast write is taken only when it is sound: every foreign key of every section
//! table is one the engine checks itself, every trigger and rule that the setting
//! would change is known here, and the database role may set the parameter (a
//! superuser, or on PostgreSQL 15+ a role granted `SET ON PARAMETER
//! session_replication_role`). Otherwise the rows are written as before, each row's
//! keys checked by PostgreSQL, and the report says why (`write_path`,
//! `write_path_reason`).

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::orgs::sections::SECTIONS;

/// How the sections' rows were written (the report's `write_path`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WritePath {
    /// References checked set-based by the engine, the rows written without
    /// PostgreSQL's per-row foreign-key checks.
    Fast,
    /// Each row's foreign keys checked by PostgreSQL as it was written (slower).
    PerRow,
}

/// What a trigger on a table the import writes does under the fast write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handling {
    /// Enabled ALWAYS: it fires under `replica` too, and needs nothing.
    FiresAlways,
    /// It cannot fire on what the import does (the text says why).
    NotFired(&'static str),
    /// Turned off by `replica`; the engine does its work itself (the text says where).
    DoneByEngine(&'static str),
}

/// A trigger known to the import, on a table it writes.
#[derive(Clone, Copy, Debug)]
pub struct KnownTrigger {
    pub table: &'static str,
    pub name: &'static str,
    pub handling: Handling,
}

const fn known(table: &'static str, name: &'static str, handling: Handling) -> KnownTrigger {
    KnownTrigger { table, name, handling }
}

/// Every trigger (other than PostgreSQL's own foreign-key triggers) on a table the
/// import writes: the sections' tables, and `organizations`, `org_modules`, `users`
/// and `org_imports` ([`WRITTEN_BESIDES_SECTIONS`]). A test compares this list with
/// the database's (`pg_trigger`) and fails on any difference; and at run time the
/// fast write is not taken while a section's table has an ordinary trigger that is
/// not here.
pub const KNOWN_TRIGGERS: &[KnownTrigger] = &[
    known("users", "users_auth_change", Handling::FiresAlways),
    known("organizations", "organizations_auth_change", Handling::FiresAlways),
    known("org_modules", "org_modules_auth_change", Handling::FiresAlways),
    known("memberships", "memberships_auth_change", Handling::FiresAlways),
    known(
        "elections",
        "elections_secret_stays_secret",
        Handling::NotFired("before update of ballot: the import only inserts elections"),
    ),
    known(
        "election_votes",
        "election_votes_participant",
        Handling::DoneByEngine(
            "each vote's voter becomes a participant of its election: `participants_of_votes` after the writes",
        ),
    ),
];

/// The tables an import writes besides the sections' (the org, its module switches,
/// the accounts it creates, its own record). They are written with the setting at
/// its default, so every trigger on them fires.
pub const WRITTEN_BESIDES_SECTIONS: &[&str] = &["organizations", "org_modules", "users", "org_imports"];

/// Why the fast write cannot be taken on this database's schema, if it cannot: a
/// foreign key of a section table that the engine does not check itself (more than
/// one column, or a column the file does not write), or a trigger or rule that
/// `replica` would turn off or on and that is not in [`KNOWN_TRIGGERS`].
/// `checked` says whether the engine checks (table, column).
pub async fn unsound(conn: &mut PgConnection, checked: impl Fn(&str, &str) -> bool) -> sqlx::Result<Option<String>> {
    let tables: Vec<&str> = SECTIONS.iter().map(|s| s.table).collect();
    let keys: Vec<(String, String, Vec<String>)> = sqlx::query_as(
        "select c.relname::text, k.conname::text,
                array(select a.attname::text from unnest(k.conkey) as u(n)
                      join pg_attribute a on a.attrelid = k.conrelid and a.attnum = u.n)
         from pg_constraint k join pg_class c on c.oid = k.conrelid
         where k.contype = 'f' and c.relname = any($1) and c.relnamespace = current_schema()::regnamespace
         order by 1, 2",
    )
    .bind(&tables)
    .fetch_all(&mut *conn)
    .await?;
    for (table, name, columns) in &keys {
        if columns.len() != 1 || !checked(table, &columns[0]) {
            return Ok(Some(format!(
                "the foreign key {name} of {table} ({}) is not one the import checks itself",
                columns.join(", ")
            )));
        }
    }
    // `O` fires in origin mode only, `R` in replica mode only: both change with the
    // setting. `A` (always) and `D` (disabled) do not.
    let triggers: Vec<(String, String)> = sqlx::query_as(
        "select c.relname::text, t.tgname::text
         from pg_trigger t join pg_class c on c.oid = t.tgrelid
         where not t.tgisinternal and t.tgenabled in ('O', 'R') and c.relname = any($1)
           and c.relnamespace = current_schema()::regnamespace
         order by 1, 2",
    )
    .bind(&tables)
    .fetch_all(&mut *conn)
    .await?;
    for (table, name) in &triggers {
        let handled = KNOWN_TRIGGERS
            .iter()
            .any(|k| k.table == table && k.name == name && !matches!(k.handling, Handling::FiresAlways));
        if !handled {
            return Ok(Some(format!(
                "the trigger {name} on {table} is not one the import knows: it would not fire on the fast write"
            )));
        }
    }
    let rule: Option<(String, String)> = sqlx::query_as(
        "select c.relname::text, r.rulename::text
         from pg_rewrite r join pg_class c on c.oid = r.ev_class
         where r.rulename <> '_RETURN' and r.ev_enabled in ('O', 'R') and c.relname = any($1)
           and c.relnamespace = current_schema()::regnamespace
         order by 1, 2 limit 1",
    )
    .bind(&tables)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some((table, name)) = rule {
        return Ok(Some(format!("the rule {name} on {table} would not apply on the fast write")));
    }
    Ok(None)
}

/// Turns the per-row foreign-key checks and ordinary triggers off until
/// [`end`] (or the transaction's end). `None` when done; else why the role may
/// not, with the transaction still usable (the attempt runs in a savepoint).
pub async fn begin(conn: &mut PgConnection) -> sqlx::Result<Option<String>> {
    sqlx::query("savepoint dx_fast_write").execute(&mut *conn).await?;
    match sqlx::query("set local session_replication_role = replica").execute(&mut *conn).await {
        Ok(_) => {
            sqlx::query("release savepoint dx_fast_write").execute(&mut *conn).await?;
            Ok(None)
        }
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42501") => {
            sqlx::query("rollback to savepoint dx_fast_write").execute(&mut *conn).await?;
            sqlx::query("release savepoint dx_fast_write").execute(&mut *conn).await?;
            let role: String = sqlx::query_scalar("select current_user::text").fetch_one(&mut *conn).await?;
            Ok(Some(format!(
                "the database role {role} may not set session_replication_role \
                 (GRANT SET ON PARAMETER session_replication_role TO {role} allows the fast write)"
            )))
        }
        Err(e) => Err(e),
    }
}

/// Turns the checks and triggers back on for the rest of the transaction.
pub async fn end(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query("set local session_replication_role to default").execute(&mut *conn).await?;
    Ok(())
}

/// Locks the existing accounts that the new rows point at (`FOR KEY SHARE`, as
/// PostgreSQL's foreign-key check would), so that none is deleted before the
/// commit; refuses when one was deleted since it was matched.
pub async fn lock_accounts(conn: &mut PgConnection) -> anyhow::Result<()> {
    let (wanted, locked): (i64, i64) = sqlx::query_as(
        "with locked as (
             select u.id from users u
             where u.id in (select new from import_users where not created and new is not null)
             order by u.id for key share)
         select (select count(distinct new) from import_users where not created and new is not null),
                (select count(*) from locked)",
    )
    .fetch_one(&mut *conn)
    .await?;
    if locked != wanted {
        anyhow::bail!(
            "{} of the accounts the file matched were deleted while it was imported: import it again",
            wanted - locked
        );
    }
    Ok(())
}

/// What the trigger `election_votes_participant` does for each vote it sees
/// inserted, done for the new org's votes at once: every vote's voter is a
/// participant of its election.
pub async fn participants_of_votes(conn: &mut PgConnection, org_id: i64) -> sqlx::Result<()> {
    sqlx::query(
        "insert into election_participants (org_id, election_id, user_id)
         select org_id, election_id, voter_user_id from election_votes
         where org_id = $1 and voter_user_id is not null
         order by id
         on conflict on constraint election_participants_once do nothing",
    )
    .bind(org_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
