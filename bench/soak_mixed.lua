-- soak_mixed.lua — resident memory under tensors of ever-changing sizes.
--
--   build/microml bench/soak_mixed.lua [steps=20000] [sample_every=1000]
--
-- Each step makes a tensor of a random size, log-uniform from 1 B to 64 MiB
-- (float32: 1 byte rounds up to one element), writes every byte of it (so its
-- pages are resident) and keeps it in one of 64 slots, dropping the tensor
-- that was there; every 8th step also makes a same-sized temporary that
-- becomes garbage at once.  No two steps need the same size class for long,
-- so without a bound the size-class cache keeps a block of every size it
-- has seen.  No collectgarbage() in the loop.  Resident memory is read from
-- /proc/self/statm; the figure is the growth from step 2,000 to the end.
-- Target: growth < 10%.
local mm = require "microml"

local STEPS = math.tointeger(tonumber(arg and arg[1] or "")) or 20000
local EVERY = math.tointeger(tonumber(arg and arg[2] or "")) or 1000
local SLOTS, MAX_LOG2 = 64, 26        -- 2^26 bytes = 64 MiB

local PAGE = 4096
local function rss_bytes()
  local f = io.open("/proc/self/statm")
  if not f then return nil end
  local _, resident = f:read("n", "n")
  f:close()
  return resident * PAGE
end
local function mib(b) return b / 1048576 end

math.randomseed(1)
local slots = {}
local clock = mm._time or os.clock
local t0 = clock()
local base, last, peak = nil, nil, 0
for step = 1, STEPS do
  local bytes = math.floor(2 ^ (math.random() * MAX_LOG2))
  local n = math.max(1, (bytes + 3) // 4)
  slots[math.random(SLOTS)] = mm.zeros(n)
  if step % 8 == 0 then local tmp = mm.ones(n) end   -- garbage right away
  if step % EVERY == 0 or step == STEPS then
    local r = rss_bytes() or 0
    if r > peak then peak = r end
    if step >= 2000 and not base then base = r end
    last = r
    local st = mm.memory_stats()
    print(("step %6d  rss %7.1f MiB  live %6.1f MiB  cached %6.1f MiB  system allocs %d")
          :format(step, mib(r), mib(st.bytes_live), mib(st.bytes_cached), st.system_allocs))
    io.stdout:flush()
  end
end
local secs = clock() - t0
if base and last then
  local growth = (last - base) / base * 100
  print(("soak_mixed: %d steps in %.1f s; RSS at step 2000 %.1f MiB, at the end %.1f MiB, "
         .. "growth %+.2f%%, peak %.1f MiB (target: growth < 10%%)")
        :format(STEPS, secs, mib(base), mib(last), growth, mib(peak)))
  if growth >= 10 then
    io.stderr:write("soak_mixed: resident memory grew by more than 10%\n")
    os.exit(1)
  end
else
  print(("soak_mixed: %d steps in %.1f s (fewer than 2000: no growth figure)"):format(STEPS, secs))
end
