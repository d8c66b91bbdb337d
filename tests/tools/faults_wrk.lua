-- wrk script of the space soak in tests/tools/faults.py: one-measurement POSTs at
-- full rate, with or without an Idempotency-Key, and the answers counted.
--
--   wrk -t1 -c16 -d60s --timeout 10s -s tests/tools/faults_wrk.lua URL -- MODE PREFIX SENSORS
--
-- MODE: "plain" (no key), "keyed" (a fresh key per request) or "mixed"
-- (every other request keyed). Request n posts to sensor PREFIX-<n mod
-- SENSORS>; keyed requests carry the key PREFIX-<thread>-<n>, so no two
-- requests of a run share a key. PREFIX must be made of [A-Za-z0-9-].
-- done() prints one line "FAULTS-WRK {json}" with the requests sent, the
-- answers by status and the distinct problem details seen.

-- The answers' counts and the JSON of done(), shared with the other wrk script.
local answers = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "wrk_answers.lua")

local TIMESTAMP = "2021-11-09T21:38:09+01:00"

setup = answers.setup

function init(args)
   mode, prefix, sensors = args[1], args[2], tonumber(args[3])
   if prefix == nil or not prefix:match("^[%w%-]+$") or sensors == nil then
      error("usage: -- MODE PREFIX SENSORS, PREFIX made of [A-Za-z0-9-]")
   end
   if mode ~= "plain" and mode ~= "keyed" and mode ~= "mixed" then
      error("unknown mode " .. tostring(mode))
   end
   sent, keyed = 0, 0
   answers.init()
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
   answers.count(status, body)
end

function done(summary, latency, requests)
   io.write(
      "FAULTS-WRK {",
      answers.json_fields(summary, latency),
      ', "sent": ', answers.total("sent"),
      ', "keyed": ', answers.total("keyed"),
      "}\n"
   )
end
