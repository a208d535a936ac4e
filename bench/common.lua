--- bench/common.lua — what the benchmark drivers share.  Loaded with
-- dofile next to the script (the benchmarks run from any directory):
--   local common = dofile((arg[0]:match("^(.*)/") or ".") .. "/common.lua")
local M = {}

--- Median of a list of numbers (nil for an empty list).
function M.median(xs)
  if #xs == 0 then return nil end
  local s = { table.unpack(xs) }
  table.sort(s)
  local m = #s // 2
  return #s % 2 == 1 and s[m + 1] or (s[m] + s[m + 1]) / 2
end

--- s quoted for /bin/sh.
function M.sh_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

--- This process's peak resident memory in KiB (VmHWM), 0 if unknown.
function M.vmhwm_kib()
  local f = io.open("/proc/self/status")
  if not f then return 0 end
  local s = f:read("a")
  f:close()
  return math.tointeger(tonumber(s:match("VmHWM:%s*(%d+)"))) or 0
end

return M
