-- Platform health (issue 30): every org's backup state at a glance, stuck runs
-- found, each org's bucket checked on its own, and who was told of what.

-- A busy table's lock is waited for at most 10 s; then the migration fails with
-- nothing changed and is tried again at the next start.
set local lock_timeout = '10s';

-- Each org's bucket, as its last check found it. `unverified` until a check ran
-- (a new org); `failing` refuses that org's exports, and only that org's.
alter table organizations
    add column bucket_state text not null default 'unverified',
    add column bucket_error text,
    add column bucket_checked_at timestamptz,
    add constraint organizations_bucket_state_known check (bucket_state in ('ok', 'unverified', 'failing'));

-- When a running export's progress last moved (set when it starts and whenever
-- rows_written changes): a run whose progress has not moved for STUCK_RUN_SECS is
-- failed by housekeeping.
alter table export_runs add column progress_at timestamptz;
-- A run already running at the upgrade is judged from now, not from a progress
-- time it never recorded.
update export_runs set progress_at = now() where status = 'running';

-- Who cancelled a run (an org admin): a cancelled run is no backup failure.
alter table export_runs add column cancelled_by bigint references users (id) on delete set null;

-- Each org's backup record, kept by the trigger below from the runs' ends, so that
-- the org list reads one row per org instead of every org's history.
create table org_backup_status (
    org_id               bigint primary key references organizations (id) on delete cascade,
    -- The newest export that completed (its file may since have been deleted).
    last_success_at      timestamptz,
    last_size_bytes      bigint,
    last_failure_at      timestamptz,
    last_failure_reason  text,
    -- Failed runs since the last one that completed.
    consecutive_failures integer not null default 0,
    -- The state platform admins were last told of (see `health_notices`).
    notified_state       text
);

create function org_backup_status_record() returns trigger language plpgsql as $$
begin
    if new.status = 'completed' then
        insert into org_backup_status as s (org_id, last_success_at, last_size_bytes, consecutive_failures)
        values (new.org_id, coalesce(new.finished_at, now()), new.size_bytes, 0)
        on conflict (org_id) do update
            set last_success_at = excluded.last_success_at, last_size_bytes = excluded.last_size_bytes,
                consecutive_failures = 0;
    elsif new.status = 'failed' and new.cancelled_by is null then
        insert into org_backup_status as s (org_id, last_failure_at, last_failure_reason, consecutive_failures)
        values (new.org_id, coalesce(new.finished_at, now()), new.error, 1)
        on conflict (org_id) do update
            set last_failure_at = excluded.last_failure_at, last_failure_reason = excluded.last_failure_reason,
                consecutive_failures = s.consecutive_failures + 1;
    end if;
    return null;
end $$;

-- Only a run that ends (from pending or running) counts; deleting or pruning a
-- completed run's file changes nothing here, nor does a cancelled run. (An
-- ordinary trigger: on a logical replica the row it writes arrives replicated.)
create trigger export_runs_backup_status after update of status on export_runs
    for each row when (old.status in ('pending', 'running') and new.status in ('completed', 'failed'))
    execute function org_backup_status_record();

-- What is there already: the newest completed run, and the failures after it.
insert into org_backup_status (org_id, last_success_at, last_size_bytes, last_failure_at, last_failure_reason,
                               consecutive_failures)
select o.id, ok.finished_at, ok.size_bytes, bad.finished_at, bad.error,
       (select count(*) from export_runs f
         where f.org_id = o.id and f.status = 'failed'
           and (ok.finished_at is null or f.finished_at > ok.finished_at))
from organizations o
left join lateral (select finished_at, size_bytes from export_runs r
                   where r.org_id = o.id and r.status in ('completed', 'deleted', 'pruned')
                   order by r.finished_at desc nulls last limit 1) ok on true
left join lateral (select finished_at, error from export_runs r
                   where r.org_id = o.id and r.status = 'failed'
                   order by r.finished_at desc nulls last limit 1) bad on true
where ok.finished_at is not null or bad.finished_at is not null;

-- Platform Verify runs in the background: one row per press, its progress, and
-- what it found. The platform's own bucket and endpoint are checked before the
-- row is written.
create table bucket_verifications (
    id          text primary key,            -- a ULID, also the apalis task id
    started_at  timestamptz not null default now(),
    started_by  bigint references users (id) on delete set null,
    finished_at timestamptz,
    total       integer not null,
    checked     integer not null default 0,
    failed      integer not null default 0,
    error       text
);

-- Changes of an org's state that platform admins are to be told of, batched into
-- one mail per 15 minutes; `mailed_at` is set by the batch that sent it.
create table health_notices (
    id          bigserial primary key,
    org_id      bigint not null references organizations (id) on delete cascade,
    state       text not null,
    reason      text,
    noticed_at  timestamptz not null default now(),
    mailed_at   timestamptz,
    constraint health_notices_state_known check (state in ('failing', 'stuck', 'overdue'))
);
create index health_notices_unmailed_idx on health_notices (noticed_at) where mailed_at is null;

-- A schedule slot whose job failed for good is pushed again once, not at every tick.
alter table schedule_slots add column repushed_at timestamptz;

-- Manual exports per org and day (MANUAL_EXPORTS_PER_DAY) are counted here.
create index export_runs_org_manual_created_idx on export_runs (org_id, created_at) where trigger = 'manual';
