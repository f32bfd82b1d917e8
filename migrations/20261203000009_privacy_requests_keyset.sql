-- The data-subject histories (a person's own, and every request on the platform
-- page) page back in time by keyset, (created_at, id) below the last one shown.
create index privacy_requests_user_created_id_idx on privacy_requests (user_id, created_at desc, id desc);
drop index privacy_requests_user_created_idx;
create index privacy_requests_created_id_idx on privacy_requests (created_at desc, id desc);
