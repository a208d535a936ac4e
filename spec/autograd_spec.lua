-- The autograd engine, and gradient checks of elementwise ops and views.
local H = require "helpers"
local mm = H.mm

-- (a vararg followed by more arguments would be cut to its first value)
local function f64(...) return mm.randn({ ... }, { dtype = "float64", requires_grad = true }) end
local function pos64(...) return (mm.rand({ ... }, { dtype = "float64" }) + 0.5):requires_grad_() end

describe("autograd engine", function()
  before_each(function() mm.manual_seed(7) end)

  it("diamond graphs sum both paths", function()
    local x = mm.tensor({ 2.0 }, { requires_grad = true })
    local a, b = x * 3, x * x
    local y = a + b          -- dy/dx = 3 + 2x = 7
    y:backward()
    H.assert_close(x.grad, { 7 })
  end)

  it("a parameter used many times gets the sum of its gradients", function()
    local w = mm.tensor({ 1.0, 2.0 }, { requires_grad = true })
    local y = w * w * w
    y:backward(mm.ones(2))   -- 3 w^2
    H.assert_close(w.grad, { 3, 12 })
  end)

  it("gradients accumulate across backward calls until zeroed", function()
    local w = mm.tensor({ 1.0 }, { requires_grad = true })
    local y1, y2 = w * 5, w * 5
    y1:backward()
    y2:backward()
    H.assert_close(w.grad, { 10 })
    w.grad:zero_()
    local y3 = w * 2
    y3:backward()
    H.assert_close(w.grad, { 2 })
    w.grad = nil
    assert.is_nil(w.grad)
  end)

  it("no_grad records nothing and restores the mode even after an error", function()
    local w = mm.ones(2, { requires_grad = true })
    local y = mm.no_grad(function() return w * 2 end)
    assert.is_false(y.requires_grad)
    assert.is_nil(y.grad_fn)
    assert.is_false(pcall(mm.no_grad, function() error("boom") end))
    assert.is_true(mm.is_grad_enabled())
    local prev = mm.set_grad_enabled(false)
    assert.is_true(prev)
    assert.is_false((w * 2).requires_grad)
    mm.set_grad_enabled(true)
  end)

  it("detach shares storage and cuts the graph", function()
    local w = mm.ones(2, { requires_grad = true })
    local y = w * 3
    local d = y:detach()
    assert.is_false(d.requires_grad)
    assert.is_true(d.is_leaf)
    local z = d * w     -- gradient reaches w only through the second factor
    z:backward(mm.ones(2))
    H.assert_close(w.grad, { 3, 3 })
    d:fill_(0)
    H.assert_close(y, { 0, 0 }) -- same storage
  end)

  it("leaf/non-leaf attributes and retain_grad", function()
    local x = mm.ones(2, { requires_grad = true })
    local h = x * 2
    assert.is_true(x.is_leaf)
    assert.is_false(h.is_leaf)
    assert.are.equal("MulBackward", h.grad_fn)
    h:retain_grad()
    local y = h * h
    y:backward(mm.ones(2))
    H.assert_close(h.grad, { 4, 4 })  -- 2h
    H.assert_close(x.grad, { 8, 8 })  -- 2h * 2
  end)

  it("a second backward through a freed graph is a clear error; retain_graph allows it", function()
    local x = mm.ones(1, { requires_grad = true })
    local y = x * x
    y:backward({ retain_graph = true })
    y:backward()
    H.assert_close(x.grad, { 4 })
    H.error_with(function() y:backward() end, "second time", "retain_graph")
  end)

  it("an in-place write to a saved tensor makes backward refuse", function()
    local x = mm.ones(3, { requires_grad = true })
    local a = x * 2
    local y = a * a     -- saves a
    a:add_(1)
    H.error_with(function() y:backward(mm.ones(3)) end, "MulBackward", "in-place")
  end)

  it("in-place writes to a leaf that requires grad are refused outside no_grad", function()
    local w = mm.ones(2, { requires_grad = true })
    H.error_with(function() w:add_(1) end, "leaf", "in place")
    mm.no_grad(function() w:add_(1) end)
    H.assert_close(w, { 2, 2 })
  end)

  it("a 100,000-node chain backpropagates without a recursion limit", function()
    local x = mm.ones(1, { requires_grad = true })
    local h = x
    for _ = 1, 100000 do h = h * 1.0 + 0.0 end
    h:backward()
    H.assert_close(x.grad, { 1 })
    h = nil
    collectgarbage()
  end)

  it("broadcast inputs get gradients in their own shape", function()
    local a = mm.ones(2, 3, { requires_grad = true })
    local b = mm.ones(3, { requires_grad = true })
    local c = mm.ones(2, 1, { requires_grad = true })
    local y = a * b + c
    y:backward(mm.ones(2, 3))
    assert.are.same({ 3 }, b.grad:shape())
    H.assert_close(b.grad, { 2, 2, 2 })
    H.assert_close(c.grad, { { 3 }, { 3 } })
  end)

  it("backward needs a gradient for non-scalar outputs and checks its shape", function()
    local x = mm.ones(2, { requires_grad = true })
    H.error_with(function() (x * 2):backward() end, "one-element", "(2)")
    H.error_with(function() (x * 2):backward(mm.ones(3)) end, "shape (3)", "(2)")
    H.error_with(function() mm.ones(2):backward() end, "does not require grad")
  end)

  it("int64 tensors cannot require grad", function()
    H.error_with(function() mm.tensor({ 1, 2 }, { requires_grad = true }) end, "float32/float64")
    local t = mm.tensor({ 1, 2 })
    H.error_with(function() t.requires_grad = true end, "int64")
  end)
end)

