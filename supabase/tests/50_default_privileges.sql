/*
 * Closed by default (20261128000100_foundation.sql, "default privileges"):
 *   - no sequence in public grants anything to anon or authenticated (setval on an audited table's
 *     id sequence would stop every audited RPC), checked from the catalog for every sequence;
 *   - the migration role's default privileges: PUBLIC gets no EXECUTE on new functions (globally),
 *     anon/authenticated get nothing on new functions or sequences in public;
 *   - and in effect: a function and a sequence created now (rolled back) are closed to them.
 */
begin;
\ir _lib/helpers.psql

create temp table public_sequences as
select c.oid::regclass::text as seq
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where n.nspname = 'public' and c.relkind = 'S';

select plan(
    1                                                        -- there are sequences
  + (select count(*)::int from public_sequences) * 2         -- anon, authenticated: nothing
  + 3                                                        -- default ACL entries
  + 6                                                        -- a new function and sequence
);

select isnt_empty('select 1 from public_sequences',
                  'public has sequences (the checks below are not vacuous)');

select is(
  (select array_agg(p order by p) from unnest(array['USAGE', 'SELECT', 'UPDATE']) p
   where has_sequence_privilege(r.role, s.seq, p)),
  null, format('%s has no privilege on sequence %s', r.role, s.seq))
from public_sequences s cross join (values ('anon'), ('authenticated')) r(role)
order by s.seq, r.role;

-- pg_default_acl: the revocations are recorded for the migration role.
select ok(
  exists (select 1 from pg_default_acl d
          where d.defaclrole = 'postgres'::regrole and d.defaclnamespace = 0 and d.defaclobjtype = 'f'
            and not exists (select 1 from aclexplode(d.defaclacl) a
                            where a.grantee = 0 and a.privilege_type = 'EXECUTE')),
  'default privileges: new functions of postgres are not executable by PUBLIC (global)');
select ok(
  not exists (select 1 from pg_default_acl d, aclexplode(d.defaclacl) a
              where d.defaclrole = 'postgres'::regrole and d.defaclnamespace = 'public'::regnamespace
                and d.defaclobjtype = 'f'
                and a.grantee in ('anon'::regrole, 'authenticated'::regrole)),
  'default privileges: new functions in public grant nothing to anon or authenticated');
select ok(
  not exists (select 1 from pg_default_acl d, aclexplode(d.defaclacl) a
              where d.defaclrole = 'postgres'::regrole and d.defaclnamespace = 'public'::regnamespace
                and d.defaclobjtype = 'S'
                and a.grantee in ('anon'::regrole, 'authenticated'::regrole)),
  'default privileges: new sequences in public grant nothing to anon or authenticated');

-- In effect, as a later migration would create them.
create function public.tap_added_later() returns integer language sql set search_path = '' as 'select 1';
create sequence public.tap_added_later_seq;
select function_privs_are('public', 'tap_added_later', '{}'::name[], 'anon', '{}'::name[],
                          'a function added later: anon cannot execute it');
select function_privs_are('public', 'tap_added_later', '{}'::name[], 'authenticated', '{}'::name[],
                          'a function added later: authenticated cannot execute it');
select function_privs_are('public', 'tap_added_later', '{}'::name[], 'service_role', '{EXECUTE}'::name[],
                          'a function added later: service_role can execute it');
select sequence_privs_are('public', 'tap_added_later_seq', 'anon', '{}'::text[],
                          'a sequence added later: anon has no privilege');
select sequence_privs_are('public', 'tap_added_later_seq', 'authenticated', '{}'::text[],
                          'a sequence added later: authenticated has no privilege');
select is(tap.attempt('authenticated', 'a0000000-0000-4000-8000-000000000001',
                      $$select public.tap_added_later()$$),
          'denied', 'a function added later: a signed-in user''s call is refused (42501)');

select * from finish();
rollback;
