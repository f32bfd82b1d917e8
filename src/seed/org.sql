-- Fills one org. Placeholders: :org_id, :slug, :n (members). About 16 rows per member.
create temp table seed_members (i int primary key, user_id bigint not null, membership_id bigint) on commit drop;

insert into users (email, display_name, password_hash)
select format('member%s@:slug.test', i), format('Member %s of :slug', i), '!'
from generate_series(1, :n) i
on conflict (email) do nothing;

insert into seed_members (i, user_id)
select i, u.id from generate_series(1, :n) i join users u on u.email = format('member%s@:slug.test', i);

insert into regions (org_id, code, name)
select :org_id, 'R' || g, (array['North', 'South', 'East', 'West', 'Central'])[1 + g % 5] || ' Region ' || g
from generate_series(1, greatest(2, :n / 200)) g;

insert into chapters (org_id, region_id, name, city, founded_on)
select :org_id, r.a[1 + g % array_length(r.a, 1)], 'Chapter ' || g,
       (array['Springfield', 'Riverton', 'Lakeside', 'Hillview', 'Fairmont', 'Oakdale'])[1 + g % 6],
       date '1990-01-01' + (g * 37 % 12000)
from generate_series(1, greatest(4, :n / 50)) g,
     (select array_agg(id order by id) a from regions where org_id = :org_id) r;

with c as (select array_agg(id order by id) a from chapters where org_id = :org_id),
ins as (
    insert into memberships (org_id, user_id, role, status, chapter_id, member_no, joined_on, renews_on)
    select :org_id, sm.user_id, 'member',
           case when sm.i % 20 = 0 then 'lapsed' when sm.i % 97 = 0 then 'suspended' else 'active' end,
           c.a[1 + sm.i % array_length(c.a, 1)], 'M' || lpad(sm.i::text, 8, '0'),
           date '2015-01-01' + (sm.i * 13 % 3650), date '2027-01-01' + (sm.i % 365)
    from seed_members sm, c
    returning id, user_id)
update seed_members sm set membership_id = ins.id from ins where ins.user_id = sm.user_id;

insert into user_profiles (org_id, user_id, first_name, last_name, email, phone, city, country, bio)
select :org_id, sm.user_id,
       (array['Ana', 'Ben', 'Chloé', 'Dmitri', 'Eve', 'Farah', 'Goran', 'Hana', 'Ivo', 'Jun'])[1 + sm.i % 10],
       (array['Smith', 'Okafor', 'Müller', 'García', 'Nguyen', 'Kowalski', 'Rossi', 'Tanaka'])[1 + sm.i % 8],
       format('member%s@:slug.test', sm.i), '+1-555-' || lpad((sm.i % 10000)::text, 4, '0'),
       (array['Springfield', 'Riverton', 'Lakeside', 'Hillview'])[1 + sm.i % 4],
       (array['US', 'DE', 'FR', 'JP', 'BR'])[1 + sm.i % 5],
       'Member since ' || (2015 + sm.i % 10) || E'. Interests: "governance", \\ quotes and\nnew lines.'
from seed_members sm;

insert into custom_fields (org_id, key, label, field_type, required)
values (:org_id, 'tshirt', 'T-shirt size', 'choice', false),
       (:org_id, 'diet', 'Dietary needs', 'text', false),
       (:org_id, 'license_no', 'License number', 'text', true),
       (:org_id, 'license_exp', 'License expiry', 'date', false),
       (:org_id, 'volunteer', 'Volunteer', 'boolean', false);

insert into custom_field_values (org_id, field_id, membership_id, value)
select :org_id, f.id, sm.membership_id,
       case f.key when 'tshirt' then (array['S', 'M', 'L', 'XL'])[1 + sm.i % 4] else 'L-' || (100000 + sm.i) end
from seed_members sm
join custom_fields f on f.org_id = :org_id and f.key in ('tshirt', 'license_no');

