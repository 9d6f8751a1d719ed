-- Zero-downtime runs: count every response whose status is not 2xx (wrk's own
-- counter only sees >= 400), plus wrk's socket errors, as one JSON line.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  responses = 0
  non2xx = 0
  s502 = 0
  s503 = 0
  s504 = 0
end

function response(status, headers, body)
  responses = responses + 1
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    if status == 502 then s502 = s502 + 1
    elseif status == 503 then s503 = s503 + 1
    elseif status == 504 then s504 = s504 + 1
    end
  end
end

function done(summary, latency, requests)
  local r, n, a, b, c = 0, 0, 0, 0, 0
  for _, t in ipairs(threads) do
    r = r + t:get("responses")
    n = n + t:get("non2xx")
    a = a + t:get("s502")
    b = b + t:get("s503")
    c = c + t:get("s504")
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"p50_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"responses":%d,"non2xx":%d,"s502":%d,"s503":%d,"s504":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max,
    r, n, a, b, c))
end
