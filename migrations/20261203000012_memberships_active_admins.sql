-- Every finished export mails the org's active admins (mail::org_admins). Without
-- this index the lookup read every membership of the org: 19 ms at 62,500 members,
-- inside the transaction that records the run. The admins are a handful, so the
-- partial index is small and the lookup reads only them.
create index memberships_active_admins_idx on memberships (org_id, user_id)
  where role = 'admin' and status = 'active';