insert into saved_views (org_id, owner_user_id, name, filters)
select :org_id, sm.user_id, 'View ' || sm.i, jsonb_build_object('status', 'active', 'chapter', sm.i % 7)
from seed_members sm where sm.i <= greatest(3, :n / 100);

insert into member_enrichment (org_id, membership_id, source, data)
select :org_id, sm.membership_id, (array['clearbit', 'linkedin', 'manual'])[1 + sm.i % 3],
       jsonb_build_object('employer', 'Company ' || (sm.i % 500), 'seniority', (array['junior', 'mid', 'senior'])[1 + sm.i % 3])
from seed_members sm where sm.i % 2 = 0;

insert into documents (org_id, uploaded_by, title, content_type, size_bytes, object_key)
select :org_id, sm.user_id, 'Document ' || sm.i, (array['application/pdf', 'image/png', 'text/csv'])[1 + sm.i % 3],
       10000 + sm.i * 7 % 5000000, 'documents/' || sm.i || '/file.bin'
from seed_members sm where sm.i % 10 = 0;

insert into audit_log (org_id, actor_user_id, action, target, details, created_at)
select :org_id, sm.user_id, (array['member.updated', 'invoice.sent', 'forum.post', 'document.uploaded'])[1 + sm.i % 4],
       'membership:' || sm.membership_id, jsonb_build_object('seq', sm.i), now() - make_interval(mins => sm.i)
from seed_members sm;

insert into forum_posts (org_id, author_user_id, title, body, pinned, created_at)
select :org_id, sm.user_id, 'Topic ' || sm.i || ': ' || (array['Annual meeting', 'Dues', 'Volunteers', 'Chapter news'])[1 + sm.i % 4],
       repeat('Lorem ipsum dolor sit amet, consectetur adipiscing elit. ', 1 + sm.i % 4) || 'Post ' || sm.i || '.',
       sm.i % 50 = 0, now() - make_interval(hours => sm.i)
from seed_members sm;

insert into forum_comments (org_id, post_id, author_user_id, body, created_at)
select :org_id, p.a[1 + (sm.i * 7 + k) % array_length(p.a, 1)], sm.user_id,
       'Reply ' || k || ' by member ' || sm.i || '. Agreed, let''s discuss at the next meeting.', now() - make_interval(mins => sm.i * k)
from seed_members sm, generate_series(1, 2) k,
     (select array_agg(id order by id) a from forum_posts where org_id = :org_id) p;

insert into compliance_records (org_id, membership_id, kind, status, due_on, completed_on)
select :org_id, sm.membership_id, (array['background_check', 'code_of_conduct', 'cpd_hours'])[1 + sm.i % 3],
       case when sm.i % 4 = 0 then 'overdue' else 'complete' end, date '2026-01-01' + sm.i % 365,
       case when sm.i % 4 = 0 then null else date '2025-06-01' + sm.i % 180 end
from seed_members sm where sm.i % 2 = 1;

-- Every other election is an open ballot (a show of hands on a motion), the rest
-- secret; votes fill election_participants through the table's trigger.
insert into elections (org_id, title, opens_at, closes_at, ballot)
select :org_id, case when g % 2 = 0 then 'Motion ' || g || ' (open ballot)' else 'Board election ' || (2020 + g) end,
       make_timestamptz(2020 + g, 3, 1, 9, 0, 0, 'UTC'), make_timestamptz(2020 + g, 3, 15, 17, 0, 0, 'UTC'),
       case when g % 2 = 0 then 'open' else 'secret' end
from generate_series(1, greatest(2, :n / 500)) g;

insert into election_votes (org_id, election_id, voter_user_id, choice, cast_at)
select :org_id, e.a[1 + (sm.i / 2) % array_length(e.a, 1)], sm.user_id, 'Candidate ' || (1 + sm.i % 5), now() - make_interval(days => sm.i % 900)
from seed_members sm, (select array_agg(id order by id) a from elections where org_id = :org_id) e
where sm.i % 2 = 0;

