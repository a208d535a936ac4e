-- Reductions: sum, mean, var, std, prod, max/min, argmax/argmin, logsumexp,
-- norm — forward values, float64 gradient checks, accuracy, thread-count
-- independence, and errors on bad input.
local mm = require "microml"
local H = require "helpers"

local function same_shape(t, shape) assert.are.same(shape, t:shape()) end

describe("reductions: forward values", function()
  local x
  before_each(function()
    mm.manual_seed(11)
    x = mm.tensor({ { 1, 2, 3 }, { 4, 5, 6 } }, { dtype = "float32" })
  end)

  it("sum over everything, one dim, negative dims, keepdim", function()
    H.assert_close(x:sum(), { 21 })
    same_shape(x:sum(), {})
    H.assert_close(x:sum(1), { 5, 7, 9 })
    H.assert_close(x:sum(2), { 6, 15 })
    H.assert_close(x:sum(-1), { 6, 15 })
    H.assert_close(x:sum(-2), { 5, 7, 9 })
    same_shape(x:sum(2, true), { 2, 1 })
    same_shape(x:sum(1, true), { 1, 3 })
    same_shape(x:sum(nil, true), { 1, 1 })
    H.assert_close(mm.sum(x, 2), { 6, 15 })
    assert.are.equal("float32", x:sum():dtype())
  end)

  it("sum of a non-contiguous view matches its contiguous copy", function()
    local a = mm.randn({ 5, 7 })
    local v = a:t():narrow(1, 2, 4)        -- (4, 5), strided
    assert.is_false(v:is_contiguous())
    local c = v:contiguous()
    H.assert_close(v:sum(), { c:sum():item() }, 1e-6)
    H.assert_close(v:sum(1), c:sum(1):totable(), 1e-6)
    H.assert_close(v:sum(2), c:sum(2):totable(), 1e-6)
    H.assert_close(v:mean(1), c:mean(1):totable(), 1e-6)
  end)

  it("sum over a middle dim of a contiguous 3-D tensor", function()
    local a = mm.arange(0, 24):reshape(2, 3, 4):double()
    -- element (i, k) = sum_j (12 i + 4 j + k) = 36 i + 12 + 3 k
    local want = {}
    for i = 0, 1 do
      want[i + 1] = {}
      for k = 0, 3 do want[i + 1][k + 1] = 36 * i + 12 + 3 * k end
    end
    H.assert_close(a:sum(2), want)
    H.assert_close(a:mean(2), { { 4, 5, 6, 7 }, { 16, 17, 18, 19 } })
  end)

  it("int64 sums and products are exact integers", function()
    local big = mm.tensor({ 2 ^ 53, 1, 1 }, { dtype = "int64" })
    local s = big:sum()
    assert.are.equal("int64", s:dtype())
    assert.are.equal(math.tointeger(2 ^ 53) + 2, s:item())
    local p = mm.tensor({ { 3, 5 }, { 7, 11 } }):prod(2)
    assert.are.equal("int64", p:dtype())
    assert.are.same({ 15, 77 }, p:totable())
  end)

  it("a float32 sum of 10^6 elements is accurate (double accumulation)", function()
    -- naive float32 accumulation gives about 100958 here
    local s = (mm.ones(1000000) * 0.1):sum():item()
    assert.are.equal(100000, s)
    local r = mm.randn(1000000)
    local want = r:double():sum():item()
    assert.is_true(math.abs(r:sum():item() - want) <= 1e-6 * math.max(1, math.abs(want)) + 1e-3)
    H.assert_close(mm.ones(3000, 1000):sum(), { 3e6 }, 0)
  end)

  it("does not depend on the thread count", function()
    local prev = mm.get_num_threads()
    local a = mm.randn(700, 1300)
    local b = a:t()
    local function run()
      return { a:sum():item(), a:sum(1):totable(), a:sum(2):totable(), b:sum(2):totable(),
               a:var():item(), a:max(2):totable(), a:logsumexp(1):totable(), a:norm():item(),
               mm.randn(3000000, { dtype = "float64" }):sum():item() }
    end
    mm.set_num_threads(1); mm.manual_seed(3)
    local one = run()
    mm.set_num_threads(2); mm.manual_seed(3)
    local two = run()
    mm.set_num_threads(prev)
    assert.are.same(one, two)
  end)

  it("mean, and the empty cases (sum 0, prod 1, mean NaN)", function()
    H.assert_close(x:mean(), { 3.5 })
    H.assert_close(x:mean(1), { 2.5, 3.5, 4.5 })
    H.assert_close(x:mean(2, true), { { 2 }, { 5 } })
    local e = mm.zeros(0, 3)
    H.assert_close(e:sum(), { 0 })
    H.assert_close(e:sum(1), { 0, 0, 0 })
    H.assert_close(e:prod(1), { 1, 1, 1 })
    same_shape(e:sum(2), { 0 })
    local m = e:mean():item()
    assert.is_true(m ~= m)
    assert.is_true(e:mean(1):totable()[1] ~= e:mean(1):totable()[1])
  end)

  it("var and std, unbiased by default, biased on request", function()
    local v = mm.tensor({ 1, 2, 3, 4 }, { dtype = "float64" })
    H.assert_close(v:var(), { 5 / 3 }, 1e-12)
    H.assert_close(v:var(nil, false), { 1.25 }, 1e-12)
    H.assert_close(v:std(), { math.sqrt(5 / 3) }, 1e-12)
    H.assert_close(v:std(1, false), { math.sqrt(1.25) }, 1e-12)
    H.assert_close(x:var(2), { 1, 1 })
    H.assert_close(x:var(1, true, true), { { 4.5, 4.5, 4.5 } })
    same_shape(x:std(1, true, true), { 1, 3 })
    -- two passes: no cancellation around a large mean
    local off = mm.tensor({ 1e8 + 1, 1e8 + 2, 1e8 + 3 }, { dtype = "float64" })
    H.assert_close(off:var(), { 1 }, 1e-9)
    -- one element, unbiased: 0/0 as in PyTorch
    local one = mm.tensor({ 5.0 }):var():item()
    assert.is_true(one ~= one)
    H.assert_close(mm.tensor({ 5.0 }):var(nil, false), { 0 })
  end)

  it("prod, with and without zeros", function()
    H.assert_close(x:prod(2), { 6, 120 })
    H.assert_close(x:prod(), { 720 })
    H.assert_close(mm.tensor({ { 2, 0, 3 } }, { dtype = "float64" }):prod(2), { 0 })
  end)

  it("max and min: values and 1-based int64 indices", function()
    local y = mm.tensor({ { 3, 9, 1 }, { 7, 2, 8 } }, { dtype = "float64" })
    H.assert_close(y:max(), { 9 })
    same_shape(y:max(), {})
    H.assert_close(y:min(), { 1 })
    local v, i = y:max(2)
    H.assert_close(v, { 9, 8 })
    assert.are.same({ 2, 3 }, i:totable())
    assert.are.equal("int64", i:dtype())
    v, i = y:min(1)
    H.assert_close(v, { 3, 2, 1 })
    assert.are.same({ 1, 2, 1 }, i:totable())
    v, i = y:max(-1, true)
    same_shape(v, { 2, 1 })
    assert.are.same({ { 2 }, { 3 } }, i:totable())
    v, i = mm.max(y, 1)
    assert.are.same({ 2, 1, 2 }, i:totable())
    -- ties pick the first occurrence
    v, i = mm.tensor({ { 5, 5, 1 } }):max(2)
    assert.are.same({ 1 }, i:totable())
    -- int64 input keeps its dtype
    local iv = mm.tensor({ 4, -2, 9 }):max()
    assert.are.equal("int64", iv:dtype())
    assert.are.equal(9, iv:item())
    -- a tensor argument is the elementwise maximum / minimum
    H.assert_close(y:max(mm.full({ 2, 3 }, 5, { dtype = "float64" })), { { 5, 9, 5 }, { 7, 5, 8 } })
    H.assert_close(y:min(mm.full({ 2, 3 }, 5, { dtype = "float64" })), { { 3, 5, 1 }, { 5, 2, 5 } })
  end)

  it("max/min propagate NaN", function()
    local n = mm.tensor({ 1, 0 / 0, 3 })
    assert.is_true(n:max():item() ~= n:max():item())
    assert.is_true(n:min():item() ~= n:min():item())
    assert.are.equal(2, n:argmax():item())
  end)

  it("argmax and argmin", function()
    local y = mm.tensor({ { 3, 9, 1 }, { 7, 2, 8 } })
    assert.are.equal(2, y:argmax():item())       -- flat, row-major, 1-based
    assert.are.equal(3, y:argmin():item())
    assert.are.same({ 2, 1, 2 }, y:argmax(1):totable())
    assert.are.same({ 3, 2 }, y:argmin(2):totable())
    assert.are.same({ { 2 }, { 3 } }, y:argmax(2, true):totable())
    assert.are.equal("int64", mm.argmax(y:double(), 1):dtype())
    assert.are.same({ 1, 1 }, mm.tensor({ { 2.5, 2.5 }, { 4, 3 } }):argmax(2):totable())
  end)

  it("logsumexp is stable for large and -inf inputs", function()
    local y = mm.tensor({ { 1, 2, 3 }, { 1000, 1000, 1000 } }, { dtype = "float64" })
    H.assert_close(y:logsumexp(2), { math.log(math.exp(1) + math.exp(2) + math.exp(3)),
                                     1000 + math.log(3) }, 1e-12)
    same_shape(y:logsumexp(2, true), { 2, 1 })
    H.assert_close(y:logsumexp(1), { 1000, 1000, 1000 }, 1e-12)
    local f = mm.tensor({ -1e4, -1e4 + math.log(3) })
    H.assert_close(f:logsumexp(1), { -1e4 + math.log(4) }, 1e-6)
    local ninf = mm.tensor({ -math.huge, -math.huge }, { dtype = "float64" }):requires_grad_()
    local l = ninf:logsumexp(1)
    assert.are.equal(-math.huge, l:item())
    l:backward()
    assert.are.same({ 0, 0 }, ninf.grad:totable())
  end)

  it("norm: p = 2 (default), 1, math.huge, 3, per dim", function()
    local v = mm.tensor({ { 3, -4 }, { 0, 1 } }, { dtype = "float64" })
    H.assert_close(v:norm(), { math.sqrt(26) }, 1e-12)
    H.assert_close(v:norm(2, 2), { 5, 1 }, 1e-12)
    H.assert_close(v:norm(1), { 8 }, 1e-12)
    H.assert_close(v:norm(1, 1), { 3, 5 }, 1e-12)
    H.assert_close(v:norm(math.huge), { 4 }, 1e-12)
    H.assert_close(v:norm(math.huge, 2, true), { { 4 }, { 1 } }, 1e-12)
    H.assert_close(v:norm(3, 2), { (27 + 64) ^ (1 / 3), 1 }, 1e-12)
    H.assert_close(mm.norm(mm.zeros(0)), { 0 })
  end)

  it("reduces a 0-dim tensor as its one element", function()
    local s = mm.tensor(4.0, { dtype = "float64" })
    H.assert_close(s:sum(), { 4 })
    H.assert_close(s:sum(1), { 4 })
    H.assert_close(s:max(), { 4 })
    H.assert_close(s:prod(-1), { 4 })
  end)
end)

