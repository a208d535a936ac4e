-- overhead_spec.lua — the fast paths that bench/overhead.lua measures (owner O).
--
-- 1. mm_binary's flat path (same dtype; same shape and both contiguous, or
--    one single-element operand; fewer than 16384 elements) must give
--    bit-for-bit what the broadcasting path gives, honour a view's offset,
--    keep dtype promotion, and still record gradients.
-- 2. The `microml` program runs Lua on its own small-block allocator
--    (bindings/main.c): scripts that stress every block size and growth
--    through realloc must behave exactly as under the stock allocator, and
--    memory must come back to the collector.
local mm = require "microml"
local H = require "helpers"

local MICROML = os.getenv("MICROML")

-- Bitwise equality, NaN equal to NaN (maximum/minimum propagate NaN).
local function same(x, y)
  assert.are.same(x:shape(), y:shape())
  assert.are.equal(x:dtype(), y:dtype())
  local vx, vy = H.values(x), H.values(y)
  for i = 1, #vx do
    local a, b = vx[i], vy[i]
    if not (a == b or (a ~= a and b ~= b)) then
      error(("element %d: %.17g vs %.17g"):format(i, a, b), 2)
    end
  end
end

-- The same op through the general path: a leading size-1 dim on one side
-- makes the shapes differ, so shape inference and the iterator run.
local function general(f, a, b) return f(a:unsqueeze(1), b):squeeze(1) end

local ops = {
  add = function(a, b) return a + b end,
  sub = function(a, b) return a - b end,
  mul = function(a, b) return a * b end,
  div = function(a, b) return a / b end,
  pow = function(a, b) return a ^ b end,
  maximum = function(a, b) return a:maximum(b) end,
  minimum = function(a, b) return a:minimum(b) end,
  eq = function(a, b) return a:eq(b) end,
  lt = function(a, b) return a:lt(b) end,
  ge = function(a, b) return a:ge(b) end,
}

