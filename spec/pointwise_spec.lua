-- Elementwise ops: arithmetic with NumPy broadcasting and dtype promotion,
-- comparisons, maximum/minimum, where/masked_fill, unary functions, clamp,
-- leaky_relu and relu.  Forward values against closed forms, float64
-- gradient checks (broadcast, size-1 dims, non-contiguous inputs), IEEE
-- NaN/inf behaviour, the flat fast path of small binary ops against the
-- general broadcasting path, the AVX2 and portable kernels agreeing bit for
-- bit, and the same bits on 1 and 2 threads.
local H = require "helpers"
local mm = H.mm

describe("broadcasting", function()
  it("numbers on either side", function()
    local t = mm.tensor({ 1, 2, 4 }, { dtype = "float32" })
    H.assert_close(2 * t, { 2, 4, 8 })
    H.assert_close(t - 1, { 0, 1, 3 })
    H.assert_close(1 - t, { 0, -1, -3 })
    H.assert_close(8 / t, { 8, 4, 2 })
    H.assert_close(t ^ 2, { 1, 4, 16 })
    H.assert_close(2 ^ t, { 2, 4, 16 })
    H.assert_close(-t, { -1, -2, -4 })
  end)

  it("row and column vectors", function()
    local col = mm.tensor({ { 1 }, { 2 } }, { dtype = "float32" })
    local row = mm.tensor({ 10, 20, 30 }, { dtype = "float32" })
    H.assert_close(col + row, { { 11, 21, 31 }, { 12, 22, 32 } })
    H.assert_close(row * col, { { 10, 20, 30 }, { 20, 40, 60 } })
  end)

  it("rank mismatch aligns trailing dims", function()
    local a = mm.ones(2, 3, 4)
    local b = mm.arange(4):float()
    local c = a + b
    assert.are.same({ 2, 3, 4 }, c:shape())
    H.assert_close(c[2][3], { 1, 2, 3, 4 })
    assert.are.same({ 5, 2, 3, 4 }, (mm.ones(5, 1, 1, 1) * a):shape())
  end)

  it("0-dim tensors broadcast like numbers", function()
    H.assert_close(mm.tensor({ 1, 2 }, { dtype = "float32" }) + mm.tensor(0.5), { 1.5, 2.5 })
  end)

  it("zero-size dims broadcast to zero-size results", function()
    assert.are.same({ 0, 3 }, (mm.zeros(0, 1) + mm.zeros(3)):shape())
    assert.are.same({ 2, 0 }, (mm.zeros(2, 1) * mm.zeros(0)):shape())
  end)

  it("non-contiguous operands", function()
    local a = mm.arange(6):float():reshape(2, 3)
    H.assert_close(a:t() + a:t(), { { 0, 6 }, { 2, 8 }, { 4, 10 } })
    H.assert_close(a:t() + mm.tensor({ 1, 2 }):float(), { { 1, 5 }, { 2, 6 }, { 3, 7 } })
  end)

  it("mismatch names both shapes", function()
    H.error_with(function() return mm.ones(2, 3) + mm.ones(4) end,
      "shapes (2, 3) and (4) cannot broadcast")
    H.error_with(function() return mm.ones(2, 3) * mm.ones(3, 2) end, "(2, 3)", "(3, 2)")
  end)

  it("dtype promotion: float64 > float32 > int64, integer division is true division", function()
    assert.are.equal("float64", (mm.ones(2) + mm.ones(2, { dtype = "float64" })):dtype())
    assert.are.equal("float32", (mm.tensor({ 1, 2 }) + mm.ones(2)):dtype())
    assert.are.equal("int64", (mm.tensor({ 1, 2 }) + 1):dtype())
    assert.are.equal("float32", (mm.tensor({ 1, 2 }) + 0.5):dtype())
    H.assert_close(mm.tensor({ 1, 3 }) / 2, { 0.5, 1.5 })
  end)

  it("comparison masks, maximum/minimum, where and masked_fill", function()
    local a = mm.tensor({ 1, 5, 3 }, { dtype = "float32" })
    local b = mm.tensor({ 2, 2, 3 }, { dtype = "float32" })
    H.assert_close(a:gt(b), { 0, 1, 0 })
    H.assert_close(a:eq(b), { 0, 0, 1 })
    H.assert_close(a:le(3), { 1, 0, 1 })
    H.assert_close(mm.maximum(a, b), { 2, 5, 3 })
    H.assert_close(mm.minimum(a, b), { 1, 2, 3 })
    H.assert_close(mm.where(a:gt(b), a, b), { 2, 5, 3 })
    H.assert_close(mm.where(a:gt(2), a, 0), { 0, 5, 3 })
    H.assert_close(a:masked_fill(a:eq(5), -1), { 1, -1, 3 })
  end)

  it("IEEE semantics: NaN and inf propagate", function()
    local a = mm.tensor({ 0 / 0, 1 / 0, 1 }, { dtype = "float32" })
    local r = (a * 2):totable()
    assert.is_true(r[1] ~= r[1])
    assert.are.equal(math.huge, r[2])
    local m = mm.maximum(a, mm.zeros(3)):totable()
    assert.is_true(m[1] ~= m[1], "maximum propagates NaN")
    local d = (mm.ones(2) / mm.zeros(2)):totable()
    assert.are.equal(math.huge, d[1])
  end)

  it("unary ops against closed forms", function()
    local x = mm.tensor({ -2, -0.5, 0, 0.5, 2 }, { dtype = "float64" })
    local xs = { -2, -0.5, 0, 0.5, 2 }
    local function map(f) local r = {} for i, v in ipairs(xs) do r[i] = f(v) end return r end
    H.assert_close(x:exp(), map(math.exp), 1e-12)
    H.assert_close(x:abs(), map(math.abs), 1e-12)
    H.assert_close(x:tanh(), map(function(v) return (math.exp(2 * v) - 1) / (math.exp(2 * v) + 1) end), 1e-12)
    H.assert_close(x:sigmoid(), map(function(v) return 1 / (1 + math.exp(-v)) end), 1e-12)
    H.assert_close(x:relu(), map(function(v) return math.max(v, 0) end), 0)
    H.assert_close(x:silu(), map(function(v) return v / (1 + math.exp(-v)) end), 1e-12)
    H.assert_close(x:sin(), map(math.sin), 1e-12)
    H.assert_close(x:cos(), map(math.cos), 1e-12)
    H.assert_close(x:gelu("tanh"), map(function(v)
      return 0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ^ 3))) end), 1e-12)
    -- exact gelu at known points: gelu(2) = 2 * Phi(2) = 1.9544997361036416
    H.assert_close(mm.tensor({ 2.0 }, { dtype = "float64" }):gelu(), { 1.9544997361036416 }, 1e-12)
    local p = mm.tensor({ 0.25, 1, 4 }, { dtype = "float64" })
    H.assert_close(p:sqrt(), { 0.5, 1, 2 }, 1e-12)
    H.assert_close(p:rsqrt(), { 2, 1, 0.5 }, 1e-12)
    H.assert_close(p:log(), { math.log(0.25), 0, math.log(4) }, 1e-12)
    H.assert_close(p:log1p(), { math.log(1.25), math.log(2), math.log(5) }, 1e-12)
  end)

  it("sigmoid does not overflow for large |x|", function()
    local s = mm.tensor({ -1000, 1000 }, { dtype = "float32" }):sigmoid():totable()
    assert.are.equal(0, s[1])
    assert.are.equal(1, s[2])
  end)

  it("in-place arithmetic broadcasts into the left operand", function()
    local a = mm.ones(2, 3)
    a:add_(mm.tensor({ 1, 2, 3 }):float())
    a:mul_(2)
    H.assert_close(a, { { 4, 6, 8 }, { 4, 6, 8 } })
    H.error_with(function() mm.ones(3):add_(mm.ones(2, 3)) end, "does not fit")
  end)

  it("large tensors give the same result with 1 and 2 threads", function()
    local n0 = mm.get_num_threads()
    mm.manual_seed(5)
    local a, b = mm.randn(300, 700), mm.randn(700)
    mm.set_num_threads(1)
    local r1 = (a * b + a):exp()
    mm.set_num_threads(2)
    local r2 = (a * b + a):exp()
    mm.set_num_threads(n0)
    -- every element equal, bit for bit (no NaN can hide: exp of finite inputs)
    assert.are.equal(0, (r1 - r2):abs():max():item())
    assert.are.equal(0, r1:ne(r2):sum():item())
  end)