describe("reductions: gradients (float64 finite differences)", function()
  before_each(function() mm.manual_seed(5) end)

  -- Inputs: plain, 3-D, transposed and narrowed (non-contiguous) leaves,
  -- size-1 dims.  Each case lists (input, dim, keepdim).
  local function inputs()
    local t = mm.randn({ 4, 3 }, { dtype = "float64" }):t():requires_grad_()        -- (3, 4) strided
    local nr = mm.randn({ 3, 6 }, { dtype = "float64" }):narrow(2, 2, 4):requires_grad_()
    return {
      { H.leaf({ 3, 4 }), nil, false }, { H.leaf({ 3, 4 }), 1, false }, { H.leaf({ 3, 4 }), 2, true },
      { H.leaf({ 2, 3, 4 }), 2, false }, { H.leaf({ 2, 3, 4 }), -1, true }, { H.leaf({ 2, 3, 4 }), -3, false },
      { t, 1, false }, { t, -1, true }, { t, nil, false }, { nr, 2, false }, { nr, nil, true },
      { H.leaf({ 3, 1, 4 }), 2, false }, { H.leaf({ 1, 5 }), 1, true }, { H.leaf({ 5 }), 1, false },
    }
  end

  local ops = {
    sum = function(a, d, k) return a:sum(d, k) end,
    mean = function(a, d, k) return a:mean(d, k) end,
    var = function(a, d, k) return a:var(d, true, k) end,
    var_biased = function(a, d, k) return a:var(d, false, k) end,
    std = function(a, d, k) return a:std(d, true, k) end,
    prod = function(a, d, k) return a:prod(d, k) end,
    max = function(a, d, k) if d then return (a:max(d, k)) end return a:max() end,
    min = function(a, d, k) if d then return (mm.min(a, d, k)) end return a:min() end,
    logsumexp = function(a, d, k) return a:logsumexp(d or 1, k) end,
    norm2 = function(a, d, k) return a:norm(2, d, k) end,
    norm1 = function(a, d, k) return a:norm(1, d, k) end,
    norminf = function(a, d, k) return a:norm(math.huge, d, k) end,
    norm3 = function(a, d, k) return a:norm(3, d, k) end,
  }

  for name, op in pairs(ops) do
    it(name, function()
      for _, case in ipairs(inputs()) do
        local a, d, k = case[1], case[2], case[3]
        -- std/var over a single element are 0/0: skip those degenerate slices
        local n = d and a:size(d) or a:numel()
        if not ((name == "std" or name == "var") and n < 2) then
          local ok, msg = mm.gradcheck(function(z) return op(z, d, k) end, { a }, { raise = false })
          assert(ok, ("%s over dim %s keepdim %s of shape (%s): %s"):format(name, tostring(d),
                 tostring(k), table.concat(a:shape(), ", "), tostring(msg)))
        end
      end
    end)
  end

  it("prod gradient is exact with one zero and with two zeros in a slice", function()
    local a = mm.tensor({ { 2, 0, 3 }, { 0, 5, 0 }, { 1, 2, 4 } }, { dtype = "float64" }):requires_grad_()
    mm.gradcheck(function(z) return z:prod(2) end, { a })
    mm.gradcheck(function(z) return z:prod() end, { mm.tensor({ 2, 0, 3 }, { dtype = "float64" }):requires_grad_() })
    a.grad = nil          -- gradcheck leaves its own gradient behind
    a:prod(2):sum():backward()
    H.assert_close(a.grad, { { 0, 6, 0 }, { 0, 0, 0 }, { 8, 4, 2 } })
  end)

  it("max/min send the whole gradient to the selected element", function()
    local a = mm.tensor({ { 1, 7, 3 }, { 9, 2, 4 } }, { dtype = "float64" }):requires_grad_()
    local v = a:max(2)
    v:backward(mm.tensor({ 10, 20 }, { dtype = "float64" }))
    H.assert_close(a.grad, { { 0, 10, 0 }, { 20, 0, 0 } })
    a.grad = nil
    a:min():backward()
    H.assert_close(a.grad, { { 1, 0, 0 }, { 0, 0, 0 } })
  end)

  it("norm gives a zero gradient (not NaN) at the zero vector", function()
    for _, p in ipairs({ 2, 1, 3, math.huge }) do
      local z = mm.zeros(3, { dtype = "float64" }):requires_grad_()
      z:norm(p):backward()
      assert.are.same({ 0, 0, 0 }, z.grad:totable())
    end
  end)

  it("sum of float32 records a float32 gradient of ones", function()
    local a = mm.randn({ 2, 3 }):requires_grad_()
    a:sum(1):sum():backward()
    assert.are.equal("float32", a.grad:dtype())
    H.assert_close(a.grad, { { 1, 1, 1 }, { 1, 1, 1 } })
  end)
end)

