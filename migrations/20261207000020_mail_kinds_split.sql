-- Mail kinds split (issue 34): the one kind 'export' (every ended export, to every
-- org admin, one switch) becomes three, so that a daily schedule no longer mails
-- every admin every day and switching off the routine mail keeps the failures:
--   'export_failed'              an export failed, to the org's active admins (on
--                                unless switched off);
--   'export_completed_mine'      a manual export completed, to the person who
--                                started it while still an active admin of the org
--                                (on unless switched off);
--   'export_completed_scheduled' a scheduled export completed, to the org's active
--                                admins who switched it on (off unless switched on).
-- See src/mail/mod.rs (`Kind`) and README *Email*.
--
-- Swapping the check constraints locks mail_opt_outs and mail_messages until the
-- migration commits, and the new mail_messages check reads its rows (90 days of
-- mail) once. A transaction that queues a mail (a run ending) waits for that; the
-- wait for a transaction holding those tables is cut at 10 s: the migration then
-- fails with nothing changed, and the next start tries again.
set local lock_timeout = '10s';

-- Kinds that are off unless a person switches them on: a row here is that choice
-- (absent: they do not get it). The kinds that are on unless switched off keep
-- theirs in mail_opt_outs.
create table mail_opt_ins (
    user_id     bigint not null references users (id) on delete cascade,
    kind        text not null,
    created_at  timestamptz not null default now(),
    constraint mail_opt_ins_pkey primary key (user_id, kind),
    constraint mail_opt_ins_kind check (kind in ('export_completed_scheduled'))
);

-- The old opt-out carries over to both kinds that are on by default, with its
-- time: whoever had switched "Exports" off stays off for failures and for their
-- own completed exports. Scheduled completions are off for everyone to begin
-- with (no opt-in row), so they stay off too.
alter table mail_opt_outs drop constraint mail_opt_outs_kind;
insert into mail_opt_outs (user_id, kind, created_at)
select o.user_id, k.kind, o.created_at
from mail_opt_outs o cross join (values ('export_failed'), ('export_completed_mine')) as k (kind)
where o.kind = 'export'
on conflict on constraint mail_opt_outs_pkey do nothing;
delete from mail_opt_outs where kind = 'export';
alter table mail_opt_outs add constraint mail_opt_outs_kind
    check (kind in ('export_failed', 'export_completed_mine', 'webhook', 'schedule'));

-- Mails queued before the split keep the kind 'export' (what they were: one mail
-- to every admin; no new kind describes them truthfully). None is queued with it
-- from now on, and they are deleted with every mail after 90 days. Count the
-- volume of each new kind with `select kind, count(*) from mail_messages group by 1`.
alter table mail_messages drop constraint mail_messages_kind;
alter table mail_messages add constraint mail_messages_kind
    check (kind in ('export_failed', 'export_completed_mine', 'export_completed_scheduled',
                    'webhook', 'schedule', 'privacy', 'export'));
