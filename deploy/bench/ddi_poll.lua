-- wrk script of deploy/bench/ddi.sh: hawkBit DDI base polls,
-- GET /{tenant}/controller/v1/{controllerId} with
-- `Authorization: TargetToken <token>`, each request as the next device.
--
-- BENCH_DDI_DEVICES names a file of "controller_id token" lines;
-- BENCH_DDI_TENANT is the tenant's path segment. Every wrk thread
-- pre-formats one request per device in init() (so the load generator
-- spends no time building requests) and walks the list round-robin from
-- its own offset, as heartbeat.lua does.
--
-- done() prints one machine-readable line, starting "BENCH_RESULT ", that
-- ddi.sh parses (latencies in microseconds).

local requests = {}
local n = 0
local next_index = 1

local thread_count = 0
function setup(thread)
   thread:set("thread_index", thread_count)
   thread_count = thread_count + 1
end

function init(args)
   local file = os.getenv("BENCH_DDI_DEVICES")
   local tenant = os.getenv("BENCH_DDI_TENANT")
   assert(file, "BENCH_DDI_DEVICES must name the devices file")
   assert(tenant, "BENCH_DDI_TENANT must name the tenant")
   for line in io.lines(file) do
      local id, token = line:match("^(%S+)%s+(%S+)$")
      if id then
         n = n + 1
         requests[n] = wrk.format("GET", "/" .. tenant .. "/controller/v1/" .. id, {
            ["Authorization"] = "TargetToken " .. token,
            ["Accept"] = "application/hal+json",
         })
      end
   end
   assert(n > 0, "no devices in " .. file)
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