describe("reductions: bad input", function()
  it("dim out of range", function()
    local a = mm.zeros(2, 3)
    H.error_with(function() return a:sum(3) end, "dimension out of range", "got 3")
    H.error_with(function() return a:max(-3) end, "dimension out of range", "got -3")
    H.error_with(function() return a:logsumexp(0) end, "dimension out of range")
    H.error_with(function() return mm.mean(a, 5) end, "expected 1..2")
  end)

  it("max/min/argmax of an empty tensor or dim", function()
    H.error_with(function() return mm.zeros(0):max() end, "max", "non-empty", "(0)")
    H.error_with(function() return mm.zeros(2, 0):min(2) end, "min", "non-empty dimension 2")
    H.error_with(function() return mm.zeros(0, 3):argmax() end, "argmax", "non-empty")
  end)

  it("float-only reductions refuse int64", function()
    local i = mm.tensor({ 1, 2, 3 })
    H.error_with(function() return i:mean() end, "mean: expected a float32 or float64 tensor, got int64")
    H.error_with(function() return i:var() end, "var", "got int64")
    H.error_with(function() return i:logsumexp(1) end, "logsumexp", "got int64")
    H.error_with(function() return i:norm() end, "norm", "got int64")
  end)

  it("other bad arguments", function()
    local a = mm.ones(3)
    H.error_with(function() return a:norm(0) end, "norm: expected p > 0", "got 0")
    H.error_with(function() return a:norm(-1) end, "got -1")
    H.error_with(function() return a:sum(1, 1) end, "boolean expected")
    H.error_with(function() return a:var(1, "yes") end, "boolean expected")
    H.error_with(function() return a:logsumexp() end, "logsumexp")
    H.error_with(function() return a:sum(1.5) end, "integer")
    H.error_with(function() return mm.sum("x") end, "Tensor")
  end)
end)

