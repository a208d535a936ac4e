-- The training step's work split across the thread pool (owner P2): linear's
-- backward (dx and dw side by side, bias sums by column blocks) and ReLU in
-- blocks.  What a user relies on: the same bits on 1 and 2 threads, values
-- that match a hand computation, and gradients that pass a float64 check on
-- every path (small pair, lone GEMM, strided gradient, many bias blocks).
local mm = require "microml"
local H = require "helpers"

local function on_threads(n, fn)
  local n0 = mm.get_num_threads()
  mm.set_num_threads(n)
  local ok, a, b, c, d = pcall(fn)
  mm.set_num_threads(n0)
  if not ok then error(a, 0) end
  return a, b, c, d
end

-- Runs fn on 1 and on 2 threads and asserts every returned tensor is the same bits.
local function same_bits_1_2(fn)
  local r1 = { on_threads(1, fn) }
  local r2 = { on_threads(2, fn) }
  assert.are.equal(#r1, #r2)
  assert.is_true(#r1 > 0)
  for i = 1, #r1 do H.assert_identical(r1[i], r2[i]) end
end

describe("linear backward split over threads", function()
  before_each(function() mm.manual_seed(21) end)

  it("sums the bias gradient over rows, column by column, past one column block", function()
    -- 130 columns: three blocks of 64, the last one partial.
    local rows, cols = 5, 130
    local g = mm.zeros(rows, cols, { dtype = "float64" })
    for i = 1, rows do
      for j = 1, cols do g[i][j] = i * 1000 + j end
    end
    local x = mm.randn({ rows, 3 }, { dtype = "float64" })
    local w = mm.randn({ cols, 3 }, { dtype = "float64", requires_grad = true })
    local b = mm.zeros(cols, { dtype = "float64", requires_grad = true })
    mm.linear(x, w, b):backward(g)
    local want = {}
    -- sum over i of (1000 i + j) = 1000 * 15 + 5 j
    for j = 1, cols do want[j] = 15000 + 5 * j end
    H.assert_close(b.grad, want, 0)
  end)

  it("reads a transposed (strided) output gradient in the bias sums and the GEMMs", function()
    local x = mm.randn({ 7, 4 }, { dtype = "float64", requires_grad = true })
    local w = mm.randn({ 70, 4 }, { dtype = "float64", requires_grad = true })
    local b = mm.randn({ 70 }, { dtype = "float64", requires_grad = true })
    local gt = mm.randn({ 70, 7 }, { dtype = "float64" })
    local g = gt:t()                        -- [7, 70] with column stride 7
    assert.is_false(g:is_contiguous())
    mm.linear(x, w, b):backward(g)
    local gc = g:contiguous()
    H.assert_close(b.grad, H.flatten(gc:sum(1):totable()), 1e-12)
    H.assert_close(x.grad, H.flatten(mm.matmul(gc, w:detach()):totable()), 1e-12)
    H.assert_close(w.grad, H.flatten(mm.matmul(gc:t(), x:detach()):totable()), 1e-12)
  end)

  it("passes a float64 gradient check with many bias blocks, a transposed weight and a broadcast input", function()
    local x = mm.randn({ 3, 5 }, { dtype = "float64", requires_grad = true })
    local wt = mm.randn({ 5, 67 }, { dtype = "float64", requires_grad = true })
    local b = mm.randn({ 67 }, { dtype = "float64", requires_grad = true })
    local row = mm.randn({ 1, 5 }, { dtype = "float64", requires_grad = true })
    assert.is_true(mm.gradcheck(function(xx, ww, bb) return mm.linear(xx, ww:t(), bb) end,
                                { x, wt, b }))
    -- a size-1 input expanded inside fn (gradcheck inputs must not be stride-0 views)
    assert.is_true(mm.gradcheck(function(r, ww, bb) return mm.linear(r:expand(4, 5), ww:t(), bb) end,
                                { row, wt, b }))
    -- a 3-D input whose leading dims flatten into rows, one of them size 1
    local x3 = mm.randn({ 2, 1, 5 }, { dtype = "float64", requires_grad = true })
    assert.is_true(mm.gradcheck(function(xx, ww, bb) return mm.linear(xx, ww:t(), bb) end,
                                { x3, wt, b }))
  end)

  it("gives the same bits on 1 and 2 threads on the side-by-side path (dx and dw both wanted)", function()
    -- 128x256x128 twice: the hidden layer of the training MLP.
    local x, w, b = mm.randn(128, 256), mm.randn(128, 256), mm.randn(128)
    local g = mm.randn(128, 128)
    same_bits_1_2(function()
      local xl, wl, bl = x:clone():requires_grad_(), w:clone():requires_grad_(), b:clone():requires_grad_()
      mm.linear(xl, wl, bl):backward(g)
      return xl.grad, wl.grad, bl.grad
    end)
  end)

  it("gives the same bits on 1 and 2 threads for a lone large dw (input without grad) and a tiny layer", function()
    local x, w, b = mm.randn(128, 784), mm.randn(256, 784), mm.randn(256)
    local g = mm.randn(128, 256)
    local xs, ws, bs, gs = mm.randn(32, 16), mm.randn(10, 16), mm.randn(10), mm.randn(32, 10)
    same_bits_1_2(function()
      local wl, bl = w:clone():requires_grad_(), b:clone():requires_grad_()
      mm.linear(x, wl, bl):backward(g)
      local xsl, wsl, bsl = xs:clone():requires_grad_(), ws:clone():requires_grad_(), bs:clone():requires_grad_()
      mm.linear(xsl, wsl, bsl):backward(gs)
      return wl.grad, bl.grad, xsl.grad, wsl.grad
    end)
  end)

  it("still reports a bad weight with both shapes", function()
    local fn = function() return mm.linear(mm.randn(4, 3), mm.randn(5, 2), mm.randn(5)) end
    assert.has_error(fn)
    local ok, err = pcall(fn)
    assert.is_false(ok)
    assert.truthy(tostring(err):find("input shape (4, 3)", 1, true))
    assert.truthy(tostring(err):find("weight shape (5, 2)", 1, true))
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
    same_bits_1_2(function()
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

describe("cross_entropy rows split over threads", function()
  before_each(function() mm.manual_seed(23) end)

  it("gives the same bits on 1 and 2 threads for a training batch of logits", function()
    local x, y = mm.randn(128, 10), mm.randint(1, 11, { 128 })
    local x64 = mm.randn({ 300, 7 }, { dtype = "float64" })
    local y64 = mm.randint(1, 8, { 300 })
    same_bits_1_2(function()
      local xl, xl64 = x:clone():requires_grad_(), x64:clone():requires_grad_()
      local l = mm.nn.cross_entropy(xl, y)
      l:backward()
      local l64 = mm.nn.cross_entropy(xl64, y64)
      l64:backward()
      return l:detach(), xl.grad, l64:detach(), xl64.grad
    end)
  end)

  it("matches log(C) for equal logits and passes a float64 check on a transposed input", function()
    local x = mm.zeros(128, 10)
    local y = mm.randint(1, 11, { 128 })
    H.assert_close(mm.nn.cross_entropy(x, y), { math.log(10) }, 1e-6)
    local xt = mm.randn({ 4, 6 }, { dtype = "float64", requires_grad = true })
    local lab = mm.tensor({ 1, 4, 2, 3, 4, 1 }, { dtype = "int64" })
    assert.is_true(mm.gradcheck(function(t) return mm.nn.cross_entropy(t:t(), lab) end, { xt }))
  end)

  it("rejects a label out of 1..C naming the range", function()
    local fn = function() return mm.nn.cross_entropy(mm.randn(128, 10), mm.full({ 128 }, 11, { dtype = "int64" })) end
    assert.has_error(fn)
    local ok, err = pcall(fn)
    assert.is_false(ok)
    assert.truthy(tostring(err):find("label 11", 1, true))
    assert.truthy(tostring(err):find("expected 1..10", 1, true))
  end)
end)

describe("a whole AdamW training step", function()
  it("ends with the same loss and parameters on 1 and 2 threads", function()
    local function train()
      mm.manual_seed(5)
      local model = mm.nn.MLP { sizes = { 96, 130, 70, 10 }, activation = "relu" }
      local opt = mm.optim.AdamW(model:parameters(), { lr = 1e-2, weight_decay = 1e-2 })
      local x, y = mm.randn(64, 96), mm.randint(1, 11, { 64 })
      local loss
      for _ = 1, 3 do
        loss = mm.nn.cross_entropy(model(x), y)
        opt:zero_grad()
        loss:backward()
        opt:step()
      end
      local p = model:parameters()
      return loss:detach(), p[1]:detach(), p[2]:detach(), p[#p]:detach()
    end
    same_bits_1_2(train)
  end)
end)
