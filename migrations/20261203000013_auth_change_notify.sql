-- Every change that can alter who a session's user is, or what they may do in an
-- org, notifies the channel `dx_auth_changed`: each web process then empties its
-- cache of those answers (src/auth/session_cache.rs). A trigger, rather than the
-- code that writes, so that no write path (a page, the API, the CLI, a restore, a
-- person's SQL) can forget it. The payload is empty: a change empties the whole
-- cache, and identical notifications of one transaction are delivered once.
-- The triggers fire ALWAYS, under `session_replication_role = replica` too (the
-- seeder's fast mode, a logical replica's apply), which turns off ordinary ones.
-- Only an explicit `ALTER TABLE ... DISABLE TRIGGER` silences them.

-- Creating a trigger locks its table against writes until the migration commits.
-- Each of the six tables' locks is waited for at most 3 s (behind a long import,
-- say); then the migration fails with nothing changed, and the next start tries
-- again.
set local lock_timeout = '3s';

create function notify_auth_change() returns trigger
language plpgsql as $$
begin
    perform pg_notify('dx_auth_changed', '');
    return null;
end
$$;

-- A session: ended while live (sign-out, a password reset, a person's SQL), or its
-- record changed (sign-in, its token) or cut short. Extending its expiry changes no
-- answer, and deleting one already expired (the housekeeping) ends nothing that a
-- cache could still serve, so neither notifies.
create function notify_session_change() returns trigger
language plpgsql as $$
begin
    if tg_op = 'DELETE' then
        if old.expiry_date > now() then
            perform pg_notify('dx_auth_changed', '');
        end if;
    elsif new.id is distinct from old.id
          or new.data is distinct from old.data
          or new.expiry_date < old.expiry_date then
        perform pg_notify('dx_auth_changed', '');
    end if;
    return null;
end
$$;

create trigger sessions_auth_change after update or delete on sessions
    for each row execute function notify_session_change();
create trigger sessions_auth_truncate after truncate on sessions
    for each statement execute function notify_auth_change();

-- The user, their platform-admin grant, the org, the membership and the org's
-- modules: any change at all.
create trigger users_auth_change after insert or update or delete or truncate on users
    for each statement execute function notify_auth_change();
create trigger platform_admins_auth_change after insert or update or delete or truncate on platform_admins
    for each statement execute function notify_auth_change();
create trigger organizations_auth_change after insert or update or delete or truncate on organizations
    for each statement execute function notify_auth_change();
create trigger memberships_auth_change after insert or update or delete or truncate on memberships
    for each statement execute function notify_auth_change();
create trigger org_modules_auth_change after insert or update or delete or truncate on org_modules
    for each statement execute function notify_auth_change();

alter table sessions enable always trigger sessions_auth_change;
alter table sessions enable always trigger sessions_auth_truncate;
alter table users enable always trigger users_auth_change;
alter table platform_admins enable always trigger platform_admins_auth_change;
alter table organizations enable always trigger organizations_auth_change;
alter table memberships enable always trigger memberships_auth_change;
alter table org_modules enable always trigger org_modules_auth_change;
