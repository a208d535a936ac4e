-- The autograd engine: graphs that branch and join, gradient accumulation
-- across calls and into leaves, no_grad, detach, retain_grad/retain_graph,
-- version checks on in-place writes, deep chains, broadcast inputs, and
-- mm.gradcheck itself.  The float64 gradient checks of each op live in the
-- spec file of that op (pointwise, views, reductions, nnops, linalg, ...).
local H = require "helpers"
local mm = H.mm

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

  it("a float32 input through a float64 graph gets a float32 gradient", function()
    local x = mm.ones(2, { requires_grad = true })
    local y = x:double() * mm.tensor({ 2, 3 }, { dtype = "float64" })
    y:backward(mm.ones(2, { dtype = "float64" }))
    assert.are.equal("float32", x.grad:dtype())
    H.assert_close(x.grad, { 2, 3 })
  end)
end)

describe("gradcheck (float64 finite differences)", function()
  before_each(function() mm.manual_seed(11) end)

  it("detects a wrong gradient", function()
    -- an op whose backward is deliberately inconsistent: detach half the path
    local x = H.leaf(3)
    local ok, msg = mm.gradcheck(function(a) return a * a:detach() end, { x }, { raise = false })
    assert.is_false(ok)
    assert.truthy(msg:find("analytic", 1, true))
  end)

  it("leaves the inputs as given when fn raises mid-check", function()
    local x = mm.tensor({ 1.0, 2.0, 3.0 }, { dtype = "float64", requires_grad = true })
    local calls = 0
    local ok, err = pcall(mm.gradcheck, function(a)
      calls = calls + 1
      if calls == 3 then error("boom") end   -- during the first element's perturbation
      return a * 2
    end, { x })
    assert.is_false(ok)
    assert.truthy(tostring(err):find("boom", 1, true))
    assert.are.same({ 1, 2, 3 }, H.values(x))
    assert.is_nil(x.grad)
  end)

  it("keeps a gradient the caller had accumulated", function()
    local x = mm.tensor({ 1.0, 2.0 }, { dtype = "float64", requires_grad = true })
    local w = mm.tensor({ 1.0, 1.0 }, { dtype = "float64", requires_grad = true })
    x.grad = mm.tensor({ 5.0, 6.0 }, { dtype = "float64" })
    assert.is_true(mm.gradcheck(function(a, b) return a * b end, { x, w }))
    assert.are.same({ 5, 6 }, H.values(x.grad))
    assert.is_nil(w.grad)
  end)

  it("refuses options of the wrong type", function()
    local x = H.leaf(2)
    H.error_with(function() mm.gradcheck(function(a) return a end, { x }, { eps = "1e-6" }) end,
                 "expected eps to be a non-negative number")
  end)
end)

describe("leaf gradients", function()
  it("never alias a tensor the caller holds", function()
    local x = mm.tensor({ 1.0, 2.0 }):requires_grad_()
    local g = mm.tensor({ 5.0, 7.0 })
    local y = x + 0
    y:backward(g)
    g:fill_(0)
    assert.are.same({ 5, 7 }, H.values(x.grad))
  end)

  it("stay separate when one gradient flows to two leaves", function()
    local x, y = mm.tensor({ 1.0, 2.0 }):requires_grad_(), mm.tensor({ 3.0, 4.0 }):requires_grad_()
    local z = (x + y) * 2
    z:sum():backward()
    x.grad:add_(1)
    assert.are.same({ 3, 3 }, H.values(x.grad))
    assert.are.same({ 2, 2 }, H.values(y.grad))
  end)

  it("accumulate over backward calls after taking over the first", function()
    local w = mm.tensor({ { 1.0, 2.0 }, { 3.0, 4.0 } }):requires_grad_()
    local x = mm.tensor({ { 1.0, 1.0 } })
    mm.linear(x, w, nil):sum():backward()
    local first = w.grad
    mm.linear(x, w, nil):sum():backward()
    assert.are.same({ 2, 2, 2, 2 }, H.values(w.grad))
    assert.are.same({ 2, 2, 2, 2 }, H.values(first))   -- the same tensor, added in place
  end)
end)

