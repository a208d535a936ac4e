-- conv2d, max_pool2d and avg_pool2d: forward values by hand and against a
-- naive convolution computed here in Lua, the image grouping of the im2col
-- path, float64 gradient checks, thread-count independence and the errors.
local H = require "helpers"
local mm = H.mm

local function pair(v) if type(v) == "table" then return v[1], v[2] end return v, v end

-- Naive cross-correlation on nested tables: x[n][c][h][w], w[o][c][i][j].
local function naive_conv(x, w, b, stride, padding)
  local sh, sw = pair(stride or 1)
  local ph, pw = pair(padding or 0)
  local N, C, Hh, W = #x, #x[1], #x[1][1], #x[1][1][1]
  local O, kh, kw = #w, #w[1][1], #w[1][1][1]
  local Ho, Wo = (Hh + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
  local out = {}
  for n = 1, N do
    out[n] = {}
    for o = 1, O do
      out[n][o] = {}
      for oy = 1, Ho do
        out[n][o][oy] = {}
        for ox = 1, Wo do
          local s = b and b[o] or 0
          for c = 1, C do
            for i = 1, kh do
              for j = 1, kw do
                local iy, ix = (oy - 1) * sh - ph + i, (ox - 1) * sw - pw + j
                if iy >= 1 and iy <= Hh and ix >= 1 and ix <= W then
                  s = s + x[n][c][iy][ix] * w[o][c][i][j]
                end
              end
            end
          end
          out[n][o][oy][ox] = s
        end
      end
    end
  end
  return out
end

describe("conv2d forward", function()
  before_each(function() mm.manual_seed(21) end)

  -- the image 0..15 in a 4x4 grid
  local img = mm.arange(0, 16, 1, { dtype = "float64" }):reshape(1, 1, 4, 4)

  it("convolves a known image with a 3x3 kernel by hand", function()
    local ones = mm.ones(1, 1, 3, 3, { dtype = "float64" })
    local y = mm.conv2d(img, ones)
    assert.are.same({ 1, 1, 2, 2 }, y:shape())
    H.assert_close(y, { 45, 54, 81, 90 }, 0)
    -- horizontal gradient kernel: right column minus left column, 3 rows -> 3 * 2 = 6
    local sobel = mm.tensor({ { { { -1, 0, 1 }, { -2, 0, 2 }, { -1, 0, 1 } } } }, { dtype = "float64" })
    H.assert_close(mm.conv2d(img, sobel), { 8, 8, 8, 8 }, 0)
    -- padding 1 keeps the size; the corner sees 0+1+4+5 = 10
    local p = mm.conv2d(img, ones, nil, 1, 1)
    assert.are.same({ 1, 1, 4, 4 }, p:shape())
    H.assert_close(p, { 10, 18, 24, 18, 27, 45, 54, 39, 51, 81, 90, 63, 42, 66, 72, 50 }, 0)
    -- stride 2 with padding 1, and a bias
    local s = mm.conv2d(img, ones, mm.tensor({ 0.5 }, { dtype = "float64" }), 2, 1)
    H.assert_close(s, { 10.5, 24.5, 51.5, 90.5 }, 0)
    -- a 1x1 kernel over two output channels scales the image
    local w11 = mm.tensor({ { { { 2 } } }, { { { -1 } } } }, { dtype = "float64" })
    local y11 = mm.conv2d(img, w11)
    assert.are.same({ 1, 2, 4, 4 }, y11:shape())
    H.assert_close(y11[1][1], (img * 2):reshape(4, 4):totable(), 0)
    H.assert_close(y11[1][2], (img * -1):reshape(4, 4):totable(), 0)
  end)

  it("matches a naive convolution for odd shapes, strides and paddings", function()
    local cases = {
      { { 2, 3, 7, 5 }, { 4, 3, 3, 2 }, { 2, 1 }, { 1, 0 } },
      { { 1, 1, 5, 5 }, { 1, 1, 5, 5 }, 1, 0 },          -- kernel = input
      { { 3, 2, 6, 6 }, { 5, 2, 1, 1 }, 2, 0 },
      { { 1, 2, 3, 4 }, { 2, 2, 3, 3 }, 1, { 1, 2 } },
      { { 2, 4, 9, 8 }, { 3, 4, 3, 3 }, 3, 1 },
    }
    for _, dt in ipairs({ "float32", "float64" }) do
      for _, c in ipairs(cases) do
        local x = mm.randn(c[1], { dtype = dt })
        local w = mm.randn(c[2], { dtype = dt })
        local b = mm.randn({ c[2][1] }, { dtype = dt })
        local y = mm.conv2d(x, w, b, c[3], c[4])
        H.assert_close(y, naive_conv(x:totable(), w:totable(), b:totable(), c[3], c[4]),
                       dt == "float32" and 1e-5 or 1e-12)
      end
    end
  end)

  it("reads non-contiguous inputs, weights and biases", function()
    local x = H.randn64({ 2, 5, 6, 3 }):permute(1, 4, 2, 3)  -- [2, 3, 5, 6] from NHWC
    local w = H.randn64({ 4, 3, 2, 3 }):transpose(3, 4)      -- [4, 3, 3, 2]
    local b = H.randn64({ 4, 2 }):select(2, 2)
    assert.is_false(x:is_contiguous())
    assert.is_false(w:is_contiguous())
    H.assert_close(mm.conv2d(x, w, b, { 1, 2 }, 1),
                   naive_conv(x:totable(), w:totable(), b:totable(), { 1, 2 }, 1), 1e-12)
  end)

  it("gives each image the same result whether it is batched in groups or alone", function()
    -- 16 channels, 3x3 kernel, 64x64: the im2col buffer holds 3 images, so a
    -- batch of 4 runs as two groups of different sizes.
    local x = H.randn64({ 4, 16, 64, 64 })
    local w = mm.randn({ 4, 16, 3, 3 }, { dtype = "float64", requires_grad = true })
    local xb = x:clone():requires_grad_()
    local y = mm.conv2d(xb, w, nil, 1, 1)
    local g = H.randn64({ 4, 4, 64, 64 })
    y:backward(g)
    local gw_batched = w.grad:clone()
    local gw_sum = mm.zeros(4, 16, 3, 3, { dtype = "float64" })
    for n = 1, 4 do
      w.grad = nil
      local xn = x:narrow(1, n, 1):clone():requires_grad_()
      local yn = mm.conv2d(xn, w, nil, 1, 1)
      H.assert_close(yn, H.flatten(y:narrow(1, n, 1):totable()), 1e-12)
      yn:backward(g:narrow(1, n, 1))
      H.assert_close(xn.grad, H.flatten(xb.grad:narrow(1, n, 1):totable()), 1e-12)
      gw_sum = gw_sum + w.grad
    end
    H.assert_close(gw_batched, H.flatten(gw_sum:totable()), 1e-10)
  end)

  it("gives the same bits on 1 and 2 threads, forward and backward", function()
    local n0 = mm.get_num_threads()
    local x, w, b = mm.randn(8, 3, 20, 20), mm.randn(6, 3, 3, 3), mm.randn(6)
    local g = mm.randn(8, 6, 10, 10)
    local function run()
      local xl, wl, bl = x:clone():requires_grad_(), w:clone():requires_grad_(),
                         b:clone():requires_grad_()
      local y = mm.conv2d(xl, wl, bl, 2, 1)
      y:backward(g)
      local p = mm.max_pool2d(y, 2)
      local q = mm.avg_pool2d(y, 3, 1, 1)
      return y, xl.grad, wl.grad, bl.grad, p, q
    end
    mm.set_num_threads(1)
    local r1 = { run() }
    mm.set_num_threads(2)
    local r2 = { run() }
    mm.set_num_threads(n0)
    for i = 1, #r1 do H.assert_identical(r1[i], r2[i]) end
  end)

  it("handles empty batches and channels", function()
    local y = mm.conv2d(mm.zeros(0, 2, 5, 5), mm.ones(3, 2, 3, 3))
    assert.are.same({ 0, 3, 3, 3 }, y:shape())
    local z = mm.conv2d(mm.zeros(1, 0, 4, 4), mm.ones(2, 0, 3, 3), mm.tensor({ 1.5, -1 }))
    H.assert_close(z, { 1.5, 1.5, 1.5, 1.5, -1, -1, -1, -1 }, 0)
  end)
end)

describe("conv2d backward", function()
  before_each(function() mm.manual_seed(22) end)

  it("gives hand-computed gradients for a 2x2 kernel", function()
    local x = mm.arange(0, 9, 1, { dtype = "float64" }):reshape(1, 1, 3, 3):requires_grad_()
    local w = mm.ones({ 1, 1, 2, 2 }, { dtype = "float64", requires_grad = true })
    local b = mm.zeros({ 1 }, { dtype = "float64", requires_grad = true })
    local y = mm.conv2d(x, w, b)
    assert.are.equal("Conv2dBackward", y.grad_fn)
    y:backward(mm.ones(1, 1, 2, 2, { dtype = "float64" }))
    -- each input cell counted once per window that covers it
    H.assert_close(x.grad, { 1, 2, 1, 2, 4, 2, 1, 2, 1 }, 0)
    -- dW[i][j] = sum of the 2x2 block of x starting at (i, j)
    H.assert_close(w.grad, { 0 + 1 + 3 + 4, 1 + 2 + 4 + 5, 3 + 4 + 6 + 7, 4 + 5 + 7 + 8 }, 0)
    H.assert_close(b.grad, { 4 }, 0)
  end)

  it("passes gradcheck over shapes, strides, paddings and size-1 dims", function()
    local cases = {
      { { 2, 2, 5, 4 }, { 3, 2, 3, 2 }, 1, 0 },
      { { 1, 2, 5, 5 }, { 2, 2, 3, 3 }, { 2, 1 }, { 1, 2 } },
      { { 2, 1, 4, 4 }, { 1, 1, 1, 1 }, 1, 0 },
      { { 1, 1, 3, 3 }, { 1, 1, 3, 3 }, 1, 0 },             -- kernel = input
      { { 1, 3, 2, 2 }, { 2, 3, 3, 3 }, 2, 1 },             -- kernel = padded input - 1
      { { 2, 2, 6, 5 }, { 2, 2, 2, 3 }, 3, 1 },
    }
    for i, c in ipairs(cases) do
      local x, w, b = H.leaf(c[1]), H.leaf(c[2]), H.leaf({ c[2][1] })
      local fn = function(p, q, r) return mm.conv2d(p, q, r, c[3], c[4]) end
      assert.is_true(mm.gradcheck(fn, { x, w, b }))
      if i <= 2 then   -- without a bias
        local nb = function(p, q) return mm.conv2d(p, q, nil, c[3], c[4]) end
        assert.is_true(mm.gradcheck(nb, { H.leaf(c[1]), H.leaf(c[2]) }))
      end
    end
  end)

  it("passes gradcheck on non-contiguous inputs and gradient", function()
    local x = H.randn64({ 2, 4, 5, 3 }):permute(1, 4, 2, 3):requires_grad_()   -- [2, 3, 4, 5]
    local w = H.randn64({ 2, 3, 3, 2 }):transpose(3, 4):requires_grad_()       -- [2, 3, 2, 3]
    assert.is_false(x:is_contiguous())
    assert.is_true(mm.gradcheck(function(p, q) return mm.conv2d(p, q, nil, 1, 1) end, { x, w }))
    -- the output permuted afterwards: a non-contiguous incoming gradient
    local x2, w2, b2 = H.leaf({ 1, 2, 4, 4 }), H.leaf({ 3, 2, 2, 2 }), H.leaf({ 3 })
    assert.is_true(mm.gradcheck(function(p, q, r) return mm.conv2d(p, q, r):permute(4, 3, 1, 2) end,
                                { x2, w2, b2 }))
  end)
end)

describe("pooling", function()
  before_each(function() mm.manual_seed(23) end)
  local img = mm.arange(0, 16, 1, { dtype = "float64" }):reshape(1, 1, 4, 4)

  it("max_pool2d picks window maxima by hand", function()
    H.assert_close(mm.max_pool2d(img, 2), { 5, 7, 13, 15 }, 0)
    local s1 = mm.max_pool2d(img, 2, 1)
    assert.are.same({ 1, 1, 3, 3 }, s1:shape())
    H.assert_close(s1, { 5, 6, 7, 9, 10, 11, 13, 14, 15 }, 0)
    -- padding never wins, even against negative values
    local neg = -img
    H.assert_close(mm.max_pool2d(neg, 3, 2, 1), { 0, -1, -4, -5 }, 0)
    H.assert_close(mm.max_pool2d(img, { 1, 4 }), { 3, 7, 11, 15 }, 0)
    H.assert_close(mm.max_pool2d(img, { 2, 1 }, { 2, 3 }), { 4, 7, 12, 15 }, 0)
  end)

  it("max_pool2d propagates NaN", function()
    local x = img:clone()
    x:_set(6, 0 / 0)                     -- row 2, column 2
    local y = mm.max_pool2d(x, 2):totable()[1][1]
    assert.is_true(y[1][1] ~= y[1][1])
    assert.are.equal(7, y[1][2])
  end)

  it("max_pool2d routes the gradient to the argmax, first on ties", function()
    local x = img:clone():requires_grad_()
    mm.max_pool2d(x, 2, 1):backward(mm.ones(1, 1, 3, 3, { dtype = "float64" }))
    H.assert_close(x.grad, { 0, 0, 0, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1 }, 0)
    local t = mm.ones({ 1, 1, 2, 2 }, { dtype = "float64", requires_grad = true })
    local y = mm.max_pool2d(t, 2)
    assert.are.equal("MaxPool2dBackward", y.grad_fn)
    y:backward(mm.full({ 1, 1, 1, 1 }, 3, { dtype = "float64" }))
    H.assert_close(t.grad, { 3, 0, 0, 0 }, 0)
  end)

  it("avg_pool2d averages, counting padding as zeros", function()
    H.assert_close(mm.avg_pool2d(img, 2), { 2.5, 4.5, 10.5, 12.5 }, 0)
    local ones = mm.ones(1, 1, 2, 2, { dtype = "float64" })
    H.assert_close(mm.avg_pool2d(ones, 2, 2, 1), { 0.25, 0.25, 0.25, 0.25 }, 0)
    H.assert_close(mm.avg_pool2d(img, 3, 1), { 5, 6, 9, 10 }, 0)
  end)

  it("avg_pool2d spreads the gradient evenly", function()
    local x = img:clone():requires_grad_()
    local y = mm.avg_pool2d(x, 2, 1)
    assert.are.equal("AvgPool2dBackward", y.grad_fn)
    y:backward(mm.ones(1, 1, 3, 3, { dtype = "float64" }))
    H.assert_close(x.grad, { 0.25, 0.5, 0.5, 0.25, 0.5, 1, 1, 0.5, 0.5, 1, 1, 0.5,
                             0.25, 0.5, 0.5, 0.25 }, 1e-15)
  end)

  it("passes gradcheck over kernels, strides, paddings and layouts", function()
    local cases = { { { 2, 3, 4, 4 }, 2, nil, 0 }, { { 1, 2, 5, 6 }, 3, 2, 1 },
                    { { 1, 1, 5, 4 }, { 2, 3 }, 1, { 1, 1 } }, { { 2, 1, 3, 3 }, 3, 1, 0 },
                    { { 1, 2, 1, 1 }, 1, 1, 0 } }
    for _, c in ipairs(cases) do
      for _, f in ipairs({ mm.max_pool2d, mm.avg_pool2d }) do
        local fn = function(p) return f(p, c[2], c[3], c[4]) end
        assert.is_true(mm.gradcheck(fn, { H.leaf(c[1]) }))
      end
    end
    local xt = H.randn64({ 2, 5, 4, 3 }):permute(1, 4, 3, 2):requires_grad_()  -- [2, 3, 4, 5]
    assert.is_true(mm.gradcheck(function(p) return mm.max_pool2d(p, 2, 1):transpose(3, 4) end, { xt }))
    assert.is_true(mm.gradcheck(function(p) return mm.avg_pool2d(p, 2, 1):transpose(3, 4) end, { xt }))
  end)

  it("keeps float32 in float32", function()
    local x = mm.randn(2, 3, 6, 6)
    assert.are.equal("float32", mm.max_pool2d(x, 2):dtype())
    assert.are.equal("float32", mm.avg_pool2d(x, 2):dtype())
    H.assert_close(mm.max_pool2d(x, 2), H.flatten(mm.max_pool2d(x:double(), 2):totable()), 0)
  end)
end)

describe("conv and pooling errors", function()
  it("conv2d names the channel mismatch with both shapes", function()
    local e = H.error_with(function() mm.conv2d(mm.ones(2, 3, 5, 5), mm.ones(8, 4, 3, 3)) end)
    assert.truthy(e:find("3 channels", 1, true) and e:find("expects 4", 1, true), e)
    assert.truthy(e:find("(2, 3, 5, 5)", 1, true) and e:find("(8, 4, 3, 3)", 1, true), e)
  end)

  it("conv2d refuses a kernel larger than the padded input", function()
    local e = H.error_with(function() mm.conv2d(mm.ones(1, 1, 2, 2), mm.ones(1, 1, 3, 3)) end)
    assert.truthy(e:find("kernel 3x3 is larger than the padded input 2x2", 1, true), e)
    -- padding 1 makes it fit
    assert.are.same({ 1, 1, 2, 2 }, mm.conv2d(mm.ones(1, 1, 2, 2), mm.ones(1, 1, 3, 3), nil, 1, 1):shape())
  end)

  it("conv2d refuses non-4-D tensors, bad biases, int64, bad strides and paddings", function()
    local e = H.error_with(function() mm.conv2d(mm.ones(3, 5, 5), mm.ones(2, 3, 3, 3)) end)
    assert.truthy(e:find("4-D input", 1, true) and e:find("(3, 5, 5)", 1, true), e)
    e = H.error_with(function() mm.conv2d(mm.ones(1, 3, 5, 5), mm.ones(2, 3, 3)) end)
    assert.truthy(e:find("4-D weight", 1, true) and e:find("(2, 3, 3)", 1, true), e)
    e = H.error_with(function() mm.conv2d(mm.ones(1, 3, 5, 5), mm.ones(2, 3, 3, 3), mm.ones(3)) end)
    assert.truthy(e:find("bias of shape (2)", 1, true) and e:find("got (3)", 1, true), e)
    e = H.error_with(function() mm.conv2d(mm.ones(1, 1, 5, 5):long(), mm.ones(2, 1, 3, 3)) end)
    assert.truthy(e:find("int64", 1, true), e)
    e = H.error_with(function() mm.conv2d(mm.ones(1, 1, 5, 5), mm.ones(2, 1, 3, 3), nil, 0) end)
    assert.truthy(e:find("strides >= 1", 1, true) and e:find("(0, 0)", 1, true), e)
    e = H.error_with(function() mm.conv2d(mm.ones(1, 1, 5, 5), mm.ones(2, 1, 3, 3), nil, 1, { 0, -1 }) end)
    assert.truthy(e:find("paddings >= 0", 1, true) and e:find("(0, -1)", 1, true), e)
    e = H.error_with(function() mm.conv2d(mm.ones(1, 1, 5, 5), mm.ones(2, 1, 3, 3), nil, "x") end)
    assert.truthy(e:find("stride", 1, true) and e:find("{h, w}", 1, true), e)
    e = H.error_with(function() mm.conv2d(mm.ones(1, 1, 5, 5), mm.ones(2, 1, 3, 3), nil, { 1, 1.5 }) end)
    assert.truthy(e:find("entry 2", 1, true), e)
  end)

  it("pooling checks its input, kernel and padding", function()
    local e = H.error_with(function() mm.max_pool2d(mm.ones(4, 4), 2) end)
    assert.truthy(e:find("max_pool2d", 1, true) and e:find("4-D input", 1, true)
                  and e:find("(4, 4)", 1, true), e)
    e = H.error_with(function() mm.avg_pool2d(mm.ones(1, 1, 2, 2), 3) end)
    assert.truthy(e:find("avg_pool2d", 1, true) and e:find("larger than the padded input", 1, true), e)
    e = H.error_with(function() mm.max_pool2d(mm.ones(1, 1, 6, 6), 2, 2, 2) end)
    assert.truthy(e:find("at most half the kernel", 1, true), e)
    e = H.error_with(function() mm.max_pool2d(mm.ones(1, 1, 6, 6), 0) end)
    assert.truthy(e:find("at least 1x1", 1, true), e)
    e = H.error_with(function() mm.max_pool2d(mm.ones(1, 1, 6, 6)) end)
    assert.truthy(e:find("kernel", 1, true), e)
    e = H.error_with(function() mm.avg_pool2d(mm.ones(1, 1, 6, 6):long(), 2) end)
    assert.truthy(e:find("int64", 1, true), e)
  end)
end)

-- Security issue item 5: paddings are user integers; the padded size, the
-- output plane and the im2col columns must be computed without overflow.
describe("conv2d and pooling with huge paddings", function()
  local x, w = mm.ones(1, 1, 1, 1), mm.ones(1, 1, 1, 1)

  it("refuses a padding whose padded size overflows", function()
    local ok, err = pcall(mm.conv2d, x, w, nil, 1, math.maxinteger)
    assert.is_false(ok)
    assert.matches("conv2d: padding %(" .. math.maxinteger .. ", " .. math.maxinteger .. "%) is too large", err)
  end)

  it("refuses a padding whose output does not fit", function()
    local ok, err = pcall(mm.conv2d, x, w, nil, 1, {2^61|0, 2^61|0})
    assert.is_false(ok)
    assert.matches("conv2d: output shape %(1, 1, 4611686018427387905, 4611686018427387905%) is too large", err)
    ok, err = pcall(mm.conv2d, x, w, nil, 1, math.maxinteger // 2)
    assert.is_false(ok)
    assert.matches("is too large", err)
  end)
end)
