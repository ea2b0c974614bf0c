/*
 * Scheduler: the scan-job queue that `scan_scheduler` drains (G2).
 *
 *   scan_jobs                one row per (user, market): how often to scan, when next, who holds it
 *   claim_due_scan_jobs      hands due jobs to a worker under a lease (FOR UPDATE SKIP LOCKED)
 *   heartbeat_scan_job       the lease holder extends its lease while it works
 *   release_job_lock         the lease holder reports the outcome; schedules the next run / backoff
 *   release_job_locks        the same for a tick's finished jobs in one call (one rule: private.release_scan_jobs),
 *                            and gives back, untouched, the jobs a tick claimed but did not run
 *   heartbeat_scan_jobs      heartbeat_scan_job for all of a tick's unreleased jobs in one call
 *   cleanup_expired_locks    frees leases of crashed workers (also run by run_maintenance)
 *   debug_check_locks        what is leased right now, for the SQL editor
 *
 * G2 in one sentence: a job row is leased by one worker id at a time, the lease is taken only under
 * the row lock (SKIP LOCKED + re-check of the lease on the locked row), and every later write of the
 * lease requires `locked_by = p_worker_id`, so a worker whose lease was taken over can neither extend
 * nor release it. A crashed worker's lease expires and the job becomes claimable again; nothing is
 * deleted, so nothing is lost.
 *
 * Worker ids must be unique per worker process run (e.g. `<host>:<pid>:<uuid>`): the lease belongs to
 * the id, so two processes sharing an id would share a lease.
 *
 * Users manage their own jobs through PostgREST (create for an allowlisted market, toggle `enabled`,
 * change `interval_seconds`, delete); the lease and bookkeeping columns are writable only by the
 * RPCs below, which are service-only.
 */

set lock_timeout = '5s';  -- a queued DDL lock fails the push instead of blocking writes

