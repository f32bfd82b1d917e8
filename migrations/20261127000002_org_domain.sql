-- The org-scoped domain: every table here has `org_id` and is one section of the
-- snapshot, named after the table (see src/exports/sections.rs).

-- ---------------------------------------------------------------- core
create table regions (
    id          bigint generated always as identity primary key,
    org_id      bigint not null references organizations (id) on delete cascade,
    code        text not null,
    name        text not null,
    created_at  timestamptz not null default now(),
    constraint regions_org_code_key unique (org_id, code)
);

create table chapters (
    id          bigint generated always as identity primary key,
    org_id      bigint not null references organizations (id) on delete cascade,
    region_id   bigint not null references regions (id) on delete cascade,
    name        text not null,
    city        text not null,
    founded_on  date not null
);
create index chapters_org_id_idx on chapters (org_id);

create table memberships (
    id          bigint generated always as identity primary key,
    org_id      bigint not null references organizations (id) on delete cascade,
    user_id     bigint not null references users (id) on delete cascade,
    role        text not null default 'member',
    status      text not null default 'active',
    chapter_id  bigint references chapters (id) on delete set null,
    member_no   text not null,
    joined_on   date not null default current_date,
    renews_on   date,
    constraint memberships_org_user_key unique (org_id, user_id),
    constraint memberships_role_known check (role in ('admin', 'member')),
    constraint memberships_status_known check (status in ('active', 'lapsed', 'suspended'))
);
create index memberships_user_id_idx on memberships (user_id);

-- The person as the org knows them (an org may hold a different address or
-- phone number than the platform account).
create table user_profiles (
    id            bigint generated always as identity primary key,
    org_id        bigint not null references organizations (id) on delete cascade,
    user_id       bigint not null references users (id) on delete cascade,
    first_name    text not null,
    last_name     text not null,
    email         text not null,
    phone         text,
    city          text,
    country       text not null default 'US',
    bio           text,
    updated_at    timestamptz not null default now(),
    constraint user_profiles_org_user_key unique (org_id, user_id)
);

create table custom_fields (
    id          bigint generated always as identity primary key,
    org_id      bigint not null references organizations (id) on delete cascade,
    key         text not null,
    label       text not null,
    field_type  text not null,
    required    boolean not null default false,
    constraint custom_fields_org_key_key unique (org_id, key),
    constraint custom_fields_type_known check (field_type in ('text', 'number', 'date', 'choice', 'boolean'))
);

create table custom_field_values (
    id             bigint generated always as identity primary key,
    org_id         bigint not null references organizations (id) on delete cascade,
    field_id       bigint not null references custom_fields (id) on delete cascade,
    membership_id  bigint not null references memberships (id) on delete cascade,
    value          text not null
);
create index custom_field_values_org_id_idx on custom_field_values (org_id);
create index custom_field_values_membership_id_idx on custom_field_values (membership_id);

create table saved_views (
    id             bigint generated always as identity primary key,
    org_id         bigint not null references organizations (id) on delete cascade,
    owner_user_id  bigint references users (id) on delete set null,
    name           text not null,
    filters        jsonb not null default '{}',
    created_at     timestamptz not null default now()
);
create index saved_views_org_id_idx on saved_views (org_id);

create table member_enrichment (
    id             bigint generated always as identity primary key,
    org_id         bigint not null references organizations (id) on delete cascade,
    membership_id  bigint not null references memberships (id) on delete cascade,
    source         text not null,
    data           jsonb not null,
    enriched_at    timestamptz not null default now()
);
create index member_enrichment_org_id_idx on member_enrichment (org_id);
create index member_enrichment_membership_id_idx on member_enrichment (membership_id);

-- Document metadata; the binary lives in the org's bucket under object_key and
-- is never copied into a snapshot.
create table documents (
    id            bigint generated always as identity primary key,
    org_id        bigint not null references organizations (id) on delete cascade,
    uploaded_by   bigint references users (id) on delete set null,
    title         text not null,
    content_type  text not null,
    size_bytes    bigint not null,
    object_key    text not null,
    created_at    timestamptz not null default now()
);
create index documents_org_id_idx on documents (org_id);

-- Who did what. org_id is null for platform-level actions.
create table audit_log (
    id             bigint generated always as identity primary key,
    org_id         bigint references organizations (id) on delete cascade,
    actor_user_id  bigint references users (id) on delete set null,
    action         text not null,
    target         text,
    details        jsonb not null default '{}',
    created_at     timestamptz not null default now()
);
create index audit_log_org_id_idx on audit_log (org_id, created_at);
create index audit_log_actor_idx on audit_log (actor_user_id);

-- ---------------------------------------------------------------- engage
create table forum_posts (
    id              bigint generated always as identity primary key,
    org_id          bigint not null references organizations (id) on delete cascade,
    author_user_id  bigint references users (id) on delete set null,
    title           text not null,
    body            text not null,
    pinned          boolean not null default false,
    created_at      timestamptz not null default now()
);
create index forum_posts_org_id_idx on forum_posts (org_id);
create index forum_posts_author_idx on forum_posts (author_user_id);

create table forum_comments (
    id              bigint generated always as identity primary key,
    org_id          bigint not null references organizations (id) on delete cascade,
    post_id         bigint not null references forum_posts (id) on delete cascade,
    author_user_id  bigint references users (id) on delete set null,
    body            text not null,
    created_at      timestamptz not null default now()
);
create index forum_comments_org_id_idx on forum_comments (org_id);
create index forum_comments_author_idx on forum_comments (author_user_id);

