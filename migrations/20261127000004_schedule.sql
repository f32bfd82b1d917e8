-- The scheduler's claims: one row per (kind, slot), inserted by whichever process
-- fires the slot first. The primary key makes a slot fire once across every
-- `serve` and `worker` process; the row also records what the slot did.
create table schedule_slots (
    kind        text not null,
    slot        timestamptz not null,
    claimed_at  timestamptz not null default now(),
    -- The apalis job that fires the slot; re-pushed by a later tick if it failed
    -- for good before the slot finished, so a claimed slot is never lost.
    job_id      text not null,
    finished_at timestamptz,
    -- {"started": n, "skipped": [...], "reason": "..."} once the slot's job ran.
    outcome     jsonb,
    constraint schedule_slots_pk primary key (kind, slot),
    constraint schedule_slots_kind_known check (kind in ('export', 'prune'))
);

-- Slots before this instant are never due: set when the preset or the timezone
-- changes (and at install), so a new schedule does not fire a slot from the past.
alter table platform_settings add column schedule_since timestamptz not null default now();

-- The pruner picks completed scheduled runs per org.
create index export_runs_org_scheduled_idx on export_runs (org_id, scheduled_for)
    where trigger = 'scheduled' and status = 'completed';
