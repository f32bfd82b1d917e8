-- The org a mail is about, for the mails sent to an org's admins (its exports,
-- its webhooks): when the mail is sent (which may be hours after it was queued,
-- while the mail server was down), the person must still be an active admin of
-- that org, and still want the kind; otherwise it is given up unsent (issue 34's
-- review). A deleted org takes its unsent mails with it.
alter table mail_messages add column org_id bigint references organizations (id) on delete cascade;
