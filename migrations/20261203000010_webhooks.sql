-- Webhooks: an org's endpoints, the deliveries of its events to them, and each
-- attempt of each delivery (what the notifications page shows). Deleting an
-- endpoint deletes its pending deliveries: their jobs then find nothing to send.
create table webhook_endpoints (
    id             text primary key,             -- a ULID
    org_id         bigint not null references organizations (id) on delete cascade,
    url            text not null,
    -- `whsec_` + base64 of 32 random bytes (Standard Webhooks); shown once.
    secret         text not null,
    created_by     bigint references users (id) on delete set null,
    created_at     timestamptz not null default now(),
    rotated_at     timestamptz,
    -- Set when a delivery gave up after its last retry; cleared by the next success.
    failing_since  timestamptz,
    constraint webhook_endpoints_url_length check (length(url) between 8 and 2000),
    constraint webhook_endpoints_url_scheme check (url ~ '^https?://')
);
create index webhook_endpoints_org_idx on webhook_endpoints (org_id, created_at);

create table webhook_deliveries (
    id               text primary key,           -- a ULID: the `webhook-id` header
    endpoint_id      text not null references webhook_endpoints (id) on delete cascade,
    org_id           bigint not null references organizations (id) on delete cascade,
    event            text not null,
    -- The exact bytes signed and sent, the same on every attempt.
    body             text not null,
    created_at       timestamptz not null default now(),
    status           text not null default 'pending',
    attempts         integer not null default 0,
    next_attempt_at  timestamptz,
    finished_at      timestamptz,
    constraint webhook_deliveries_status_known check (status in ('pending', 'delivered', 'failed'))
);
create index webhook_deliveries_endpoint_idx on webhook_deliveries (endpoint_id, created_at desc);
create index webhook_deliveries_org_idx on webhook_deliveries (org_id);
create index webhook_deliveries_old_idx on webhook_deliveries (created_at);
-- Housekeeping finds deliveries whose job was lost (pending, long past due).
create index webhook_deliveries_due_idx on webhook_deliveries (next_attempt_at) where status = 'pending';

create table webhook_attempts (
    id           bigint generated always as identity primary key,
    delivery_id  text not null references webhook_deliveries (id) on delete cascade,
    endpoint_id  text not null references webhook_endpoints (id) on delete cascade,
    attempt      integer not null,
    at           timestamptz not null default now(),
    -- The answer's status, none when there was no answer (refused, timed out).
    status_code  integer,
    duration_ms  integer not null,
    error        text
);
create index webhook_attempts_endpoint_idx on webhook_attempts (endpoint_id, at desc);
create index webhook_attempts_delivery_idx on webhook_attempts (delivery_id);
