-- The statements inside jobtrail_append (migration 0007) run on cached generic plans.
--
-- PL/pgSQL plans each statement through the plan cache, which keeps choosing a custom plan
-- (one planned afresh for the call's array values) whenever it looks cheaper than the generic
-- one. For the insert at the end of the function it always does, so every call planned that
-- statement again: about a quarter of a millisecond a batch, half of all the function's
-- fixed cost (measured with pg_stat_statements.track_planning; bench/README.md). The plans
-- need no knowledge of the arrays' contents: the lookups are primary-key probes written so
-- that a generic plan cannot turn them into scans (see 0007), and the rest are passes over
-- the batch's own arrays. The setting applies inside the function only.

ALTER FUNCTION jobtrail_append(
    bigint, text, boolean, uuid[], text[], text[], int[], jsonb[], jsonb[], timestamptz[],
    bytea[], text[], bigint[], smallint[], bytea[], text[], jsonb[]
) SET plan_cache_mode = force_generic_plan;