-- The participation register: the votes' trigger keeps it, but fast seeding runs
-- with triggers off.
insert into election_participants (org_id, election_id, user_id)
select org_id, election_id, voter_user_id from election_votes where org_id = :org_id
order by election_id, voter_user_id
on conflict on constraint election_participants_once do nothing;

insert into invoices (org_id, membership_id, number, issued_on, due_on, total_cents, currency, status)
select :org_id, sm.membership_id, 'INV-' || lpad(sm.i::text, 8, '0'), date '2026-01-01' + sm.i % 300,
       date '2026-02-01' + sm.i % 300, 2 * (5000 + sm.i % 20000), 'USD',
       (array['paid', 'paid', 'paid', 'open', 'void'])[1 + sm.i % 5]
from seed_members sm;

insert into invoice_lines (org_id, invoice_id, description, quantity, unit_cents)
select :org_id, i.id, (array['Annual dues', 'Conference ticket'])[k], 1, i.total_cents / 2
from invoices i, generate_series(1, 2) k where i.org_id = :org_id;

insert into payments (org_id, invoice_id, amount_cents, method, reference, paid_at)
select :org_id, i.id, i.total_cents, (array['card', 'ach', 'check'])[1 + i.id % 3], 'PAY-' || i.id,
       i.issued_on + 10 + interval '9 hours'
from invoices i where i.org_id = :org_id and i.id % 5 <> 0;

insert into foundation_funds (org_id, name, purpose, target_cents)
select :org_id, 'Fund ' || g, (array['Scholarships', 'Research', 'Hardship relief'])[1 + g % 3], 10000000::bigint * g
from generate_series(1, greatest(3, :n / 1000)) g;

insert into donations (org_id, fund_id, donor_user_id, amount_cents, anonymous, donated_at)
select :org_id, f.a[1 + sm.i % array_length(f.a, 1)], sm.user_id, 1000 + sm.i % 100000, sm.i % 9 = 0,
       now() - make_interval(days => sm.i % 1500)
from seed_members sm, (select array_agg(id order by id) a from foundation_funds where org_id = :org_id) f
where sm.i % 2 = 0;

insert into courses (org_id, title, description, credits)
select :org_id, 'Course ' || g, 'A course on ' || (array['ethics', 'leadership', 'finance', 'safety'])[1 + g % 4] || '.', 1 + g % 5
from generate_series(1, greatest(5, :n / 100)) g;

insert into enrollments (org_id, course_id, user_id, status, enrolled_at, completed_at)
select :org_id, c.a[1 + sm.i % array_length(c.a, 1)], sm.user_id,
       case when sm.i % 3 = 0 then 'in_progress' else 'completed' end, now() - make_interval(days => 30 + sm.i % 700),
       case when sm.i % 3 = 0 then null else now() - make_interval(days => sm.i % 30) end
from seed_members sm, (select array_agg(id order by id) a from courses where org_id = :org_id) c;

insert into alumni_profiles (org_id, user_id, graduation_year, employer, job_title)
select :org_id, sm.user_id, 1980 + sm.i % 45, 'Company ' || (sm.i % 700), (array['Engineer', 'Manager', 'Director', 'Consultant'])[1 + sm.i % 4]
from seed_members sm where sm.i % 4 = 0;

insert into career_postings (org_id, posted_by, title, company, location, description, posted_at)
select :org_id, sm.user_id, (array['Analyst', 'Engineer', 'Coordinator'])[1 + sm.i % 3] || ' #' || sm.i,
       'Company ' || (sm.i % 300), (array['Remote', 'Berlin', 'Austin', 'Osaka'])[1 + sm.i % 4],
       'We are hiring. Apply through the member portal.', now() - make_interval(days => sm.i % 120)
from seed_members sm where sm.i % 20 = 0;
