/*
 * Local demo data only (SPEC §2): applied by `make run` / `make demo` on the project-local
 * PostgreSQL and by the Supabase CLI's `db reset` on a local stack; never pushed to a hosted project.
 *
 *   demo user          demo@example.test, fixed id, trading + auto-execute on (paper mode: the
 *                      operator's `live_trading_enabled` stays false)
 *   market_allowlist   BTC-EUR and ETH-EUR enabled (the global half of G4)
 *   trading_allowlist  both markets for the demo user (the user's half of G4)
 *   scan_jobs          one job per market, every 60 s
 *   gpt_model_prices   USD per 1M tokens for the models the oracle may use
 *
 * Idempotent: every insert is `on conflict do nothing`, so running it twice changes nothing.
 */

-- The demo user. The trigger on auth.users creates the trading_settings row with safe defaults.
insert into auth.users (id, instance_id, aud, role, email, email_confirmed_at,
                        raw_app_meta_data, raw_user_meta_data, created_at, updated_at)
values ('d3e0d3e0-0000-4000-8000-000000000001', '00000000-0000-0000-0000-000000000000',
        'authenticated', 'authenticated', 'demo@example.test', now(),
        '{"provider": "email", "providers": ["email"]}'::jsonb,
        '{"name": "Demo trader"}'::jsonb, now(), now())
on conflict (id) do nothing;

-- The demo trades on its own (paper mode); every other setting keeps the safe default.
update public.trading_settings
   set trading_enabled = true,
       auto_execute = true
 where user_id = 'd3e0d3e0-0000-4000-8000-000000000001'
   and (trading_enabled is distinct from true or auto_execute is distinct from true);

insert into public.market_allowlist (market, enabled, min_order_quote, max_order_quote)
values ('BTC-EUR', true, 5, 250),
       ('ETH-EUR', true, 5, 250)
on conflict (market) do nothing;

insert into public.trading_allowlist (user_id, market, enabled)
values ('d3e0d3e0-0000-4000-8000-000000000001', 'BTC-EUR', true),
       ('d3e0d3e0-0000-4000-8000-000000000001', 'ETH-EUR', true)
on conflict (user_id, market) do nothing;

insert into public.scan_jobs (user_id, market, interval_seconds, enabled)
values ('d3e0d3e0-0000-4000-8000-000000000001', 'BTC-EUR', 60, true),
       ('d3e0d3e0-0000-4000-8000-000000000001', 'ETH-EUR', 60, true)
on conflict (user_id, market) do nothing;

-- USD per 1M tokens (input, cached input, output).
insert into public.gpt_model_prices (model, input_usd_per_mtok, cached_input_usd_per_mtok,
                                     output_usd_per_mtok)
values ('gpt-4o-mini', 0.15, 0.075, 0.60),
       ('gpt-4.1-mini', 0.40, 0.10, 1.60)
on conflict (model) do nothing;
