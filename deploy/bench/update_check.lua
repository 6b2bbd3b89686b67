-- wrk script of deploy/bench/artifacts.sh: POST /device/v1/update-check,
-- each request as a different device, body {"components":{"app":"1.0.0"}}.
--
-- BENCH_TOKENS names a file of "device_id token boot_id" lines (written by
-- provision.py). Every wrk thread pre-formats its requests in init(), so
-- the load generator spends no time building them.
--
-- Two modes:
--
-- * default (the steady state): each thread walks every device
--   round-robin from its own offset, as fast as the server answers, for
--   wrk's -d duration;
-- * BENCH_ONE_PASS=1 (the first check of each device): thread i of
--   BENCH_THREADS checks devices i, i + T, i + 2T, ... once each. When all
--   its devices have been answered it writes BENCH_DONE_DIR/thread-<i> and
--   stops; artifacts.sh times the pass from wrk's start to the last such
--   file and then interrupts wrk (whose own duration is always the full
--   -d). A connection that asks for a request after the thread's devices
--   are all handed out gets GET /healthz (no token, no SQL), which is not
--   counted: it keeps the connection busy until the last checks return,
--   without checking any device twice.
--
-- done() prints one machine-readable line, starting "BENCH_RESULT ", that
-- artifacts.sh parses (latencies in microseconds).

local path = "/device/v1/update-check"
local body = '{"components":{"app":"1.0.0"}}'
local requests = {}
local n = 0
local next_index = 1
local answered = 0
local one_pass = os.getenv("BENCH_ONE_PASS") == "1"
local filler = nil
local first_call = true

local thread_count = 0
function setup(thread)
   thread:set("thread_index", thread_count)
   thread_count = thread_count + 1
end

function init(args)
   local file = os.getenv("BENCH_TOKENS")
   assert(file, "BENCH_TOKENS must name the tokens file")
   local index = tonumber(thread_index) or 0
   local threads = tonumber(os.getenv("BENCH_THREADS") or "1") or 1
   local line_no = 0
   for line in io.lines(file) do
      local id, token = line:match("^(%S+)%s+(%S+)%s+%S+$")
      if id then
         line_no = line_no + 1
         if not one_pass or (line_no - 1) % threads == index then
            n = n + 1
            requests[n] = wrk.format("POST", path, {
               ["Authorization"] = "Bearer " .. token,
               ["Content-Type"] = "application/json",
            }, body)
         end
      end
   end
   assert(n > 0, "no device tokens in " .. file .. " for thread " .. index)
   -- Formatted here, not at load time, when wrk.host (the Host header)
   -- is not known yet.
   filler = wrk.format("GET", "/healthz", {})
   if not one_pass then
      -- Threads start at different devices so that they do not march in step.
      next_index = (index * 7919) % n + 1
   end
end

function request()
   if one_pass then
      -- wrk calls request() once in its first thread before sending
      -- anything, to count the requests it returns, and discards the
      -- answer: that first call must not use up a device.
      if first_call or next_index > n then
         first_call = false
         return filler
      end
      next_index = next_index + 1
      return requests[next_index - 1]
   end
   local r = requests[next_index]
   next_index = next_index % n + 1
   return r
end

if one_pass then
   -- wrk only calls response() when it is defined at load time; the
   -- steady state does without it.
   function response(status, headers, body)
      -- An update check answers {"pending":...}; /healthz anything else.
      -- A failed check (not 200) counts too: it was answered.
      if status == 200 and not (body and body:find('"pending"', 1, true)) then
         return
      end
      answered = answered + 1
      if answered == n then
         local dir = os.getenv("BENCH_DONE_DIR")
         local f = assert(io.open(dir .. "/thread-" .. tostring(thread_index), "w"))
         f:write(tostring(answered), "\n")
         f:close()
         wrk.thread:stop()
      end
   end
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