end)

describe("elementwise gradients (float64 finite differences)", function()
  before_each(function() mm.manual_seed(11) end)

  local binary = {
    add = function(a, b) return a + b end,
    sub = function(a, b) return a - b end,
    mul = function(a, b) return a * b end,
    div = function(a, b) return a / b end,
    maximum = function(a, b) return mm.maximum(a, b) end,
    minimum = function(a, b) return mm.minimum(a, b) end,
  }
  for name, f in pairs(binary) do
    it(name .. " with broadcasting, size-1 dims and non-contiguous inputs", function()
      assert.is_true(mm.gradcheck(f, { H.leaf(3, 4), H.pos_leaf(4) }))
      assert.is_true(mm.gradcheck(f, { H.leaf(2, 1, 3), H.pos_leaf(4, 1) }))
      local base = H.leaf(4, 3)
      assert.is_true(mm.gradcheck(function(a, b) return f(a:t(), b) end, { base, H.pos_leaf(3, 4) }))
      assert.is_true(mm.gradcheck(function(a, b) return f(a:narrow(1, 2, 2), b) end, { base, H.pos_leaf(1, 3) }))
      assert.is_true(mm.gradcheck(function(a, b) return f(a:expand(2, 4, 3), b) end, { base, H.pos_leaf(3) }))
    end)
  end

  it("pow with tensor and scalar exponents, and 0^b", function()
    assert.is_true(mm.gradcheck(function(a, b) return a ^ b end, { H.pos_leaf(3, 2), H.leaf(2) }))
    assert.is_true(mm.gradcheck(function(a) return a ^ 3 end, { H.leaf(4) }))
    assert.is_true(mm.gradcheck(function(b) return 2 ^ b end, { H.leaf(4) }))
    local z = mm.zeros(2, { dtype = "float64", requires_grad = true })
    local b = mm.tensor({ 2.0, 3.0 }, { dtype = "float64", requires_grad = true })
    local y = z ^ b
    y:backward(mm.ones(2, { dtype = "float64" }))
    H.assert_close(b.grad, { 0, 0 })  -- not NaN: the limit at a = 0
  end)

  local unary = {
    neg = function(a) return -a end, exp = function(a) return a:exp() end,
    tanh = function(a) return a:tanh() end, sigmoid = function(a) return a:sigmoid() end,
    sin = function(a) return a:sin() end, cos = function(a) return a:cos() end,
    silu = function(a) return a:silu() end, gelu = function(a) return a:gelu() end,
    gelu_tanh = function(a) return a:gelu("tanh") end,
  }
  for name, f in pairs(unary) do
    it(name, function()
      assert.is_true(mm.gradcheck(f, { H.leaf(3, 4) }))
      local b = H.leaf(4, 3)
      assert.is_true(mm.gradcheck(function(a) return f(a:t()) end, { b }))
    end)
  end

  it("ops defined on positive inputs: log, log1p, sqrt, rsqrt, abs, relu", function()
    for _, f in ipairs({
      function(a) return a:log() end, function(a) return a:log1p() end,
      function(a) return a:sqrt() end, function(a) return a:rsqrt() end,
    }) do
      assert.is_true(mm.gradcheck(f, { H.pos_leaf(3, 2) }))
    end
    -- abs and relu away from the kink at 0
    local x = mm.tensor({ -1.5, -0.3, 0.4, 2.0 }, { dtype = "float64", requires_grad = true })
    assert.is_true(mm.gradcheck(function(a) return a:abs() end, { x }))
    assert.is_true(mm.gradcheck(function(a) return a:relu() end, { x }))
  end)

  it("where and masked_fill route gradients by the mask", function()
    local a, b = H.leaf(3, 4), H.leaf(4)
    local cond = mm.randn(3, 4):gt(0)
    assert.is_true(mm.gradcheck(function(x, y) return mm.where(cond, x, y) end, { a, b }))
    assert.is_true(mm.gradcheck(function(x) return x:masked_fill(cond, 0.5) end, { a }))
  end)
end)

