-- Indexing by int64 index tensors (1-based in Lua): index_select, gather,
-- scatter_add, embedding, one_hot.  Forward values by hand, exact
-- accumulation for repeated indices, float64 gradchecks over several shapes
-- with non-contiguous inputs and negative dims, thread-count independence
-- of the embedding kernels, and error messages.
local H = require "helpers"
local mm = H.mm

describe("index_select", function()
  local x
  before_each(function() x = H.f64 { { 1, 2, 3 }, { 4, 5, 6 } } end)

  it("picks rows or columns, repeats allowed", function()
    H.assert_close(x:index_select(1, H.long { 2, 1, 2 }), { { 4, 5, 6 }, { 1, 2, 3 }, { 4, 5, 6 } })
    local c = x:index_select(2, H.long { 3, 3, 1 })
    assert.are.same({ 2, 3 }, c:shape())
    H.assert_close(c, { { 3, 3, 1 }, { 6, 6, 4 } })
    H.assert_close(mm.index_select(x, -1, H.long { 2 }), { { 2 }, { 5 } })
    assert.are.same({ 0, 3 }, x:index_select(1, mm.zeros(0, { dtype = "int64" })):shape())
    assert.are.same({ 2, 1 }, x:index_select(2, mm.tensor(2)):shape())   -- 0-dim index
  end)

  it("works on int64 and non-contiguous inputs, middle dims", function()
    local t = mm.arange(6):reshape(2, 3):t()          -- [3, 2] int64, transposed
    local r = t:index_select(1, H.long { 3, 1 })
    assert.are.equal("int64", r:dtype())
    H.assert_close(r, { { 2, 5 }, { 0, 3 } })
    local y = mm.arange(24):reshape(2, 3, 4)
    H.assert_close(y:index_select(2, H.long { 3, 1 }),
      { { { 8, 9, 10, 11 }, { 0, 1, 2, 3 } }, { { 20, 21, 22, 23 }, { 12, 13, 14, 15 } } })
  end)

  it("accumulates gradients of repeated indices", function()
    local w = mm.zeros(3, 2, { dtype = "float64", requires_grad = true })
    local r = w:index_select(1, H.long { 3, 1, 3, 3 })
    assert.are.equal("IndexSelectBackward", r.grad_fn)
    r:backward(H.f64 { { 1, 2 }, { 3, 4 }, { 5, 6 }, { 7, 8 } })
    H.assert_close(w.grad, { { 3, 4 }, { 0, 0 }, { 13, 16 } })
  end)

  it("gradcheck over dims, shapes and layouts", function()
    mm.gradcheck(function(a) return a:index_select(1, H.long { 2, 2, 1 }) end, { H.tleaf(3, 4) })
    mm.gradcheck(function(a) return a:index_select(-1, H.long { 4, 1, 4 }) end, { H.tleaf(3, 4) })
    mm.gradcheck(function(a) return a:index_select(2, H.long { 1, 3, 1, 1 }) end, { H.leaf(2, 3, 2) })
    mm.gradcheck(function(a) return a:index_select(1, H.long { 1, 1 }) end, { H.leaf(1, 3) })
    local r = H.leaf(1, 4)
    mm.gradcheck(function(a) return a:expand(3, 4):index_select(1, H.long { 3, 2, 3 }) end, { r })
    local n = mm.randn(4, 5, { dtype = "float64" }):narrow(2, 2, 3)
    n.requires_grad = true
    mm.gradcheck(function(a) return a:index_select(2, H.long { 3, 1, 3 }) end, { n })
  end)

  it("rejects bad indices with the index and the valid range", function()
    H.error_with(function() x:index_select(1, H.long { 1, 3 }) end,
      "index_select", "index 3", "out of range", "dimension 1 of size 2", "1..2")
    H.error_with(function() x:index_select(2, H.long { 0 }) end, "index 0", "1..3")
    H.error_with(function() x:index_select(2, H.long { -1 }) end, "index -1", "1..3")
    H.error_with(function() x:index_select(1, mm.tensor { 1.0 }) end,
      "expected int64 indices, got float32")
    H.error_with(function() x:index_select(1, H.long { { 1 } }) end, "1-D index", "(1, 1)")
    H.error_with(function() x:index_select(3, H.long { 1 }) end, "dimension out of range")
    H.error_with(function() mm.tensor(1.5):index_select(1, H.long { 1 }) end, "0-dimensional")
  end)
end)

