-- Every finished export mails the org's active admins (mail::org_admins), and a
-- failing webhook mails them too. Without this index the lookup read every
-- membership of the org: 19 ms at 62,500 members, inside the transaction that
-- records the run. The admins are a handful, so the partial index is small and the
-- lookup reads only them.
--
-- A plain CREATE INDEX holds writes to memberships while it builds (68 ms for
-- 500,000 memberships here), and first waits for any transaction writing to them
-- (an import's). That wait is cut at 10 s: the migration then fails, with nothing
-- changed, and the next start tries again, rather than holding every membership
-- write behind it. A deployment with many millions of memberships can build it
-- beforehand with CREATE INDEX CONCURRENTLY under this name (and check that
-- pg_index.indisvalid is true: IF NOT EXISTS keeps whatever has the name).
set local lock_timeout = '10s';
create index if not exists memberships_active_admins_idx on memberships (org_id, user_id)
  where role = 'admin' and status = 'active';
