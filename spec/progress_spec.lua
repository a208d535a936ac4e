-- microml.progress: the redrawn terminal line (bar, count, rate, ETA,
-- metrics, throttling, width), the plain-line mode for logs, and the
-- terminal helpers mm._isatty / mm._time.  A fake stream records the
-- output and a fake clock makes rates and ETAs exact.
local mm = require "microml"
local progress = mm.progress
local H = require "helpers"

local function fake_stream()
  local s = {parts = {}}
  function s:write(...)
    for _, v in ipairs {...} do self.parts[#self.parts + 1] = tostring(v) end
    return self
  end
  function s:flush() end
  function s:text() return table.concat(self.parts) end
  return s
end

local function fake_clock()
  local c = {t = 100}
  c.fn = function() return c.t end
  return c
end

local function lines(s)
  local out = {}
  for l in s:gmatch("([^\n]*)\n") do out[#out + 1] = l end
  return out
end

describe("progress bar on a terminal", function()
  it("redraws one line with bar, count, elapsed<ETA, rate and metrics", function()
    local out, clk = fake_stream(), fake_clock()
    local bar = progress.new {total = 100, desc = "epoch 1", stream = out, tty = true, width = 120,
                              ascii = true, clock = clk.fn}
    for _ = 1, 50 do
      clk.t = clk.t + 0.5
      bar:update(1, {loss = 0.123456, acc = 0.5})
    end
    local text = out:text()
    local last = text:match(".*\r(.-)\27%[K$")
    assert.are.equal("epoch 1  50%|" .. ("#"):rep(20) .. ("."):rep(20)
      .. "| 50/100 [00:25<00:25, 2 it/s] acc=0.5 loss=0.1235", last)
    assert.is_nil(text:find("\n"))          -- nothing scrolls while running
    bar:close()
    text = out:text()
    assert.are.equal("\n", text:sub(-1))
    assert.truthy(text:find("100%|", 1, true) == nil)   -- closing does not pretend to finish
    bar:close()                                           -- idempotent
    assert.are.equal(text, out:text())
  end)

  it("throttles redraws to one per interval but always draws the end", function()
    local out, clk = fake_stream(), fake_clock()
    local bar = progress.new {total = 1000, stream = out, tty = true, width = 80, clock = clk.fn,
                              interval = 0.1}
    for _ = 1, 1000 do
      clk.t = clk.t + 0.001                -- 1 s in all: about 10 redraws
      bar:update()
    end
    local draws = H.count(out:text(), "\r")
    assert.is_true(draws >= 10 and draws <= 13, "draws: " .. draws)
    assert.truthy(out:text():find("1000/1000", 1, true))
    bar:close()
  end)

  it("never draws a line wider than the terminal", function()
    local out, clk = fake_stream(), fake_clock()
    local bar = progress.new {total = 10, desc = "a long description", stream = out, tty = true,
                              width = 50, clock = clk.fn}
    for i = 1, 10 do
      clk.t = clk.t + 1
      bar:update(1, {loss = i / 3, accuracy = 0.99, learning_rate = 0.001, grad_norm = 12.5})
    end
    bar:close()
    for seg in out:text():gmatch("\r([^\r\n]*)") do
      seg = seg:gsub("\27%[K", "")
      assert.is_true(utf8.len(seg) <= 49, ("%d columns: %s"):format(utf8.len(seg), seg))
    end
  end)

  it("draws Unicode blocks with eighths unless ascii is asked for", function()
    local out, clk = fake_stream(), fake_clock()
    local bar = progress.new {total = 80, stream = out, tty = true, width = 80, ascii = false,
                              clock = clk.fn}
    clk.t = clk.t + 1
    bar:update(13)                          -- 13/80 of 40 cells = 6.5 cells
    assert.truthy(out:text():find("██████▌", 1, true))
  end)

  it("write() prints a message above the bar", function()
    local out, clk = fake_stream(), fake_clock()
    local bar = progress.new {total = 4, stream = out, tty = true, width = 80, clock = clk.fn}
    bar:update(2)
    bar:write("checkpoint saved")
    local text = out:text()
    assert.truthy(text:find("\r\27[Kcheckpoint saved\n\r", 1, true))
    assert.truthy(text:find("2/4", #text - 60, true))
  end)
end)

describe("progress in logs (not a terminal)", function()
  it("prints a plain line per 10% and a last line, with metrics", function()
    local out, clk = fake_stream(), fake_clock()
    local bar = progress.new {total = 200, desc = "train", stream = out, tty = false, clock = clk.fn}
    for i = 1, 200 do
      clk.t = clk.t + 0.01
      bar:update(1, {loss = 1 / i})
    end
    bar:close()
    local ls = lines(out:text())
    assert.are.equal(11, #ls)               -- the start, then 10%, 20%, ..., 100%
    assert.is_nil(out:text():find("\r", 1, true))
    assert.are.equal("train  50% 100/200 [00:01<00:01, 100 it/s] loss=0.01", ls[6])
    assert.are.equal("train 100% 200/200 [00:02<00:00, 100 it/s] loss=0.005", ls[11])
  end)

  it("prints every few seconds when progress is slow or the total is unknown", function()
    local out, clk = fake_stream(), fake_clock()
    local bar = progress.new {desc = "eval", stream = out, tty = false, clock = clk.fn, every_seconds = 10}
    for _ = 1, 60 do
      clk.t = clk.t + 1
      bar:update()
    end
    bar:close()
    local ls = lines(out:text())
    assert.are.equal(6, #ls)                -- at 10 s, 20 s, ..., 60 s; close adds nothing new
    assert.are.equal("eval 60 it [01:00, 1 it/s]", ls[6])
    -- slow but with a total: the every_seconds rule fills the gaps between 50% steps
    out = fake_stream()
    bar = progress.new {total = 100, stream = out, tty = false, clock = clk.fn, every_percent = 50,
                        every_seconds = 10}
    for _ = 1, 10 do
      clk.t = clk.t + 4
      bar:update(1)
    end
    bar:close()
    ls = lines(out:text())
    assert.are.same({"  1% 1/100 [00:04<06:36, 4 s/it]", "  4% 4/100 [00:16<06:24, 4 s/it]",
                     "  7% 7/100 [00:28<06:12, 4 s/it]", " 10% 10/100 [00:40<06:00, 4 s/it]"}, ls)
  end)

  it("accepts one-element tensors as metrics and works as a <close> variable", function()
    local out, clk = fake_stream(), fake_clock()
    do
      local bar <close> = progress.new {total = 1, stream = out, tty = false, clock = clk.fn}
      bar:update(1, {loss = mm.tensor(0.25)})
    end
    assert.are.equal("100% 1/1 [00:00<00:00, ? it/s] loss=0.25\n", out:text())
  end)

  it("rejects bad arguments", function()
    assert.has_error(function() progress.new {total = -1} end)
    local ok, msg = pcall(progress.new, {total = "x"})
    assert.is_false(ok)
    assert.truthy(tostring(msg):find("total must be a number >= 0", 1, true))
    local bar = progress.new {total = 1, stream = fake_stream(), tty = false}
    ok, msg = pcall(bar.update, bar, "x")
    assert.is_false(ok)
    assert.truthy(tostring(msg):find("expected a number of steps, got string", 1, true))
  end)
end)

describe("terminal helpers", function()
  it("mm._isatty is false for a regular file and checks its argument", function()
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    assert.is_false(mm._isatty(f))
    f:close()
    os.remove(path)
    assert.is_boolean(mm._isatty(1))
    assert.is_false(mm._isatty(-1))
    assert.has_error(function() mm._isatty(f) end)        -- closed
    assert.has_error(function() mm._isatty("stdout") end)
  end)

  it("mm._time is monotonic seconds", function()
    local a = mm._time()
    local b = mm._time()
    assert.is_number(a)
    assert.is_true(b >= a and b - a < 1)
  end)

  it("a real stream that is not a terminal gets plain lines", function()
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    local bar = progress.new {total = 2, stream = f}
    assert.is_false(bar.tty)
    bar:update(2)
    bar:close()
    f:close()
    f = assert(io.open(path))
    local s = f:read("a")
    f:close()
    os.remove(path)
    assert.truthy(s:find("2/2", 1, true))
    assert.is_nil(s:find("\r", 1, true))
  end)
end)
