-- Platform-level tables: people, organizations, access, sessions, settings.
-- Nothing here is exported as a snapshot section except `organizations` (as the
-- snapshot's `organization` object) and `memberships`; the exclusion list in
-- src/exports/sections.rs names each org-scoped table that is not a section.

create table users (
    id              bigint generated always as identity primary key,
    email           text not null,
    display_name    text not null,
    -- argon2id PHC string; '!' marks an account that cannot sign in (seeded members).
    password_hash   text not null,
    created_at      timestamptz not null default now(),
    constraint users_email_key unique (email),
    constraint users_email_lowercase check (email = lower(email))
);

-- Platform admins are a separate grant, not a column, so that granting and
-- revoking is auditable by row.
create table platform_admins (
    user_id     bigint primary key references users (id) on delete cascade,
    granted_at  timestamptz not null default now()
);

create table organizations (
    id          bigint generated always as identity primary key,
    slug        text not null,
    name        text not null,
    -- The org's own storage bucket, created when the org is provisioned.
    bucket      text not null,
    created_at  timestamptz not null default now(),
    constraint organizations_slug_key unique (slug),
    constraint organizations_bucket_key unique (bucket),
    constraint organizations_slug_format check (slug ~ '^[a-z0-9][a-z0-9-]{1,38}[a-z0-9]$')
);

-- Module switches per org. `core` is always on and has no row.
create table org_modules (
    org_id      bigint not null references organizations (id) on delete cascade,
    module      text not null,
    enabled     boolean not null,
    updated_at  timestamptz not null default now(),
    updated_by  bigint references users (id) on delete set null,
    constraint org_modules_pkey primary key (org_id, module),
    constraint org_modules_module_known check (
        module in ('data_export', 'engage', 'operations', 'foundation', 'learning', 'alumni'))
);

-- Personal API tokens: only the SHA-256 of the token is kept (tokens are 256
-- random bits, so a fast hash is enough); the prefix helps a user tell them apart.
create table api_tokens (
    id            bigint generated always as identity primary key,
    user_id       bigint not null references users (id) on delete cascade,
    name          text not null,
    token_prefix  text not null,
    token_hash    text not null,
    created_at    timestamptz not null default now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz,
    constraint api_tokens_hash_key unique (token_hash)
);
create index api_tokens_user_id_idx on api_tokens (user_id);

-- tower-sessions records (see src/auth/session_store.rs).
create table sessions (
    id           text primary key,
    data         jsonb not null,
    expiry_date  timestamptz not null
);
create index sessions_expiry_date_idx on sessions (expiry_date);

-- Failed sign-ins, for the per-account and per-address rate limits. Rows older
-- than the window are deleted as new ones arrive.
create table login_failures (
    id            bigint generated always as identity primary key,
    account       text not null,
    ip            text not null,
    attempted_at  timestamptz not null default now()
);
create index login_failures_account_idx on login_failures (account, attempted_at);
create index login_failures_ip_idx on login_failures (ip, attempted_at);

-- The platform's backup configuration: a single row. The storage endpoint and
-- credentials come from the environment; this row records whether exports are
-- switched on and the outcome of the last verification against an endpoint.
create table backup_configuration (
    id                 smallint primary key default 1,
    active             boolean not null default true,
    verified_at        timestamptz,
    -- The endpoint that was verified; a different effective endpoint means "not verified".
    verified_endpoint  text,
    last_error         text,
    updated_at         timestamptz not null default now(),
    updated_by         bigint references users (id) on delete set null,
    constraint backup_configuration_singleton check (id = 1)
);
insert into backup_configuration (id) values (1);

-- Platform settings: a single row.
create table platform_settings (
    id                      smallint primary key default 1,
    retention_daily         integer not null default 7,
    retention_weekly        integer not null default 4,
    retention_monthly       integer not null default 6,
    schedule_preset         text not null default 'daily_2am',
    timezone                text not null default 'UTC',
    privacy_retention_days  integer not null default 7,
    updated_at              timestamptz not null default now(),
    updated_by              bigint references users (id) on delete set null,
    constraint platform_settings_singleton check (id = 1),
    constraint platform_settings_retention_range check (
        retention_daily between 0 and 366 and retention_weekly between 0 and 366
        and retention_monthly between 0 and 366),
    constraint platform_settings_preset_known check (
        schedule_preset in ('daily_2am', 'daily_3am', 'every_12h', 'weekly_sun_2am', 'disabled')),
    constraint platform_settings_privacy_days_range check (privacy_retention_days between 1 and 90)
);
insert into platform_settings (id) values (1);
