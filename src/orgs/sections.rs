//! The org's tables, which are its snapshot's sections: each org-scoped table is one
//! section named after the table, unless it is in [`EXCLUDED`] with its reason. A test fails when a table
//! with an `org_id` column is in neither list.

use crate::orgs::modules::Module;

/// One section: a table and the module it belongs to (`None` = core, always on).
#[derive(Clone, Copy, Debug)]
pub struct Section {
    pub table: &'static str,
    pub module: Option<Module>,
}

const fn core(table: &'static str) -> Section {
    Section { table, module: None }
}
const fn of(module: Module, table: &'static str) -> Section {
    Section { table, module: Some(module) }
}

/// Every section, in snapshot order. `organization` is the org's own row, written
/// as an object rather than an array.
pub const SECTIONS: &[Section] = &[
    core("regions"),
    core("chapters"),
    core("memberships"),
    core("user_profiles"),
    core("custom_fields"),
    core("custom_field_values"),
    core("saved_views"),
    core("member_enrichment"),
    core("documents"),
    core("audit_log"),
    of(Module::Engage, "forum_posts"),
    of(Module::Engage, "forum_comments"),
    of(Module::Operations, "compliance_records"),
    of(Module::Operations, "elections"),
    // Before the votes: restore writes participants first, and a vote it writes
    // with a voter then finds its participant there (see the migration's trigger).
    of(Module::Operations, "election_participants"),
    of(Module::Operations, "election_votes"),
    of(Module::Operations, "invoices"),
    of(Module::Operations, "invoice_lines"),
    of(Module::Operations, "payments"),
    of(Module::Foundation, "foundation_funds"),
    of(Module::Foundation, "donations"),
    of(Module::Learning, "courses"),
    of(Module::Learning, "enrollments"),
    of(Module::Alumni, "alumni_profiles"),
    of(Module::Alumni, "career_postings"),
];

/// Sections added to format version 1 after its first files were written
/// (`election_participants`, with ballot secrecy): a file from before lacks them,
/// and restore reads such a section as empty.
pub const ADDED_LATER: &[&str] = &["election_participants"];

/// Tables with an `org_id` column that are not sections, and why.
pub const EXCLUDED: &[(&str, &str)] = &[
    ("export_runs", "the export machinery's own bookkeeping, not the org's records"),
    ("export_history_versions", "a counter that tells an open Export History when to refresh"),
    (
        "webhook_endpoints",
        "notification settings: their secrets must not leave in a file, and a restored org sets its own",
    ),
    ("webhook_deliveries", "the delivery log of those notifications, not the org's records"),
    ("org_modules", "module switches are written to the snapshot's `modules` object instead"),
    ("org_backup_status", "the platform's record of the org's backups (its health), not the org's records"),
    ("health_notices", "what platform admins were told about the org's backups"),
    ("export_tables", "conversions of the org's exports into tables, the export machinery's own bookkeeping"),
    ("mail_messages", "mails to people about the org (its exports, its webhooks), not the org's records"),
];

/// The sections for the modules that are on.
pub fn enabled(modules: &[(Module, bool)]) -> Vec<Section> {
    SECTIONS
        .iter()
        .copied()
        .filter(|s| s.module.is_none_or(|m| modules.iter().any(|(om, on)| *om == m && *on)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_plain() {
        let mut names: Vec<&str> = SECTIONS.iter().map(|s| s.table).chain(EXCLUDED.iter().map(|e| e.0)).collect();
        let before = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), before, "a table is listed twice");
        // Names are formatted into SQL: keep them to identifier characters.
        assert!(names.iter().all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
    }

    #[test]
    fn modules_off_drop_their_sections() {
        let all_off: Vec<(Module, bool)> = Module::ALL.iter().map(|m| (*m, false)).collect();
        let core_only = enabled(&all_off);
        assert!(core_only.iter().all(|s| s.module.is_none()));
        assert_eq!(core_only.len(), 10);
        let engage_on: Vec<(Module, bool)> = Module::ALL.iter().map(|m| (*m, *m == Module::Engage)).collect();
        assert_eq!(enabled(&engage_on).len(), 12);
    }
}