describe("in-place ops are part of the graph (expected values from PyTorch 1.13)", function()
  local function ones3() return mm.ones(3, { requires_grad = true }) end

  it("an in-place op on a non-leaf rebases its history", function()
    local x = ones3()
    local y = x * 2
    y:mul_(3)
    assert.are.equal("MulBackward", y.grad_fn)
    y:sum():backward()
    assert.are.same({ 6, 6, 6 }, H.values(x.grad))
  end)

  it("gives the other operand its gradient, and uses self's old value", function()
    local x, r = ones3(), mm.tensor({ 1.0, 2.0, 3.0 }, { requires_grad = true })
    local y = x * 2
    y:add_(r * r)
    y:sum():backward()
    assert.are.same({ 2, 2, 2 }, H.values(x.grad))
    assert.are.same({ 2, 4, 6 }, H.values(r.grad))
    local x2 = mm.tensor({ 1.0, 2.0, 3.0 }, { requires_grad = true })
    local r2 = mm.tensor({ 4.0, 5.0, 6.0 }, { requires_grad = true })
    local y2 = x2 * 2
    y2:mul_(r2)   -- d/dr2 needs y2 as it was before the write
    y2:sum():backward()
    assert.are.same({ 8, 10, 12 }, H.values(x2.grad))
    assert.are.same({ 2, 4, 6 }, H.values(r2.grad))
  end)

  it("fill_ gives the overwritten values a zero gradient", function()
    local x = ones3()
    local y = x * 2
    y:fill_(7)
    y:sum():backward()
    assert.are.same({ 0, 0, 0 }, H.values(x.grad))
  end)

  it("index assignment and copy_ route the gradient to the source", function()
    local x, c = ones3(), mm.tensor(5.0, { requires_grad = true })
    local y = x * 2
    y[2] = c * 3
    ;(y * mm.tensor({ 1.0, 2.0, 3.0 })):sum():backward()
    assert.are.same({ 2, 0, 6 }, H.values(x.grad))
    assert.are.equal(6, c.grad:item())
    local x2, d = ones3(), mm.tensor({ 1.0, 2.0, 3.0 }, { requires_grad = true })
    local y2 = x2 * 2
    y2:copy_(d)
    ;(y2 * y2):sum():backward()
    assert.are.same({ 0, 0, 0 }, H.values(x2.grad))
    assert.are.same({ 2, 4, 6 }, H.values(d.grad))
  end)

  it("a write through a view updates the base's history (CopySlices)", function()
    local x = ones3()
    local y = x * 2
    y:narrow(1, 1, 2):mul_(10)
    assert.are.equal("CopySlicesBackward", y.grad_fn)
    y:sum():backward()
    assert.are.same({ 20, 20, 2 }, H.values(x.grad))
    -- a transposed view of a reshaped base
    local x2 = mm.arange(0, 6, 1, { dtype = "float32" }):requires_grad_()
    local y2 = (x2 * 1):reshape(2, 3)
    y2:t()[1]:mul_(2)
    ;(y2 * y2):sum():backward()
    assert.are.same({ 0, 2, 4, 24, 8, 10 }, H.values(x2.grad))
  end)

  it("views made before a write see the new history", function()
    local x = ones3()
    local y = x * 2
    local v1, v2 = y:narrow(1, 1, 2), y:narrow(1, 2, 2)
    v1:mul_(10)
    v2:sum():backward()
    assert.are.same({ 0, 20, 2 }, H.values(x.grad))
  end)

  it("a plain tensor written from one that requires grad joins the graph", function()
    local x = mm.tensor({ 1.0, 2.0, 3.0 }, { requires_grad = true })
    local z = mm.zeros(5)
    z:narrow(1, 2, 3):copy_(x * x)
    assert.is_true(z.requires_grad)
    ;(z * mm.arange(0, 5, 1, { dtype = "float32" })):sum():backward()
    assert.are.same({ 2, 8, 18 }, H.values(x.grad))
  end)

  it("refuses to write a leaf that requires grad, or a view of one, outside no_grad", function()
    local x = ones3()
    H.error_with(function() x:narrow(1, 1, 2):fill_(7) end, "a view of a leaf tensor that requires grad")
    H.error_with(function() x:_set(1, 5) end, "_set: a leaf tensor that requires grad")
    assert.are.same({ 1, 1, 1 }, H.values(x))
    mm.no_grad(function() x:narrow(1, 1, 2):fill_(7) end)
    assert.are.same({ 7, 7, 1 }, H.values(x))
  end)

  it("every write path moves the version: a saved tensor written by _set stops backward", function()
    local x = mm.tensor({ 1.0, 2.0, 3.0 }, { requires_grad = true })
    local y = x * 1
    local w = y * y
    y:_set(1, 5)
    H.error_with(function() w:sum():backward() end, "modified by an in-place operation")
  end)

  it("overlapping writes give what a temporary copy would", function()
    local a = mm.arange(0, 9, 1, { dtype = "float32" }):reshape(3, 3)
    a:copy_(a:t())
    assert.are.same({ 0, 3, 6, 1, 4, 7, 2, 5, 8 }, H.values(a))
    local b = mm.arange(0, 6, 1, { dtype = "float32" })
    b:narrow(1, 2, 5):copy_(b:narrow(1, 1, 5))
    assert.are.same({ 0, 0, 1, 2, 3, 4 }, H.values(b))
    local c = mm.arange(0, 9, 1, { dtype = "float32" }):reshape(3, 3)
    c:add_(c:t())
    assert.are.same({ 0, 4, 8, 4, 8, 12, 8, 12, 16 }, H.values(c))
  end)

  it("refuses to write memory that several elements share", function()
    H.error_with(function() mm.zeros(1):expand(4):add_(1) end, "add_:", "same memory")
    H.error_with(function() mm.zeros(1):expand(4):fill_(1) end, "fill_:", "same memory")
  end)

  it("a .grad assigned as an expanded view accumulates correctly", function()
    local x = ones3()
    x.grad = mm.zeros(1):expand(3)
    ;(x * 2):sum():backward()
    assert.are.same({ 2, 2, 2 }, H.values(x.grad))
  end)

  it("a view made under no_grad cannot be written in place with grad mode on", function()
    local y = ones3() * 2
    local v = mm.no_grad(function() return y:narrow(1, 1, 2) end)
    H.error_with(function() v:mul_(2) end, "made with grad mode off")
  end)

  it("gradchecks through in-place ops on non-leaves and views", function()
    local a, b = H.leaf(3, 4), H.leaf(4)
    assert.is_true(mm.gradcheck(function(p, q)
      local y = p * 1
      y:mul_(q)                      -- broadcast other
      y:narrow(2, 2, 2):add_(q:narrow(1, 1, 2) * p:narrow(2, 1, 2))
      y[1] = q * 3
      return y:exp()
    end, { a, b }))
  end)
end)

