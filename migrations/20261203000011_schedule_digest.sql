-- The platform admins' mail about a schedule slot with failed exports is sent once:
-- by whichever transaction first finds the slot fired (finished_at) and all its
-- runs ended, and sets digest_sent_at. Run ends look their slot's runs up by
-- scheduled_for.
alter table schedule_slots add column digest_sent_at timestamptz;
create index export_runs_scheduled_for_idx on export_runs (scheduled_for) where scheduled_for is not null;
