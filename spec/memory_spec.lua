-- memory_spec.lua — tensor memory comes back, stays flat, and has limits (owner Rel).
--
-- The fast version of bench/soak.lua: a training loop with no
-- collectgarbage() in it must not grow, must reuse cached blocks instead of
-- asking the system, and must hand every byte back once its tensors are
-- dropped.  Also: absurd sizes and the memory limit are Lua errors that name
-- the bytes.
local mm = require "microml"
local H = require "helpers"

local function live() return mm.memory_stats().bytes_live end

describe("memory", function()
  before_each(H.full_gc)

  it("a training loop stays flat and returns every byte when dropped", function()
    H.full_gc()
    local start = live()
    mm.manual_seed(3)
    local nn, optim = mm.nn, mm.optim
    local x, y = mm.randn(64, 20), mm.randint(1, 5, 64)
    local model = nn.MLP { sizes = { 20, 32, 4 }, activation = "relu" }
    local opt = optim.AdamW(model:parameters(), { lr = 1e-2 })
    local at500, max_after, sys500
    local first_loss, last_loss
    for step = 1, 2500 do
      local loss = nn.cross_entropy(model(x), y)
      opt:zero_grad()
      loss:backward()
      opt:step()
      if step == 1 then first_loss = loss:item() end
      if step == 500 then at500, max_after, sys500 = live(), 0, mm.memory_stats().system_allocs end
      if step > 500 then max_after = math.max(max_after, live()) end
      last_loss = loss:item()
    end
    -- It learned something, so the loop really ran the graph.
    assert.is_true(last_loss < first_loss)
    -- The collector keeps up on its own: no upward drift after warm-up,
    -- only the sawtooth of one collection cycle.
    assert.is_true(max_after < 3 * at500 + (1 << 20),
      ("live bytes grew from %d at step 500 to a peak of %d"):format(at500, max_after))
    -- The cache serves the steady state: (almost) no fresh system allocations.
    local st = mm.memory_stats()
    assert.is_true(st.system_allocs - sys500 <= 8,
      ("%d system allocations after warm-up"):format(st.system_allocs - sys500))
    model, opt, x, y = nil, nil, nil, nil
    H.full_gc()
    assert.are.equal(start, live())
  end)

  it("free() and <close> release bytes at once, without the collector", function()
    local before = live()
    local t = mm.zeros(1000, 1000)
    assert.is_true(live() >= before + 4000000)
    t:free()
    assert.are.equal(before, live())
    do
      local u <close> = mm.ones(500, 500)
      assert.is_true(live() >= before + 1000000)
    end
    assert.are.equal(before, live())
    local ok, err = pcall(function() return t + 1 end)
    assert.is_false(ok)
    assert.truthy(err:find("freed", 1, true))
  end)

  it("backward releases the graph's saved tensors", function()
    local w = mm.randn(100, 100, { requires_grad = true })
    local x = mm.randn(100, 100)
    H.full_gc()
    local before = live()
    local loss = (x:matmul(w):tanh() * 3):sum()
    local with_graph = live()
    assert.is_true(with_graph > before)
    loss:backward()
    loss = nil
    H.full_gc()
    -- What remains is w.grad (100 x 100 float32, one size-class block).
    local grad_bytes = live() - before
    assert.is_true(grad_bytes >= 40000 and grad_bytes <= 50000 + 4096,
      ("expected only w.grad to remain, got %d bytes"):format(grad_bytes))
    w.grad = nil
    H.full_gc()
    assert.are.equal(before, live())
  end)

  it("an absurd size is a Lua error that names the bytes", function()
    local ok, err = pcall(mm.zeros, 1e6, 1e6)
    assert.is_false(ok)
    assert.truthy(err:find("4000000000000 bytes", 1, true), err)
    ok, err = pcall(mm.zeros, 2 ^ 40, 2 ^ 40)
    assert.is_false(ok)
    assert.truthy(err:find("too many elements", 1, true) or err:find("bytes", 1, true), err)
    assert.has_error(function() mm.zeros(-1) end)
    local ok2, err2 = pcall(mm.zeros, -1)
    assert.truthy(err2:find(">= 0", 1, true), err2)
  end)

  it("set_memory_limit turns growth past the limit into an error, and can be removed", function()
    H.full_gc()
    local prev = mm.memory_stats().bytes_limit
    local limit = live() + 2 * 1024 * 1024
    mm.set_memory_limit(limit)
    assert.are.equal(limit, mm.memory_stats().bytes_limit)
    local a = mm.zeros(256, 1024)                    -- 1 MiB fits
    local ok, err = pcall(mm.zeros, 1024, 1024)      -- 4 MiB does not
    assert.is_false(ok)
    assert.truthy(err:find("memory limit exceeded", 1, true), err)
    assert.truthy(err:find(tostring(limit) .. " bytes", 1, true), err)
    assert.truthy(err:find("4194304 bytes", 1, true), err)
    mm.set_memory_limit(0)
    assert.are.equal(0, mm.memory_stats().bytes_limit)
    local b = mm.zeros(1024, 1024)
    assert.are.equal(1024 * 1024, b:numel())
    a, b = nil, nil
    mm.set_memory_limit(prev)
    assert.has_error(function() mm.set_memory_limit(-5) end)
    assert.has_error(function() mm.set_memory_limit(0 / 0) end)
  end)

  it("MICROML_MAX_BYTES sets the limit from the environment", function()
    local script = [[
      local mm = require "microml"
      local ok, err = pcall(mm.zeros, 1000, 1000)
      local small = mm.zeros(10)
      io.write(tostring(ok), "|", tostring(err), "|", mm.memory_stats().bytes_limit)
    ]]
    local f = assert(io.popen("MICROML_MAX_BYTES=1000000 lua5.4 -e '" .. script .. "' 2>&1"))
    local out = f:read("a")
    f:close()
    local ok, err, lim = out:match("^(%a+)|(.-)|(%d+)$")
    assert.are.equal("false", ok, out)
    assert.truthy(err:find("memory limit exceeded", 1, true), out)
    assert.are.equal("1000000", lim, out)
  end)

  it("a memory limit turns runaway growth into an error naming the bytes", function()
    mm.set_memory_limit(mm.memory_stats().bytes_live + 1000000)
    local ok, err = pcall(mm.zeros, 1000, 1000)
    mm.set_memory_limit(0)
    assert.is_false(ok)
    assert.truthy(tostring(err):find("memory limit exceeded", 1, true))
    assert.truthy(tostring(err):find("4000000 bytes", 1, true))
  end)

  it("the limit holds for a block the cache could hand back, too", function()
    local t = mm.zeros(1000, 1000)
    t:free()   -- its 4 MB block is now cached
    assert.is_true(mm.memory_stats().bytes_cached >= 4000000)
    mm.set_memory_limit(mm.memory_stats().bytes_live + 1000000)
    local ok, err = pcall(mm.zeros, 1000, 1000)
    mm.set_memory_limit(0)
    assert.is_false(ok)
    assert.truthy(tostring(err):find("memory limit exceeded", 1, true))
  end)
end)