describe("gather", function()
  local x
  before_each(function() x = H.f64 { { 1, 2 }, { 3, 4 } } end)

  it("picks one element per index position", function()
    H.assert_close(x:gather(2, H.long { { 1, 1 }, { 2, 1 } }), { { 1, 1 }, { 4, 3 } })
    H.assert_close(x:gather(1, H.long { { 2, 1 }, { 1, 1 }, { 2, 2 } }), { { 3, 2 }, { 1, 2 }, { 3, 4 } })
    -- an index smaller than the input outside dim reads the leading corner
    local y = mm.arange(12):reshape(3, 4)
    local g = y:gather(-1, H.long { { 4 }, { 2 } })
    assert.are.equal("int64", g:dtype())
    H.assert_close(g, { { 3 }, { 5 } })
    H.assert_close(y:t():gather(1, H.long { { 3, 1, 2 } }), { { 2, 4, 9 } })   -- y:t() is [4, 3]
    local f = mm.tensor({ { 1.5, 2.5 } }):gather(2, H.long { { 2, 1, 2 } })
    assert.are.equal("float32", f:dtype())
    H.assert_close(f, { { 2.5, 1.5, 2.5 } })
  end)

  it("accumulates gradients of repeated indices", function()
    local w = mm.zeros(2, 3, { dtype = "float64", requires_grad = true })
    local g = w:gather(2, H.long { { 3, 3, 3, 1 }, { 2, 1, 2, 2 } })
    assert.are.equal("GatherBackward", g.grad_fn)
    g:backward(H.f64 { { 1, 2, 3, 4 }, { 5, 6, 7, 8 } })
    H.assert_close(w.grad, { { 4, 0, 6 }, { 6, 20, 0 } })
  end)

  it("gradcheck over dims, shapes and layouts", function()
    mm.gradcheck(function(a) return a:gather(1, H.long { { 3, 1 }, { 3, 3 } }) end, { H.tleaf(3, 2) })
    mm.gradcheck(function(a) return a:gather(-1, H.long { { 2, 2, 1 }, { 1, 4, 4 } }) end,
      { H.tleaf(3, 4) })
    mm.gradcheck(function(a)
      return a:gather(2, H.long { { { 1, 2 }, { 3, 3 }, { 1, 1 } }, { { 2, 2 }, { 1, 3 }, { 3, 1 } } })
    end, { H.leaf(2, 3, 2) })
    local r = H.leaf(1, 3)
    mm.gradcheck(function(a) return a:expand(2, 3):gather(2, H.long { { 1, 1 }, { 3, 1 } }) end, { r })
  end)

  it("rejects bad indices and shapes", function()
    H.error_with(function() x:gather(2, H.long { { 1, 3 } }) end,
      "gather", "index 3", "dimension 2 of size 2", "1..2")
    H.error_with(function() x:gather(1, H.long { 1, 2 }) end, "2 dimensions", "index shape (2)")
    H.error_with(function() x:gather(2, H.long { { 1 }, { 1 }, { 1 } }) end, "(3, 1)", "(2, 2)")
    H.error_with(function() x:gather(2, H.f64 { { 1 } }) end, "expected int64 indices, got float64")
  end)
end)

