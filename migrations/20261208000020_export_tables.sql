-- Tables for analysis (issue 32): a completed export converted into a zip of CSV
-- or Parquet tables, stored beside the export's file in the org's bucket. One row
-- per export and format: the first click creates it with its job, a later click
-- while it is pending or running finds it (the unique key below), and a failed one
-- is retried on the same row with a new job (`job_id`, whose worker is the only one
-- that may move the row on).
create table export_tables (
    id            text primary key,
    org_id        bigint not null references organizations (id) on delete cascade,
    export_id     text not null references export_runs (id) on delete cascade,
    format        text not null constraint export_tables_format check (format in ('csv', 'parquet')),
    status        text not null default 'pending'
                  constraint export_tables_status check (status in ('pending', 'running', 'completed', 'failed')),
    requested_by  bigint references users (id) on delete set null,
    -- The apalis job of the current attempt (a ULID; a retry gets a new one).
    job_id        text not null,
    created_at    timestamptz not null default now(),
    started_at    timestamptz,
    finished_at   timestamptz,
    object_key    text,
    size_bytes    bigint,
    rows_total    bigint,
    rows_written  bigint not null default 0,
    error         text,
    constraint export_tables_one_per_format unique (export_id, format)
);

create index export_tables_org on export_tables (org_id);

-- The Export History shows each conversion's state: a change of it refreshes an
-- open history (progress does not; the row of a running conversion polls itself).
create trigger export_tables_history_insert_delete after insert or delete on export_tables
    for each row execute function export_history_bump();

create trigger export_tables_history_update after update on export_tables
    for each row when (old.status is distinct from new.status or old.job_id is distinct from new.job_id)
    execute function export_history_bump();
