-- Combinators and piecewise pointwise ops: cat, stack, split, chunk, pad,
-- clamp, leaky_relu.  Forward values by hand, float64 gradchecks (broadcast
-- through expand inside fn, transposed/narrowed inputs, size-1 dims,
-- negative dims), views sharing storage, and error messages.
local H = require "helpers"
local mm = H.mm

local function f64(t) return mm.tensor(t, { dtype = "float64" }) end

local leaf = H.leaf

local tleaf = H.tleaf

local live_bytes = H.live_bytes

describe("cat", function()
  it("joins along dim 1, 2 and negative dims", function()
    local a, b = f64 { { 1, 2 }, { 3, 4 } }, f64 { { 5, 6 } }
    local r = mm.cat({ a, b })
    assert.are.same({ 3, 2 }, r:shape())
    H.assert_close(r, { { 1, 2 }, { 3, 4 }, { 5, 6 } })
    local c = mm.cat({ a, f64 { { 7 }, { 8 } }, a }, 2)
    assert.are.same({ 2, 5 }, c:shape())
    H.assert_close(c, { { 1, 2, 7, 1, 2 }, { 3, 4, 8, 3, 4 } })
    H.assert_close(mm.cat({ a, a }, -1), { { 1, 2, 1, 2 }, { 3, 4, 3, 4 } })
    H.assert_close(mm.cat({ a, b }, -2), { { 1, 2 }, { 3, 4 }, { 5, 6 } })
  end)

  it("copies from non-contiguous inputs and promotes dtypes", function()
    local a = mm.arange(6):reshape(2, 3)            -- int64
    local r = mm.cat({ a, a:t():contiguous():t() }, 1)
    assert.are.equal("int64", r:dtype())
    H.assert_close(r, { { 0, 1, 2 }, { 3, 4, 5 }, { 0, 1, 2 }, { 3, 4, 5 } })
    local t = mm.arange(6):reshape(3, 2):t()         -- [2, 3], transposed
    H.assert_close(mm.cat({ t, t }, 2), { { 0, 2, 4, 0, 2, 4 }, { 1, 3, 5, 1, 3, 5 } })
    local m = mm.cat({ mm.tensor { 1, 2 }, mm.tensor({ 0.5 }) })
    assert.are.equal("float32", m:dtype())
    H.assert_close(m, { 1, 2, 0.5 })
  end)

  it("skips 1-D empty tensors, as PyTorch does", function()
    local acc = mm.zeros(0)
    local x = f64 { { 1, 2 } }
    local r = mm.cat({ acc, x, acc, x })
    assert.are.same({ 2, 2 }, r:shape())
    H.assert_close(r, { { 1, 2 }, { 1, 2 } })
    assert.are.same({ 0 }, mm.cat({ acc, acc }):shape())
  end)

  it("passes gradients back to each piece (gradcheck)", function()
    local a, b, c = leaf(2, 3), tleaf(2, 2), leaf(2, 1)
    mm.gradcheck(function(x, y, z) return mm.cat({ x, y, z, x }, 2) end, { a, b, c })
    local d, e = leaf(1, 3, 2), leaf(4, 3, 2)
    mm.gradcheck(function(x, y) return mm.cat({ y, x }, -3) * 3 end, { d, e })
    -- broadcast inside fn: a [1, 3] row expanded to [2, 3] before joining
    local row = leaf(1, 3)
    mm.gradcheck(function(r, x) return mm.cat({ r:expand(2, 3), x }, 1) end, { row, a })
  end)

  it("gives exact gradients, also when only some inputs require grad", function()
    local a = mm.ones(2, 2, { dtype = "float64", requires_grad = true })
    local b = mm.ones(2, 1, { dtype = "float64" })
    local r = mm.cat({ a, b, a }, 2)
    assert.are.equal("CatBackward", r.grad_fn)
    r:backward(f64 { { 1, 2, 3, 4, 5 }, { 6, 7, 8, 9, 10 } })
    H.assert_close(a.grad, { { 1 + 4, 2 + 5 }, { 6 + 9, 7 + 10 } })
    assert.is_nil(b.grad)
  end)

  it("rejects bad input with clear messages", function()
    local a, b = mm.zeros(2, 3), mm.zeros(2, 4)
    H.error_with(function() mm.cat({}) end, "cat", "non-empty")
    H.error_with(function() mm.cat({ a, a, b }, 1) end,
      "tensor 3", "(2, 3)", "(2, 4)", "dimension 1")
    H.error_with(function() mm.cat({ a, mm.zeros(2, 3, 1) }, 2) end, "tensor 2", "(2, 3, 1)")
    H.error_with(function() mm.cat({ a, 5 }) end, "position 2", "number")
    H.error_with(function() mm.cat({ a, a }, 3) end, "dimension out of range", "got 3")
    H.error_with(function() mm.cat({ a, a }, 0) end, "1-based")
    H.error_with(function() mm.cat({ mm.tensor(1.5), mm.tensor(2.5) }) end, "0-dimensional")
    H.error_with(function() mm.cat(a) end, "table")
  end)
end)