describe("scatter_add", function()
  it("adds src at the indices, out of place", function()
    local self = mm.zeros(3, 5)
    local idx = H.long { { 1, 2, 3, 1, 1 }, { 1, 2, 3, 3, 3 } }
    local r = self:scatter_add(1, idx, mm.ones(2, 5))
    H.assert_close(r, { { 2, 0, 0, 1, 1 }, { 0, 2, 0, 0, 0 }, { 0, 0, 2, 1, 1 } })
    H.assert_close(self, { { 0, 0, 0, 0, 0 }, { 0, 0, 0, 0, 0 }, { 0, 0, 0, 0, 0 } })
    local s = mm.scatter_add(H.f64 { { 1, 1, 1 } }, -1, H.long { { 3, 3 } }, H.f64 { { 10, 20, 99 } })
    H.assert_close(s, { { 1, 1, 31 } })                 -- src's extra column is never read
    local i = mm.arange(6):reshape(2, 3):scatter_add(2, H.long { { 1 }, { 1 } }, H.long { { 5 }, { 7 } })
    assert.are.equal("int64", i:dtype())
    H.assert_close(i, { { 5, 1, 2 }, { 10, 4, 5 } })
  end)

  it("sends gradients to self and src", function()
    local self = mm.zeros(2, 2, { dtype = "float64", requires_grad = true })
    local src = mm.zeros(2, 3, { dtype = "float64", requires_grad = true })
    local r = self:scatter_add(2, H.long { { 2, 2 }, { 1, 2 } }, src)
    assert.are.equal("ScatterAddBackward", r.grad_fn)
    r:backward(H.f64 { { 1, 2 }, { 3, 4 } })
    H.assert_close(self.grad, { { 1, 2 }, { 3, 4 } })
    H.assert_close(src.grad, { { 2, 2, 0 }, { 3, 4, 0 } })
  end)

  it("gradcheck over dims, shapes and layouts", function()
    local idx = H.long { { 2, 2, 1 }, { 3, 3, 3 } }
    mm.gradcheck(function(a, b) return a:scatter_add(1, idx, b) end, { H.tleaf(3, 4), H.leaf(2, 3) })
    mm.gradcheck(function(a, b) return a:scatter_add(-1, H.long { { 1, 1, 1 }, { 2, 2, 1 } }, b) end,
      { H.leaf(2, 2), H.tleaf(3, 4) })
    mm.gradcheck(function(a, b)
      return a:scatter_add(2, H.long { { { 1 }, { 1 } }, { { 2 }, { 1 } } }, b)
    end, { H.leaf(2, 2, 1), H.leaf(2, 2, 1) })
    local row = H.leaf(1, 3)
    mm.gradcheck(function(a, b) return a:expand(2, 3):scatter_add(2, idx, b) end,
      { row, H.leaf(2, 3) })
  end)

  it("rejects bad input", function()
    local self = mm.zeros(2, 3)
    H.error_with(function() self:scatter_add(2, H.long { { 4 } }, mm.ones(1, 1)) end,
      "scatter_add", "index 4", "dimension 2 of size 3", "1..3")
    H.error_with(function() self:scatter_add(2, H.long { { 1 } }, mm.ones(1, 1, { dtype = "float64" })) end,
      "dtype float32", "float64")
    H.error_with(function() self:scatter_add(2, H.long { { 1, 1 } }, mm.ones(1, 1)) end,
      "src", "(1, 2)", "(1, 1)")
    H.error_with(function() self:scatter_add(1, mm.ones(1, 1), mm.ones(1, 1)) end,
      "expected int64 indices, got float32")
  end)
end)

