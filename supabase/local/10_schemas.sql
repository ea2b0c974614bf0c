/*
 * 10: schemas `extensions` (pgcrypto, uuid-ossp live there) and `auth`, and Supabase's default
 * privileges on `public`: ALL to the API roles on tables/functions/sequences — RLS is what
 * protects rows, and functions are EXECUTE-able by PUBLIC unless a migration revokes it.
 */
create schema if not exists extensions;
grant usage on schema extensions to anon, authenticated, service_role;
create extension if not exists pgcrypto with schema extensions;
create extension if not exists "uuid-ossp" with schema extensions;

-- Hosted Supabase puts `extensions` on every role's search_path.
do $$
begin
  execute format('alter database %I set search_path = "$user", public, extensions', current_database());
end
$$;

grant usage on schema public to anon, authenticated, service_role;
alter default privileges in schema public grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public grant all on functions to anon, authenticated, service_role;
alter default privileges in schema public grant all on sequences to anon, authenticated, service_role;
