-- wrk script of tests/tools/bench.py: builds each scenario's requests, counts the
-- answers per thread, and prints one line "BENCH-RESULT {json}" from done().
--
--   wrk -t1 -c16 -d5s --timeout 10s --latency -s tests/tools/bench_wrk.lua URL -- MODE PREFIX [TOKEN]
--
-- MODE is one of
--   distinct  POST /data, 1 measurement, a fresh sensor PREFIX-<n> each request
--   hot       POST /data, 1 measurement, always the sensor PREFIX-hot
--   batch     POST /data, 1,000 measurements over the 50 sensors PREFIX-0..49
--             (20 each; PREFIX-0 is the one the driver checks)
--   gateway   POST /data, 50 measurements over the 10 sensors PREFIX-0..9 (5 each):
--             what an edge gateway sends every second
--   batch-gzip  the same batch, gzip-compressed, from the file BODY_FILE that the
--             driver wrote (Lua has no zlib): -- batch-gzip PREFIX BODY_FILE
--   get       GET /statistics/PREFIX-get (the driver creates that sensor first)
-- PREFIX must be URL- and JSON-safe ([A-Za-z0-9-]); the driver makes a fresh
-- one per run, so runs never share sensors. With TOKEN (after the mode's
-- own arguments), every POST carries "Authorization: Bearer TOKEN".

-- The answers' counts and the JSON of done(), shared with the other wrk script.
local answers = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "wrk_answers.lua")

local TIMESTAMP = "2021-11-09T21:38:09+01:00"
local BATCH_SIZE = 1000
local BATCH_SENSORS = 50
local GATEWAY_SIZE = 50
local GATEWAY_SENSORS = 10

setup = answers.setup

local function measurement(sensor, value)
   return string.format('{"sensor": "%s", "timestamp": "%s", "value": %s}', sensor, TIMESTAMP, value)
end

local function post(body, encoding)
   local headers = { ["Content-Type"] = "application/json" }
   if encoding then
      headers["Content-Encoding"] = encoding
   end
   if token ~= nil then
      headers["Authorization"] = "Bearer " .. token
   end
   return wrk.format("POST", "/data", headers, body)
end

-- `size` measurements over the sensors PREFIX-0 to PREFIX-<sensors - 1>, in turn.
local function batch(size, sensors)
   local items = {}
   for i = 0, size - 1 do
      items[#items + 1] = measurement(prefix .. "-" .. (i % sensors), tostring(i))
   end
   return "[" .. table.concat(items, ", ") .. "]"
end

function init(args)
   -- args[0] is the URL; the script's own arguments follow.
   mode, prefix = args[1], args[2]
   -- TOKEN follows the mode's own arguments (batch-gzip's BODY_FILE).
   token = args[mode == "batch-gzip" and 4 or 3]
   if prefix == nil or not prefix:match("^[%w%-]+$") then
      error("usage: -- MODE PREFIX, with PREFIX made of [A-Za-z0-9-]")
   end
   if thread_number > 1 then
      -- Several wrk threads must not post the same "fresh" ids.
      prefix = prefix .. "-t" .. thread_number
   end
   -- Globals, so that done() can read them with thread:get().
   sent, closes = 0, 0
   answers.init()
   if thread_number == 1 then
      -- wrk calls request() once on its first thread, after init() and before
      -- connecting, to check the request; that call sends nothing.
      sent = -1
   end

   if mode == "hot" then
      fixed = post("[" .. measurement(prefix .. "-hot", "21.5") .. "]")
   elseif mode == "batch" then
      fixed = post(batch(BATCH_SIZE, BATCH_SENSORS))
   elseif mode == "gateway" then
      fixed = post(batch(GATEWAY_SIZE, GATEWAY_SENSORS))
   elseif mode == "batch-gzip" then
      local file = assert(io.open(args[3], "rb"))
      fixed = post(file:read("*a"), "gzip")
      file:close()
   elseif mode == "get" then
      fixed = wrk.format("GET", "/statistics/" .. prefix .. "-get")
   elseif mode ~= "distinct" then
      error("unknown mode " .. tostring(mode))
   end
end

function request()
   -- Called once per request, as wrk starts writing it: `sent` counts requests
   -- that may reach the server, answered or not when wrk stops; fresh sensors
   -- are PREFIX-1 to PREFIX-<sent>.
   sent = sent + 1
   if mode == "distinct" then
      return post("[" .. measurement(prefix .. "-" .. sent, "21.5") .. "]")
   end
   return fixed
end

function response(status, headers, body)
   answers.count(status, body)
   -- waitress says so when it closes the connection after this answer: wrk
   -- then connects again, which is what keep-alive is meant to spare.
   local connection = headers["Connection"] or headers["connection"]
   if connection and connection:lower() == "close" then
      closes = closes + 1
   end
end

function done(summary, latency, requests)
   -- Quantiles every 1 % and every 0.1 % above 90 %, so that the driver can
   -- merge two wrk processes' latencies. Each percentile() call scans wrk's
   -- histogram, so the grid stays small.
   local quantiles = {}
   for p = 1, 89 do
      quantiles[#quantiles + 1] = string.format("[%g, %d]", p, latency:percentile(p))
   end
   for tenth = 900, 999 do
      local p = tenth / 10
      quantiles[#quantiles + 1] = string.format("[%g, %d]", p, latency:percentile(p))
   end
   io.write(
      "BENCH-RESULT {",
      answers.json_fields(summary, latency),
      ', "sent": ', answers.total("sent"),
      ', "closes": ', answers.total("closes"),
      ', "quantiles_us": [', table.concat(quantiles, ", "), "]",
      "}\n"
   )
end
