-- Addresses (an IPv4 address, or an IPv6 /64) that signed in to an account in the
-- last 30 days (issue 33's review). Attempts at an account from all addresses
-- together are a rate (10 a minute); an attack from many addresses could keep an
-- account at that rate and so keep its owner out. An attempt from an address that
-- signed in to the account before is not held back by that rate (the per-address
-- and per-pair limits still hold). Rows older than 30 days are deleted by
-- housekeeping: they hold an email and an address.
create table login_known_addresses (
    account         text not null,
    address         text not null,
    last_success_at timestamptz not null default now(),
    constraint login_known_addresses_pk primary key (account, address)
);

create index login_known_addresses_last_success_idx on login_known_addresses (last_success_at);
