/*
 * G9: execution_audit_log is append-only for every role, postgres included — UPDATE and DELETE are
 * rejected by a trigger that fires even in replica mode, TRUNCATE is refused; service_role appends,
 * users read only their own rows.
 */
begin;
\ir _lib/helpers.psql

do $$
begin
  perform tap.create_user('a0000000-0000-4000-8000-000000000001', 'owner@example.test');
  perform tap.create_user('b0000000-0000-4000-8000-000000000002', 'other@example.test');
end
$$;
insert into public.execution_audit_log (user_id, event, detail) values
  ('a0000000-0000-4000-8000-000000000001', 'tap.seed', '{"n": 1}'),
  ('b0000000-0000-4000-8000-000000000002', 'tap.seed', '{"n": 2}');

select plan(12);

-- The superuser.
select throws_ok($$update public.execution_audit_log set event = 'tap.rewritten'$$, '42501', null,
                 'postgres cannot update audit rows');
select throws_ok($$delete from public.execution_audit_log$$, '42501', null,
                 'postgres cannot delete audit rows');
select throws_ok($$truncate public.execution_audit_log$$, '42501', null,
                 'postgres cannot truncate the audit log');
set local session_replication_role = replica;
select throws_ok($$delete from public.execution_audit_log$$, '42501', null,
                 'postgres cannot delete audit rows even with session_replication_role = replica');
set local session_replication_role = origin;

-- service_role: appends, never rewrites.
select is(tap.attempt('service_role', null,
  $$insert into public.execution_audit_log (user_id, event) values ('a0000000-0000-4000-8000-000000000001', 'tap.appended')$$),
  'ok:1', 'service_role can append an audit row');
select is(tap.attempt('service_role', null, $$update public.execution_audit_log set detail = '{}'$$),
  'denied', 'service_role cannot update audit rows');
select is(tap.attempt('service_role', null, $$delete from public.execution_audit_log$$),
  'denied', 'service_role cannot delete audit rows');

-- Users: read their own rows only.
select is(tap.visible('authenticated', 'a0000000-0000-4000-8000-000000000001',
  $$select count(*) from public.execution_audit_log$$),
  '2', 'a user reads exactly their own audit rows');
select is(tap.visible('anon', null, $$select count(*) from public.execution_audit_log$$) in ('0', 'denied'),
  true, 'anon reads no audit rows');

-- Private helpers stay private.
select ok(not has_function_privilege('authenticated', 'private.audit(text, uuid, uuid, uuid, jsonb)', 'execute'),
          'authenticated cannot execute private.audit');
select ok(not has_schema_privilege('authenticated', 'private', 'usage')
          and not has_schema_privilege('anon', 'private', 'usage'),
          'anon and authenticated have no usage on schema private');

select is(
  (select count(*)::int from public.execution_audit_log where event = 'tap.seed'),
  2, 'the seeded audit rows are all still there');

select * from finish();
rollback;
