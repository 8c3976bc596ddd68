-- wrk script: optional request method/body from the environment (BENCH_METHOD, BENCH_BODY) and a
-- machine-readable summary line at the end (latencies in microseconds).
local method = os.getenv("BENCH_METHOD")
if method and method ~= "" then wrk.method = method end
local body = os.getenv("BENCH_BODY")
if body and body ~= "" then wrk.body = body end

-- Single-use credentials (Payment-scheme charges): one `Authorization` value per line of the file
-- BENCH_CREDENTIALS, each sent once; the run stops once BENCH_REQUESTS answers came back (the lines
-- past that count absorb the requests still in flight, so none is a replay).
-- wrk reports its configured duration even when a thread stops early: the thread keeps its own
-- elapsed time (elapsed_us) for the summary.
local credentials_file = os.getenv("BENCH_CREDENTIALS")
local threads = {}
if credentials_file and credentials_file ~= "" then
  local ffi = require("ffi")
  ffi.cdef [[
    typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
    int clock_gettime(int clock, bench_timespec *ts);
  ]]
  local function now_us()
    local ts = ffi.new("bench_timespec")
    ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
    return tonumber(ts.tv_sec) * 1000000 + tonumber(ts.tv_nsec) / 1000
  end
  setup = function(thread) threads[#threads + 1] = thread end
  local credentials, sent, answered, started = {}, 0, 0, nil
  local wanted = tonumber(os.getenv("BENCH_REQUESTS"))
  for line in io.lines(credentials_file) do credentials[#credentials + 1] = line end
  request = function()
    started = started or now_us()
    sent = sent + 1
    return wrk.format(nil, nil, { ["Authorization"] = credentials[math.min(sent, #credentials)] })
  end
  response = function()
    answered = answered + 1
    if answered == wanted then
      elapsed_us = now_us() - started
      wrk.thread:stop()
    end
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local duration = summary.duration
  for _, thread in ipairs(threads) do
    local elapsed = thread:get("elapsed_us")
    if elapsed then duration = math.floor(elapsed) end
  end
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d}}\n',
    summary.requests, duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