describe("grad-mode idioms", function()
  it("no_grad and enable_grad take a function or give a to-be-closed guard, and nest", function()
    local x = mm.ones(2, { requires_grad = true })
    do
      local _ <close> = mm.no_grad()
      assert.is_false(mm.is_grad_enabled())
      assert.is_false((x * 2).requires_grad)
      do
        local _ <close> = mm.enable_grad()
        assert.is_true((x * 2).requires_grad)
      end
      assert.is_false(mm.is_grad_enabled())
    end
    assert.is_true(mm.is_grad_enabled())
    assert.is_true(mm.no_grad(function() return mm.enable_grad(function() return (x * 2).requires_grad end) end))
  end)

  it("restore the mode when the block raises", function()
    local ok = pcall(function()
      local _ <close> = mm.no_grad()
      error("inside")
    end)
    assert.is_false(ok)
    assert.is_true(mm.is_grad_enabled())
    assert.is_false(pcall(mm.no_grad, function() error("x") end))
    assert.is_true(mm.is_grad_enabled())
    H.error_with(function() mm.no_grad(5) end, "no_grad: expected a function", "got number")
  end)
end)

describe("mm.autograd.grad (values from PyTorch 1.13)", function()
  it("returns gradients for leaves and non-leaves without touching .grad", function()
    local x = mm.tensor({ 1.0, 2.0, 3.0 }, { requires_grad = true })
    local w = mm.tensor({ 4.0, 5.0, 6.0 }, { requires_grad = true })
    local y = x * w
    local z = (y * y):sum()
    local g = mm.autograd.grad(z, { x, w, y }, { retain_graph = true })
    assert.are.same({ 32, 100, 216 }, H.values(g[1]))
    assert.are.same({ 8, 40, 108 }, H.values(g[2]))
    assert.are.same({ 8, 20, 36 }, H.values(g[3]))
    assert.is_nil(x.grad)
    assert.is_nil(w.grad)
    z:backward()   -- the graph was retained
    assert.are.same({ 32, 100, 216 }, H.values(x.grad))
  end)

  it("takes several outputs with grad_outputs, and allow_unused", function()
    local x = mm.tensor({ 1.0, 2.0 }, { requires_grad = true })
    local u = mm.tensor({ 7.0 }, { requires_grad = true })
    local a, b = x * 2, x * x
    local g = mm.autograd.grad({ a, b }, { x, u }, { grad_outputs = { mm.ones(2), mm.tensor({ 1.0, 10.0 }) },
                                                    allow_unused = true })
    assert.are.same({ 4, 42 }, H.values(g[1]))
    assert.is_nil(g[2])
    H.error_with(function() mm.autograd.grad((x * 3):sum(), { x, u }) end,
                 "input 2 was not used to compute the outputs")
  end)

  it("refuses unknown options, create_graph, and inputs that do not require grad", function()
    local x = mm.tensor({ 1.0 }, { requires_grad = true })
    H.error_with(function() mm.autograd.grad((x * 2):sum(), x, { retain = true }) end,
                 "autograd.grad: unknown option 'retain' (accepted: grad_outputs, retain_graph")
    H.error_with(function() mm.autograd.grad((x * 2):sum(), x, { create_graph = true }) end,
                 "not supported yet")
    H.error_with(function() mm.autograd.grad((x * 2):sum(), mm.ones(1)) end, "input 1 does not require grad")
    H.error_with(function() (x * 2):sum():backward({ retian_graph = true }) end,
                 "backward: unknown option 'retian_graph'")
  end)
end)