-- ---------------------------------------------------------------- operations
create table compliance_records (
    id             bigint generated always as identity primary key,
    org_id         bigint not null references organizations (id) on delete cascade,
    membership_id  bigint not null references memberships (id) on delete cascade,
    kind           text not null,
    status         text not null,
    due_on         date not null,
    completed_on   date
);
create index compliance_records_org_id_idx on compliance_records (org_id);

create table elections (
    id         bigint generated always as identity primary key,
    org_id     bigint not null references organizations (id) on delete cascade,
    title      text not null,
    opens_at   timestamptz not null,
    closes_at  timestamptz not null,
    constraint elections_window check (closes_at > opens_at)
);
create index elections_org_id_idx on elections (org_id);

create table election_votes (
    id             bigint generated always as identity primary key,
    org_id         bigint not null references organizations (id) on delete cascade,
    election_id    bigint not null references elections (id) on delete cascade,
    voter_user_id  bigint not null references users (id) on delete cascade,
    choice         text not null,
    cast_at        timestamptz not null default now(),
    constraint election_votes_one_per_voter unique (election_id, voter_user_id)
);
create index election_votes_org_id_idx on election_votes (org_id);

create table invoices (
    id             bigint generated always as identity primary key,
    org_id         bigint not null references organizations (id) on delete cascade,
    membership_id  bigint not null references memberships (id) on delete cascade,
    number         text not null,
    issued_on      date not null,
    due_on         date not null,
    total_cents    bigint not null,
    currency       text not null default 'USD',
    status         text not null,
    constraint invoices_org_number_key unique (org_id, number),
    constraint invoices_status_known check (status in ('draft', 'open', 'paid', 'void'))
);

create table invoice_lines (
    id           bigint generated always as identity primary key,
    org_id       bigint not null references organizations (id) on delete cascade,
    invoice_id   bigint not null references invoices (id) on delete cascade,
    description  text not null,
    quantity     integer not null,
    unit_cents   bigint not null
);
create index invoice_lines_org_id_idx on invoice_lines (org_id);

create table payments (
    id            bigint generated always as identity primary key,
    org_id        bigint not null references organizations (id) on delete cascade,
    invoice_id    bigint not null references invoices (id) on delete cascade,
    amount_cents  bigint not null,
    method        text not null,
    reference     text not null,
    paid_at       timestamptz not null
);
create index payments_org_id_idx on payments (org_id);

-- ---------------------------------------------------------------- foundation
create table foundation_funds (
    id            bigint generated always as identity primary key,
    org_id        bigint not null references organizations (id) on delete cascade,
    name          text not null,
    purpose       text not null,
    target_cents  bigint not null
);
create index foundation_funds_org_id_idx on foundation_funds (org_id);

create table donations (
    id              bigint generated always as identity primary key,
    org_id          bigint not null references organizations (id) on delete cascade,
    fund_id         bigint not null references foundation_funds (id) on delete cascade,
    donor_user_id   bigint references users (id) on delete set null,
    amount_cents    bigint not null,
    anonymous       boolean not null default false,
    donated_at      timestamptz not null
);
create index donations_org_id_idx on donations (org_id);
create index donations_donor_idx on donations (donor_user_id);

-- ---------------------------------------------------------------- learning
create table courses (
    id           bigint generated always as identity primary key,
    org_id       bigint not null references organizations (id) on delete cascade,
    title        text not null,
    description  text not null,
    credits      integer not null
);
create index courses_org_id_idx on courses (org_id);

create table enrollments (
    id            bigint generated always as identity primary key,
    org_id        bigint not null references organizations (id) on delete cascade,
    course_id     bigint not null references courses (id) on delete cascade,
    user_id       bigint not null references users (id) on delete cascade,
    status        text not null,
    enrolled_at   timestamptz not null,
    completed_at  timestamptz
);
create index enrollments_org_id_idx on enrollments (org_id);
create index enrollments_user_id_idx on enrollments (user_id);

-- ---------------------------------------------------------------- alumni
create table alumni_profiles (
    id               bigint generated always as identity primary key,
    org_id           bigint not null references organizations (id) on delete cascade,
    user_id          bigint not null references users (id) on delete cascade,
    graduation_year  integer not null,
    employer         text,
    job_title        text,
    constraint alumni_profiles_org_user_key unique (org_id, user_id)
);

create table career_postings (
    id           bigint generated always as identity primary key,
    org_id       bigint not null references organizations (id) on delete cascade,
    posted_by    bigint references users (id) on delete set null,
    title        text not null,
    company      text not null,
    location     text not null,
    description  text not null,
    posted_at    timestamptz not null
);
create index career_postings_org_id_idx on career_postings (org_id);

-- ---------------------------------------------------------------- foreign-key indexes
-- Every foreign key gets an index on its referencing column, so deleting an org
-- (offboarding) or a user (erasure) does not scan a whole table per parent row.
create index chapters_region_id_idx on chapters (region_id);
create index memberships_chapter_id_idx on memberships (chapter_id);
create index user_profiles_user_id_idx on user_profiles (user_id);
create index custom_field_values_field_id_idx on custom_field_values (field_id);
create index saved_views_owner_idx on saved_views (owner_user_id);
create index documents_uploaded_by_idx on documents (uploaded_by);
create index forum_comments_post_id_idx on forum_comments (post_id);
create index compliance_records_membership_id_idx on compliance_records (membership_id);
create index election_votes_voter_idx on election_votes (voter_user_id);
create index invoices_membership_id_idx on invoices (membership_id);
create index invoice_lines_invoice_id_idx on invoice_lines (invoice_id);
create index payments_invoice_id_idx on payments (invoice_id);
create index donations_fund_id_idx on donations (fund_id);
create index enrollments_course_id_idx on enrollments (course_id);
create index alumni_profiles_user_id_idx on alumni_profiles (user_id);
create index career_postings_posted_by_idx on career_postings (posted_by);
