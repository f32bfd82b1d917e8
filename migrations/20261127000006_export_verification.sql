-- The last re-read of a completed export's object (the Verify action): when, and
-- why it failed (null when it passed).
alter table export_runs
    add column verified_at  timestamptz,
    add column verify_error text;
