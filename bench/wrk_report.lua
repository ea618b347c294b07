-- wrk script for bench/compare.py. With an argument (a file of JWTs, one per
-- line) each request carries the next token in turn; with `post:<file>`, each
-- is a POST of that file; without, wrk sends its static request (the -H
-- headers). Either way it ends with one JSON line.

init = function(args)
  local path = args[1]
  if not path then
    return
  end
  if path:sub(1, 5) == "post:" then
    local file = assert(io.open(path:sub(6), "rb"))
    wrk.method = "POST"
    wrk.body = file:read("*a")
    file:close()
    return
  end
  local tokens = {}
  for line in io.lines(path) do
    tokens[#tokens + 1] = "Bearer " .. line
  end
  local next_token = 0
  request = function()
    next_token = next_token % #tokens + 1
    return wrk.format(nil, nil, { ["Authorization"] = tokens[next_token] })
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