describe("gradcheck (float64 finite differences)", function()
  before_each(function() mm.manual_seed(11) end)

  it("detects a wrong gradient", function()
    -- an op whose backward is deliberately inconsistent: detach half the path
    local x = f64(3)
    local ok, msg = mm.gradcheck(function(a) return a * a:detach() end, { x }, { raise = false })
    assert.is_false(ok)
    assert.truthy(msg:find("analytic", 1, true))
  end)

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
      assert.is_true(mm.gradcheck(f, { f64(3, 4), pos64(4) }))
      assert.is_true(mm.gradcheck(f, { f64(2, 1, 3), pos64(4, 1) }))
      local base = f64(4, 3)
      assert.is_true(mm.gradcheck(function(a, b) return f(a:t(), b) end, { base, pos64(3, 4) }))
      assert.is_true(mm.gradcheck(function(a, b) return f(a:narrow(1, 2, 2), b) end, { base, pos64(1, 3) }))
      assert.is_true(mm.gradcheck(function(a, b) return f(a:expand(2, 4, 3), b) end, { base, pos64(3) }))
    end)
  end

  it("pow with tensor and scalar exponents, and 0^b", function()
    assert.is_true(mm.gradcheck(function(a, b) return a ^ b end, { pos64(3, 2), f64(2) }))
    assert.is_true(mm.gradcheck(function(a) return a ^ 3 end, { f64(4) }))
    assert.is_true(mm.gradcheck(function(b) return 2 ^ b end, { f64(4) }))
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
      assert.is_true(mm.gradcheck(f, { f64(3, 4) }))
      local b = f64(4, 3)
      assert.is_true(mm.gradcheck(function(a) return f(a:t()) end, { b }))
    end)
  end

  it("ops defined on positive inputs: log, log1p, sqrt, rsqrt, abs, relu", function()
    for _, f in ipairs({
      function(a) return a:log() end, function(a) return a:log1p() end,
      function(a) return a:sqrt() end, function(a) return a:rsqrt() end,
    }) do
      assert.is_true(mm.gradcheck(f, { pos64(3, 2) }))
    end
    -- abs and relu away from the kink at 0
    local x = mm.tensor({ -1.5, -0.3, 0.4, 2.0 }, { dtype = "float64", requires_grad = true })
    assert.is_true(mm.gradcheck(function(a) return a:abs() end, { x }))
    assert.is_true(mm.gradcheck(function(a) return a:relu() end, { x }))
  end)

  it("where and masked_fill route gradients by the mask", function()
    local a, b = f64(3, 4), f64(4)
    local cond = mm.randn(3, 4):gt(0)
    assert.is_true(mm.gradcheck(function(x, y) return mm.where(cond, x, y) end, { a, b }))
    assert.is_true(mm.gradcheck(function(x) return x:masked_fill(cond, 0.5) end, { a }))
  end)

  it("views: reshape, view, transpose, permute, narrow, select, expand, squeeze, unsqueeze", function()
    local x = f64(2, 3, 4)
    local views = {
      function(a) return a:reshape(4, 6) end, function(a) return a:view(-1) end,
      function(a) return a:transpose(1, 3) end, function(a) return a:permute(3, 1, 2) end,
      function(a) return a:narrow(3, 2, 2) end, function(a) return a:select(2, -1) end,
      function(a) return a:unsqueeze(2):expand(2, 5, 3, 4) end,
      function(a) return a:narrow(1, 1, 1):squeeze(1) end,
      function(a) return a:transpose(1, 2):reshape(3, 8) end,
      function(a) return a:contiguous():clone():flatten(2) end,
      function(a) return a:double() * 1 end,
    }
    for i, f in ipairs(views) do
      local ok, msg = mm.gradcheck(f, { x }, { raise = false })
      assert(ok, ("view #%d: %s"):format(i, tostring(msg)))
    end
  end)

  it("a float32 input through a float64 graph gets a float32 gradient", function()
    local x = mm.ones(2, { requires_grad = true })
    local y = x:double() * mm.tensor({ 2, 3 }, { dtype = "float64" })
    y:backward(mm.ones(2, { dtype = "float64" }))
    assert.are.equal("float32", x.grad:dtype())
    H.assert_close(x.grad, { 2, 3 })
  end)
end)
