-- Sign-in limits by IPv6 network (issue 33). A failed sign-in from IPv6 is counted
-- under its /64 (`ip`, as before) and also under the /56 and /48 that hold it: an
-- ISP customer commonly has a /56 (256 /64s), so limits per /64 alone were 256
-- times weaker for them. Null for IPv4, where an address is one client. Rows kept
-- from before this migration have none; they age out within the 15-minute window.
alter table login_failures add column net56 text, add column net48 text;

create index login_failures_net56_idx on login_failures (net56, attempted_at) where net56 is not null;
create index login_failures_net48_idx on login_failures (net48, attempted_at) where net48 is not null;

comment on column login_failures.net56 is 'the IPv6 /56 holding the client address, such as 2001:db8:1:200::/56; null for IPv4';
comment on column login_failures.net48 is 'the IPv6 /48 holding the client address, such as 2001:db8:1::/48; null for IPv4';
