-- Fused NN ops: softmax, log_softmax, cross_entropy, nll_loss, mse_loss,
-- binary_cross_entropy_with_logits, layer_norm, dropout — forward values
-- against closed forms computed here in Lua, float64 gradient checks,
-- numerical stability, thread-count independence (also of the row split of
-- cross_entropy in a training step), and errors on bad input.
local mm = require "microml"
local H = require "helpers"

-- Row-wise log-sum-exp of a Lua matrix.
local function lse(row)
  local m = -math.huge
  for _, v in ipairs(row) do m = math.max(m, v) end
  local s = 0
  for _, v in ipairs(row) do s = s + math.exp(v - m) end
  return m + math.log(s)
end

describe("softmax and log_softmax", function()
  before_each(function() mm.manual_seed(21) end)

  it("match the closed form on {1, 2, 3}", function()
    local z = math.exp(1) + math.exp(2) + math.exp(3)
    local x = mm.tensor({ 1, 2, 3 }, { dtype = "float64" })
    H.assert_close(mm.softmax(x, 1), { math.exp(1) / z, math.exp(2) / z, math.exp(3) / z }, 1e-14)
    H.assert_close(mm.log_softmax(x, 1), { 1 - math.log(z), 2 - math.log(z), 3 - math.log(z) }, 1e-14)
    H.assert_close(x:softmax(-1), { 0.09003057317038046, 0.24472847105479764, 0.6652409557748219 }, 1e-14)
    H.assert_close(mm.softmax(x:float(), 1), { 0.0900306, 0.2447285, 0.6652410 }, 1e-6)
  end)

  it("normalise along the given dim, on strided inputs too", function()
    local x = mm.randn({ 3, 5 })
    local s1, s2 = mm.softmax(x, 1), mm.softmax(x, 2)
    H.assert_close(s1:sum(1), { 1, 1, 1, 1, 1 }, 1e-6)
    H.assert_close(s2:sum(2), { 1, 1, 1 }, 1e-6)
    local xt = x:t()
    H.assert_close(mm.softmax(xt, 2), mm.softmax(xt:contiguous(), 2):totable(), 1e-7)
    H.assert_close(mm.softmax(xt, 1), s2:t():totable(), 1e-7)
    local y = mm.randn({ 2, 3, 4 })
    H.assert_close(mm.log_softmax(y, 2):exp():sum(2), { { 1, 1, 1, 1 }, { 1, 1, 1, 1 } }, 1e-6)
  end)

  it("are stable for large logits", function()
    local x = mm.tensor({ 1000, 1001, 1002 }, { dtype = "float32" })
    H.assert_close(mm.softmax(x, 1), mm.softmax(mm.tensor({ 0.0, 1, 2 }), 1):totable(), 1e-6)
    H.assert_close(mm.log_softmax(mm.tensor({ -1000, 0 }, { dtype = "float32" }), 1), { -1000, 0 }, 1e-6)
    H.assert_close(mm.log_softmax(mm.tensor({ 0, 200 }, { dtype = "float32" }), 1), { -200, 0 }, 1e-6)
  end)

  it("propagate NaN to the whole row", function()
    local nan = 0 / 0
    local s = mm.softmax(mm.tensor({ { 1, nan, 2 }, { nan, -math.huge, -math.huge }, { 0, 0, 0 } }), 2)
    local t = s:totable()
    for j = 1, 3 do
      assert.is_true(t[1][j] ~= t[1][j])
      assert.is_true(t[2][j] ~= t[2][j])
    end
    H.assert_close(s:narrow(1, 3, 1), { { 1 / 3, 1 / 3, 1 / 3 } })
    local l = mm.log_softmax(mm.tensor({ nan, 1.0 }), 1):totable()
    assert.is_true(l[1] ~= l[1] and l[2] ~= l[2])
  end)

  it("give zeros / -inf and a zero gradient for an all -inf row (documented)", function()
    local inf = math.huge
    local x = mm.tensor({ { -inf, -inf, -inf }, { 0, -inf, 0 } }, { dtype = "float64" }):requires_grad_()
    local s = mm.softmax(x, 2)
    H.assert_close(s, { { 0, 0, 0 }, { 0.5, 0, 0.5 } })
    local g = mm.tensor({ { 1, 2, 3 }, { 1, 2, 3 } }, { dtype = "float64" })
    s:backward(g)
    -- row 2: y (g - sum(g y)) = {0.5 (1 - 2), 0, 0.5 (3 - 2)}
    H.assert_close(x.grad, { { 0, 0, 0 }, { -0.5, 0, 0.5 } })
    x.grad = nil
    local l = mm.log_softmax(x, 2)
    H.assert_close(l, { { -inf, -inf, -inf }, { -math.log(2), -inf, -math.log(2) } })
    l:backward(g)
    -- row 2: g - exp(y) sum(g) = {1 - 3, 2 - 0, 3 - 3}
    H.assert_close(x.grad, { { 0, 0, 0 }, { -2, 2, 0 } })
  end)

  it("gradcheck over shapes, dims, strided and size-1 inputs", function()
    local cases = {
      { H.leaf({ 5 }), 1 }, { H.leaf({ 3, 4 }), 1 }, { H.leaf({ 3, 4 }), 2 }, { H.leaf({ 3, 4 }), -1 },
      { H.leaf({ 2, 3, 4 }), 2 }, { H.leaf({ 2, 3, 4 }), -3 }, { H.tleaf(3, 4), 2 }, { H.tleaf(3, 4), 1 },
      { H.leaf({ 3, 1 }), 2 }, { H.leaf({ 1, 4 }), 2 }, { H.leaf({ 4, 1, 2 }), 1 },
    }
    for _, c in ipairs(cases) do
      local what = ("dim %d of (%s)"):format(c[2], table.concat(c[1]:shape(), ", "))
      H.check_grad(function(z) return mm.softmax(z, c[2]) end, { c[1] }, "softmax " .. what)
      H.check_grad(function(z) return mm.log_softmax(z, c[2]) end, { c[1] }, "log_softmax " .. what)
    end
  end)

  it("does not depend on the thread count", function()
    local prev = mm.get_num_threads()
    local x = mm.randn(1024, 64)            -- above the threshold for splitting rows
    mm.set_num_threads(1)
    local a, b = mm.softmax(x, 2), mm.log_softmax(x, 1)
    mm.set_num_threads(2)
    local c, d = mm.softmax(x, 2), mm.log_softmax(x, 1)
    mm.set_num_threads(prev)
    -- bitwise: the largest difference is exactly 0
    assert.are.equal(0, (a - c):abs():max():item())
    assert.are.equal(0, (b - d):abs():max():item())
  end)
end)

