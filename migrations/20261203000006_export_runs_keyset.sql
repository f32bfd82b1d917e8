-- The export history pages back in time by keyset, (created_at, id) below the last
-- run shown, newest first: the index covers the order, ties on created_at included.
create index export_runs_org_created_id_idx on export_runs (org_id, created_at desc, id desc);
drop index export_runs_org_created_idx;
