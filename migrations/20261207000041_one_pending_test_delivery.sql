-- One pending test event per webhook endpoint (issue 33). "Send a test event"
-- checked for a pending one and then queued its own, in two steps, so requests at
-- the same moment each queued one. The database holds the rule now: a second
-- pending `webhook.test` delivery of an endpoint violates this index, which the
-- code answers with 409 (`webhooks::ONE_PENDING_TEST`).

-- No process (an older one, during a rolling deploy) may queue a test delivery
-- between the clean-up below and the index; the lock is waited for at most 10 s,
-- then the migration fails with nothing changed and runs again at the next start.
set local lock_timeout = '10s';
lock table webhook_deliveries in share row exclusive mode;

-- Duplicates that race left behind are ended first, the newest of each endpoint
-- kept (ids are ULIDs, so they sort by time); their jobs find them no longer
-- pending and send nothing.
update webhook_deliveries d
   set status = 'failed', finished_at = now(), next_attempt_at = null
 where d.event = 'webhook.test' and d.status = 'pending'
   and exists (select 1 from webhook_deliveries n
                where n.endpoint_id = d.endpoint_id and n.event = 'webhook.test'
                  and n.status = 'pending' and n.id > d.id);

create unique index webhook_deliveries_one_pending_test
    on webhook_deliveries (endpoint_id)
    where event = 'webhook.test' and status = 'pending';
