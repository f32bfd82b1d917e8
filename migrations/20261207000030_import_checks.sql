-- Restore, round 2 (issue 31): from the page and the API a restore takes two steps.
-- First a *check*: an import record whose job runs the engine as a dry run (nothing
-- is written) and keeps its report, which lists every existing account the file
-- matches and the role and membership each would get. Then a *confirmation*: a
-- second record that names the check it confirms, reads the same source, and is
-- refused by the engine unless the file (its SHA-256) and the people matched are
-- still what the check reported.
alter table org_imports
    add column dry_run boolean not null default false,
    add column check_id text,
    add constraint org_imports_check_id_fkey foreign key (check_id) references org_imports (id),
    -- A confirmation is an import proper, never a check itself.
    add constraint org_imports_confirmation_not_dry check (not (dry_run and check_id is not null));

-- A check is confirmed at most once: a confirmation that failed (the storage was
-- away, say) leaves it free to be confirmed again.
create unique index org_imports_one_confirmation_per_check on org_imports (check_id)
    where check_id is not null and status <> 'failed';
