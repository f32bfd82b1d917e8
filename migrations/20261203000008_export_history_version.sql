-- An open Export History polls whether anything it shows changed: a run created
-- anywhere (the page, the API, the scheduler), deleted, or moved to another status
-- or verification outcome (by its job, the pruner, another tab). Each such change
-- bumps the org's version here, so an idle poll is one primary-key read that
-- answers 204. Progress (rows_written) does not bump it: active rows poll
-- themselves.
create table export_history_versions (
    org_id   bigint primary key references organizations (id) on delete cascade,
    version  bigint not null default 0
);

create function export_history_bump() returns trigger language plpgsql as $$
begin
    if tg_op = 'DELETE' then
        -- Only an update: when the org itself is being deleted its version row goes
        -- with it, and inserting one then would break the foreign key.
        update export_history_versions set version = version + 1 where org_id = old.org_id;
    else
        insert into export_history_versions as v (org_id, version) values (new.org_id, 1)
        on conflict (org_id) do update set version = v.version + 1;
    end if;
    return null;
end $$;

create trigger export_runs_history_insert_delete after insert or delete on export_runs
    for each row execute function export_history_bump();

create trigger export_runs_history_update after update on export_runs
    for each row when (old.status is distinct from new.status
                       or old.verified_at is distinct from new.verified_at
                       or old.verify_error is distinct from new.verify_error
                       or old.rows_total is distinct from new.rows_total)
    execute function export_history_bump();

insert into export_history_versions (org_id, version)
select distinct org_id, 1 from export_runs;
