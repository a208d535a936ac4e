-- perf_kernels_spec.lua — the fast paths added for training speed give the
-- same answers as the general code: the float32 Adam/AdamW loop (AVX2 and
-- portable builds agree bit for bit, and match a float64 reference), the
-- fused ReLU backward, the flat path of small same-shape binary ops, a leaf
-- taking over an unshared gradient instead of copying it, and the bindings'
-- quick tensor recognition.
local mm = require "microml"

local function values(t)
  local out = {}
  for k = 1, t:numel() do out[k] = t:_get(k) end
  return out
end

-- x with every element at least 0.1 away from 0, so ReLU's kink is never
-- inside a finite-difference step.
local function away_from_zero(...)
  local x = mm.randn(...):double()
  return (x + x:sign() * 0.1):detach()
end

local function leaf(t) t.requires_grad = true; return t end

describe("float32 Adam/AdamW fast loop", function()
  -- A few steps of the optimizer kernel on deterministic data; returns the
  -- parameter and both moments as exact hex-float strings.
  local SCRIPT = [[
    local mm = require "microml"
    local n, kernel, wd, threads = %d, %q, %.17g, %d
    mm.set_num_threads(threads)
    local i = mm.arange(n):float()
    local p = (i * 0.37):sin()
    local m, v = mm.zeros_like(p), mm.zeros_like(p)
    for step = 1, 3 do
      local g = (i * (0.11 * step)):cos() * 1e-2
      mm[kernel](p, g, m, v, nil, 1e-3, 0.9, 0.999, 1e-8, wd, step)
    end
    local out = {}
    for _, t in ipairs { p, m, v } do
      for k = 1, n do out[#out + 1] = ("%%a"):format(t:_get(k)) end
    end
    io.write(table.concat(out, " "))
  ]]

  local function run(n, kernel, wd, threads, env)
    local code = SCRIPT:format(n, kernel, wd, threads)
    local cmd = ("%s lua5.4 -e %q 2>&1"):format(env or "", code)
    local f = io.popen(cmd)
    local out = f:read("a")
    f:close()
    return out
  end

  it("gives the same bits with the AVX2 and the portable build, and on 1 or 2 threads", function()
    -- Lengths with 8-wide tails, and one spanning several parallel blocks.
    for _, n in ipairs { 1, 13, 1000, 40003 } do
      for _, case in ipairs { { "_adamw_step", 1e-2 }, { "_adam_step", 1e-2 }, { "_adamw_step", 0 } } do
        local auto = run(n, case[1], case[2], 2)
        assert.is_truthy(auto:match("^%-?0x"), "worker failed: " .. auto:sub(1, 300))
        local portable = run(n, case[1], case[2], 1, "MICROML_KERNEL=portable")
        assert.are.equal(auto, portable, ("%s n=%d wd=%g"):format(case[1], n, case[2]))
      end
    end
  end)

  it("follows the float64 update within float32 rounding", function()
    for _, kernel in ipairs { "_adamw_step", "_adam_step" } do
      local n = 257
      local i = mm.arange(n):double()
      local p64 = (i * 0.37):sin()
      local p32 = p64:float()
      local m64, v64, m32, v32 = mm.zeros_like(p64), mm.zeros_like(p64), mm.zeros_like(p32), mm.zeros_like(p32)
      for step = 1, 5 do
        local g = (i * (0.11 * step)):cos() * 1e-2
        mm[kernel](p64, g, m64, v64, nil, 1e-2, 0.9, 0.999, 1e-8, 0.1, step)
        mm[kernel](p32, g:float(), m32, v32, nil, 1e-2, 0.9, 0.999, 1e-8, 0.1, step)
      end
      local a, b = values(p64), values(p32)
      for k = 1, n do
        assert.is_true(math.abs(a[k] - b[k]) <= 1e-6 * (1 + math.abs(a[k])),
                       ("%s element %d: float64 %.9g, float32 %.9g"):format(kernel, k, a[k], b[k]))
      end
    end
  end)

  it("computes one AdamW step in closed form", function()
    -- Step 1 with m = v = 0: m = 0.1 g, v = 0.001 g^2, m_hat = g, v_hat = g^2,
    -- so p = p (1 - lr wd) - lr * g / (|g| + eps).
    local p = mm.tensor({ 1.0, -2.0, 0.5 })
    local g = mm.tensor({ 0.25, -4.0, 0.0 })
    local m, v = mm.zeros_like(p), mm.zeros_like(p)
    mm._adamw_step(p, g, m, v, nil, 0.1, 0.9, 0.999, 1e-8, 0.01, 1)
    local want = { 1.0 * 0.999 - 0.1 * 0.25 / (0.25 + 1e-8), -2.0 * 0.999 + 0.1 * 4 / (4 + 1e-8), 0.5 * 0.999 }
    local got = values(p)
    for k = 1, 3 do assert.is_true(math.abs(got[k] - want[k]) < 1e-6, ("element %d: %.9g vs %.9g"):format(k, got[k], want[k])) end
    assert.are.same({ 0.025, -0.4, 0 }, (function()
      local r = values(m)
      for k = 1, 3 do r[k] = math.floor(r[k] * 1e6 + 0.5) / 1e6 end
      return r
    end)())
  end)

  it("still refuses mismatched state buffers", function()
    local p, g = mm.zeros(4), mm.zeros(4)
    local ok, err = pcall(mm._adamw_step, p, g, mm.zeros(3), mm.zeros(4), nil, 1e-3, 0.9, 0.999, 1e-8, 0, 1)
    assert.is_false(ok)
    assert.is_truthy(tostring(err):find("exp_avg", 1, true), tostring(err))
    assert.is_truthy(tostring(err):find("(3)", 1, true), tostring(err))
  end)
end)

describe("ReLU forward and fused backward", function()
  it("has the expected values, NaN included", function()
    local y = mm.relu(mm.tensor({ -2.0, -0.0, 0.0, 3.5, 0 / 0, -1 / 0, 1 / 0 }))
    local v = values(y)
    assert.are.equal(0, v[1]); assert.are.equal(0, v[2]); assert.are.equal(0, v[3])
    assert.are.equal(3.5, v[4])
    assert.is_true(v[5] ~= v[5], "relu(NaN) must stay NaN")
    assert.are.equal(0, v[6], "relu(-inf) is 0, as in PyTorch")
    assert.are.equal(math.huge, v[7])
    assert.are.equal("0x0p+0", ("%a"):format(v[1]), "relu(-2) is +0, not -0")
  end)

  it("passes the gradient exactly where x > 0 and exactly 0 elsewhere, even a NaN one", function()
    local x = leaf(mm.tensor({ -1.0, 2.0, -3.0, 4.0 }, { dtype = "float64" }))
    mm.relu(x):backward(mm.tensor({ 10.0, 20.0, 0 / 0, 40.0 }, { dtype = "float64" }))
    local g = values(x.grad)
    assert.are.equal(0, g[1]); assert.are.equal(20, g[2]); assert.are.equal(40, g[4])
    assert.are.equal(0, g[3], "as torch's threshold_backward: 0 where x <= 0, whatever g is")
  end)

  it("gradchecks over shapes, size-1 dims, transposed and narrowed views, and broadcasting", function()
    mm.manual_seed(7)
    for _, shape in ipairs { { 5 }, { 3, 4 }, { 1, 6 }, { 2, 1, 3 } } do
      assert.is_true(mm.gradcheck(mm.relu, { leaf(away_from_zero(table.unpack(shape))) }))
    end
    -- non-contiguous input: a transposed view and a narrowed one
    local base = leaf(away_from_zero(4, 3))
    assert.is_true(mm.gradcheck(function(a) return mm.relu(a:t()) * 1.5 end, { base }))
    assert.is_true(mm.gradcheck(function(a) return mm.relu(a:narrow(2, 2, 2)) end, { base }))
    -- the gradient arriving broadcast: relu of a row expanded over a batch
    local row = leaf(away_from_zero(1, 5))
    assert.is_true(mm.gradcheck(function(r) return mm.relu(r:expand(3, 5)) * mm.arange(15):double():view(3, 5) end, { row }))
    -- float32 goes through the same fused kernel
    local x32 = leaf(mm.tensor({ { -1.0, 2.0 }, { 3.0, -4.0 } }))
    mm.relu(x32):sum():backward()
    assert.are.same({ 0, 1, 1, 0 }, values(x32.grad))
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

describe("small same-shape binary ops (flat path)", function()
  it("agree with the strided path and keep recording gradients", function()
    mm.manual_seed(3)
    local a, b = mm.randn(3, 5), mm.rand(3, 5) + 0.5
    local at, bt = a:t():contiguous():t(), b:t():contiguous():t()   -- same values, strided
    assert.is_false(at:is_contiguous())
    for _, op in ipairs { "add", "sub", "mul", "div", "maximum", "minimum" } do
      assert.are.same(values(mm[op](a, b)), values(mm[op](at, bt)), op)
    end
    assert.are.same(values(a:pow(2)), values(at:pow(2)))
    local x, y = leaf(mm.tensor({ 1.0, 2.0 }, { dtype = "float64" })), leaf(mm.tensor({ 3.0, 5.0 }, { dtype = "float64" }))
    assert.is_true(mm.gradcheck(function(p, q) return p * q + p / q end, { x, y }))
  end)
end)

describe("leaf gradients", function()
  it("never alias a tensor the caller holds", function()
    local x = leaf(mm.tensor({ 1.0, 2.0 }))
    local g = mm.tensor({ 5.0, 7.0 })
    local y = x + 0
    y:backward(g)
    g:fill_(0)
    assert.are.same({ 5, 7 }, values(x.grad))
  end)

  it("stay separate when one gradient flows to two leaves", function()
    local x, y = leaf(mm.tensor({ 1.0, 2.0 })), leaf(mm.tensor({ 3.0, 4.0 }))
    local z = (x + y) * 2
    z:sum():backward()
    x.grad:add_(1)
    assert.are.same({ 3, 3 }, values(x.grad))
    assert.are.same({ 2, 2 }, values(y.grad))
  end)

  it("accumulate over backward calls after taking over the first", function()
    local w = leaf(mm.tensor({ { 1.0, 2.0 }, { 3.0, 4.0 } }))
    local x = mm.tensor({ { 1.0, 1.0 } })
    mm.linear(x, w, nil):sum():backward()
    local first = w.grad
    mm.linear(x, w, nil):sum():backward()
    assert.are.same({ 2, 2, 2, 2 }, values(w.grad))
    assert.are.same({ 2, 2, 2, 2 }, values(first))   -- the same tensor, added in place
  end)
end)

describe("tensor recognition in the bindings", function()
  it("rejects other userdata with a message naming Tensor", function()
    for _, fn in ipairs {
      function() return mm.zeros(2) + io.stdout end,
      function() return io.stdout * mm.zeros(2) end,
      function() return mm.relu(io.stdout) end,
      function() return mm.exp({}) end,
    } do
      assert.has_error(fn)
      local _, err = pcall(fn)
      assert.is_truthy(tostring(err):find("Tensor", 1, true), tostring(err))
    end
    assert.is_false(mm.is_tensor(io.stdout))
    assert.is_true(mm.is_tensor(mm.zeros(1)))
  end)

  it("still reports a freed tensor", function()
    local t = mm.zeros(2)
    t:free()
    local ok, err = pcall(function() return t + 1 end)
    assert.is_false(ok)
    assert.is_truthy(tostring(err):find("freed", 1, true), tostring(err))
  end)
end)

describe("gzip IDX read in place (inflated into the tensor's tail)", function()
  local function tmpfile(bytes)
    local path = os.tmpname()
    local f = assert(io.open(path, "wb"))
    f:write(bytes)
    f:close()
    return path
  end
  local function gzip(path)
    assert(os.execute(("gzip -c -n '%s' > '%s.gz'"):format(path, path)))
    return path .. ".gz"
  end
  -- IDX: two zero bytes, the type code, ndim, big-endian sizes, then data.
  local function idx(code, fmt, shape, vals)
    local parts = { string.pack(">I2BB", 0, code, #shape) }
    for _, s in ipairs(shape) do parts[#parts + 1] = string.pack(">I4", s) end
    for _, v in ipairs(vals) do parts[#parts + 1] = string.pack(fmt, v) end
    return table.concat(parts)
  end

  it("gives every value of a byte image file, in every widening dtype", function()
    local vals = {}
    for i = 1, 3 * 257 do vals[i] = (i * 37) % 256 end
    local plain = tmpfile(idx(0x08, "B", { 3, 257 }, vals))
    local gz = gzip(plain)
    for _, dt in ipairs { "float32", "float64", "int64" } do
      local t = mm.read_idx(gz, { dtype = dt })
      assert.are.same({ 3, 257 }, t:shape())
      assert.are.equal(dt, t:dtype())
      assert.are.same(vals, values(t))
    end
    os.remove(plain); os.remove(gz)
  end)

  it("converts big-endian 16-bit integers in place too", function()
    local vals = {}
    for i = 1, 1000 do vals[i] = (i * 7919) % 65536 - 32768 end
    local plain = tmpfile(idx(0x0B, ">i2", { 1000 }, vals))
    local gz = gzip(plain)
    assert.are.same(vals, values(mm.read_idx(gz, { dtype = "float64" })))
    assert.are.same(values(mm.read_idx(plain, { dtype = "int64" })), values(mm.read_idx(gz, { dtype = "int64" })))
    os.remove(plain); os.remove(gz)
  end)

  it("still reports truncated and over-long gzip data", function()
    local vals = {}
    for i = 1, 4000 do vals[i] = i % 251 end
    local good = idx(0x08, "B", { 4000 }, vals)
    local short = gzip(tmpfile(good:sub(1, #good - 10)))
    local ok, err = pcall(mm.read_idx, short)
    assert.is_false(ok)
    assert.is_truthy(tostring(err):find("truncated", 1, true), tostring(err))
    local long = gzip(tmpfile(good .. "xyz"))
    ok, err = pcall(mm.read_idx, long)
    assert.is_false(ok)
    assert.is_truthy(tostring(err):find("trailing data", 1, true), tostring(err))
  end)
end)
