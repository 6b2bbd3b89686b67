-- wrk script of deploy/bench/heartbeat.sh: POST /device/v1/heartbeat, each
-- request as a different device.
--
-- BENCH_TOKENS names a file of "device_id token boot_id" lines (written by
-- provision.py). Every wrk thread pre-formats one request per device in
-- init() (so the load generator spends no time building requests) and
-- walks the list round-robin from its own offset: consecutive requests,
-- on any connection, come from different devices, as in a fleet.
--
-- BENCH_DELAY_MS (optional, > 0): each connection waits that long after an
-- answer before its next request. With it, wrk holds many keep-alive
-- connections that are mostly idle, like a fleet of connected devices
-- (the memory-per-connection measurement); without it, wrk sends as fast as
-- the server answers (the throughput measurement).
--
-- done() prints one machine-readable line, starting "BENCH_RESULT ", that
-- heartbeat.sh parses (latencies in microseconds).

local path = "/device/v1/heartbeat"
local requests = {}
local n = 0
local next_index = 1

local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "0") or 0
if delay_ms > 0 then
   -- wrk only pays for the delay hook when it is defined at load time.
   function delay()
      return delay_ms
   end
end

local thread_count = 0
function setup(thread)
   thread:set("thread_index", thread_count)
   thread_count = thread_count + 1
end

function init(args)
   local file = os.getenv("BENCH_TOKENS")
   assert(file, "BENCH_TOKENS must name the tokens file")
   for line in io.lines(file) do
      local id, token, boot = line:match("^(%S+)%s+(%S+)%s+(%S+)$")
      if id then
         n = n + 1
         local body = string.format(
            '{"agent_version":"bench","boot_id":"%s","uptime_s":1}', boot)
         requests[n] = wrk.format("POST", path, {
            ["Authorization"] = "Bearer " .. token,
            ["Content-Type"] = "application/json",
         }, body)
      end
   end
   assert(n > 0, "no device tokens in " .. file)
   -- Threads start at different devices so that they do not march in step.
   local index = tonumber(thread_index) or 0
   next_index = (index * 7919) % n + 1
end

function request()
   local r = requests[next_index]
   next_index = next_index % n + 1
   return r
end

function done(summary, latency, _)
   local e = summary.errors
   io.write(string.format(
      "BENCH_RESULT requests=%d duration_us=%d bytes=%d "
         .. "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d "
         .. "p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d mean_us=%.1f\n",
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.max, latency.mean))
end
