-- A failed run or data-subject request keeps two texts: `error`, the reason in plain
-- words shown to the people who asked (an org's admins, the member), and
-- `error_detail`, the whole error chain (bucket, endpoint, SQL) for platform admins
-- and the log.
alter table export_runs add column error_detail text;
alter table privacy_requests add column error_detail text;

-- Failures recorded before this change kept the chain in `error`: it becomes the
-- detail, and the plain reason a general one.
update export_runs
   set error_detail = error,
       error = 'The export failed. A platform admin can see the details.'
 where error is not null;
update privacy_requests
   set error_detail = error,
       error = 'The data-subject export failed. A platform admin can see the details.'
 where error is not null;