describe("binary flat fast path", function()
  it("equals the broadcasting path for every op, dtype and small shape", function()
    mm.manual_seed(11)
    for _, dt in ipairs { "float32", "float64", "int64" } do
      for _, shape in ipairs { { 1 }, { 3 }, { 2, 1, 3 }, { 4, 5 } } do
        local a, b
        if dt == "int64" then
          a, b = mm.randint(-5, 6, shape), mm.randint(1, 4, shape)
        else
          a = mm.randn(shape, { dtype = dt })
          b = mm.rand(shape, { dtype = dt }) + 0.5
          a:_set(1, 0 / 0)   -- NaN goes through the kernels identically
        end
        for name, f in pairs(ops) do
          if not (dt == "int64" and name == "pow") then
            local ok, err = pcall(same, f(a, b), general(f, a, b))
            assert(ok, ("%s %s %s: %s"):format(name, dt, table.concat(shape, "x"), tostring(err)))
          end
        end
      end
    end
  end)

  it("equals the broadcasting path when one operand is a single element", function()
    mm.manual_seed(12)
    for _, dt in ipairs { "float32", "float64", "int64" } do
      for _, shape in ipairs { { 1 }, { 5 }, { 2, 1, 3 }, { 4, 5 } } do
        local a, singles
        if dt == "int64" then
          a = mm.randint(-5, 6, shape)
          singles = { mm.tensor(3, { dtype = dt }), mm.tensor({ -2 }, { dtype = dt }) }
        else
          a = mm.randn(shape, { dtype = dt })
          a:_set(1, 0 / 0)
          singles = { mm.tensor(0.75, { dtype = dt }), mm.tensor({ { -1.5 } }, { dtype = dt }) }
        end
        for _, s in ipairs(singles) do
          if s:dim() <= #shape then
            -- expand: same values, stride 0, so the general path runs
            local e = s:expand(shape)
            assert.is_false(e:is_contiguous() and a:numel() > 1)
            for name, f in pairs(ops) do
              if not (dt == "int64" and name == "pow") then
                local ok, err = pcall(same, f(a, s), f(a, e))
                assert(ok, ("%s %s t op s %s: %s"):format(name, dt, table.concat(shape, "x"), tostring(err)))
                ok, err = pcall(same, f(s, a), f(e, a))
                assert(ok, ("%s %s s op t %s: %s"):format(name, dt, table.concat(shape, "x"), tostring(err)))
              end
            end
          end
        end
      end
    end
    -- numbers from Lua become 0-dim tensors of the tensor's dtype
    local x = mm.tensor({ 1, 2, 3 }, { dtype = "float64" })
    H.assert_close(x * 0.5, { 0.5, 1, 1.5 }, 0)
    H.assert_close(1 - x, { 0, -1, -2 }, 0)
    H.assert_close(2 ^ x, { 2, 4, 8 }, 0)
    local i = mm.tensor({ 1, 2, 3 }, { dtype = "int64" })
    assert.are.equal("int64", (i * 2):dtype())
    assert.are.equal("float32", (i * 2.5):dtype())
    H.assert_close(i * 2.5, { 2.5, 5, 7.5 }, 0)
    -- a one-element operand with more dims than the other broadcasts the other way
    local r = mm.tensor({ 1, 2 }) + mm.tensor({ { 10 } })
    assert.are.same({ 1, 2 }, r:shape())
    H.assert_close(r, { { 11, 12 } }, 0)
  end)

  it("gives hand-computed values, 0-dim operands included", function()
    local s = mm.tensor(2.5) + mm.tensor(1.25)
    assert.are.same({}, s:shape())
    assert.are.equal(3.75, s:item())
    local a = mm.tensor({ { 1, 2 }, { 3, 4 } }, { dtype = "float64" })
    local b = mm.tensor({ { 10, 20 }, { 30, 40 } }, { dtype = "float64" })
    H.assert_close(a * b, { { 10, 40 }, { 90, 160 } }, 0)
    H.assert_close(b - a, { { 9, 18 }, { 27, 36 } }, 0)
    H.assert_close(a:maximum(b - 28), { { 1, 2 }, { 3, 12 } }, 0)
  end)

  it("reads a contiguous view at its offset", function()
    local x = mm.arange(0, 10, 1, { dtype = "float64" })
    local a, b = x:narrow(1, 3, 4), x:narrow(1, 7, 4)     -- {2,3,4,5}, {6,7,8,9}
    assert.is_true(a:is_contiguous() and a:storage_offset() > 0)
    H.assert_close(a + b, { 8, 10, 12, 14 }, 0)
    local m = mm.arange(0, 12, 1):reshape(3, 4)
    local r = m:select(1, 3) - m:select(1, 1)            -- rows 3 and 1: offsets 8 and 0
    H.assert_close(r, { 8, 8, 8, 8 }, 0)
  end)

  it("keeps dtype promotion: int64 / int64 is float32, mixed dtypes promote", function()
    local q = mm.tensor({ 7, 2 }, { dtype = "int64" }) / mm.tensor({ 2, 4 }, { dtype = "int64" })
    assert.are.equal("float32", q:dtype())
    H.assert_close(q, { 3.5, 0.5 }, 0)
    local m = mm.tensor({ 1, 2 }) + mm.tensor({ 0.5, 0.25 }, { dtype = "float64" })
    assert.are.equal("float64", m:dtype())
    H.assert_close(m, { 1.5, 2.25 }, 0)
    local i = mm.tensor({ 7, -3 }, { dtype = "int64" }) * mm.tensor({ 3, 5 }, { dtype = "int64" })
    assert.are.equal("int64", i:dtype())
    H.assert_close(i, { 21, -15 }, 0)
  end)

  it("at and above the size limit gives the same as below it", function()
    local n = 16384
    local a, b = mm.randn(n, { dtype = "float64" }), mm.randn(n, { dtype = "float64" })
    local big = a * b
    local small = a:narrow(1, 1, n - 1) * b:narrow(1, 1, n - 1)
    same(big:narrow(1, 1, n - 1), small)
  end)

  it("records gradients: values and grad_fn as PyTorch has them", function()
    local a = mm.tensor({ 2, 3 }, { dtype = "float64", requires_grad = true })
    local b = mm.tensor({ 5, 7 }, { dtype = "float64", requires_grad = true })
    local c = a * b
    assert.is_not_nil(c.grad_fn)
    c:sum():backward()
    H.assert_close(a.grad, { 5, 7 }, 0)
    H.assert_close(b.grad, { 2, 3 }, 0)
    local d = mm.tensor(3.0, { dtype = "float64", requires_grad = true })
    local e = d / mm.tensor(4.0, { dtype = "float64" })
    e:backward()
    assert.are.equal(0.25, d.grad:item())
    -- no_grad: the same path records nothing
    local f = mm.no_grad(function() return a + b end)
    assert.is_nil(f.grad_fn)
  end)

  it("passes float64 gradcheck on same-layout, size-1, 0-dim and non-contiguous operands", function()
    mm.manual_seed(5)
    local cases = {
      { H.leaf(3), H.leaf(3) },
      { H.leaf(2, 1, 3), H.leaf(2, 1, 3) },
      { H.leaf({}), H.leaf({}) },
      { H.tleaf(2, 3), H.leaf(2, 3) },   -- non-contiguous: the general path
      { H.leaf(2, 3), H.leaf(1, 3) },    -- broadcast: the general path
      { H.leaf(2, 3), H.leaf({}) },      -- a 0-dim operand: the fast path, stride 0
      { H.leaf(1), H.leaf(2, 3) },       -- one element, fewer dims: the fast path
      { H.leaf(1, 1, 1), H.leaf(3) },    -- one element, more dims: the general path
    }
    for _, c in ipairs(cases) do
      for _, f in ipairs { function(a, b) return a + b end, function(a, b) return a - b end,
                           function(a, b) return a * b end,
                           function(a, b) return a / (b * b + 1) end,
                           function(a, b) return a:maximum(b) end } do
        assert.is_true(mm.gradcheck(f, c))
      end
    end
  end)

  it("still names both shapes when they cannot broadcast", function()
    local ok, err = pcall(function() return mm.rand(2, 3) + mm.rand(3, 2) end)
    assert.is_false(ok)
    assert.truthy(tostring(err):find("(2, 3)", 1, true))
    assert.truthy(tostring(err):find("(3, 2)", 1, true))
    assert.truthy(tostring(err):find("add", 1, true))
    assert.has_error(function() return mm.rand(2) * mm.rand(3) end)
    local ok2, err2 = pcall(function() return mm.rand(2) * mm.rand(3) end)
    assert.is_false(ok2)
    assert.truthy(tostring(err2):find("mul: shapes (2) and (3) cannot broadcast", 1, true))
    local ok3, err3 = pcall(function() return mm.tensor({ 1, 2 }) + "x" end)
    assert.is_false(ok3)
    assert.truthy(tostring(err3):find("Tensor or number", 1, true))
  end)
end)

