//! The cache behind an open page's polls: what the session of a poll, its user and
//! their membership of the org in the path were, kept in the process for at most
//! [`MAX_AGE`] and dropped as soon as anything they were read from changes.
//!
//! An open Backups & Export page polls its running export's row and its history
//! (`?since=`) every 2 s. Each poll needs the session, its user, their role in the
//! org and the org's modules, and then the one row it shows; with this cache a poll
//! reads only that row, most of the time.
//!
//! What keeps it true (docs/architecture.md, "The session cache"):
//! - The database tells every process of each change: triggers on `sessions` (a
//!   live session ended or changed), `users`, `platform_admins`, `organizations`,
//!   `memberships` and `org_modules` NOTIFY [`CHANNEL`] in the writing transaction
//!   (migration `20261203000013_auth_change_notify.sql`, ALWAYS triggers), whoever
//!   writes. Each notification empties the cache (`db::notified_cache`): a sign-out,
//!   a demotion or a module switched off made anywhere is seen by every process's
//!   next poll once its notification arrives, normally within a millisecond.
//! - Nothing is kept while the cache's listener is not listening, a listener gone
//!   silent is noticed by its heartbeat, and an answer read before a change
//!   arrived is not kept after it.
//! - An answer is kept at most [`MAX_AGE`] from when its read began, and never
//!   past its session's expiry.
//! - Only the row and the history fragment use it
//!   ([`crate::auth::OrgCtx::admin_of_session_with_row`], GET and HEAD only). Every
//!   page, every form and every API request reads the session and the membership
//!   from the database.

use sha2::{Digest, Sha256};

pub use crate::db::notified_cache::MAX_AGE;
use crate::orgs::OrgSlug;

/// The channel the triggers notify.
pub const CHANNEL: &str = "dx_auth_changed";

/// The key of a session's answer for an org: a hash, so that the cache holds no
/// session id.
pub fn key(session_id: &str, slug: &OrgSlug) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(session_id.as_bytes());
    h.update([0]);
    h.update(slug.as_str().as_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_depends_on_the_session_and_the_org() {
        let (acme, globex) = (OrgSlug::parse("acme").unwrap(), OrgSlug::parse("globex").unwrap());
        assert_eq!(key("s1", &acme), key("s1", &acme));
        assert_ne!(key("s1", &acme), key("s2", &acme));
        assert_ne!(key("s1", &acme), key("s1", &globex));
        // The separator: ("ab", "c…") and ("a", "bc…") are different pairs.
        assert_ne!(key("s1a", &OrgSlug::parse("cme").unwrap()), key("s1", &OrgSlug::parse("acme").unwrap()));
    }
}