-- Security issue item 9: the free-block cache is bounded, and a memory
-- limit counts cached bytes too.
describe("the bounded block cache", function()
  -- float32 tensors of distinct sizes: each its own size class, so none is
  -- reused and, unbounded, every one would stay cached.  mm.empty does not
  -- touch the pages, so this costs address space, not memory.
  local MiB = 1024 * 1024

  it("holds at most max(256 MiB, 2 x the recent live peak)", function()
    -- In a fresh process, where the live peak is one 56 MiB tensor: one
    -- tensor of each size class from 8 to 56 MiB (4 classes an octave),
    -- 308 MiB in all.
    local script = [[
      local mm = require "microml"
      local MiB = 1024 * 1024
      for _, m in ipairs({8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56}) do
        local t = mm.empty(m * MiB // 4); t:free()
      end
      local st = mm.memory_stats()
      io.write(st.bytes_cached, " ", st.bytes_peak)
    ]]
    local out, err, code = H.sh("timeout 60 lua5.4 -e " .. H.quote(script))
    assert.are.equal(0, code, err)
    local cached, peak = out:match("^(%d+) (%d+)$")
    cached, peak = tonumber(cached), tonumber(peak)
    assert.is_true(peak < 64 * MiB, out)
    assert.is_true(cached <= 256 * MiB, ("cached %d bytes, expected at most 256 MiB"):format(cached))
    assert.is_true(cached > 128 * MiB, out)   -- it still caches, up to the cap
  end)

  it("counts cached bytes against the memory limit and frees them before refusing", function()
    H.full_gc()
    mm.empty_cache()
    local prev = mm.memory_stats().bytes_limit
    local limit = live() + 64 * MiB
    mm.set_memory_limit(limit)
    for i = 0, 19 do
      local t = mm.empty((8 + i) * MiB // 4)   -- each fits under the limit alone
      t:free()
      local st = mm.memory_stats()
      assert.is_true(st.bytes_live + st.bytes_cached <= limit,
        ("live %d + cached %d > limit %d"):format(st.bytes_live, st.bytes_cached, limit))
    end
    -- lowering the limit below live + cached frees cached blocks
    local a = mm.empty(30 * MiB // 4); a:free()
    local st = mm.memory_stats()
    mm.set_memory_limit(st.bytes_live + MiB)
    st = mm.memory_stats()
    assert.is_true(st.bytes_live + st.bytes_cached <= st.bytes_limit)
    mm.set_memory_limit(prev)
    mm.empty_cache()
  end)
end)
