-- Ballot secrecy (issue 18, item 6; docs/snapshot-format.md, "Elections").
--
-- Each election has a ballot kind: 'secret' (the default) or 'open'. Existing
-- elections become secret: nothing recorded says their voters were told their
-- choice would be visible to the org, so the kind that reveals nothing is the only
-- safe guess; an org that ran an open ballot can say so afterwards.
alter table elections
    add column ballot text not null default 'secret',
    add constraint elections_ballot_known check (ballot in ('secret', 'open'));

-- A vote keeps its voter in the database (the member's own data-subject file shows
-- their votes), but an org snapshot of a secret ballot carries neither the voter nor
-- the time. Restoring such a snapshot gives votes without both, so they are nullable:
-- null means "not known here: restored from a snapshot of a secret ballot".
alter table election_votes
    alter column voter_user_id drop not null,
    alter column cast_at drop not null;

-- Who took part in an election, kept apart from what they chose: the participation
-- register an org keeps (and exports) for a secret ballot too. No time is kept, so
-- nothing joins a participant to a vote.
create table election_participants (
    id           bigint generated always as identity primary key,
    org_id       bigint not null references organizations (id) on delete cascade,
    election_id  bigint not null references elections (id) on delete cascade,
    user_id      bigint not null references users (id) on delete cascade,
    constraint election_participants_once unique (election_id, user_id)
);
create index election_participants_org_id_idx on election_participants (org_id);
create index election_participants_user_id_idx on election_participants (user_id);

-- Every vote with a voter has its participant, whoever writes the vote: the
-- database keeps the register, not each writer.
create function election_participant_of_vote() returns trigger language plpgsql as $$
begin
    insert into election_participants (org_id, election_id, user_id)
    values (new.org_id, new.election_id, new.voter_user_id)
    on conflict on constraint election_participants_once do nothing;
    return null;
end
$$;
create trigger election_votes_participant after insert on election_votes
    for each row when (new.voter_user_id is not null) execute function election_participant_of_vote();

-- The register of votes cast before this migration, in an order unrelated to casting.
insert into election_participants (org_id, election_id, user_id)
select org_id, election_id, voter_user_id from election_votes
order by election_id, voter_user_id;

-- A secret ballot stays secret once anyone has voted: the voters were told their
-- choice was secret, and an open kind would put every voter, time and order into
-- the next org snapshot. (Open -> secret is always allowed.)
create function elections_secret_stays_secret() returns trigger language plpgsql as $$
begin
    if old.ballot = 'secret' and new.ballot <> 'secret'
       and exists (select 1 from election_votes v where v.election_id = old.id) then
        raise exception 'election % is a secret ballot with votes: it cannot be made open', old.id
            using errcode = 'check_violation';
    end if;
    return new;
end
$$;
create trigger elections_secret_stays_secret before update of ballot on elections
    for each row execute function elections_secret_stays_secret();