describe("cross_entropy and nll_loss", function()
  local x, labels, X
  before_each(function()
    mm.manual_seed(31)
    x = mm.randn({ 5, 4 }, { dtype = "float64" })
    labels = mm.tensor({ 1, 4, 2, 2, 3 })
    X = x:totable()
  end)

  -- Per-row losses with label smoothing eps, computed in Lua.
  local function ce_rows(eps)
    local out = {}
    for i, row in ipairs(X) do
      local y, C, l = labels:totable()[i], #row, lse(row)
      local smooth = 0
      for _, v in ipairs(row) do smooth = smooth + (l - v) end
      out[i] = (1 - eps) * (l - row[y]) + eps / C * smooth
    end
    return out
  end

  it("matches the formula for every reduction", function()
    local rows = ce_rows(0)
    local sum = 0
    for _, v in ipairs(rows) do sum = sum + v end
    H.assert_close(mm.cross_entropy(x, labels), { sum / 5 }, 1e-12)
    H.assert_close(mm.cross_entropy(x, labels, { reduction = "sum" }), { sum }, 1e-12)
    H.assert_close(mm.cross_entropy(x, labels, { reduction = "none" }), rows, 1e-12)
    assert.are.same({}, mm.cross_entropy(x, labels):shape())
    local f = mm.cross_entropy(x:float(), labels)
    assert.are.equal("float32", f:dtype())
    H.assert_close(f, { sum / 5 }, 1e-5)
  end)

  it("label smoothing matches the formula", function()
    local rows = ce_rows(0.2)
    local sum = 0
    for _, v in ipairs(rows) do sum = sum + v end
    H.assert_close(mm.cross_entropy(x, labels, { label_smoothing = 0.2 }), { sum / 5 }, 1e-12)
    H.assert_close(mm.cross_entropy(x, labels, { label_smoothing = 0.2, reduction = "none" }), rows, 1e-12)
  end)

  it("ignore_index drops rows and the mean counts only the others", function()
    local rows = ce_rows(0)
    -- label 2 appears in rows 3 and 4
    local kept = rows[1] + rows[2] + rows[5]
    H.assert_close(mm.cross_entropy(x, labels, { ignore_index = 2 }), { kept / 3 }, 1e-12)
    H.assert_close(mm.cross_entropy(x, labels, { ignore_index = 2, reduction = "sum" }), { kept }, 1e-12)
    H.assert_close(mm.cross_entropy(x, labels, { ignore_index = 2, reduction = "none" }),
                   { rows[1], rows[2], 0, 0, rows[5] }, 1e-12)
    -- an ignore_index outside 1..C (like PyTorch's -100) marks padding rows
    local pad = mm.tensor({ 1, -100, 2, 2, -100 })
    local r2 = mm.cross_entropy(x, pad, { ignore_index = -100, reduction = "none" }):totable()
    assert.are.equal(0, r2[2])
    assert.are.equal(0, r2[5])
    -- every row ignored: mean is 0/0 (NaN), sum is 0, gradient is 0
    local xr = x:clone():requires_grad_()
    local all = mm.cross_entropy(xr, mm.tensor({ 7, 7, 7, 7, 7 }), { ignore_index = 7 })
    assert.is_true(all:item() ~= all:item())
    all:backward()
    H.assert_close(xr.grad:abs():sum(), { 0 })
  end)

  it("equals nll_loss(log_softmax(x)) and nll_loss picks -logp[label]", function()
    local ce = mm.cross_entropy(x, labels, { reduction = "none" })
    local nll = mm.nll_loss(mm.log_softmax(x, 2), labels, { reduction = "none" })
    H.assert_close(ce, nll:totable(), 1e-12)
    local logp = mm.tensor({ { -0.5, -1.5 }, { -2.0, -0.25 } }, { dtype = "float64" })
    H.assert_close(mm.nll_loss(logp, mm.tensor({ 2, 1 })), { (1.5 + 2.0) / 2 })
    H.assert_close(mm.nll_loss(logp, mm.tensor({ 2, 1 }), { reduction = "sum" }), { 3.5 })
    H.assert_close(mm.nll_loss(logp, mm.tensor({ 2, 1 }), { ignore_index = 1 }), { 1.5 })
  end)

  it("is stable for huge logits", function()
    local big = mm.tensor({ { 1000, 0 }, { -1000, 1000 } }, { dtype = "float32" })
    H.assert_close(mm.cross_entropy(big, mm.tensor({ 2, 2 }), { reduction = "none" }), { 1000, 0 }, 1e-6)
  end)

  it("gradcheck: reductions, smoothing, ignore_index, strided logits, N = 1, C = 1", function()
    local cases = {
      { {}, H.leaf({ 5, 4 }), labels },
      { { reduction = "sum" }, H.leaf({ 5, 4 }), labels },
      { { reduction = "none" }, H.leaf({ 5, 4 }), labels },
      { { label_smoothing = 0.1 }, H.leaf({ 5, 4 }), labels },
      { { label_smoothing = 0.3, reduction = "none", ignore_index = 4 }, H.leaf({ 5, 4 }), labels },
      { { ignore_index = 2 }, H.leaf({ 5, 4 }), labels },
      { {}, H.tleaf(5, 4), labels },
      { { label_smoothing = 0.1 }, H.tleaf(5, 4), labels },
      { {}, H.leaf({ 1, 3 }), mm.tensor({ 3 }) },
      { {}, H.leaf({ 3, 1 }), mm.tensor({ 1, 1, 1 }) },
    }
    for i, c in ipairs(cases) do
      H.check_grad(function(z) return mm.cross_entropy(z, c[3], c[1]) end, { c[2] }, "cross_entropy case " .. i)
      H.check_grad(function(z) return mm.nll_loss(z, c[3], { reduction = c[1].reduction,
                                                           ignore_index = c[1].ignore_index }) end,
                 { c[2] }, "nll_loss case " .. i)
    end
  end)

  it("backward is (softmax - onehot) / N", function()
    local xr = x:clone():requires_grad_()
    mm.cross_entropy(xr, labels):backward()
    local p = mm.softmax(x, 2):totable()
    local want = {}
    for i = 1, 5 do
      want[i] = {}
      for j = 1, 4 do want[i][j] = (p[i][j] - (labels:totable()[i] == j and 1 or 0)) / 5 end
    end
    H.assert_close(xr.grad, want, 1e-12)
  end)

  it("does not depend on the thread count", function()
    local prev = mm.get_num_threads()
    local big = mm.randn(4096, 32):requires_grad_()
    local lab = mm.randint(1, 33, { 4096 })
    local function run()
      big.grad = nil
      local l = mm.cross_entropy(big, lab, { label_smoothing = 0.1 })
      l:backward()
      return l:item(), big.grad:clone()
    end
    mm.set_num_threads(1)
    local l1, g1 = run()
    mm.set_num_threads(2)
    local l2, g2 = run()
    mm.set_num_threads(prev)
    assert.are.equal(l1, l2)
    assert.are.equal(0, (g1 - g2):abs():max():item())
  end)
end)

describe("cross_entropy rows split over threads", function()
  before_each(function() mm.manual_seed(23) end)

  it("gives the same bits on 1 and 2 threads for a training batch of logits", function()
    local x, y = mm.randn(128, 10), mm.randint(1, 11, { 128 })
    local x64 = mm.randn({ 300, 7 }, { dtype = "float64" })
    local y64 = mm.randint(1, 8, { 300 })
    H.same_bits_1_2(function()
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

describe("mse_loss and binary_cross_entropy_with_logits", function()
  before_each(function() mm.manual_seed(41) end)

  it("mse_loss values for each reduction; a target of another shape is an error", function()
    local a = mm.tensor({ 1, 2, 3 }, { dtype = "float64" })
    local b = mm.tensor({ 1, 1, 1 }, { dtype = "float64" })
    H.assert_close(mm.mse_loss(a, b), { 5 / 3 })
    H.assert_close(mm.mse_loss(a, b, { reduction = "sum" }), { 5 })
    H.assert_close(mm.mse_loss(a, b, { reduction = "none" }), { 0, 1, 4 })
    -- (3) against (1) would broadcast: PyTorch only warns, and (4, 1) against
    -- (4) then gives a (4, 4) loss that looks plausible and is wrong
    H.error_with(function() mm.mse_loss(a, mm.tensor({ 1.0 }, { dtype = "float64" })) end,
                 "mse_loss: expected the target to have the input's shape (3), got (1)")
    H.error_with(function() mm.mse_loss(mm.ones(4, 1), mm.ones(4)) end, "shape (4, 1), got (4)")
    H.error_with(function() mm.binary_cross_entropy_with_logits(mm.ones(4, 1), mm.ones(4)) end,
                 "binary_cross_entropy_with_logits: expected the target to have the input's shape (4, 1), got (4)")
  end)

  it("mse_loss gradcheck, both inputs, contiguous and strided", function()
    for _, red in ipairs({ "mean", "sum", "none" }) do
      H.check_grad(function(p, q) return mm.mse_loss(p, q, { reduction = red }) end,
                 { H.leaf({ 3, 4 }), H.leaf({ 3, 4 }) }, "mse " .. red)
      H.check_grad(function(p, q) return mm.mse_loss(p, q, { reduction = red }) end,
                 { H.tleaf(3, 4), H.leaf({ 3, 4 }) }, "mse strided " .. red)
    end
  end)

  it("bce_with_logits matches log(1 + e^x) - x y and is stable for large |x|", function()
    local xs, ys = { -2, -0.5, 0, 0.7, 3 }, { 0, 1, 0.5, 1, 0.25 }
    local want, sum = {}, 0
    for i = 1, 5 do
      want[i] = math.log(1 + math.exp(xs[i])) - xs[i] * ys[i]
      sum = sum + want[i]
    end
    local x = mm.tensor(xs, { dtype = "float64" })
    local y = mm.tensor(ys, { dtype = "float64" })
    H.assert_close(mm.binary_cross_entropy_with_logits(x, y, { reduction = "none" }), want, 1e-12)
    H.assert_close(mm.binary_cross_entropy_with_logits(x, y), { sum / 5 }, 1e-12)
    H.assert_close(mm.binary_cross_entropy_with_logits(x, y, { reduction = "sum" }), { sum }, 1e-12)
    local big = mm.tensor({ 1000, -1000, 100, -100 }, { dtype = "float32" })
    local l = mm.binary_cross_entropy_with_logits(big, mm.tensor({ 0.0, 1, 1, 0 }), { reduction = "none" })
    H.assert_close(l, { 1000, 1000, 0, 0 }, 1e-6)
    local lbig = big:double():requires_grad_()
    mm.binary_cross_entropy_with_logits(lbig, mm.tensor({ 0.0, 1, 1, 0 }, { dtype = "float64" }),
                                        { reduction = "sum" }):backward()
    H.assert_close(lbig.grad, { 1, -1, 0, 0 }, 1e-12)
  end)

  it("bce_with_logits gradcheck for logits and targets, contiguous and strided", function()
    for _, red in ipairs({ "mean", "sum", "none" }) do
      local t = mm.rand({ 3, 4 }, { dtype = "float64" }):requires_grad_()
      H.check_grad(function(p, q) return mm.binary_cross_entropy_with_logits(p * 3, q, { reduction = red }) end,
                 { H.leaf({ 3, 4 }), t }, "bce " .. red)
      H.check_grad(function(p, q) return mm.binary_cross_entropy_with_logits(p, q, { reduction = red }) end,
                 { H.tleaf(3, 4), mm.rand({ 3, 4 }, { dtype = "float64" }):requires_grad_() }, "bce strided " .. red)
    end
  end)
end)

describe("layer_norm", function()
  before_each(function() mm.manual_seed(51) end)

  it("normalises the trailing dims (biased variance), then scales and shifts", function()
    local x = mm.tensor({ { 1, 2, 3, 4 }, { 2, 2, 2, 2 } }, { dtype = "float64" })
    local r = 1 / math.sqrt(1.25 + 1e-5)
    H.assert_close(mm.layer_norm(x, 4), { { -1.5 * r, -0.5 * r, 0.5 * r, 1.5 * r }, { 0, 0, 0, 0 } }, 1e-12)
    local w = mm.tensor({ 1, 2, 3, 4 }, { dtype = "float64" })
    local b = mm.tensor({ 0, 0, 0, 1 }, { dtype = "float64" })
    H.assert_close(mm.layer_norm(x:narrow(1, 1, 1), { 4 }, w, b, 0),
                   { { -1.5 / math.sqrt(1.25), -1 / math.sqrt(1.25), 1.5 / math.sqrt(1.25), 6 / math.sqrt(1.25) + 1 } },
                   1e-12)
    -- over the last two dims of a 3-D input: each (2, 3) block has mean 0, variance 1
    local y = mm.layer_norm(mm.randn({ 4, 2, 3 }), { 2, 3 }, nil, nil, 0)
    local flat = y:reshape(4, 6)
    H.assert_close(flat:mean(2), { 0, 0, 0, 0 }, 1e-5)
    H.assert_close(flat:var(2, false), { 1, 1, 1, 1 }, 1e-5)
  end)

  it("gradcheck for x, weight and bias (optional), strided x, several shapes", function()
    local w, b = H.leaf({ 5 }), H.leaf({ 5 })
    H.check_grad(function(p, q, r) return mm.layer_norm(p, 5, q, r) end, { H.leaf({ 4, 5 }), w, b }, "x, w, b")
    H.check_grad(function(p) return mm.layer_norm(p, 5) end, { H.leaf({ 4, 5 }) }, "x only")
    H.check_grad(function(p, q) return mm.layer_norm(p, 5, q, nil) end, { H.tleaf(3, 5), w }, "strided, w")
    H.check_grad(function(p, r) return mm.layer_norm(p, { 5 }, nil, r) end, { H.leaf({ 2, 5 }), b }, "b only")
    H.check_grad(function(p, q, r) return mm.layer_norm(p, { 3, 4 }, q, r) end,
               { H.leaf({ 2, 3, 4 }), H.leaf({ 3, 4 }), H.leaf({ 3, 4 }) }, "3-D over two dims")
    H.check_grad(function(p, q, r) return mm.layer_norm(p, 3, q, r) end,
               { H.leaf({ 1, 3 }), H.leaf({ 3 }), H.leaf({ 3 }) }, "one row")
    H.check_grad(function(p, q) return mm.layer_norm(p * 1, 5, q) end,
               { H.leaf({ 70, 5 }), mm.randn({ 5 }, { dtype = "float64" }):requires_grad_() }, "many rows")
  end)
end)

describe("dropout", function()
  it("is the identity when not training or when p = 0", function()
    local x = mm.randn({ 4 })
    local y = mm.dropout(x, 0.5, false)
    y:_set(1, 42)                 -- the same tensor, not a copy
    assert.are.equal(42, x:_get(1))
    local z = mm.dropout(x, 0, true)
    z:_set(2, 7)
    assert.are.equal(7, x:_get(2))
  end)

  it("keeps about 1 - p of the elements, scaled by 1 / (1 - p)", function()
    mm.manual_seed(61)
    local n = 100000
    local y = mm.dropout(mm.ones(n, { dtype = "float64" }), 0.25, true)
    local kept = y:gt(0):sum():item()
    assert.is_true(math.abs(kept / n - 0.75) < 0.01, "kept fraction " .. kept / n)
    H.assert_close(y:max(), { 1 / 0.75 }, 1e-12)
    assert.are.equal(n, y:eq(0):sum():item() + y:eq(1 / 0.75):sum():item())
  end)

  it("is reproducible with manual_seed and differs without it", function()
    mm.manual_seed(5)
    local a = mm.dropout(mm.ones(64), 0.5, true):totable()
    local c = mm.dropout(mm.ones(64), 0.5, true):totable()
    mm.manual_seed(5)
    local b = mm.dropout(mm.ones(64), 0.5, true):totable()
    assert.are.same(a, b)
    assert.are_not.same(a, c)
  end)

  it("p = 1 gives zeros and a zero gradient", function()
    local x = mm.randn({ 3, 2 }):requires_grad_()
    local y = mm.dropout(x, 1, true)
    H.assert_close(y, { { 0, 0 }, { 0, 0 }, { 0, 0 } })
    y:sum():backward()
    H.assert_close(x.grad, { { 0, 0 }, { 0, 0 }, { 0, 0 } })
  end)

  it("backward multiplies by the same mask", function()
    mm.manual_seed(9)
    local x = mm.randn({ 6, 5 }, { dtype = "float64" }):t():requires_grad_()
    local y = mm.dropout(x, 0.4, true)
    y:backward(mm.ones({ 5, 6 }, { dtype = "float64" }))
    -- the gradient is 1/(1-p) where y kept x, 0 where it dropped it
    local ys, gs, xs = y:totable(), x.grad:totable(), x:totable()
    for i = 1, 5 do
      for j = 1, 6 do
        local kept = ys[i][j] ~= 0
        assert.are.equal(kept and 1 / 0.6 or 0, gs[i][j])
        if kept then assert.is_true(math.abs(ys[i][j] - xs[i][j] / 0.6) < 1e-12) end
      end
    end
  end)
end)

describe("fused NN ops: bad input", function()
  local x, y
  before_each(function()
    x = mm.randn({ 4, 3 })
    y = mm.tensor({ 1, 2, 3, 1 })
  end)

  it("cross_entropy / nll_loss labels", function()
    H.error_with(function() return mm.cross_entropy(x, y:float()) end,
                 "cross_entropy: expected int64 labels, got float32")
    H.error_with(function() return mm.cross_entropy(x, mm.tensor({ 1, 2, 4, 1 })) end,
                 "label 4", "1..3", "C = 3")
    H.error_with(function() return mm.cross_entropy(x, mm.tensor({ 0, 2, 3, 1 })) end,
                 "label 0", "row 1", "C = 3")
    H.error_with(function() return mm.nll_loss(x, mm.tensor({ 1, 2, 3, -1 })) end,
                 "nll_loss", "label -1", "C = 3")
    H.error_with(function() return mm.nll_loss(x, y:double()) end, "expected int64 labels, got float64")
  end)

  it("cross_entropy shapes and dtypes", function()
    H.error_with(function() return mm.cross_entropy(mm.randn({ 3 }), mm.tensor({ 1 })) end,
                 "expected 2-D logits", "(3)")
    H.error_with(function() return mm.cross_entropy(mm.randn({ 2, 3, 4 }), y) end, "2-D", "(2, 3, 4)")
    H.error_with(function() return mm.cross_entropy(x, mm.tensor({ 1, 2, 3 })) end,
                 "expected labels of shape (4)", "got shape (3)")
    H.error_with(function() return mm.cross_entropy(x, mm.tensor({ { 1, 2, 3, 1 } })) end,
                 "got shape (1, 4)")
    H.error_with(function() return mm.cross_entropy(x:long(), y) end, "float32 or float64 logits, got int64")
  end)

  it("options", function()
    H.error_with(function() return mm.cross_entropy(x, y, { reduction = "avg" }) end,
                 "expected reduction 'mean', 'sum' or 'none', got 'avg'")
    H.error_with(function() return mm.cross_entropy(x, y, { reductoin = "sum" }) end, "unknown option 'reductoin'")
    H.error_with(function() return mm.cross_entropy(x, y, { label_smoothing = 1 }) end,
                 "label_smoothing in [0, 1), got 1")
    H.error_with(function() return mm.cross_entropy(x, y, { label_smoothing = -0.1 }) end, "got -0.1")
    H.error_with(function() return mm.cross_entropy(x, y, { ignore_index = 1.5 }) end, "ignore_index", "integer")
    H.error_with(function() return mm.nll_loss(x, y, { label_smoothing = 0.1 }) end, "unknown option 'label_smoothing'")
    H.error_with(function() return mm.mse_loss(x, x, { ignore_index = 1 }) end, "unknown option 'ignore_index'")
  end)

  it("softmax dims and dtypes", function()
    H.error_with(function() return mm.softmax(x, 3) end, "dimension out of range", "got 3")
    H.error_with(function() return mm.log_softmax(x, -3) end, "dimension out of range")
    H.error_with(function() return mm.softmax(x) end, "softmax")
    H.error_with(function() return mm.softmax(y, 1) end, "softmax: expected float32 or float64 input, got int64")
  end)

  it("elementwise losses", function()
    H.error_with(function() return mm.mse_loss(y, y) end, "mse_loss", "got int64")
    H.error_with(function() return mm.mse_loss(x, mm.randn({ 5 })) end, "mse_loss", "(4, 3)", "(5)")
    H.error_with(function() return mm.binary_cross_entropy_with_logits(x, y) end,
                 "binary_cross_entropy_with_logits", "got int64")
  end)

  it("layer_norm shapes and dtypes", function()
    H.error_with(function() return mm.layer_norm(x, 4) end, "normalized_shape (4)", "(4, 3)")
    H.error_with(function() return mm.layer_norm(x, { 2, 4, 3 }) end, "does not match")
    H.error_with(function() return mm.layer_norm(x, 3, mm.ones(4)) end, "expected weight of shape (3)", "got (4)")
    H.error_with(function() return mm.layer_norm(x, 3, nil, mm.ones(3, { dtype = "float64" })) end,
                 "expected bias of dtype float32", "got float64")
    H.error_with(function() return mm.layer_norm(y, 4) end, "got int64")
    H.error_with(function() return mm.layer_norm(x, "3") end, "normalized_shape")
  end)

  it("dropout p and training", function()
    H.error_with(function() return mm.dropout(x, 1.5, true) end, "dropout: expected p in [0, 1], got 1.5")
    H.error_with(function() return mm.dropout(x, -0.1) end, "got -0.1")
    H.error_with(function() return mm.dropout(x, 0.5, 1) end, "boolean expected")
    H.error_with(function() return mm.dropout(y, 0.5) end, "dropout", "got int64")
  end)
end)