describe("clamp", function()
  it("limits from either or both sides", function()
    local x = H.f64 { -2, -0.5, 0, 0.5, 3 }
    H.assert_close(x:clamp(-1, 1), { -1, -0.5, 0, 0.5, 1 })
    H.assert_close(x:clamp(0), { 0, 0, 0, 0.5, 3 })
    H.assert_close(x:clamp(nil, 0.25), { -2, -0.5, 0, 0.25, 0.25 })
    H.assert_close(mm.clamp(x, { max = 0 }), { -2, -0.5, 0, 0, 0 })
    H.assert_close(x:clamp { min = -1 }, { -1, -0.5, 0, 0.5, 3 })
    H.assert_close(x:clamp(2, 1), { 1, 1, 1, 1, 1 })   -- min > max: max wins, as torch
  end)

  it("propagates NaN and handles non-contiguous input", function()
    local r = H.f64({ 0 / 0, 5, -5 }):clamp(-1, 1)
    local v = r:totable()
    assert.is_true(v[1] ~= v[1])
    assert.are.same({ 1, -1 }, { v[2], v[3] })
    for _, b in ipairs(H.f64({ -1, 0, 1 }):clamp(0 / 0):totable()) do   -- NaN bound: NaN, as torch
      assert.is_true(b ~= b)
    end
    local t = mm.arange(6):reshape(2, 3):t():clamp(1, 4)
    assert.are.equal("int64", t:dtype())
    H.assert_close(t, { { 1, 3 }, { 1, 4 }, { 2, 4 } })
    assert.are.equal("float32", mm.arange(3):clamp(0.5):dtype())
    H.assert_close(mm.arange(3):clamp(0.5), { 0.5, 1, 2 })
  end)

  it("passes the gradient only inside the range", function()
    local x = mm.tensor({ -2, 0.5, 3, 1 }, { dtype = "float64", requires_grad = true })
    local y = x:clamp(0, 2)
    assert.are.equal("ClampBackward", y.grad_fn)
    y:backward(H.f64 { 10, 20, 30, 40 })
    H.assert_close(x.grad, { 0, 20, 0, 40 })
    local w = mm.tensor({ -1.0, 1.0 }, { requires_grad = true })   -- float32
    w:clamp(nil, 0):backward(mm.ones(2))
    H.assert_close(w.grad, { 1, 0 })
  end)

  it("gradcheck away from the corners", function()
    -- values kept at least 0.1 from the bounds so finite differences never straddle one
    local x = H.f64({ { -1.3, -0.4, 0.35 }, { 0.8, 1.7, -2.2 } }):t()
    x.requires_grad = true
    mm.gradcheck(function(a) return a:clamp(-0.5, 0.5) end, { x })
    mm.gradcheck(function(a) return a:clamp(nil, 0.2) * a end, { x })
    local r = mm.tensor({ { 0.7, -0.9, 1.4 } }, { dtype = "float64", requires_grad = true })
    mm.gradcheck(function(a) return a:expand(2, 3):clamp(0) end, { r })
  end)

  it("rejects missing or bad bounds", function()
    local x = mm.zeros(3)
    H.error_with(function() x:clamp() end, "at least one of min and max")
    H.error_with(function() x:clamp(nil, nil) end, "at least one of min and max")
    H.error_with(function() x:clamp("a") end, "min", "number or nil", "string")
    H.error_with(function() x:clamp { max = {} } end, "max", "table")
  end)
end)

