-- wrk script of the space soak in tests/faults.py: one-measurement POSTs at
-- full rate, with or without an Idempotency-Key, and the answers counted.
--
--   wrk -t1 -c16 -d60s --timeout 10s -s tests/faults_wrk.lua URL -- MODE PREFIX SENSORS
--
-- MODE: "plain" (no key), "keyed" (a fresh key per request) or "mixed"
-- (every other request keyed). Request n posts to sensor PREFIX-<n mod
-- SENSORS>; keyed requests carry the key PREFIX-<thread>-<n>, so no two
-- requests of a run share a key. PREFIX must be made of [A-Za-z0-9-].
-- done() prints one line "FAULTS-WRK {json}" with the requests sent, the
-- answers by status and the distinct problem details seen.

local TIMESTAMP = "2021-11-09T21:38:09+01:00"
local MAX_PROBLEM_KINDS = 20

local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("thread_number", #threads)
end

function init(args)
   mode, prefix, sensors = args[1], args[2], tonumber(args[3])
   if prefix == nil or not prefix:match("^[%w%-]+$") or sensors == nil then
      error("usage: -- MODE PREFIX SENSORS, PREFIX made of [A-Za-z0-9-]")
   end
   if mode ~= "plain" and mode ~= "keyed" and mode ~= "mixed" then
      error("unknown mode " .. tostring(mode))
   end
   sent, keyed, statuses, problems, problem_kinds = 0, 0, {}, {}, 0
   if thread_number == 1 then
      -- wrk calls request() once on the first thread to check it; that call
      -- sends nothing.
      sent = -1
   end
end

function request()
   sent = sent + 1
   local sensor = prefix .. "-" .. (sent % sensors)
   local body = string.format(
      '[{"sensor": "%s", "timestamp": "%s", "value": %d.%03d}]',
      sensor, TIMESTAMP, sent % 1000, sent % 997
   )
   local headers = { ["Content-Type"] = "application/json" }
   if mode == "keyed" or (mode == "mixed" and sent % 2 == 1) then
      headers["Idempotency-Key"] = string.format('"%s-%d-%d"', prefix, thread_number, sent)
      if sent > 0 then
         keyed = keyed + 1
      end
   end
   return wrk.format("POST", "/data", headers, body)
end

function response(status, headers, body)
   local key = tostring(status)
   statuses[key] = (statuses[key] or 0) + 1
   if status >= 300 then
      local detail = body:match('"detail": *"(.-)"') or body:sub(1, 80)
      local kind = key .. " " .. detail
      if problems[kind] == nil and problem_kinds >= MAX_PROBLEM_KINDS then
         kind = key .. " (other details)"
      end
      if problems[kind] == nil then
         problem_kinds = problem_kinds + 1
      end
      problems[kind] = (problems[kind] or 0) + 1
   end
end

local function json_string(text)
   local escaped = text:gsub('[%c"\\]', function(c)
      return string.format("\\u%04x", c:byte())
   end)
   return '"' .. escaped .. '"'
end

local function json_object(counts)
   local parts = {}
   for name, count in pairs(counts) do
      parts[#parts + 1] = json_string(name) .. ": " .. count
   end
   return "{" .. table.concat(parts, ", ") .. "}"
end

local function add_counts(total, counts)
   for name, count in pairs(counts) do
      total[name] = (total[name] or 0) + count
   end
end

function done(summary, latency, requests)
   local all_sent, all_keyed, all_statuses, all_problems = 0, 0, {}, {}
   for _, thread in ipairs(threads) do
      all_sent = all_sent + thread:get("sent")
      all_keyed = all_keyed + thread:get("keyed")
      add_counts(all_statuses, thread:get("statuses"))
      add_counts(all_problems, thread:get("problems"))
   end
   local e = summary.errors
   io.write(
      "FAULTS-WRK {",
      '"requests": ', summary.requests,
      ', "duration_us": ', summary.duration,
      ', "sent": ', all_sent,
      ', "keyed": ', all_keyed,
      ', "statuses": ', json_object(all_statuses),
      ', "problems": ', json_object(all_problems),
      ', "socket_errors": ', json_object({
         connect = e.connect, read = e.read, write = e.write, timeout = e.timeout
      }),
      ', "latency_us": {"p50": ', latency:percentile(50),
      ', "p99": ', latency:percentile(99),
      ', "max": ', latency.max, "}",
      "}\n"
   )
end