describe("embedding", function()
  local w
  before_each(function() w = H.f64 { { 0, 1 }, { 10, 11 }, { 20, 21 } } end)

  it("looks up rows for indices of any shape", function()
    local e = mm.embedding(w, H.long { 3, 1, 3 })
    assert.are.same({ 3, 2 }, e:shape())
    H.assert_close(e, { { 20, 21 }, { 0, 1 }, { 20, 21 } })
    local e2 = mm.embedding(w, H.long { { 2, 2, 1 }, { 3, 1, 1 } })
    assert.are.same({ 2, 3, 2 }, e2:shape())
    H.assert_close(e2[2], { { 20, 21 }, { 0, 1 }, { 0, 1 } })
    assert.are.same({ 2 }, mm.embedding(w, mm.tensor(2)):shape())
    H.assert_close(mm.embedding(w:t():contiguous():t(), H.long { 2 }), { { 10, 11 } })
  end)

  it("accumulates the gradient of repeated indices into weight rows", function()
    local wt = mm.zeros(4, 2, { dtype = "float64", requires_grad = true })
    local e = mm.embedding(wt, H.long { { 2, 4 }, { 2, 2 } })
    assert.are.equal("EmbeddingBackward", e.grad_fn)
    e:backward(H.f64 { { { 1, 2 }, { 3, 4 } }, { { 5, 6 }, { 7, 8 } } })
    H.assert_close(wt.grad, { { 0, 0 }, { 13, 16 }, { 0, 0 }, { 3, 4 } })
  end)

  it("gradcheck with repeats and a non-contiguous weight", function()
    mm.gradcheck(function(a) return mm.embedding(a, H.long { { 1, 3, 3 }, { 2, 1, 3 } }) end,
      { H.leaf(3, 4) })
    mm.gradcheck(function(a) return mm.embedding(a, H.long { 5, 5, 1 }) end, { H.tleaf(5, 3) })
    mm.gradcheck(function(a) return mm.embedding(a, H.long { 1, 1 }) end, { H.leaf(1, 1) })
  end)

  it("gives the same results with 1 and 2 threads on a large batch", function()
    local V, D, N = 50, 64, 4096
    mm.manual_seed(7)
    local idx = mm.randint(1, V + 1, 8, N // 8)
    local weight = mm.randn(V, D, { requires_grad = true })
    local g = mm.randn(8, N // 8, D)
    local prev = mm.get_num_threads()
    local outs, grads = {}, {}
    for k, nt in ipairs { 1, 2 } do
      mm.set_num_threads(nt)
      weight.grad = nil
      local e = mm.embedding(weight, idx)
      e:backward(g)
      outs[k], grads[k] = e:totable(), weight.grad:totable()
    end
    mm.set_num_threads(prev)
    assert.are.same(outs[1], outs[2])
    assert.are.same(grads[1], grads[2])
    -- forward rows are the weight rows; the gradient of row v sums g where idx == v
    local i1 = idx:_get(1)
    H.assert_close(weight[i1], outs[1][1][1])
    local count = {}
    for k = 1, N do
      local v = idx:_get(k)
      count[v] = (count[v] or 0) + 1
    end
    weight.grad = nil
    mm.embedding(weight, idx):backward(mm.ones(8, N // 8, D))
    for v = 1, V do assert.are.equal(count[v] or 0, weight.grad[v][D]:item()) end
  end)

  it("rejects bad weights and indices", function()
    H.error_with(function() mm.embedding(w, H.long { 1, 4 }) end,
      "embedding", "index 4", "out of range", "3 rows", "1..3")
    H.error_with(function() mm.embedding(w, H.long { 0 }) end, "index 0", "1..3")
    H.error_with(function() mm.embedding(w, H.f64 { 1 }) end, "expected int64 indices, got float64")
    H.error_with(function() mm.embedding(mm.zeros(3), H.long { 1 }) end, "2-D weight", "(3)")
  end)
end)

describe("one_hot", function()
  it("encodes 1-based class labels as int64", function()
    local r = mm.one_hot(H.long { 1, 3, 2 }, 4)
    assert.are.equal("int64", r:dtype())
    assert.is_false(r.requires_grad)
    H.assert_close(r, { { 1, 0, 0, 0 }, { 0, 0, 1, 0 }, { 0, 1, 0, 0 } })
    local i = mm.one_hot(H.long { { 2 }, { 1 } })      -- classes inferred: 2
    assert.are.same({ 2, 1, 2 }, i:shape())
    H.assert_close(i, { { { 0, 1 } }, { { 1, 0 } } })
    assert.are.same({ 3 }, mm.one_hot(mm.tensor(3)):shape())
    assert.are.same({ 0, 5 }, mm.one_hot(mm.zeros(0, { dtype = "int64" }), 5):shape())
    H.assert_close(mm.one_hot(H.long { { 1, 2 }, { 3, 1 } }:t(), 3),
      { { { 1, 0, 0 }, { 0, 0, 1 } }, { { 0, 1, 0 }, { 1, 0, 0 } } })
  end)

  it("rejects bad labels", function()
    H.error_with(function() mm.one_hot(H.long { 1, 4 }, 3) end, "one_hot", "index 4", "3 classes", "1..3")
    H.error_with(function() mm.one_hot(H.long { 0 }) end, "index 0")
    H.error_with(function() mm.one_hot(mm.tensor { 1.0 }, 2) end, "expected int64 indices, got float32")
    H.error_with(function() mm.one_hot(mm.zeros(0, { dtype = "int64" })) end, "pass num_classes")
    H.error_with(function() mm.one_hot(H.long { 1 }, -2) end, "num_classes >= 0")
  end)
end)

describe("index ops on error paths", function()
  it("leak nothing", function()
    local x, w = mm.zeros(64, 64), mm.zeros(100, 16)
    local bad = mm.randint(1, 200, 300)
    bad:_set(300, 101)
    for _ = 1, 3 do pcall(mm.embedding, w, bad) end
    local before = H.live_bytes()
    for _ = 1, 50 do
      pcall(mm.embedding, w, bad)
      pcall(mm.index_select, x:t(), 1, bad)
      pcall(mm.gather, x, 1, bad:reshape(3, 100))
      pcall(mm.scatter_add, x, 2, bad:reshape(3, 100):narrow(2, 1, 64), x:narrow(1, 1, 3))
      pcall(mm.one_hot, bad, 100)
    end
    assert.are.equal(before, H.live_bytes())
  end)
end)

-- Security issue item 5: index values at the ends of int64.
describe("index ops at the ends of int64", function()
  it("one_hot with an index far below the base names the index", function()
    local idx = mm.tensor({math.mininteger}, "int64")
    local ok, err = pcall(mm.one_hot, idx)
    assert.is_false(ok)
    assert.truthy(err:find("one_hot: index " .. math.mininteger .. " is out of range", 1, true), err)
  end)

  it("index_select from a huge broadcast view refuses to materialise it", function()
    local e = mm.ones(1):expand(math.maxinteger)
    local ok, err = pcall(e.index_select, e, 1, mm.tensor({1, 2}, "int64"))
    assert.is_false(ok)
    assert.matches("too many elements to allocate", err)
  end)
end)
