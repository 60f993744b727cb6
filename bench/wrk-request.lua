-- wrk script used by bench/http-load.sh for every scenario.
--
-- The request is configured from the environment (each wrk thread runs this file, so the
-- settings apply to all connections):
--   BENCH_METHOD  HTTP method (default GET)
--   BENCH_TOKEN   bearer token; when set, sends "Authorization: Bearer <token>"
--   BENCH_BODY    request body; when set, also sends "content-type: application/json"
--
-- Examples (against a portal on 127.0.0.1:8080):
--   wrk -t2 -c32 -d10s --latency -s bench/wrk-request.lua http://127.0.0.1:8080/healthz
--   BENCH_TOKEN=$TOKEN wrk -t2 -c32 -d10s --latency -s bench/wrk-request.lua \
--       http://127.0.0.1:8080/v1/actors/$ID/tokens
--   BENCH_METHOD=POST BENCH_BODY='{}' BENCH_TOKEN=$TOKEN wrk -t2 -c32 -d10s --latency \
--       -s bench/wrk-request.lua http://127.0.0.1:8080/v1/actors/$ID/tokens
--
-- At the end it prints one machine-readable line, read by bench/http-load.sh:
--   BENCH_RESULT requests=N duration_us=N rps=X p50_us=N p99_us=N non2xx=N socket_errors=N

wrk.method = os.getenv("BENCH_METHOD") or "GET"

local token = os.getenv("BENCH_TOKEN")
if token ~= nil and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end

local body = os.getenv("BENCH_BODY")
if body ~= nil then
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
end

function done(summary, latency, requests)
  local e = summary.errors
  local seconds = summary.duration / 1e6
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d rps=%.1f p50_us=%d p99_us=%d non2xx=%d socket_errors=%d\n",
    summary.requests,
    summary.duration,
    summary.requests / seconds,
    latency:percentile(50),
    latency:percentile(99),
    e.status,
    e.connect + e.read + e.write + e.timeout))
end
