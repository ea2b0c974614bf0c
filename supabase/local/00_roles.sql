/*
 * What hosted Supabase already has, recreated for a plain PostgreSQL 15 (never deployed).
 * 00: the API roles with Supabase's attributes.
 *   anon, authenticated   NOLOGIN INHERIT          — what PostgREST switches to per request
 *   service_role          NOLOGIN INHERIT BYPASSRLS — the operator / backend role
 *   authenticator         LOGIN NOINHERIT          — PostgREST's login role, member of the three
 */
do $$
begin
  if not exists (select from pg_roles where rolname = 'anon') then
    create role anon nologin inherit;
  end if;
  if not exists (select from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin inherit;
  end if;
  if not exists (select from pg_roles where rolname = 'service_role') then
    create role service_role nologin inherit bypassrls;
  end if;
  if not exists (select from pg_roles where rolname = 'authenticator') then
    create role authenticator login noinherit;
  end if;
  if not exists (select from pg_roles where rolname = 'supabase_admin') then
    create role supabase_admin nologin superuser createdb createrole replication bypassrls;
  end if;
end
$$;

-- Re-applying to a cluster whose roles predate Supabase's 2023 change (INHERIT) brings them level.
alter role anon inherit;
alter role authenticated inherit;
alter role service_role inherit bypassrls;
alter role authenticator noinherit;

grant anon, authenticated, service_role to authenticator;
-- PostgREST's statement timeouts per role, as on the platform.
alter role anon set statement_timeout = '3s';
alter role authenticated set statement_timeout = '8s';
