-- Mail (issue 19): each mail queued is a row here, written in the same transaction
-- as the change it tells of; the mail job (queue `mail`) sends it and records each
-- attempt, so a failing mail server is visible. See src/mail/.
create table mail_messages (
    -- A ULID: the `.eml` file's name in the outbox and the Message-ID's left part.
    id           text primary key,
    user_id      bigint not null references users (id) on delete cascade,
    kind         text not null,
    -- The address when the mail was queued.
    recipient    text not null,
    subject      text not null,
    body         text not null,
    created_at   timestamptz not null default now(),
    attempts     int not null default 0,
    last_error   text,
    sent_at      timestamptz,
    -- Set when the last retry failed: the mail is given up.
    failed_at    timestamptz,
    -- When its next attempt is due: housekeeping queues a new job for a mail long
    -- past it (its job was lost, say to a database outage).
    next_attempt_at timestamptz not null default now(),
    constraint mail_messages_kind check (kind in ('export', 'webhook', 'schedule', 'privacy'))
);

create index mail_messages_user on mail_messages (user_id);
create index mail_messages_due on mail_messages (next_attempt_at) where sent_at is null and failed_at is null;
create index mail_messages_old on mail_messages (created_at);

-- The kinds of mail a person switched off (absent: they get it). The data-subject
-- mail ('privacy') cannot be switched off: it answers their own request.
create table mail_opt_outs (
    user_id     bigint not null references users (id) on delete cascade,
    kind        text not null,
    created_at  timestamptz not null default now(),
    constraint mail_opt_outs_pkey primary key (user_id, kind),
    constraint mail_opt_outs_kind check (kind in ('export', 'webhook', 'schedule'))
);
