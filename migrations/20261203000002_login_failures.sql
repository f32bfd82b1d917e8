-- Sign-in hardening (issue 18).

-- Failed sign-ins are deleted once they are older than the rate-limit window (15
-- minutes), by housekeeping and as new failures arrive. That delete is by time
-- alone, which neither index on (account, ...) or (ip, ...) serves: without this
-- one it reads the whole table.
create index login_failures_attempted_at_idx on login_failures (attempted_at);

comment on column login_failures.ip is
    'the client address as rate limits key it: an IPv4 address, or an IPv6 /64';

-- Keys the server holds, shared by every web process. `login_csrf` signs the
-- sign-in form's CSRF token for visitors without a session (a signed double-submit
-- cookie), so anonymous visitors cost no session row. 32 bytes from
-- gen_random_uuid(), which reads PostgreSQL's strong random source (244 random bits).
create table server_keys (
    name        text primary key,
    key         bytea not null,
    created_at  timestamptz not null default now(),
    constraint server_keys_key_length check (octet_length(key) >= 32)
);
insert into server_keys (name, key)
values (
    'login_csrf',
    decode(replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', ''), 'hex')
);
