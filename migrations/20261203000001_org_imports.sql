-- Restores of an org snapshot into a new org, requested by a platform admin from
-- /platform/imports or the API (src/imports). Each row is created with its job
-- (queue `imports`) in one transaction:
--   pending -> running -> completed | failed.
-- The row names no `org_id`: it belongs to the platform, not to an org.
create table org_imports (
    id                text primary key,            -- a ULID, also the apalis task id
    status            text not null default 'pending',
    -- The new org, as requested (checked again by the engine when the job runs).
    slug              text not null,
    name              text not null,
    -- The source: a completed export of this platform, or a file uploaded to the
    -- platform bucket (deleted once the import has finished, either way).
    source_export_id  text,
    upload_key        text,
    upload_bytes      bigint,
    -- Where the request came from: the page or the JSON API.
    via               text not null default 'ui',
    requested_by      bigint references users (id) on delete set null,
    created_at        timestamptz not null default now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    -- The job attempt that holds the row (a rerun after a crash takes it over).
    attempt           integer not null default 0,
    restored_org_id   bigint references organizations (id) on delete set null,
    -- The engine's report (counts, people, media) once completed.
    report            jsonb,
    error             text,
    constraint org_imports_status_known check (status in ('pending', 'running', 'completed', 'failed')),
    constraint org_imports_via_known check (via in ('ui', 'api')),
    constraint org_imports_one_source check ((source_export_id is null) <> (upload_key is null)),
    constraint org_imports_upload_has_size check (upload_key is null or upload_bytes > 0),
    constraint org_imports_name_length check (length(btrim(name)) between 1 and 200)
);

-- Two active imports cannot target one slug: a database fact.
create unique index org_imports_one_active_per_slug on org_imports (slug)
    where status in ('pending', 'running');
create index org_imports_created_idx on org_imports (created_at desc, id desc);