describe("the microml program's Lua allocator", function()
  local function run(code)
    local path = os.tmpname()
    local f = assert(io.open(path, "wb"))
    f:write(code)
    f:close()
    local p = io.popen(("timeout 60 %q %q 2>&1; echo EXIT=$?"):format(MICROML, path))
    local out = p:read("a")
    p:close()
    os.remove(path)
    return out
  end

  it("runs a script that grows and shrinks blocks of every size", function()
    assert(MICROML, "set MICROML to the path of build/microml (make spec does)")
    local out = run [[
      local mm = require "microml"
      -- strings of every length 0..600 (every small class and past it), kept and dropped
      local keep, sum = {}, 0
      for n = 0, 600 do keep[#keep + 1] = ("x"):rep(n) .. n end
      for i, s in ipairs(keep) do sum = sum + #s end
      -- tables grown one slot at a time: realloc across every class boundary
      local t = {}
      for i = 1, 5000 do t[i] = i * 2 end
      local tsum = 0
      for i = 1, #t do tsum = tsum + t[i] end
      for i = #t, 1, -1 do t[i] = nil end
      collectgarbage()
      -- many small tensors, with no collectgarbage(): memory stays bounded
      local a, b = mm.rand(1), mm.rand(1)
      local c
      local kb0 = collectgarbage("count")
      for _ = 1, 200000 do c = a + b end
      local kb1 = collectgarbage("count")
      keep = nil
      collectgarbage(); collectgarbage()
      print(("sum=%d tsum=%d ok=%s grew=%s live=%d"):format(sum, tsum,
        tostring(math.abs(c:item() - (a:item() + b:item())) < 1e-6),
        tostring(kb1 - kb0 < 16384), mm.memory_stats().bytes_live))
    ]]
    -- sum of #(("x"):rep(n) .. n) for n = 0..600
    local want = 0
    for n = 0, 600 do want = want + n + #tostring(n) end
    assert.truthy(out:find(("sum=%d tsum=%d ok=true grew=true"):format(want, 5000 * 5001), 1, true), out)
    assert.truthy(out:find("EXIT=0", 1, true), out)
  end)

  it("reports running out of memory as a Lua error, not a crash", function()
    assert(MICROML, "set MICROML to the path of build/microml (make spec does)")
    local out = run [[
      local ok, err = pcall(string.rep, "x", 1 << 60)
      print("caught", ok, err)
    ]]
    assert.truthy(out:find("caught\tfalse", 1, true), out)
    assert.truthy(out:find("EXIT=0", 1, true), out)
  end)
end)
