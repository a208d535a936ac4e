-- matmul and linear: forward values (by hand and against a naive product
-- computed here in Lua), every operand layout the GEMM is handed (1-D,
-- batched with broadcasting, transposed and strided views), float64
-- gradient checks, thread-count independence (also of linear's backward
-- split over the pool) and the errors.  make spec runs this file a second
-- time with MICROML_KERNEL=portable.
local H = require "helpers"
local mm = H.mm

-- Naive C = A B on nested Lua tables (2-D).
local function naive(A, B)
  local C = {}
  for i = 1, #A do
    C[i] = {}
    for j = 1, #B[1] do
      local s = 0
      for p = 1, #B do s = s + A[i][p] * B[p][j] end
      C[i][j] = s
    end
  end
  return C
end

-- Naive batched product: a [..., M, K] and b [..., K, N] tensors, batch dims
-- broadcast NumPy-style; returns the flat list of results in row-major order.
local function naive_batched(a, b)
  local as, bs = a:shape(), b:shape()
  local na, nb = #as - 2, #bs - 2
  local n = math.max(na, nb)
  local batch = {}
  for d = 1, n do
    local sa = as[d - (n - na)] or 1
    local sb = bs[d - (n - nb)] or 1
    if d - (n - na) < 1 then sa = 1 end
    if d - (n - nb) < 1 then sb = 1 end
    batch[d] = math.max(sa, sb)
  end
  local total = 1
  for _, s in ipairs(batch) do total = total * s end
  local out = {}
  for t = 0, total - 1 do
    local idx, rest = {}, t
    for d = n, 1, -1 do idx[d] = rest % batch[d]; rest = rest // batch[d] end
    local function pick(x, nx)
      for d = 1, nx do
        local i = idx[d + (n - nx)]
        if x:size(1) == 1 then x = x:select(1, 1) else x = x:select(1, i + 1) end
      end
      return x:totable()
    end
    local C = naive(pick(a, na), pick(b, nb))
    for _, row in ipairs(C) do for _, v in ipairs(row) do out[#out + 1] = v end end
  end
  return out
end

describe("matmul forward", function()
  before_each(function() mm.manual_seed(11) end)

  it("multiplies small matrices by hand", function()
    local a = mm.tensor({ { 1, 2, 3 }, { 4, 5, 6 } }, { dtype = "float32" })
    local b = mm.tensor({ { 7, 8 }, { 9, 10 }, { 11, 12 } }, { dtype = "float32" })
    local c = mm.matmul(a, b)
    assert.are.same({ 2, 2 }, c:shape())
    assert.are.equal("float32", c:dtype())
    H.assert_close(c, { { 58, 64 }, { 139, 154 } }, 0)
    H.assert_close(a:matmul(b), { { 58, 64 }, { 139, 154 } }, 0)
  end)

  it("follows NumPy for 1-D operands", function()
    local v = mm.tensor({ 1, 2, 3 }, { dtype = "float64" })
    local w = mm.tensor({ 4, -5, 6 }, { dtype = "float64" })
    local d = mm.matmul(v, w)
    assert.are.same({}, d:shape())
    assert.are.equal(12, d:item())                               -- 4 - 10 + 18
    local m = mm.tensor({ { 1, 0, 2 }, { 0, 3, 0 } }, { dtype = "float64" })
    local mv = mm.matmul(m, v)
    assert.are.same({ 2 }, mv:shape())
    H.assert_close(mv, { 7, 6 }, 0)
    local vm = mm.matmul(mm.tensor({ 1, -1 }, { dtype = "float64" }), m)
    assert.are.same({ 3 }, vm:shape())
    H.assert_close(vm, { 1, -3, 2 }, 0)
    -- a vector against a batch of matrices, both ways
    local bm = H.randn64({ 4, 3, 5 })
    local r = mm.matmul(v, bm)
    assert.are.same({ 4, 5 }, r:shape())
    local bm2 = H.randn64({ 4, 2, 3 })
    assert.are.same({ 4, 2 }, mm.matmul(bm2, v):shape())
    H.assert_close(mm.matmul(bm2, v), naive_batched(bm2, v:reshape(3, 1)), 1e-12)
    H.assert_close(r, naive_batched(v:reshape(1, 3), bm), 1e-12)
  end)

  it("matches a naive product for odd shapes (1, primes) in both dtypes", function()
    local shapes = { { 1, 1, 1 }, { 1, 7, 1 }, { 7, 1, 5 }, { 1, 13, 17 }, { 13, 17, 11 },
                     { 31, 2, 37 }, { 6, 16, 16 }, { 23, 41, 19 } }
    for _, dt in ipairs({ "float32", "float64" }) do
      for _, s in ipairs(shapes) do
        local a = mm.randn({ s[1], s[2] }, { dtype = dt })
        local b = mm.randn({ s[2], s[3] }, { dtype = dt })
        H.assert_close(mm.matmul(a, b), naive(a:totable(), b:totable()),
                       dt == "float32" and 1e-5 or 1e-12)
      end
    end
  end)

  it("matches a naive product on the GEMM's large (packed, threaded) path", function()
    local a, b = mm.randn(150, 161), mm.randn(161, 170)
    H.assert_close(mm.matmul(a, b), naive(a:totable(), b:totable()), 1e-4)
  end)

  it("broadcasts batch dims", function()
    local cases = {
      { { 3, 4, 5 }, { 5, 2 } },             -- shared right operand
      { { 4, 5 }, { 3, 5, 2 } },             -- shared left operand
      { { 2, 1, 3, 4 }, { 5, 4, 2 } },       -- [B,1,M,K] x [H,K,N]
      { { 2, 1, 3, 4 }, { 1, 5, 4, 2 } },
      { { 1, 3, 4 }, { 2, 4, 1 } },
      { { 2, 3, 1, 4 }, { 2, 3, 4, 6 } },    -- M = 1
    }
    for _, c in ipairs(cases) do
      local a, b = H.randn64(c[1]), H.randn64(c[2])
      local r = mm.matmul(a, b)
      H.assert_close(r, naive_batched(a, b), 1e-12)
    end
    local r = mm.matmul(H.randn64({ 2, 1, 3, 4 }), H.randn64({ 5, 4, 2 }))
    assert.are.same({ 2, 5, 3, 2 }, r:shape())
  end)

  it("reads transposed, strided and expanded operands, in both dtypes", function()
    for _, dt in ipairs({ "float32", "float64" }) do
      local function r(shape) return mm.randn(shape, { dtype = dt }) end
      local tol = dt == "float32" and 1e-5 or 1e-12
      local a0, b0 = r({ 9, 7 }), r({ 7, 5 })
      local want = naive(a0:totable(), b0:totable())
      local at = a0:t():contiguous():t()            -- column-major copy of a0
      local bt = b0:t():contiguous():t()
      assert.is_false(at:is_contiguous())
      H.assert_close(mm.matmul(at, b0), want, tol)
      H.assert_close(mm.matmul(a0, bt), want, tol)
      H.assert_close(mm.matmul(at, bt), want, tol)
      -- no unit stride in either dim: a select of a 3-D tensor
      local sel = r({ 9, 7, 3 }):select(3, 2)
      assert.are.same({ 21, 3 }, sel:stride())
      H.assert_close(mm.matmul(sel, b0), naive(sel:totable(), b0:totable()), tol)
      -- narrowed rows and a batched transpose
      local nar = a0:narrow(2, 2, 5)
      H.assert_close(mm.matmul(nar, b0:narrow(1, 1, 5)),
                     naive(nar:totable(), b0:narrow(1, 1, 5):totable()), tol)
      local ba = r({ 3, 7, 4 }):transpose(2, 3)     -- [3, 4, 7], non-contiguous
      local bb = r({ 7, 2 })
      H.assert_close(mm.matmul(ba, bb), naive_batched(ba, bb), tol)
      -- expanded (stride 0) operands, on the small and the packed GEMM paths
      -- (every entry is the dot product of the row and the column)
      for _, n in ipairs({ 7, 1800 }) do
        local row, col = r({ 1, n }), r({ n, 1 })
        local dot, rt, ct = 0, row:totable()[1], col:totable()
        for k = 1, n do dot = dot + rt[k] * ct[k][1] end
        local want = {}
        for k = 1, 60 * 70 do want[k] = dot end
        H.assert_close(mm.matmul(row:expand(60, n), col:expand(n, 70)), want,
                       dt == "float32" and 1e-4 or 1e-12)
      end
    end
  end)

  it("promotes float32 x float64 to float64 and handles empty dims", function()
    local a, b = mm.randn(3, 4), H.randn64({ 4, 2 })
    local c = mm.matmul(a, b)
    assert.are.equal("float64", c:dtype())
    H.assert_close(c, naive(a:double():totable(), b:totable()), 1e-12)
    assert.are.same({ 0, 2 }, mm.matmul(mm.zeros(0, 4), mm.ones(4, 2)):shape())
    H.assert_close(mm.matmul(mm.ones(2, 0), mm.ones(0, 3)), { { 0, 0, 0 }, { 0, 0, 0 } }, 0)
    assert.are.same({ 0, 3, 2 }, mm.matmul(mm.ones(0, 3, 4), mm.ones(4, 2)):shape())
  end)

  it("gives the same bits on 1 and 2 threads", function()
    local n0 = mm.get_num_threads()
    local a, b = mm.randn(130, 150), mm.randn(150, 140)
    local ba, bb = mm.randn(16, 20, 30), mm.randn(16, 30, 10)
    local x, w = mm.randn(4, 50, 64), mm.randn(64, 80)
    mm.set_num_threads(1)
    local r1, s1, t1 = mm.matmul(a, b), mm.matmul(ba, bb), mm.matmul(x, w)
    mm.set_num_threads(2)
    local r2, s2, t2 = mm.matmul(a, b), mm.matmul(ba, bb), mm.matmul(x, w)
    mm.set_num_threads(n0)
    H.assert_identical(r1, r2)
    H.assert_identical(s1, s2)
    H.assert_identical(t1, t2)
  end)
end)

describe("matmul backward", function()
  before_each(function() mm.manual_seed(12) end)

  it("gives dA = dC B^T and dB = A^T dC by hand", function()
    local a = mm.tensor({ { 1, 2 }, { 3, 4 } }, { dtype = "float64", requires_grad = true })
    local b = mm.tensor({ { 5, 6 }, { 7, 8 } }, { dtype = "float64", requires_grad = true })
    local c = mm.matmul(a, b)
    assert.are.equal("MatmulBackward", c.grad_fn)
    c:backward(mm.tensor({ { 1, 0 }, { 0, 2 } }, { dtype = "float64" }))
    H.assert_close(a.grad, { { 5, 7 }, { 12, 16 } }, 0)  -- dC B^T
    H.assert_close(b.grad, { { 1, 6 }, { 2, 8 } }, 0)    -- A^T dC
  end)

  it("passes gradcheck for 2-D, 1-D and size-1 shapes", function()
    local cases = { { { 3, 4 }, { 4, 5 } }, { { 4 }, { 4 } }, { { 3, 4 }, { 4 } },
                    { { 4 }, { 4, 2 } }, { { 1, 4 }, { 4, 1 } }, { { 3, 1 }, { 1, 2 } },
                    { { 1 }, { 1, 3 } } }
    for _, c in ipairs(cases) do
      assert.is_true(mm.gradcheck(mm.matmul, { H.leaf(c[1]), H.leaf(c[2]) }))
    end
  end)

  it("passes gradcheck with broadcast batch dims (gradients summed to each shape)", function()
    local cases = { { { 2, 3, 4 }, { 4, 5 } }, { { 3, 4 }, { 2, 4, 5 } },
                    { { 2, 1, 3, 4 }, { 3, 4, 2 } }, { { 2, 1, 3, 2 }, { 1, 2, 2, 3 } },
                    { { 4 }, { 2, 4, 3 } }, { { 2, 3, 4 }, { 4 } }, { { 1, 2, 3 }, { 2, 3, 2 } },
                    { { 2, 1, 1, 3 }, { 3, 1 } } }
    for _, c in ipairs(cases) do
      local a, b = H.leaf(c[1]), H.leaf(c[2])
      assert.is_true(mm.gradcheck(mm.matmul, { a, b }))
      mm.matmul(a, b):sum():backward()   -- gradcheck leaves no .grad behind
      assert.are.same(c[1], a.grad:shape())
      assert.are.same(c[2], b.grad:shape())
    end
  end)

  it("passes gradcheck on non-contiguous inputs and gradient", function()
    -- transposed leaves: their grads are read/written through the view
    local at = H.randn64({ 5, 3 }):t():requires_grad_()
    local bt = H.randn64({ 2, 5 }):t():requires_grad_()
    assert.is_false(at:is_contiguous())
    assert.is_true(mm.gradcheck(mm.matmul, { at, bt }))
    -- transposes and expands taken inside the function
    local a, b = H.leaf({ 2, 4, 3 }), H.leaf({ 4, 5 })
    assert.is_true(mm.gradcheck(function(x, y) return mm.matmul(x:transpose(2, 3), y) end,
                                { a, b }))
    local r, m = H.leaf({ 1, 4 }), H.leaf({ 4, 3 })
    assert.is_true(mm.gradcheck(function(x, y) return mm.matmul(x:expand(3, 4), y) end, { r, m }))
    -- a non-contiguous incoming gradient (the output is transposed afterwards)
    local p, q = H.leaf({ 3, 4 }), H.leaf({ 4, 2 })
    assert.is_true(mm.gradcheck(function(x, y) return mm.matmul(x, y):t() end, { p, q }))
    -- a strided (no unit stride) operand selected inside
    local s, t = H.leaf({ 3, 4, 2 }), H.leaf({ 4, 2 })
    assert.is_true(mm.gradcheck(function(x, y) return mm.matmul(x:select(3, 2), y) end, { s, t }))
  end)

  it("accumulates into float32 leaves and mixed dtypes", function()
    local a = mm.randn({ 3, 4 }, { requires_grad = true })
    local b = mm.randn({ 4, 2 }, { dtype = "float64", requires_grad = true })
    mm.matmul(a, b):backward(mm.ones(3, 2, { dtype = "float64" }))
    assert.are.equal("float32", a.grad:dtype())
    assert.are.equal("float64", b.grad:dtype())
    local bsum = {}
    local bt = b:totable()
    for i = 1, 4 do bsum[i] = bt[i][1] + bt[i][2] end
    local want = {}
    for i = 1, 3 do want[i] = bsum end
    H.assert_close(a.grad, want, 1e-6)
  end)
end)

describe("linear", function()
  before_each(function() mm.manual_seed(13) end)

  it("computes x w^T + b by hand", function()
    local x = mm.tensor({ { 1, 2, 3 }, { 4, 5, 6 } }, { dtype = "float32" })
    local w = mm.tensor({ { 1, 0, 0 }, { 0, 1, 1 } }, { dtype = "float32" })
    local b = mm.tensor({ 10, 20 }, { dtype = "float32" })
    H.assert_close(mm.linear(x, w, b), { { 11, 25 }, { 14, 31 } }, 0)
    H.assert_close(mm.linear(x, w), { { 1, 5 }, { 4, 11 } }, 0)
    H.assert_close(mm.linear(mm.tensor({ 1, 2, 3 }, { dtype = "float32" }), w, b), { 11, 25 }, 0)
    assert.are.same({ 2 }, mm.linear(mm.tensor({ 1, 2, 3 }, { dtype = "float32" }), w):shape())
  end)

  it("matches matmul(x, w^T) + b for [..., in] inputs and strided operands", function()
    local x, w, b = H.randn64({ 2, 3, 5 }), H.randn64({ 4, 5 }), H.randn64({ 4 })
    local y = mm.linear(x, w, b)
    assert.are.same({ 2, 3, 4 }, y:shape())
    local mw = naive_batched(x, w:t())
    local bt = b:totable()
    for i = 1, #mw do mw[i] = mw[i] + bt[(i - 1) % 4 + 1] end
    H.assert_close(y, mw, 1e-12)
    -- transposed x rows, a transposed weight, a strided bias
    local xt = H.randn64({ 5, 6 }):t()                -- [6, 5]
    local wt = H.randn64({ 5, 4 }):t()                -- [4, 5]
    local bs = H.randn64({ 4, 2 }):select(2, 1)       -- stride 2
    local want = naive(xt:totable(), wt:t():totable())
    local bb = bs:totable()
    for i = 1, 6 do for j = 1, 4 do want[i][j] = want[i][j] + bb[j] end end
    H.assert_close(mm.linear(xt, wt, bs), want, 1e-12)
    -- a permuted 3-D input whose leading dims do not collapse
    local xp = H.randn64({ 3, 2, 5 }):transpose(1, 2)       -- [2, 3, 5]
    H.assert_close(mm.linear(xp, w), naive_batched(xp, w:t()), 1e-12)
  end)

  it("passes gradcheck with and without bias, [..., in] inputs, size-1 dims", function()
    local cases = { { { 3, 4 }, { 5, 4 } }, { { 2, 3, 4 }, { 2, 4 } }, { { 4 }, { 3, 4 } },
                    { { 1, 1 }, { 1, 1 } }, { { 3, 1 }, { 2, 1 } }, { { 1, 3 }, { 1, 3 } } }
    for _, c in ipairs(cases) do
      local x, w, b = H.leaf(c[1]), H.leaf(c[2]), H.leaf({ c[2][1] })
      assert.is_true(mm.gradcheck(mm.linear, { x, w, b }))
      mm.linear(x, w, b):sum():backward()   -- gradcheck leaves no .grad behind
      assert.are.same({ c[2][1] }, b.grad:shape())
      local x2, w2 = H.leaf(c[1]), H.leaf(c[2])
      assert.is_true(mm.gradcheck(mm.linear, { x2, w2 }))
    end
  end)

  it("passes gradcheck on non-contiguous inputs and gradient", function()
    local xt = H.randn64({ 4, 3 }):t():requires_grad_()     -- [3, 4]
    local wt = H.randn64({ 4, 2 }):t():requires_grad_()     -- [2, 4]
    local b = H.leaf({ 2 })
    assert.is_true(mm.gradcheck(mm.linear, { xt, wt, b }))
    local x, w = H.leaf({ 3, 2, 4 }), H.leaf({ 5, 4 })
    local fn = function(p, q, r) return mm.linear(p:transpose(1, 2), q, r):transpose(1, 3) end
    assert.is_true(mm.gradcheck(fn, { x, w, H.leaf({ 5 }) }))
  end)

  it("records LinearBackward and refuses backward after its inputs change in place", function()
    local x = mm.randn({ 2, 3 }, { requires_grad = true })
    local w = mm.randn({ 4, 3 }, { requires_grad = true })
    local y = mm.linear(x, w)
    assert.are.equal("LinearBackward", y.grad_fn)
    mm.no_grad(function() w:mul_(2) end)
    H.error_with(function() y:backward(mm.ones(2, 4)) end, "LinearBackward", "in-place")
    local a = mm.randn({ 2, 2 }, { requires_grad = true })
    local b = mm.randn(2, 2)
    local c = mm.matmul(a, b)
    b:add_(1)
    H.error_with(function() c:backward(mm.ones(2, 2)) end, "MatmulBackward", "in-place")
  end)

  it("gives the bias gradient as column sums and float32 matches float64", function()
    local x = mm.randn({ 6, 3 }, { requires_grad = true })
    local w = mm.randn({ 2, 3 }, { requires_grad = true })
    local b = mm.zeros(2, { requires_grad = true })
    local g = mm.randn(6, 2)
    mm.linear(x, w, b):backward(g)
    local gt, want = g:totable(), { 0, 0 }
    for i = 1, 6 do want[1] = want[1] + gt[i][1]; want[2] = want[2] + gt[i][2] end
    H.assert_close(b.grad, want, 1e-5)
    local x64, w64 = x:detach():double():requires_grad_(), w:detach():double():requires_grad_()
    mm.linear(x64, w64):backward(g:double())
    H.assert_close(x.grad, H.flatten(x64.grad:totable()), 1e-5)
    H.assert_close(w.grad, H.flatten(w64.grad:totable()), 1e-5)
  end)

  it("gives the same bits on 1 and 2 threads, forward and backward", function()
    local n0 = mm.get_num_threads()
    local x, w, b = mm.randn(64, 200), mm.randn(300, 200), mm.randn(300)
    local g = mm.randn(64, 300)
    local function run()
      local xl, wl, bl = x:clone():requires_grad_(), w:clone():requires_grad_(),
                         b:clone():requires_grad_()
      local y = mm.linear(xl, wl, bl)
      y:backward(g)
      return y, xl.grad, wl.grad, bl.grad
    end
    mm.set_num_threads(1)
    local r1 = { run() }
    mm.set_num_threads(2)
    local r2 = { run() }
    mm.set_num_threads(n0)
    for i = 1, 4 do H.assert_identical(r1[i], r2[i]) end
  end)
end)

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
    H.same_bits_1_2(function()
      local xl, wl, bl = x:clone():requires_grad_(), w:clone():requires_grad_(), b:clone():requires_grad_()
      mm.linear(xl, wl, bl):backward(g)
      return xl.grad, wl.grad, bl.grad
    end)
  end)

  it("gives the same bits on 1 and 2 threads for a lone large dw (input without grad) and a tiny layer", function()
    local x, w, b = mm.randn(128, 784), mm.randn(256, 784), mm.randn(256)
    local g = mm.randn(128, 256)
    local xs, ws, bs, gs = mm.randn(32, 16), mm.randn(10, 16), mm.randn(10), mm.randn(32, 10)
    H.same_bits_1_2(function()
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

describe("linear algebra errors", function()
  it("matmul names both shapes on a mismatch", function()
    local e = H.error_with(function() mm.matmul(mm.ones(2, 3), mm.ones(4, 5)) end)
    assert.truthy(e:find("(2, 3)", 1, true), e)
    assert.truthy(e:find("(4, 5)", 1, true), e)
    e = H.error_with(function() mm.matmul(mm.ones(3), mm.ones(4)) end)
    assert.truthy(e:find("(3)", 1, true) and e:find("(4)", 1, true), e)
    e = H.error_with(function() mm.matmul(mm.ones(2, 2, 3), mm.ones(3, 3, 4)) end)
    assert.truthy(e:find("batch", 1, true) and e:find("(2, 2, 3)", 1, true)
                  and e:find("(3, 3, 4)", 1, true), e)
  end)

  it("matmul refuses int64, scalars and non-tensors", function()
    local e = H.error_with(function() mm.matmul(mm.tensor({ { 1, 2 } }), mm.tensor({ { 1 }, { 2 } })) end)
    assert.truthy(e:find("int64", 1, true) and e:find("float", 1, true), e)
    e = H.error_with(function() mm.matmul(mm.ones({}), mm.ones(3)) end)
    assert.truthy(e:find("at least 1 dimension", 1, true), e)
    e = H.error_with(function() mm.matmul(mm.ones(2, 2), 3) end)
    assert.truthy(e:find("Tensor", 1, true), e)
  end)

  it("linear checks the weight, the input features and the bias", function()
    local e = H.error_with(function() mm.linear(mm.ones(2, 3), mm.ones(4)) end)
    assert.truthy(e:find("2-D weight", 1, true) and e:find("(4)", 1, true), e)
    e = H.error_with(function() mm.linear(mm.ones(2, 3), mm.ones(4, 5)) end)
    assert.truthy(e:find("(2, 3)", 1, true) and e:find("(4, 5)", 1, true), e)
    e = H.error_with(function() mm.linear(mm.ones(2, 3), mm.ones(4, 3), mm.ones(3)) end)
    assert.truthy(e:find("bias of shape (4)", 1, true) and e:find("got (3)", 1, true), e)
    e = H.error_with(function() mm.linear(mm.ones({}), mm.ones(4, 3)) end)
    assert.truthy(e:find("scalar", 1, true), e)
    e = H.error_with(function() mm.linear(mm.tensor({ 1, 2, 3 }), mm.ones(4, 3)) end)
    assert.truthy(e:find("int64", 1, true), e)
    e = H.error_with(function() mm.linear(mm.ones(2, 3), mm.ones(4, 3), "b") end)
    assert.truthy(e:find("Tensor or nil", 1, true), e)
  end)
end)