describe("leaky_relu", function()
  it("scales the negative side by the slope", function()
    local x = H.f64 { -2, -0.5, 0, 1.5 }
    H.assert_close(mm.leaky_relu(x, 0.1), { -0.2, -0.05, 0, 1.5 })
    H.assert_close(mm.leaky_relu(x), { -0.02, -0.005, 0, 1.5 })
    H.assert_close(x:leaky_relu(-1), { 2, 0.5, 0, 1.5 })
    local n = mm.leaky_relu(H.f64 { 0 / 0 }):totable()
    assert.is_true(n[1] ~= n[1])
  end)

  it("has gradient 1 or slope (exact and gradcheck)", function()
    local x = mm.tensor({ -2, 3 }, { dtype = "float64", requires_grad = true })
    local y = mm.leaky_relu(x, 0.2)
    assert.are.equal("LeakyReluBackward", y.grad_fn)
    y:backward(H.f64 { 1, 1 })
    H.assert_close(x.grad, { 0.2, 1 })
    local t = H.tleaf(3, 4)
    mm.gradcheck(function(a) return mm.leaky_relu(a, 0.3) end, { t })
    local r = H.leaf(1, 4)
    mm.gradcheck(function(a) return mm.leaky_relu(a:expand(3, 4) * 2) end, { r })
  end)

  it("rejects int64 input", function()
    H.error_with(function() mm.leaky_relu(mm.arange(3)) end, "leaky_relu", "float32 or float64",
      "int64")
  end)
end)

