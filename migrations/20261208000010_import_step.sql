-- Restore, round 2 (issue 31): the step a running import is in, for its row on
-- /platform/imports and its API status ("reading the file", "checking the file",
-- "matching people", "writing section 3 of 24: chapters", "copying media"). The
-- engine writes it on a connection of its own while its one transaction is open,
-- so that the poll sees it; it is cleared when the import finishes, either way.
-- A busy table's lock is waited for at most 10 s; then the migration fails with
-- nothing changed and is tried again at the next start.
set local lock_timeout = '10s';

alter table org_imports
    add column step text,
    add constraint org_imports_step_length check (length(step) <= 200);
