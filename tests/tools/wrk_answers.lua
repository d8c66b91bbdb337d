-- What tests/tools/bench_wrk.lua and tests/tools/faults_wrk.lua share: the answers each
-- wrk thread counts, summed over the threads in done() as JSON for the
-- driver. A script loads it relative to itself:
--
--   local answers = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "wrk_answers.lua")
--
-- The counts are the thread's globals `statuses`, `problems` and
-- `problem_kinds`, so that done() can read every thread's with thread:get(),
-- which copies flat tables only: a table inside a table crashes wrk 4.

local MAX_PROBLEM_KINDS = 20 -- distinct (status, detail) pairs kept per thread

local answers = {}

local threads = {}

-- wrk's setup(): numbers the threads, in the main state where done() runs.
function answers.setup(thread)
   table.insert(threads, thread)
   thread:set("thread_number", #threads)
end

-- wrk's init(), in each thread: fresh counts, answers by status, problems
-- by status and detail.
function answers.init()
   statuses, problems, problem_kinds = {}, {}, 0
end

-- Count one answer; one of 3xx or above by its problem document's detail too.
function answers.count(status, body)
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

-- The sum over all threads of the numeric global `name` (e.g. "sent").
function answers.total(name)
   local sum = 0
   for _, thread in ipairs(threads) do
      sum = sum + thread:get(name)
   end
   return sum
end

-- The JSON fields every result line carries: requests, duration, the answers
-- by status and problem summed over the threads, socket errors and
-- latency. Starts with the first field, no comma before it.
function answers.json_fields(summary, latency)
   local all_statuses, all_problems = {}, {}
   for _, thread in ipairs(threads) do
      add_counts(all_statuses, thread:get("statuses"))
      add_counts(all_problems, thread:get("problems"))
   end
   local e = summary.errors
   return table.concat({
      '"requests": ', summary.requests,
      ', "duration_us": ', summary.duration,
      ', "statuses": ', json_object(all_statuses),
      ', "problems": ', json_object(all_problems),
      ', "socket_errors": ', json_object({
         connect = e.connect, read = e.read, write = e.write, timeout = e.timeout
      }),
      ', "latency_us": {"p50": ', latency:percentile(50),
      ', "p99": ', latency:percentile(99),
      ', "max": ', latency.max, "}",
   })
end

return answers