describe("ReLU forward and fused backward", function()
  -- x with every element at least 0.1 away from 0, so ReLU's kink is never
  -- inside a finite-difference step.
  local function away_from_zero(...)
    local x = mm.randn(...):double()
    return (x + x:sign() * 0.1):detach()
  end

  it("has the expected values, NaN included", function()
    local y = mm.relu(mm.tensor({ -2.0, -0.0, 0.0, 3.5, 0 / 0, -1 / 0, 1 / 0 }))
    local v = H.values(y)
    assert.are.equal(0, v[1]); assert.are.equal(0, v[2]); assert.are.equal(0, v[3])
    assert.are.equal(3.5, v[4])
    assert.is_true(v[5] ~= v[5], "relu(NaN) must stay NaN")
    assert.are.equal(0, v[6], "relu(-inf) is 0, as in PyTorch")
    assert.are.equal(math.huge, v[7])
    assert.are.equal("0x0p+0", ("%a"):format(v[1]), "relu(-2) is +0, not -0")
  end)

  it("passes the gradient exactly where x > 0 and exactly 0 elsewhere, even a NaN one", function()
    local x = mm.tensor({ -1.0, 2.0, -3.0, 4.0 }, { dtype = "float64" }):requires_grad_()
    mm.relu(x):backward(mm.tensor({ 10.0, 20.0, 0 / 0, 40.0 }, { dtype = "float64" }))
    local g = H.values(x.grad)
    assert.are.equal(0, g[1]); assert.are.equal(20, g[2]); assert.are.equal(40, g[4])
    assert.are.equal(0, g[3], "as torch's threshold_backward: 0 where x <= 0, whatever g is")
  end)

  it("gradchecks over shapes, size-1 dims, transposed and narrowed views, and broadcasting", function()
    mm.manual_seed(7)
    for _, shape in ipairs { { 5 }, { 3, 4 }, { 1, 6 }, { 2, 1, 3 } } do
      assert.is_true(mm.gradcheck(mm.relu, { away_from_zero(table.unpack(shape)):requires_grad_() }))
    end
    -- non-contiguous input: a transposed view and a narrowed one
    local base = away_from_zero(4, 3):requires_grad_()
    assert.is_true(mm.gradcheck(function(a) return mm.relu(a:t()) * 1.5 end, { base }))
    assert.is_true(mm.gradcheck(function(a) return mm.relu(a:narrow(2, 2, 2)) end, { base }))
    -- the gradient arriving broadcast: relu of a row expanded over a batch
    local row = away_from_zero(1, 5):requires_grad_()
    assert.is_true(mm.gradcheck(function(r) return mm.relu(r:expand(3, 5)) * mm.arange(15):double():view(3, 5) end, { row }))
    -- float32 goes through the same fused kernel
    local x32 = mm.tensor({ { -1.0, 2.0 }, { 3.0, -4.0 } }):requires_grad_()
    mm.relu(x32):sum():backward()
    assert.are.same({ 0, 1, 1, 0 }, H.values(x32.grad))
  end)
end)