-- =============================================================================================
-- Section - scan_jobs
-- =============================================================================================
create table public.scan_jobs (
  id uuid primary key default extensions.gen_random_uuid(),
  user_id uuid not null default auth.uid() references auth.users (id) on delete cascade,
  market text not null references public.market_allowlist (market) on delete cascade,
  interval_seconds integer not null default 900,
  enabled boolean not null default true,
  next_run_at timestamptz not null default now(),
  locked_by text,
  locked_at timestamptz,
  lock_expires_at timestamptz,
  attempts integer not null default 0,
  consecutive_failures integer not null default 0,
  last_run_at timestamptz,
  last_success_at timestamptz,
  last_error text,
  -- Scheduling lag of the latest claim: how long after next_run_at a worker took the job.
  last_claim_lag_seconds numeric,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  -- One job per (user, market): a second one would only double the scans, proposals and GPT spend.
  constraint scan_jobs_user_market_key unique (user_id, market),
  -- At least a minute (pg_cron's resolution), at most a week.
  constraint scan_jobs_interval_bounds check (interval_seconds between 60 and 604800),
  -- A lease is all three columns or none of them, and ends after it starts.
  constraint scan_jobs_lock_complete check (
    (locked_by is null and locked_at is null and lock_expires_at is null)
    or (locked_by is not null and locked_at is not null and lock_expires_at is not null
        and lock_expires_at > locked_at)
  ),
  constraint scan_jobs_locked_by_format check (locked_by is null or length(locked_by) between 1 and 200),
  constraint scan_jobs_counters_nonnegative check (attempts >= 0 and consecutive_failures >= 0),
  constraint scan_jobs_last_error_length check (last_error is null or length(last_error) <= 2000),
  -- `< 'Infinity'` also excludes NaN.
  constraint scan_jobs_claim_lag_finite check (
    last_claim_lag_seconds >= 0 and last_claim_lag_seconds < 'Infinity')
);

-- The due-job scan of claim_due_scan_jobs: enabled jobs in next_run_at order.
create index scan_jobs_due_idx on public.scan_jobs (next_run_at) where enabled;
-- The market foreign key's cascade.
create index scan_jobs_market_idx on public.scan_jobs (market);
-- Throughput: no index reads the lease columns (locked_by, locked_at, lock_expires_at, attempts),
-- so a claim changes no indexed column and, with free room left on each page, is a HOT update
-- (no index entry written; measured +12 % jobs/s at 4 workers, +20 % at 8 in bench/scheduler.py).
-- cleanup_expired_locks and debug_check_locks scan the table instead: once a minute, ~2 ms per
-- 20,000 jobs. Only the release, which moves next_run_at, writes index entries.
alter table public.scan_jobs set (fillfactor = 70);

alter table public.scan_jobs enable row level security;

-- Column grants keep the lease and bookkeeping columns out of users' reach: a user may choose the
-- market and interval of a new job and later change only `enabled` and `interval_seconds`.
revoke all on public.scan_jobs from public, anon, authenticated, service_role;
grant select, delete on public.scan_jobs to authenticated;
grant insert (user_id, market, interval_seconds, enabled) on public.scan_jobs to authenticated;
grant update (enabled, interval_seconds) on public.scan_jobs to authenticated;
grant select, insert, update, delete on public.scan_jobs to service_role;

create trigger scan_jobs_touch before update on public.scan_jobs
  for each row execute function private.touch_updated_at();

create policy "users can read their own scan jobs"
  on public.scan_jobs for select to authenticated
  using (user_id = (select auth.uid()));
-- G4 at the door: a job only for a market the user has enabled and the operator has enabled.
create policy "users can create scan jobs for their own allowlisted markets"
  on public.scan_jobs for insert to authenticated
  with check (
    user_id = (select auth.uid())
    and exists (
      select 1
      from public.trading_allowlist ta
      join public.market_allowlist ma on ma.market = ta.market
      where ta.user_id = (select auth.uid())
        and ta.market = scan_jobs.market
        and ta.enabled
        and ma.enabled
    )
  );
-- A job may always be switched off, but only switched (or left) on for a market still enabled in
-- both allowlists.
create policy "users can change their own scan jobs"
  on public.scan_jobs for update to authenticated
  using (user_id = (select auth.uid()))
  with check (
    user_id = (select auth.uid())
    and (
      not enabled
      or exists (
        select 1
        from public.trading_allowlist ta
        join public.market_allowlist ma on ma.market = ta.market
        where ta.user_id = (select auth.uid())
          and ta.market = scan_jobs.market
          and ta.enabled
          and ma.enabled
      )
    )
  );
create policy "users can delete their own scan jobs"
  on public.scan_jobs for delete to authenticated
  using (user_id = (select auth.uid()));

-- =============================================================================================
-- Section - helpers (private)
-- =============================================================================================

-- A JSON array of at most p_max uuid strings as uuid[] (duplicates dropped, order kept); anything
-- else is 22023 naming p_name, so a batch RPC refuses a malformed list before it touches a row.
create or replace function private.uuid_array(p_value jsonb, p_name text, p_max integer)
returns uuid[]
language plpgsql
immutable
set search_path = ''
as $$
declare
  v_bad bigint;
begin
  if p_value is null or jsonb_typeof(p_value) <> 'array' then
    raise exception '% must be a JSON array of uuids', p_name using errcode = '22023';
  end if;
  if jsonb_array_length(p_value) > p_max then
    raise exception '% holds at most % entries, got %', p_name, p_max, jsonb_array_length(p_value)
      using errcode = '22023';
  end if;
  select min(t.ord) into v_bad
    from jsonb_array_elements(p_value) with ordinality as t (e, ord)
   where jsonb_typeof(t.e) <> 'string'
      or t.e #>> '{}' !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$';
  if v_bad is not null then
    raise exception '%[%] is not a uuid', p_name, v_bad - 1 using errcode = '22023';
  end if;
  return array(select x.id
                 from (select (t.e #>> '{}')::uuid as id, min(t.ord) as ord
                         from jsonb_array_elements(p_value) with ordinality as t (e, ord)
                        group by 1) x
                order by x.ord);
end;
$$;
revoke all on function private.uuid_array(jsonb, text, integer) from public, anon, authenticated;

-- =============================================================================================
-- Section - scheduler RPCs (service-only)
-- =============================================================================================

-- G2: leases up to p_limit due jobs to one worker; a job is leased to at most one worker at a time.
create or replace function public.claim_due_scan_jobs(
  p_worker_id text,
  p_limit integer default 10,
  p_lock_seconds integer default 300
) returns setof public.scan_jobs
language plpgsql
security definer
set search_path = ''
as $$
begin
  if p_worker_id is null or btrim(p_worker_id) = '' or length(p_worker_id) > 200 then
    raise exception 'p_worker_id must be a non-empty text of at most 200 characters'
      using errcode = '22023';
  end if;
  if p_limit is null or p_limit not between 1 and 1000 then
    raise exception 'p_limit must be between 1 and 1000, got %', p_limit using errcode = '22023';
  end if;
  if p_lock_seconds is null or p_lock_seconds not between 10 and 3600 then
    raise exception 'p_lock_seconds must be between 10 and 3600, got %', p_lock_seconds
      using errcode = '22023';
  end if;

  -- SKIP LOCKED: concurrent workers pass over rows another worker is claiming right now instead of
  -- queueing behind it. If that worker commits before we lock a row, FOR UPDATE re-evaluates the
  -- WHERE clause on the new row version, whose lease is then live, so the row is dropped: the race
  -- "two workers both saw the job as free" ends with one lease.
  return query
  with due as (
    select j.id
    from public.scan_jobs j
    where j.enabled
      and j.next_run_at <= now()
      and (j.locked_by is null or j.lock_expires_at <= now())
      -- G4 here too: a market dropped from either allowlist after the job was created is not
      -- scanned (no market data calls, no GPT spend) until it is allowed again.
      and exists (
        select 1
        from public.trading_allowlist ta
        join public.market_allowlist ma on ma.market = ta.market
        where ta.user_id = j.user_id
          and ta.market = j.market
          and ta.enabled
          and ma.enabled
      )
    order by j.next_run_at, j.id
    limit p_limit
    for update skip locked
  )
  update public.scan_jobs j
     set locked_by = p_worker_id,
         locked_at = now(),
         lock_expires_at = now() + make_interval(secs => p_lock_seconds),
         attempts = j.attempts + 1,
         last_claim_lag_seconds = greatest(extract(epoch from now() - j.next_run_at), 0)
   -- By primary key: joining `due` let the planner hash-join a sequential scan of the whole table.
   where j.id = any(array(select due.id from due))
  returning j.*;
end;
$$;
revoke execute on function public.claim_due_scan_jobs(text, integer, integer) from public, anon, authenticated;
grant execute on function public.claim_due_scan_jobs(text, integer, integer) to service_role;

-- G2: only the current lease holder can extend its lease; false once it was freed or taken over.
create or replace function public.heartbeat_scan_job(
  p_job_id uuid,
  p_worker_id text,
  p_lock_seconds integer default 300
) returns boolean
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_found boolean;
begin
  if p_job_id is null then
    raise exception 'p_job_id is required' using errcode = '22023';
  end if;
  if p_worker_id is null or btrim(p_worker_id) = '' then
    raise exception 'p_worker_id must be a non-empty text' using errcode = '22023';
  end if;
  if p_lock_seconds is null or p_lock_seconds not between 10 and 3600 then
    raise exception 'p_lock_seconds must be between 10 and 3600, got %', p_lock_seconds
      using errcode = '22023';
  end if;

  -- A lease that expired but that nobody has taken over or cleaned up is still this worker's:
  -- extending it cannot give the job two holders, because every taker changes locked_by first.
  update public.scan_jobs j
     set lock_expires_at = greatest(j.lock_expires_at, now() + make_interval(secs => p_lock_seconds))
   where j.id = p_job_id
     and j.locked_by = p_worker_id;
  v_found := found;
  return v_found;
end;
$$;
revoke execute on function public.heartbeat_scan_job(uuid, text, integer) from public, anon, authenticated;
grant execute on function public.heartbeat_scan_job(uuid, text, integer) to service_role;

-- G2 for a whole tick: heartbeat_scan_job's rule for every job in p_job_ids (a JSON array of at
-- most 1000 job ids) in one statement; answers the ids whose lease this worker still holds (and
-- extended), so a job missing from the answer has lost its lease.
create or replace function public.heartbeat_scan_jobs(
  p_worker_id text,
  p_job_ids jsonb,
  p_lock_seconds integer default 300
) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_ids uuid[];
  v_held jsonb;
begin
  if p_worker_id is null or btrim(p_worker_id) = '' then
    raise exception 'p_worker_id must be a non-empty text' using errcode = '22023';
  end if;
  if p_lock_seconds is null or p_lock_seconds not between 10 and 3600 then
    raise exception 'p_lock_seconds must be between 10 and 3600, got %', p_lock_seconds
      using errcode = '22023';
  end if;
  v_ids := private.uuid_array(p_job_ids, 'p_job_ids', 1000);

  -- In id order, as every batch writer of scan_jobs locks its rows (no deadlock between them).
  with extended as (
    update public.scan_jobs j
       set lock_expires_at = greatest(j.lock_expires_at, now() + make_interval(secs => p_lock_seconds))
     where j.id = any(array(select h.id from public.scan_jobs h
                             where h.id = any(v_ids) and h.locked_by = p_worker_id
                             order by h.id
                               for update))
       and j.locked_by = p_worker_id
    returning j.id
  )
  select coalesce(jsonb_agg(e.id order by e.id), '[]'::jsonb) into v_held from extended e;
  return v_held;
end;
$$;
revoke execute on function public.heartbeat_scan_jobs(text, jsonb, integer) from public, anon, authenticated;
grant execute on function public.heartbeat_scan_jobs(text, jsonb, integer) to service_role;

-- One claimed job as a worker reports it: release_job_lock passes one, release_job_locks many.
-- `ran` false: the worker gave the job back without running it (its exchange budget ran out, or
-- its time): not a run, not a failure.
create type private.scan_job_outcome as (job_id uuid, succeeded boolean, error text, ran boolean);

-- G2: the one rule that ends a lease, shared by release_job_lock and release_job_locks so the two
-- cannot drift. Per job, in input order: only the lease holder (`locked_by = p_worker_id`) releases;
-- success schedules the next run one interval from now and resets the failure count; failure backs
-- off exponentially (30 s × 2^(failures − 1)) but never waits longer than the job's interval; a job
-- that did not run (`ran` false) only loses its lease and gets its attempt back — its schedule,
-- failure count, last run and last error stay as they were, so it is due again at once and a rate
-- limit never backs it off. Any other job is left untouched and answered `not_lock_owner` (it
-- exists) or `not_found`. Callers validate their arguments; duplicate job ids are theirs to refuse.
create or replace function private.release_scan_jobs(
  p_worker_id text,
  p_outcomes private.scan_job_outcome[]
) returns table (job_id uuid, answer jsonb)
language plpgsql
set search_path = ''
as $$
declare
  -- No statement below joins the outcomes to scan_jobs: rows are found by primary key through
  -- `id = any(array)` and a row's failure is looked up in a jsonb object keyed by job id, so the
  -- cost stays linear in the batch whatever plan the planner picks and however big the table.
  v_ids uuid[] := array(select o.job_id from unnest(p_outcomes) o);
  v_failed jsonb := (select coalesce(jsonb_object_agg(o.job_id::text, o.error), '{}')
                       from unnest(p_outcomes) o
                      where not o.succeeded and o.ran is distinct from false);
  v_not_run uuid[] := array(select o.job_id from unnest(p_outcomes) o where o.ran is false);
  v_held uuid[];
  v_released jsonb;
  v_given_back jsonb;
begin
  -- Row locks first, in id order: two releases (or a release and cleanup_expired_locks, which also
  -- waits for row locks) then queue behind each other instead of locking in opposite orders.
  -- FOR UPDATE returns each row as it is once locked, so a lease that was taken over while we
  -- waited is seen here as the other worker's.
  with locked as (
    select j.id, j.locked_by
      from public.scan_jobs j
     where j.id = any(v_ids)
     order by j.id
       for update
  )
  select coalesce(array_agg(l.id) filter (where l.locked_by = p_worker_id), '{}')
    into v_held
    from locked l;

  with given_back as (
    update public.scan_jobs j
       set locked_by = null, locked_at = null, lock_expires_at = null,
           attempts = greatest(j.attempts - 1, 0)
     where j.id = any(v_held) and j.id = any(v_not_run)
    returning j.id, j.next_run_at, j.consecutive_failures
  )
  select jsonb_object_agg(g.id::text, jsonb_build_object(
           'released', true, 'next_run_at', g.next_run_at, 'reason', 'not_run',
           'consecutive_failures', g.consecutive_failures))
    into v_given_back
    from given_back g;

  with released as (
    update public.scan_jobs j
       set locked_by = null, locked_at = null, lock_expires_at = null,
           last_run_at = now(),
           last_success_at = case when v_failed ? j.id::text then j.last_success_at else now() end,
           consecutive_failures = case when v_failed ? j.id::text then j.consecutive_failures + 1
                                       else 0 end,
           last_error = case
             when v_failed ? j.id::text
               then left(coalesce(nullif(btrim(v_failed ->> j.id::text), ''), 'unspecified error'), 2000)
             else j.last_error
           end,
           -- The exponent is capped so the arithmetic stays small; the interval caps the wait anyway.
           next_run_at = now() + case
             when v_failed ? j.id::text
               then make_interval(secs => least(j.interval_seconds::numeric,
                                                30 * power(2::numeric, least(j.consecutive_failures, 20)))
                                          ::double precision)
             else make_interval(secs => j.interval_seconds)
           end
     where j.id = any(v_held) and j.id <> all(v_not_run)
    returning j.id, j.next_run_at, j.consecutive_failures, not (v_failed ? j.id::text) as succeeded
  )
  select jsonb_object_agg(r.id::text, jsonb_build_object(
           'released', true,
           'next_run_at', r.next_run_at,
           'reason', case when r.succeeded then 'succeeded' else 'failed' end,
           'consecutive_failures', r.consecutive_failures))
    into v_released
    from released r;

  return query
  select o.job_id,
         coalesce(
           v_released -> o.job_id::text,
           v_given_back -> o.job_id::text,
           (select jsonb_build_object('released', false, 'next_run_at', s.next_run_at,
                                      'reason', 'not_lock_owner')
              from public.scan_jobs s where s.id = o.job_id),
           jsonb_build_object('released', false, 'next_run_at', null, 'reason', 'not_found'))
    from unnest(p_outcomes) with ordinality as o (job_id, succeeded, error, ran, ord)
   order by o.ord;
end;
$$;
revoke all on function private.release_scan_jobs(text, private.scan_job_outcome[]) from public, anon, authenticated, service_role;

-- G2: only the lease holder ends the lease (the rule: private.release_scan_jobs).
create or replace function public.release_job_lock(
  p_job_id uuid,
  p_worker_id text,
  p_succeeded boolean,
  p_error text default null
) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
begin
  if p_job_id is null then
    raise exception 'p_job_id is required' using errcode = '22023';
  end if;
  if p_worker_id is null or btrim(p_worker_id) = '' then
    raise exception 'p_worker_id must be a non-empty text' using errcode = '22023';
  end if;
  if p_succeeded is null then
    raise exception 'p_succeeded is required' using errcode = '22023';
  end if;

  return (select r.answer
            from private.release_scan_jobs(
                   p_worker_id,
                   array[row(p_job_id, p_succeeded, p_error, true)::private.scan_job_outcome]) r);
end;
$$;
revoke execute on function public.release_job_lock(uuid, text, boolean, text) from public, anon, authenticated;
grant execute on function public.release_job_lock(uuid, text, boolean, text) to service_role;

-- G2, a tick at a time: releases a worker's finished jobs in one call (one round trip per tick
-- instead of one per job), with release_job_lock's rule per job (private.release_scan_jobs): a job
-- this worker does not hold is answered `not_lock_owner` / `not_found` and the others are still
-- released. p_results is a JSON array of at most 1000 {"job_id": uuid, "succeeded": bool,
-- "error": text|null (optional), "ran": bool (optional, default true)} with distinct job ids; an
-- entry with "ran": false (and "succeeded": false) is a job the worker claimed but did not run,
-- given back untouched (reason `not_run`). Anything else is 22023 and changes nothing.
-- Answer: {"released_count": n, "results": [{"job_id", <release_job_lock's answer>}, …]} in input order.
create or replace function public.release_job_locks(
  p_worker_id text,
  p_results jsonb
) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_problem text;
  v_outcomes private.scan_job_outcome[];
  v_results jsonb;
begin
  if p_worker_id is null or btrim(p_worker_id) = '' then
    raise exception 'p_worker_id must be a non-empty text' using errcode = '22023';
  end if;
  if p_results is null or jsonb_typeof(p_results) <> 'array' then
    raise exception 'p_results must be a JSON array of {"job_id", "succeeded", "error"} objects'
      using errcode = '22023';
  end if;
  if jsonb_array_length(p_results) > 1000 then
    raise exception 'p_results holds at most 1000 entries, got %', jsonb_array_length(p_results)
      using errcode = '22023';
  end if;

  -- The first malformed entry, by position (CASE evaluates its branches in order).
  select format('p_results[%s] %s', e.ord - 1, e.problem) into v_problem
    from (
      select t.ord, case
        when jsonb_typeof(t.e) <> 'object' then 'is not an object'
        when exists (select 1 from jsonb_object_keys(t.e) k
                     where k not in ('job_id', 'succeeded', 'error', 'ran'))
          then 'has a key other than "job_id", "succeeded", "error", "ran"'
        when not t.e ? 'job_id' then 'has no "job_id"'
        when not t.e ? 'succeeded' then 'has no "succeeded"'
        when jsonb_typeof(t.e -> 'job_id') <> 'string'
             or t.e ->> 'job_id' !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
          then '"job_id" is not a uuid'
        when jsonb_typeof(t.e -> 'succeeded') <> 'boolean' then '"succeeded" is not a boolean'
        when jsonb_typeof(t.e -> 'error') not in ('string', 'null')
          then '"error" is not a string or null'
        when jsonb_typeof(t.e -> 'ran') <> 'boolean' then '"ran" is not a boolean'
        when t.e -> 'ran' = 'false'::jsonb and t.e -> 'succeeded' = 'true'::jsonb
          then 'says a job that did not run succeeded'
      end as problem
      from jsonb_array_elements(p_results) with ordinality as t (e, ord)
    ) e
   where e.problem is not null
   order by e.ord
   limit 1;
  if v_problem is not null then
    raise exception '%', v_problem using errcode = '22023';
  end if;

  select array_agg(row((t.e ->> 'job_id')::uuid, (t.e -> 'succeeded')::boolean, t.e ->> 'error',
                       coalesce((t.e -> 'ran')::boolean, true))
                     ::private.scan_job_outcome order by t.ord)
    into v_outcomes
    from jsonb_array_elements(p_results) with ordinality as t (e, ord);
  if v_outcomes is null then
    return jsonb_build_object('released_count', 0, 'results', '[]'::jsonb);
  end if;
  if (select count(distinct o.job_id) from unnest(v_outcomes) o) <> cardinality(v_outcomes) then
    raise exception 'p_results names a job more than once' using errcode = '22023';
  end if;

  select jsonb_agg(jsonb_build_object('job_id', r.job_id) || r.answer order by r.ord)
    into v_results
    from private.release_scan_jobs(p_worker_id, v_outcomes) with ordinality as r (job_id, answer, ord);
  return jsonb_build_object(
    'released_count', (select count(*) from jsonb_array_elements(v_results) x
                        where (x ->> 'released')::boolean),
    'results', v_results);
end;
$$;
revoke execute on function public.release_job_locks(text, jsonb) from public, anon, authenticated;
grant execute on function public.release_job_locks(text, jsonb) to service_role;

-- G2: frees every lease past lock_expires_at (a crashed worker's) and counts it as a failed run;
-- the job keeps its next_run_at, so it is due again at once. Returns how many leases it freed.
create or replace function public.cleanup_expired_locks() returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_count integer;
begin
  -- Row locks serialise this with a concurrent claim of the same expired lease: whichever comes
  -- second re-checks its WHERE clause on the other's result and leaves the row alone. The rows are
  -- locked in id order, as release_job_locks locks them, so this and a batch release (or a second
  -- cleanup) holding some of the same rows queue in one order and never deadlock (40P01).
  update public.scan_jobs j
     set locked_by = null, locked_at = null, lock_expires_at = null,
         consecutive_failures = j.consecutive_failures + 1,
         last_error = left('lease expired: worker ' || j.locked_by || ' did not release the job', 2000)
   where j.id = any(array(
           select e.id from public.scan_jobs e
            where e.locked_by is not null and e.lock_expires_at <= now()
            order by e.id
              for update))
     and j.locked_by is not null
     and j.lock_expires_at <= now();
  get diagnostics v_count = row_count;
  return v_count;
end;
$$;
revoke execute on function public.cleanup_expired_locks() from public, anon, authenticated;
grant execute on function public.cleanup_expired_locks() to service_role;

-- Lists every leased job with whether its lease has expired; reads only, for the SQL editor.
create or replace function public.debug_check_locks()
returns table (
  job_id uuid,
  user_id uuid,
  market text,
  locked_by text,
  locked_at timestamptz,
  lock_expires_at timestamptz,
  expired boolean
)
language sql
stable
security definer
set search_path = ''
as $$
  select j.id, j.user_id, j.market, j.locked_by, j.locked_at, j.lock_expires_at,
         j.lock_expires_at <= now()
  from public.scan_jobs j
  where j.locked_by is not null
  order by j.lock_expires_at, j.id
$$;
revoke execute on function public.debug_check_locks() from public, anon, authenticated;
grant execute on function public.debug_check_locks() to service_role;