describe("reduction gradients at the edges (values from PyTorch 1.13)", function()
  local function grad(f, v)
    local x = mm.tensor(v, { dtype = "float64", requires_grad = true })
    f(x):sum():backward()
    return H.values(x.grad)
  end

  it("std of a constant slice has gradient 0, not NaN", function()
    assert.are.same({ 0, 0, 0 }, grad(function(x) return x:std() end, { 2, 2, 2 }))
    assert.are.same({ 0, 0, 0 }, grad(function(x) return x:var() end, { 2, 2, 2 }))
    local g = grad(function(x) return x:std(2) end, { { 2, 2 }, { 1, 3 } })
    assert.are.same({ 0, 0 }, { g[1], g[2] })
    assert.is_true(math.abs(g[3] + 0.7071067811865475) < 1e-12 and math.abs(g[4] - 0.7071067811865475) < 1e-12)
  end)

  it("max() and min() over all elements split the gradient between ties", function()
    assert.are.same({ 0, 0.5, 0.5, 0 }, grad(function(x) return x:max() end, { 1, 3, 3, 2 }))
    assert.are.same({ 0.5, 0, 0.5, 0 }, grad(function(x) return x:min() end, { 1, 3, 1, 2 }))
    assert.are.same({ 0, 1, 0 }, grad(function(x) return x:max() end, { 1, 5, 2 }))
  end)
end)
