-- Closing an org (issue 32, docs/runbooks/offboarding.md). An org is `active`
-- until an admin closes it; then `closing` while its final export is made and
-- verified and for CLOSE_GRACE_DAYS after that (members are refused, its admins may
-- download the final export or cancel); then erased: `erased_db` once every row of
-- the org is gone (the receipt is written in that same transaction), `closed` once
-- its bucket is gone too. The row stays as a tombstone, so receipts and the platform
-- audit can name it, and its slug is never given to another org.

-- A busy table's lock is waited for at most 10 s; then the migration fails with
-- nothing changed and is tried again at the next start.
set local lock_timeout = '10s';

alter table organizations
    add column lifecycle text not null default 'active',
    -- Who asked, and when: kept on the tombstone (the email too, as it was then).
    add column close_requested_at timestamptz,
    add column close_requested_by bigint references users (id) on delete set null,
    add column close_requested_by_email text,
    -- `ui`, `platform_ui`, `api` or `cli`.
    add column close_via text,
    add column close_grace_days integer,
    -- The final export's run id. No foreign key: the run's row is erased with the org.
    add column final_export_id text,
    -- When erasure may start: set once the final export is verified (its time plus
    -- the grace days).
    add column close_after timestamptz,
    -- Why the closing is held (the final export failed or did not verify).
    add column close_error text,
    add column erased_at timestamptz,
    add column close_receipt jsonb,
    -- Set when the bucket is gone and the receipt is stored (state `closed`).
    add column bucket_removed_at timestamptz,
    add constraint organizations_lifecycle_known check (lifecycle in ('active', 'closing', 'erased_db', 'closed')),
    add constraint organizations_close_grace_days check (close_grace_days between 0 and 3650),
    add constraint organizations_closing_has_request
        check (lifecycle = 'active' or (close_requested_at is not null and final_export_id is not null)),
    add constraint organizations_erased_has_receipt
        check (lifecycle not in ('erased_db', 'closed') or (erased_at is not null and close_receipt is not null));

-- Housekeeping looks for the orgs that are closing or half erased.
create index organizations_lifecycle_open on organizations (lifecycle) where lifecycle in ('closing', 'erased_db');

-- The mail that tells an org's former admins and the platform admins that it was
-- erased, with its receipt (it cannot be switched off: it is a record).
alter table mail_messages drop constraint mail_messages_kind;
alter table mail_messages add constraint mail_messages_kind
    check (kind in ('export_failed', 'export_completed_mine', 'export_completed_scheduled',
                    'webhook', 'schedule', 'privacy', 'export', 'org_closed'));
