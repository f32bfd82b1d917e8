-- API tokens' lifecycle (issue 18): every token expires, a token may be limited to
-- one org, and a token can be revoked (`revoked_at` existed already; `token revoke`
-- and /me/tokens set it). See src/auth/tokens.rs and the README's "API tokens".

alter table api_tokens
    add column expires_at timestamptz,
    -- The org the token is limited to (null: every org of its user). Not named
    -- `org_id`: the token is its user's, not a record of the org, and never part of
    -- an org's snapshot. The org's removal removes its scoped tokens.
    add column scope_org_id bigint,
    add constraint api_tokens_scope_org_fkey
        foreign key (scope_org_id) references organizations (id) on delete cascade;

-- Tokens made before this change get 90 days (the default of a new token) from the
-- moment this migration runs, not from their creation: counted from creation, every
-- token older than 90 days would stop working at the upgrade without warning, and
-- the scripts using them with it. Their owners get the same 90 days to replace them
-- that a new token has.
update api_tokens set expires_at = now() + interval '90 days' where expires_at is null;

alter table api_tokens
    alter column expires_at set not null,
    add constraint api_tokens_expires_after_creation check (expires_at > created_at);