describe("t:register_hook (values from PyTorch 1.13)", function()
  it("changes a leaf's gradient before it reaches .grad, and is removable", function()
    local x = mm.tensor({ 1.0, 2.0, 3.0 }, { requires_grad = true })
    local h = x:register_hook(function(g) return g * 10 end)
    ;(x * x):sum():backward()
    assert.are.same({ 20, 40, 60 }, H.values(x.grad))
    x.grad = nil
    h:remove()
    h:remove()   -- twice is harmless
    ;(x * x):sum():backward()
    assert.are.same({ 2, 4, 6 }, H.values(x.grad))
  end)

  it("sees and may replace a non-leaf's gradient; nil keeps it", function()
    local x = mm.tensor({ 1.0, 2.0, 3.0 }, { requires_grad = true })
    local y = x * 2
    local seen
    y:register_hook(function(g) seen = H.values(g) end)
    y:register_hook(function(g) return g + 1 end)
    ;(y * y):sum():backward()
    assert.are.same({ 4, 8, 12 }, seen)
    assert.are.same({ 10, 18, 26 }, H.values(x.grad))
  end)

  it("an error in a hook surfaces with its message and leaves the engine usable", function()
    local x = mm.tensor({ 1.0, 2.0 }, { requires_grad = true })
    local y = x * 3
    y:register_hook(function() error("bad hook") end)
    H.error_with(function() y:sum():backward({ retain_graph = true }) end, "hook:", "bad hook")
    local x2 = mm.tensor({ 1.0 }, { requires_grad = true })
    ;(x2 * 5):sum():backward()
    assert.are.same({ 5 }, H.values(x2.grad))
    local z = mm.tensor({ 1.0, 2.0 }, { requires_grad = true })
    z:register_hook(function() return mm.ones(3) end)
    H.error_with(function() (z * 1):sum():backward() end, "returned a gradient of shape (3) for one of shape (2)")
    H.error_with(function() mm.ones(2):register_hook(print) end, "does not require grad")
  end)
end)
