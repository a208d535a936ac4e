--- microml.progress — progress reporting for long loops.
--
--   local bar <close> = progress.new{total = #loader, desc = "epoch 1"}
--   for x, y in loader:iter() do
--     ...
--     bar:update(1, {loss = loss:item()})
--   end
--   bar:close()          -- idempotent; <close> calls it too
--
-- On a terminal (the stream is a tty and TERM is set and not "dumb") it
-- redraws one line, at most every `interval` seconds:
--   epoch 1  42%|████████▍           | 394/938 [00:07<00:09, 56.1 it/s] loss=0.4123
-- Anywhere else (CI logs, pipes, files) it prints a plain line each time
-- another `every_percent` of the total is done or `every_seconds` have
-- passed, whichever comes first, and a last line on close, so logs stay
-- short and readable.
--
-- Options: total (nil: unknown, no bar or ETA), desc, stream (io.stderr),
-- tty (override detection), ascii (no Unicode blocks), width (columns),
-- interval (0.1 s), every_percent (10), every_seconds (10), unit ("it"),
-- clock (a function returning seconds; tests pass a fake one).
local mm = require "microml"

local options = require "microml.options"
local progress = {}

local Bar = {}
Bar.__index = Bar
Bar.__name = "ProgressBar"

local function fmt_time(s)
  if s ~= s or s == math.huge or s < 0 then return "?" end
  s = math.floor(s + 0.5)
  local h, m = s // 3600, (s // 60) % 60
  if h > 0 then return ("%d:%02d:%02d"):format(h, m, s % 60) end
  return ("%02d:%02d"):format(m, s % 60)
end

local function fmt_rate(r, unit)
  if r ~= r or r == math.huge then return "? " .. unit .. "/s" end
  if r >= 1 or r == 0 then
    return ("%s %s/s"):format(r >= 100 and ("%.0f"):format(r) or ("%.3g"):format(r), unit)
  end
  return ("%.3g s/%s"):format(1 / r, unit)   -- slow loops read better as seconds per step
end

-- Counts may be fractional (update(0.5) for a half-done step).
local function fmt_count(n)
  if n == math.floor(n) and math.abs(n) < 2 ^ 53 then return ("%d"):format(n) end
  return ("%.4g"):format(n)
end

local function fmt_value(v)
  if mm.is_tensor(v) then v = v:item() end
  if math.type(v) == "integer" then return tostring(v) end
  if type(v) == "number" then return ("%.4g"):format(v) end
  return tostring(v)
end

-- Terminal columns a string takes: UTF-8 continuation bytes take none.
local function display_width(s)
  local _, cont = s:gsub("[\128-\191]", "")
  return #s - cont
end

local function utf8_locale()
  for _, var in ipairs {"LC_ALL", "LC_CTYPE", "LANG"} do
    local v = os.getenv(var)
    if v and v ~= "" then return v:lower():find("utf%-?8") ~= nil end
  end
  return false
end

local function is_terminal(stream)
  local term = os.getenv("TERM")
  if not term or term == "" or term == "dumb" then return false end
  return io.type(stream) == "file" and mm._isatty(stream)
end

--- progress.new(opts) -> bar
local BAR_OPTIONS = { "total", "desc:string", "stream", "tty:boolean", "clock:function", "width:number",
                      "interval:number", "every_percent:number", "every_seconds:number", "unit:string",
                      "ascii:boolean" }

function progress.new(opts, ...)
  options.arity("progress.new", 1, select("#", ...) + 1)
  opts = opts or {}
  if type(opts) ~= "table" then
    error(("progress.new: expected an options table, got %s"):format(type(opts)), 2)
  end
  options.check(opts, "progress.new", BAR_OPTIONS)
  local total = opts.total
  if total ~= nil and (type(total) ~= "number" or total < 0) then
    error(("progress.new: total must be a number >= 0 or nil, got %s"):format(tostring(total)), 2)
  end
  local stream = opts.stream or io.stderr
  if type(stream) ~= "userdata" and type(stream) ~= "table" then
    error(("progress.new: stream must be a file (or an object with write), got %s"):format(type(stream)), 2)
  end
  local tty = opts.tty
  if tty == nil then tty = is_terminal(stream) end
  local clock = opts.clock or mm._time
  local self = setmetatable({
    total = total, desc = opts.desc or "", stream = stream, tty = tty,
    width = opts.width,
    interval = opts.interval or 0.1, every_percent = opts.every_percent or 10,
    every_seconds = opts.every_seconds or 10, unit = opts.unit or "it",
    clock = clock, n = 0, metrics = {}, closed = false,
  }, Bar)
  if opts.ascii ~= nil then self.ascii = opts.ascii and true or false
  else self.ascii = not utf8_locale() end
  self.start = clock()
  self.last_draw = -math.huge
  self.last_line_time = self.start
  self.last_line_step = -1      -- the every_percent bucket last printed
  self.last_line_n = nil
  if tty then self:_draw(self.start) end
  return self
end

function Bar:_columns()
  if self.width then return self.width end
  local w = io.type(self.stream) == "file" and mm._terminal_width(self.stream)
  return w or tonumber(os.getenv("COLUMNS")) or 80
end

function Bar:_metrics_str()
  local keys = {}
  for k in pairs(self.metrics) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  local parts = {}
  for i, k in ipairs(keys) do parts[i] = tostring(k) .. "=" .. fmt_value(self.metrics[k]) end
  return table.concat(parts, " ")
end

-- The status without the bar: "394/938 [00:07<00:09, 56.1 it/s]".
function Bar:_status(now)
  local elapsed = now - self.start
  local rate = elapsed > 0 and self.n / elapsed or 0 / 0
  if self.total then
    local eta = self.n >= self.total and 0 or (rate > 0 and (self.total - self.n) / rate or 0 / 0)
    return ("%s/%s [%s<%s, %s]"):format(fmt_count(self.n), fmt_count(self.total),
                                        fmt_time(elapsed), fmt_time(eta), fmt_rate(rate, self.unit))
  end
  return ("%s %s [%s, %s]"):format(fmt_count(self.n), self.unit, fmt_time(elapsed), fmt_rate(rate, self.unit))
end

function Bar:_fraction()
  if not self.total then return nil end
  if self.total == 0 then return 1 end
  return math.min(self.n / self.total, 1)
end

local PARTIAL = {"▏", "▎", "▍", "▌", "▋", "▊", "▉"}

local function bar_string(frac, width, ascii)
  local cells = frac * width
  local full = math.floor(cells)
  if ascii then return ("#"):rep(full) .. ("."):rep(width - full) end
  local s = ("█"):rep(full)
  local rest = width - full
  if rest > 0 then
    local eighth = math.floor((cells - full) * 8)
    if eighth > 0 then s = s .. PARTIAL[eighth]; rest = rest - 1 end
    s = s .. (" "):rep(rest)
  end
  return s
end

function Bar:_line(now, with_bar)
  local prefix = self.desc ~= "" and self.desc .. " " or ""
  local frac = self:_fraction()
  local status, metrics = self:_status(now), self:_metrics_str()
  local tail = " " .. status .. (metrics ~= "" and " " .. metrics or "")
  if not frac then return prefix .. tail:sub(2) end
  local pct = ("%3d%%"):format(math.floor(frac * 100))
  if not with_bar then return prefix .. pct .. tail end
  -- The bar takes what the status and the metrics leave.  Room for the
  -- metrics only grows, so a loss printed with fewer digits does not make
  -- the bar jump back and forth; what does not fit is cut at the end.
  local cols = self:_columns()
  self.metrics_room = math.max(self.metrics_room or 0, metrics ~= "" and display_width(metrics) + 1 or 0)
  local room = cols - 1 - display_width(prefix .. pct .. "|| " .. status) - self.metrics_room
  local w = math.max(math.min(room, 40), 10)
  return prefix .. pct .. "|" .. bar_string(frac, w, self.ascii) .. "|" .. tail
end

function Bar:_write(s)
  self.stream:write(s)
  if self.stream.flush then self.stream:flush() end
end

function Bar:_draw(now)
  local line = self:_line(now, true)
  local cols = self:_columns()
  if display_width(line) > cols - 1 then
    -- Never wrap: a wrapped line cannot be redrawn with \r.  Cut at a
    -- character boundary (every character here takes one column).
    local cut = utf8.offset(line, math.max(cols - 1, 1) + 1)
    if cut then line = line:sub(1, cut - 1) end
  end
  -- \r returns to the line start, ESC[K clears what a longer line left.
  self:_write("\r" .. line .. "\27[K")
  self.last_draw = now
end

function Bar:_print_line(now)
  self:_write(self:_line(now, false) .. "\n")
  self.last_line_time = now
  self.last_line_n = self.n
end

--- bar:update([n=1] [, metrics]): n more steps done; metrics (a table of
-- numbers, strings or one-element tensors) replace the ones shown.
function Bar:update(n, metrics)
  if type(n) == "table" and metrics == nil then n, metrics = 1, n end
  n = n or 1
  if type(n) ~= "number" then
    error(("update: expected a number of steps, got %s"):format(type(n)), 2)
  end
  if metrics ~= nil then
    if type(metrics) ~= "table" then
      error(("update: expected a table of metrics, got %s"):format(type(metrics)), 2)
    end
    self.metrics = metrics
  end
  if self.closed then return self end
  self.n = self.n + n
  local now = self.clock()
  if self.tty then
    local done = self.total and self.n >= self.total
    if done or now - self.last_draw >= self.interval then self:_draw(now) end
    return self
  end
  local frac = self:_fraction()
  local step = frac and self.every_percent > 0 and math.floor(frac * 100 / self.every_percent) or nil
  if (step and step > self.last_line_step) or now - self.last_line_time >= self.every_seconds then
    if step then self.last_line_step = step end
    self:_print_line(now)
  end
  return self
end

--- bar:write(msg): prints a line of text without breaking the bar.
function Bar:write(msg)
  msg = tostring(msg)
  if self.tty and not self.closed then
    self:_write("\r\27[K" .. msg .. "\n")
    self:_draw(self.clock())
  else
    self:_write(msg .. "\n")
  end
end

--- bar:close(): the final state, and a newline on a terminal.  Idempotent.
function Bar:close()
  if self.closed then return end
  local now = self.clock()
  if self.tty then
    self:_draw(now)
    self:_write("\n")
  elseif self.last_line_n ~= self.n then
    self:_print_line(now)
  end
  self.closed = true
end
Bar.__close = Bar.close

function Bar:__tostring()
  return "ProgressBar(" .. self:_line(self.clock(), false) .. ")"
end

return progress