describe("ReLU AVX2 and portable kernels", function()
  -- relu and its gradient of a float32 vector holding every special case,
  -- printed as exact hex floats.
  local SCRIPT = [[
    local mm = require "microml"
    local n = %d
    local v = { 0 / 0, -0.0, 0.0, 1 / 0, -1 / 0, 1e-40, -1e-40, 3.5, -2.25 }
    local x = mm.empty(n)
    for k = 1, n do x:_set(k, v[(k - 1) %% #v + 1] * (k %% 7 == 0 and -1 or 1)) end
    x.requires_grad = true
    local g = mm.empty(n)
    for k = 1, n do g:_set(k, (k %% 5 == 0) and 0 / 0 or k * 0.5 - 3) end
    local y = mm.relu(x)
    y:backward(g)
    local out = {}
    for _, t in ipairs { y, x.grad } do
      for k = 1, n do out[#out + 1] = ("%%a"):format(t:_get(k)) end
    end
    io.write(table.concat(out, " "))
  ]]
  local function run(n, env)
    local f = io.popen(("%s lua5.4 -e %q 2>&1"):format(env or "", SCRIPT:format(n)))
    local out = f:read("a")
    f:close()
    return out
  end

  it("agree bit for bit, NaN, infinities, zero signs and denormals included", function()
    for _, n in ipairs { 1, 9, 8 * 9 + 5, 1000 } do
      local auto = run(n)
      assert.is_truthy(auto:match("^%-?[0-9a-fn]"), "worker failed: " .. auto:sub(1, 300))
      assert.are.equal(run(n, "MICROML_KERNEL=portable"), auto, "n = " .. n)
    end
  end)
end)

describe("relu split into blocks", function()
  before_each(function() mm.manual_seed(22) end)

  it("keeps positives, zeroes the rest, and passes the gradient only where x > 0, on a large tensor", function()
    -- 3 * 8192 + 5 elements: several blocks and a ragged tail.
    local n = 3 * 8192 + 5
    local x = mm.arange(n):float() - n / 2
    local y = mm.relu(x)
    local xv, yv = H.values(x), H.values(y)
    for i = 1, n, 997 do assert.are.equal(xv[i] > 0 and xv[i] or 0, yv[i]) end
    assert.are.equal(xv[n], yv[n])
    local xl = x:clone():requires_grad_()
    local g = mm.full({ n }, 3, { dtype = "float32" })
    mm.relu(xl):backward(g)
    local gv = H.values(xl.grad)
    for i = 1, n, 991 do assert.are.equal(xv[i] > 0 and 3 or 0, gv[i]) end
    assert.are.equal(3, gv[n])
    assert.are.equal(0, gv[1])
  end)

  it("gives the same bits on 1 and 2 threads, forward and backward", function()
    local x, g = mm.randn(128, 256), mm.randn(128, 256)
    local big = mm.randn(70001)
    H.same_bits_1_2(function()
      local xl = x:clone():requires_grad_()
      local y = mm.relu(xl)
      y:backward(g)
      return y, xl.grad, mm.relu(big)
    end)
  end)

  it("passes a float64 gradient check, including a transposed input", function()
    local x = mm.randn({ 6, 5 }, { dtype = "float64", requires_grad = true })
    assert.is_true(mm.gradcheck(mm.relu, { x }))
    assert.is_true(mm.gradcheck(function(t) return mm.relu(t:t()) end, { x }))
  end)

  it("rejects a non-tensor with a message", function()
    local fn = function() return mm.relu("nope") end
    assert.has_error(fn)
    local ok, err = pcall(fn)
    assert.is_false(ok)
    assert.truthy(tostring(err):find("relu", 1, true))
    assert.truthy(tostring(err):find("Tensor expected, got string", 1, true))
  end)
end)

describe("binary flat fast path", function()
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

describe("small same-shape binary ops (flat path)", function()
  it("agree with the strided path and keep recording gradients", function()
    mm.manual_seed(3)
    local a, b = mm.randn(3, 5), mm.rand(3, 5) + 0.5
    local at, bt = a:t():contiguous():t(), b:t():contiguous():t()   -- same values, strided
    assert.is_false(at:is_contiguous())
    for _, op in ipairs { "add", "sub", "mul", "div", "maximum", "minimum" } do
      assert.are.same(H.values(mm[op](a, b)), H.values(mm[op](at, bt)), op)
    end
    assert.are.same(H.values(a:pow(2)), H.values(at:pow(2)))
    local x, y = mm.tensor({ 1.0, 2.0 }, { dtype = "float64" }):requires_grad_(), mm.tensor({ 3.0, 5.0 }, { dtype = "float64" }):requires_grad_()
    assert.is_true(mm.gradcheck(function(p, q) return p * q + p / q end, { x, y }))
  end)
end)

describe("pointwise gradients at the edges (values from PyTorch 1.13)", function()
  local function grads(f, ...)
    local xs = {}
    for i, v in ipairs({ ... }) do xs[i] = mm.tensor(v, { dtype = "float64", requires_grad = true }) end
    f(table.unpack(xs)):sum():backward()
    local out = {}
    for i, x in ipairs(xs) do out[i] = H.values(x.grad) end
    return out
  end

  it("pow: x^0 and 0^0 give the base 0, 0^e with e < 0 gives the exponent -inf", function()
    assert.are.same({ { 0, 0 } }, grads(function(x) return x ^ 0 end, { 0, 1 }))
    local g = grads(function(a, b) return a ^ b end, { 0, 2 }, { 0, 3 })
    assert.are.same({ 0, 12 }, g[1])
    assert.are.equal(0, g[2][1])
    assert.is_true(math.abs(g[2][2] - 5.545177444479562) < 1e-12)
    g = grads(function(a, b) return a ^ b end, { 0, 0 }, { -1, -2 })
    assert.are.same({ -math.huge, -math.huge }, g[1])
    assert.are.same({ -math.huge, -math.huge }, g[2])
    assert.are.same({ { 0 } }, grads(function(x) return x ^ 2.0 end, { 0 }))
  end)

  it("sign is recorded with a zero gradient", function()
    local x = mm.tensor({ -2.0, 0.0, 3.0 }, { requires_grad = true })
    local s = x:sign()
    assert.are.equal("SignBackward", s.grad_fn)
    s:sum():backward()
    assert.are.same({ 0, 0, 0 }, H.values(x.grad))
  end)
end)
