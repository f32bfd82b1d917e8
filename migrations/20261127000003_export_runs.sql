-- Export runs: one row per org snapshot, with its state machine
--   pending -> running -> completed | failed, then completed -> deleted | pruned.
create table export_runs (
    id             text primary key,             -- a ULID, also the apalis task id
    org_id         bigint not null references organizations (id) on delete cascade,
    status         text not null default 'pending',
    trigger        text not null,
    triggered_by   bigint references users (id) on delete set null,
    scheduled_for  timestamptz,                  -- the schedule slot, for scheduled runs
    created_at     timestamptz not null default now(),
    started_at     timestamptz,
    finished_at    timestamptz,
    snapshot_at    timestamptz,
    object_key     text,
    -- The open multipart upload of the current attempt, so that a retry after a
    -- crash can abort what the dead attempt left behind.
    upload_id      text,
    size_bytes     bigint,
    sha256         text,
    counts         jsonb,
    rows_total     bigint,
    rows_written   bigint not null default 0,
    attempts       integer not null default 0,
    error          text,
    constraint export_runs_status_known check (
        status in ('pending', 'running', 'completed', 'failed', 'deleted', 'pruned')),
    constraint export_runs_trigger_known check (trigger in ('manual', 'scheduled')),
    constraint export_runs_scheduled_slot check ((trigger = 'scheduled') = (scheduled_for is not null)),
    constraint export_runs_completed_has_file check (
        status not in ('completed') or (object_key is not null and sha256 is not null and size_bytes is not null))
);

-- At most one active export per org: a database fact, mapped to HTTP 409.
create unique index export_runs_one_active_per_org on export_runs (org_id)
    where status in ('pending', 'running');

-- A schedule slot runs once, however many processes fire it.
create unique index export_runs_one_per_slot on export_runs (org_id, scheduled_for)
    where scheduled_for is not null;

create index export_runs_org_created_idx on export_runs (org_id, created_at desc);
create index export_runs_triggered_by_idx on export_runs (triggered_by);