describe("stack", function()
  it("adds a new dim at 1, ndim+1 or a negative position", function()
    local a, b = f64 { 1, 2, 3 }, f64 { 4, 5, 6 }
    local r = mm.stack({ a, b })
    assert.are.same({ 2, 3 }, r:shape())
    H.assert_close(r, { { 1, 2, 3 }, { 4, 5, 6 } })
    local c = mm.stack({ a, b }, 2)
    assert.are.same({ 3, 2 }, c:shape())
    H.assert_close(c, { { 1, 4 }, { 2, 5 }, { 3, 6 } })
    assert.are.same({ 3, 2 }, mm.stack({ a, b }, -1):shape())
    local m = mm.stack({ mm.zeros(2, 3), mm.ones(2, 3) }, 3)
    assert.are.same({ 2, 3, 2 }, m:shape())
    H.assert_close(m[2][3], { 0, 1 })
    assert.are.same({ 2 }, mm.stack({ mm.tensor(1), mm.tensor(2) }):shape())
  end)

  it("has the right gradients (gradcheck)", function()
    local a, b = tleaf(3, 2), leaf(3, 2)
    mm.gradcheck(function(x, y) return mm.stack({ x, y, x }, 2) end, { a, b })
    local s = leaf(1, 2)
    mm.gradcheck(function(x, y) return mm.stack({ x, y }, -1) end, { s, leaf(1, 2) })
    assert.are.equal("StackBackward", mm.stack({ a, b }).grad_fn)
  end)

  it("rejects mismatched shapes and bad dims", function()
    H.error_with(function() mm.stack({ mm.zeros(2, 3), mm.zeros(2, 3), mm.zeros(3, 2) }) end,
      "stack", "(2, 3)", "(3, 2)", "tensor 3")
    H.error_with(function() mm.stack({ mm.zeros(2, 3) }, 4) end, "dimension out of range")
    H.error_with(function() mm.stack({}) end, "non-empty")
  end)
end)

