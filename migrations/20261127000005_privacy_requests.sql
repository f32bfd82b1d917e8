-- GDPR / CCPA data-subject requests: one person's data across the platform,
-- written to the privacy bucket under privacy/{user-id}/{request-id}.json.gz.
--   pending -> running -> completed | failed, then completed -> expired.
create table privacy_requests (
    id            text primary key,             -- a ULID, also the apalis task id
    user_id       bigint not null references users (id) on delete cascade,
    -- Who asked: the user themselves, or a platform admin on their behalf.
    requested_by  bigint references users (id) on delete set null,
    on_behalf     boolean not null default false,
    reason        text,
    status        text not null default 'pending',
    created_at    timestamptz not null default now(),
    started_at    timestamptz,
    finished_at   timestamptz,
    snapshot_at   timestamptz,
    object_key    text,
    -- The open multipart upload of the current attempt, aborted by a retry.
    upload_id     text,
    size_bytes    bigint,
    sha256        text,
    counts        jsonb,
    attempts      integer not null default 0,
    error         text,
    constraint privacy_requests_status_known check (
        status in ('pending', 'running', 'completed', 'failed', 'expired')),
    -- A request on someone's behalf says why (a ticket number, an email's date).
    constraint privacy_requests_on_behalf_reason check (
        not on_behalf or (reason is not null and length(btrim(reason)) between 3 and 500)),
    constraint privacy_requests_completed_has_file check (
        status <> 'completed' or (object_key is not null and sha256 is not null and size_bytes is not null))
);

-- One request pending or running per person: a database fact.
create unique index privacy_requests_one_active_per_user on privacy_requests (user_id)
    where status in ('pending', 'running');
create index privacy_requests_user_created_idx on privacy_requests (user_id, created_at desc);
create index privacy_requests_requested_by_idx on privacy_requests (requested_by);
create index privacy_requests_completed_idx on privacy_requests (finished_at) where status = 'completed';