describe("split and chunk", function()
  it("split by size gives views with a shorter last piece", function()
    local x = mm.arange(10):reshape(5, 2)
    local p = x:split(2)
    assert.are.equal(3, #p)
    H.assert_close(p[1], { { 0, 1 }, { 2, 3 } })
    H.assert_close(p[3], { { 8, 9 } })
    assert.are.same({ 1, 2 }, p[3]:shape())
    local q = mm.split(x, 1, 2)
    assert.are.equal(2, #q)
    H.assert_close(q[2], { { 1 }, { 3 }, { 5 }, { 7 }, { 9 } })
    assert.are.equal(1, #x:split(7))
  end)

  it("split by a table of sizes, along negative dims", function()
    local x = mm.arange(12):reshape(2, 6)
    local p = x:split({ 1, 3, 0, 2 }, -1)
    assert.are.equal(4, #p)
    H.assert_close(p[2], { { 1, 2, 3 }, { 7, 8, 9 } })
    assert.are.same({ 2, 0 }, p[3]:shape())
    H.assert_close(p[4], { { 4, 5 }, { 10, 11 } })
  end)

  it("pieces share storage with the input", function()
    local x = mm.zeros(4, 3)
    local p = x:split(2)
    p[2]:fill_(7)
    H.assert_close(x, { { 0, 0, 0 }, { 0, 0, 0 }, { 7, 7, 7 }, { 7, 7, 7 } })
    x[1] = 5
    H.assert_close(p[1][1], { 5, 5, 5 })
    local c = x:chunk(3, 2)
    c[3]:fill_(-1)
    H.assert_close(x[4], { 7, 7, -1 })
  end)

  it("chunk follows torch.chunk's sizes", function()
    local function sizes(n, k)
      local out = {}
      for i, piece in ipairs(mm.zeros(n):chunk(k)) do out[i] = piece:shape()[1] end
      return out
    end
    assert.are.same({ 2, 2, 1 }, sizes(5, 3))
    assert.are.same({ 2, 2, 1 }, sizes(5, 4))   -- ceil(5/4) = 2: only 3 pieces
    assert.are.same({ 2, 2, 2 }, sizes(6, 3))
    assert.are.same({ 1, 1 }, sizes(2, 5))
    assert.are.same({ 0, 0, 0 }, sizes(0, 3))
    H.assert_close(mm.arange(6):reshape(2, 3):chunk(2, 2)[2], { { 2 }, { 5 } })
  end)

  it("pieces carry gradients (gradcheck), unused pieces get zero", function()
    local x = leaf(3, 5)
    mm.gradcheck(function(t)
      local p = t:split(2, 2)
      return mm.cat({ p[3], p[1] * 2 }, 2)
    end, { x })
    local y = tleaf(4, 3)
    mm.gradcheck(function(t)
      local c = t:chunk(2, 1)
      return c[2] * c[1]
    end, { y })
    local z = mm.ones(4, { dtype = "float64", requires_grad = true })
    local p = z:split({ 1, 3 })
    local y5 = p[2] * 5
    y5:backward(mm.ones(3, { dtype = "float64" }))
    H.assert_close(z.grad, { 0, 5, 5, 5 })
  end)

  it("rejects bad sizes", function()
    local x = mm.zeros(5, 2)
    H.error_with(function() x:split(0) end, "split size >= 1", "got 0")
    H.error_with(function() x:split({ 2, 2 }) end, "summing to 5", "summing to 4")
    H.error_with(function() x:split({ 2, -1, 4 }) end, "got -1")
    H.error_with(function() x:split({}) end, "at least one size")
    H.error_with(function() x:split(2, 3) end, "dimension out of range")
    H.error_with(function() x:chunk(0) end, "chunks >= 1", "got 0")
    H.error_with(function() mm.tensor(3.5):split(1) end, "0-dimensional")
    H.error_with(function() x:split("2") end, "integer or table")
  end)
end)

describe("pad", function()
  it("pads the last dim first, in (left, right) pairs", function()
    H.assert_close(mm.pad(f64 { 1, 2 }, { 1, 2 }), { 0, 1, 2, 0, 0 })
    local x = f64 { { 1, 2 }, { 3, 4 } }
    local r = mm.pad(x, { 1, 0, 0, 1 }, -1)    -- last dim: 1 left; first dim: 1 after
    assert.are.same({ 3, 3 }, r:shape())
    H.assert_close(r, { { -1, 1, 2 }, { -1, 3, 4 }, { -1, -1, -1 } })
    local s = x:pad({ 0, 0, 2, 0 })
    H.assert_close(s, { { 0, 0 }, { 0, 0 }, { 1, 2 }, { 3, 4 } })
  end)

  it("crops with negative amounts and mixes both", function()
    local x = mm.arange(12):reshape(3, 4)
    H.assert_close(mm.pad(x, { -1, -2 }), { { 1 }, { 5 }, { 9 } })
    local r = mm.pad(x, { 1, -3, -1, 1 }, 9)
    assert.are.same({ 3, 2 }, r:shape())
    assert.are.equal("int64", r:dtype())
    H.assert_close(r, { { 9, 4 }, { 9, 8 }, { 9, 9 } })
    assert.are.same({ 3, 0 }, mm.pad(x, { -2, -2 }):shape())
  end)

  it("pads non-contiguous inputs and has the right gradient (gradcheck)", function()
    local t = mm.arange(6):reshape(2, 3):t()   -- [3, 2]
    H.assert_close(mm.pad(t, { 1, 0 }), { { 0, 0, 3 }, { 0, 1, 4 }, { 0, 2, 5 } })
    local x = tleaf(3, 4)
    mm.gradcheck(function(a) return mm.pad(a, { 2, -1, -1, 1 }, 0.5) end, { x })
    local y = leaf(2, 1, 3)
    mm.gradcheck(function(a) return mm.pad(a, { 1, 1, 0, 2, 1, 0 }) end, { y })
    mm.gradcheck(function(a) return mm.pad(a:expand(2, 4, 3), { -1, 1 }) end, { y })
    local z = mm.ones(2, 3, { dtype = "float64", requires_grad = true })
    local out = mm.pad(z, { -1, 2 })
    assert.are.equal("PadBackward", out.grad_fn)
    out:backward(mm.ones(2, 4, { dtype = "float64" }))
    H.assert_close(z.grad, { { 0, 1, 1 }, { 0, 1, 1 } })
  end)

  it("rejects bad paddings", function()
    local x = mm.zeros(2, 3)
    H.error_with(function() mm.pad(x, { 1 }) end, "even number", "got 1")
    H.error_with(function() mm.pad(x, { 1, 1, 1, 1, 1, 1 }) end, "at most 4", "(2, 3)")
    H.error_with(function() mm.pad(x, { -2, -2 }) end, "negative", "-1")
    H.error_with(function() mm.pad(mm.arange(3), { 1, 1 }, 0.5) end, "int64", "0.5")
    H.error_with(function() mm.pad(x, { 1, "a" }) end, "amount 2")
  end)
end)

describe("clamp", function()
  it("limits from either or both sides", function()
    local x = f64 { -2, -0.5, 0, 0.5, 3 }
    H.assert_close(x:clamp(-1, 1), { -1, -0.5, 0, 0.5, 1 })
    H.assert_close(x:clamp(0), { 0, 0, 0, 0.5, 3 })
    H.assert_close(x:clamp(nil, 0.25), { -2, -0.5, 0, 0.25, 0.25 })
    H.assert_close(mm.clamp(x, { max = 0 }), { -2, -0.5, 0, 0, 0 })
    H.assert_close(x:clamp { min = -1 }, { -1, -0.5, 0, 0.5, 3 })
    H.assert_close(x:clamp(2, 1), { 1, 1, 1, 1, 1 })   -- min > max: max wins, as torch
  end)

  it("propagates NaN and handles non-contiguous input", function()
    local r = f64({ 0 / 0, 5, -5 }):clamp(-1, 1)
    local v = r:totable()
    assert.is_true(v[1] ~= v[1])
    assert.are.same({ 1, -1 }, { v[2], v[3] })
    for _, b in ipairs(f64({ -1, 0, 1 }):clamp(0 / 0):totable()) do   -- NaN bound: NaN, as torch
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
    y:backward(f64 { 10, 20, 30, 40 })
    H.assert_close(x.grad, { 0, 20, 0, 40 })
    local w = mm.tensor({ -1.0, 1.0 }, { requires_grad = true })   -- float32
    w:clamp(nil, 0):backward(mm.ones(2))
    H.assert_close(w.grad, { 1, 0 })
  end)

  it("gradcheck away from the corners", function()
    -- values kept at least 0.1 from the bounds so finite differences never straddle one
    local x = f64({ { -1.3, -0.4, 0.35 }, { 0.8, 1.7, -2.2 } }):t()
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
    local x = f64 { -2, -0.5, 0, 1.5 }
    H.assert_close(mm.leaky_relu(x, 0.1), { -0.2, -0.05, 0, 1.5 })
    H.assert_close(mm.leaky_relu(x), { -0.02, -0.005, 0, 1.5 })
    H.assert_close(x:leaky_relu(-1), { 2, 0.5, 0, 1.5 })
    local n = mm.leaky_relu(f64 { 0 / 0 }):totable()
    assert.is_true(n[1] ~= n[1])
  end)

  it("has gradient 1 or slope (exact and gradcheck)", function()
    local x = mm.tensor({ -2, 3 }, { dtype = "float64", requires_grad = true })
    local y = mm.leaky_relu(x, 0.2)
    assert.are.equal("LeakyReluBackward", y.grad_fn)
    y:backward(f64 { 1, 1 })
    H.assert_close(x.grad, { 0.2, 1 })
    local t = tleaf(3, 4)
    mm.gradcheck(function(a) return mm.leaky_relu(a, 0.3) end, { t })
    local r = leaf(1, 4)
    mm.gradcheck(function(a) return mm.leaky_relu(a:expand(3, 4) * 2) end, { r })
  end)

  it("rejects int64 input", function()
    H.error_with(function() mm.leaky_relu(mm.arange(3)) end, "leaky_relu", "float32 or float64",
      "int64")
  end)
end)

describe("combinators on error paths", function()
  it("leak nothing", function()
    local a, b = mm.zeros(64, 64), mm.zeros(64, 65)
    for _ = 1, 3 do pcall(mm.cat, { a, a, b }) end   -- warm the allocator
    local before = live_bytes()
    for _ = 1, 50 do
      pcall(mm.cat, { a, a, b })
      pcall(mm.stack, { a, b })
      pcall(mm.split, a, { 10, 10 })
      pcall(mm.pad, a, { -40, -40 })
      pcall(mm.clamp, a)
    end
    assert.are.equal(before, live_bytes())
  end)
end)
