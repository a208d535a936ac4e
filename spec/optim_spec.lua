-- optim_spec.lua — optimizers against closed-form trajectories and a plain
-- Lua reference of the torch.optim update rules; parameter groups, state,
-- clip_grad_norm, schedulers, the fused kernels (the float32 Adam/AdamW loop
-- agrees bit for bit between the AVX2 and portable builds and on 1 or 2
-- threads) and their error messages.
local mm = require "microml"
local optim = mm.optim
local H = require "helpers"

local F64 = { dtype = "float64" }

local function param(values, dtype)
  return mm.tensor(values, { dtype = dtype or "float64", requires_grad = true })
end

local function assert_close(expected, got, tol, what)
  tol = tol or 1e-12
  assert.are.equal(#expected, #got, what)
  for i = 1, #expected do
    local e, g = expected[i], got[i]
    if math.abs(e - g) > tol * (1 + math.abs(e)) then
      error(("%s: element %d expected %.17g, got %.17g"):format(what or "values", i, e, g), 2)
    end
  end
end

-- Plain-Lua reference of the update rules (scalar per element), written
-- from the formulas in torch.optim's documentation.
local ref = {}
function ref.sgd(p, grads, o)
  p = { table.unpack(p) }
  local buf = {}
  for step, g in ipairs(grads) do
    for i = 1, #p do
      local d = g[i] + (o.weight_decay or 0) * p[i]
      local m = o.momentum or 0
      if m ~= 0 then
        if step == 1 then buf[i] = d else buf[i] = m * buf[i] + (1 - (o.dampening or 0)) * d end
        d = o.nesterov and d + m * buf[i] or buf[i]
      end
      p[i] = p[i] - o.lr * d
    end
  end
  return p
end
function ref.adam(p, grads, o, decoupled)
  p = { table.unpack(p) }
  local m, v, vmax = {}, {}, {}
  local b1, b2, eps, wd, lr = o.betas[1], o.betas[2], o.eps, o.weight_decay, o.lr
  for i = 1, #p do m[i], v[i], vmax[i] = 0, 0, 0 end
  for t, g in ipairs(grads) do
    for i = 1, #p do
      local gi = g[i]
      if decoupled then p[i] = p[i] * (1 - lr * wd) else gi = gi + wd * p[i] end
      m[i] = b1 * m[i] + (1 - b1) * gi
      v[i] = b2 * v[i] + (1 - b2) * gi * gi
      local vv = v[i]
      if o.amsgrad then vmax[i] = math.max(vmax[i], v[i]); vv = vmax[i] end
      local denom = math.sqrt(vv) / math.sqrt(1 - b2 ^ t) + eps
      p[i] = p[i] - lr / (1 - b1 ^ t) * m[i] / denom
    end
  end
  return p
end

-- Runs opt for #grads steps with the given gradients (set directly).
local function run(p, opt, grads, dtype)
  for _, g in ipairs(grads) do
    p.grad = mm.tensor(g, { dtype = dtype or "float64" }):reshape(p:shape())
    opt:step()
  end
  return H.values(p)
end

local GRADS = { { 0.5, -1.5, 2.0 }, { -0.25, 0.75, 3.0 }, { 1.0, 0.1, -2.0 }, { 0.3, -0.2, 0.05 } }
local P0 = { 1.0, -2.0, 0.5 }

describe("optim.SGD", function()
  it("follows p_k = (1 - lr)^k p_0 on f = p^2/2 with real backward passes", function()
    local p = param({ 3.0, -1.0 })
    local opt = optim.SGD({ p }, { lr = 0.1 })
    for _ = 1, 5 do
      opt:zero_grad()
      local f = p * p * 0.5
      f:backward(mm.ones_like(f))
      opt:step()
    end
    assert_close({ 3 * 0.9 ^ 5, -1 * 0.9 ^ 5 }, H.values(p), 1e-14, "plain SGD")
  end)

  it("matches the geometric series for momentum on a constant gradient", function()
    -- buf_k = g (1 - m^k) / (1 - m), p_k = p_0 - lr g sum_{j<=k} (1 - m^j)/(1 - m)
    local p = param({ 1.0 })
    local m, lr, g = 0.9, 0.1, 2.0
    local opt = optim.SGD(p, { lr = lr, momentum = m })
    local grads = {}
    for k = 1, 6 do grads[k] = { g } end
    local got = run(p, opt, grads)
    local s = 0
    for j = 1, 6 do s = s + (1 - m ^ j) / (1 - m) end
    assert_close({ 1 - lr * g * s }, got, 1e-14, "momentum")
    assert_close({ g * (1 - m ^ 6) / (1 - m) }, H.values(opt.state[p].momentum_buffer), 1e-14, "buffer")
  end)

  it("matches the reference for dampening, weight decay and Nesterov", function()
    for _, o in ipairs {
      { lr = 0.05, momentum = 0.8, dampening = 0.3 },
      { lr = 0.05, momentum = 0.9, nesterov = true },
      { lr = 0.02, momentum = 0.5, weight_decay = 0.1, nesterov = true },
      { lr = 0.1, weight_decay = 0.2 },
    } do
      local p = param(P0)
      local got = run(p, optim.SGD({ p }, o), GRADS)
      assert_close(ref.sgd(P0, GRADS, o), got, 1e-13, "SGD " .. tostring(o.nesterov))
    end
  end)

  it("updates float32 parameters to float32 precision", function()
    local o = { lr = 0.05, momentum = 0.9, nesterov = true, weight_decay = 0.01 }
    local p = param(P0, "float32")
    local got = run(p, optim.SGD({ p }, o), GRADS, "float32")
    assert_close(ref.sgd(P0, GRADS, o), got, 1e-6, "SGD float32")
    assert.are.equal("float32", p:dtype())
  end)
end)

describe("optim.Adam / AdamW", function()
  it("takes steps of lr * g / (|g| + eps) on a constant gradient (bias correction)", function()
    -- With a constant g, m_t = g (1 - b1^t) and v_t = g^2 (1 - b2^t), so the
    -- corrected moments are exactly g and g^2 from the first step on.
    local lr, eps = 0.01, 1e-8
    local p = param({ 0.0, 1.0, -1.0 })
    local g = { 3.0, -0.5, 1e-3 }
    local grads = {}
    for t = 1, 5 do grads[t] = g end
    local got = run(p, optim.Adam({ p }, { lr = lr, eps = eps }), grads)
    local want = {}
    for i, x in ipairs { 0.0, 1.0, -1.0 } do want[i] = x - 5 * lr * g[i] / (math.abs(g[i]) + eps) end
    assert_close(want, got, 1e-12, "Adam constant gradient")
  end)

  it("AdamW decays decoupled: p_t = a^t p_0 - c (1 - a^t)/(1 - a)", function()
    local lr, wd, g = 0.1, 0.05, 0.5
    local a, c = 1 - lr * wd, lr * g / (g + 1e-8)
    local p = param({ 2.0 })
    local grads = {}
    for t = 1, 7 do grads[t] = { g } end
    local got = run(p, optim.AdamW({ p }, { lr = lr, weight_decay = wd }), grads)
    assert_close({ a ^ 7 * 2.0 - c * (1 - a ^ 7) / (1 - a) }, got, 1e-12, "AdamW closed form")
  end)

  it("matches the reference for Adam with L2 decay, AdamW and AMSGrad", function()
    for _, case in ipairs {
      { "Adam", false, { lr = 0.01, betas = { 0.9, 0.999 }, eps = 1e-8, weight_decay = 0, amsgrad = false } },
      { "Adam", false, { lr = 0.02, betas = { 0.8, 0.99 }, eps = 1e-6, weight_decay = 0.1, amsgrad = false } },
      { "AdamW", true, { lr = 0.02, betas = { 0.8, 0.99 }, eps = 1e-6, weight_decay = 0.1, amsgrad = false } },
      { "AdamW", true, { lr = 0.05, betas = { 0.5, 0.9 }, eps = 1e-8, weight_decay = 0.01, amsgrad = true } },
      { "Adam", false, { lr = 0.05, betas = { 0.5, 0.9 }, eps = 1e-8, weight_decay = 0, amsgrad = true } },
    } do
      local name, decoupled, o = case[1], case[2], case[3]
      local p = param(P0)
      local got = run(p, optim[name]({ p }, o), GRADS)
      assert_close(ref.adam(P0, GRADS, o, decoupled), got, 1e-12, name)
    end
  end)

  it("AMSGrad keeps the running maximum of v (and differs once v shrinks)", function()
    local o = { lr = 0.1, betas = { 0.0, 0.5 }, eps = 1e-8, weight_decay = 0, amsgrad = true }
    local grads = { { 10.0 }, { 0.1 }, { 0.1 } }   -- v falls after the first step
    local p = param({ 0.0 })
    local opt = optim.Adam({ p }, o)
    local got = run(p, opt, grads)
    assert_close(ref.adam({ 0.0 }, grads, o, false), got, 1e-12, "amsgrad")
    -- v_1 = 50, v_2 = 25.005, v_3 = 12.5075: the max stays v_1
    assert_close({ 50 }, H.values(opt.state[p].max_exp_avg_sq), 1e-12, "vmax")
    local q = param({ 0.0 })
    o.amsgrad = false
    local plain = run(q, optim.Adam({ q }, o), grads)
    assert.is_true(math.abs(plain[1] - got[1]) > 1e-3)
  end)

  it("updates float32 parameters close to the float64 reference", function()
    local o = { lr = 0.01, betas = { 0.9, 0.999 }, eps = 1e-8, weight_decay = 0.01, amsgrad = true }
    local p = param(P0, "float32")
    local got = run(p, optim.AdamW({ p }, o), GRADS, "float32")
    assert_close(ref.adam(P0, GRADS, o, true), got, 1e-6, "AdamW float32")
  end)

  it("updates a non-contiguous parameter through its view", function()
    local base = mm.tensor({ { 1.0, 2.0, 3.0 }, { 4.0, 5.0, 6.0 } }, F64)
    local p = base:t()                       -- a leaf with transposed strides
    p.requires_grad = true
    assert.is_false(p:is_contiguous())
    local opt = optim.SGD({ p }, { lr = 0.5, momentum = 0.9 })
    for _ = 1, 2 do
      p.grad = mm.tensor({ { 1.0, 0.0 }, { 0.0, 2.0 }, { 4.0, 0.0 } }, F64)
      opt:step()
    end
    -- two momentum steps move by lr * (g + (0.9 g + g)) = 1.45 g
    assert_close({ 1 - 1.45, 4, 2, 5 - 2.9, 3 - 5.8, 6 }, H.values(p), 1e-14, "transposed param")
    assert_close({ 1 - 1.45, 2, 3 - 5.8, 4, 5 - 2.9, 6 }, H.values(base), 1e-14, "its base")
  end)

  it("allocates each state buffer once and skips parameters without a gradient", function()
    local p, q = param({ 1.0, 2.0 }), param({ 3.0 })
    local opt = optim.AdamW({ p, q })
    p.grad = mm.ones(2, F64)
    opt:step()
    local m, v = opt.state[p].exp_avg, opt.state[p].exp_avg_sq
    assert.is_nil(opt.state[q])
    assert.are.same({ 3.0 }, H.values(q))
    for _ = 1, 3 do p.grad = mm.ones(2, F64); opt:step() end
    assert.are.equal(m, opt.state[p].exp_avg)
    assert.are.equal(v, opt.state[p].exp_avg_sq)
    assert.are.equal(4, opt.state[p].step)
  end)

  it("bumps the parameter's version so a stale graph refuses to backward", function()
    local p = param({ 1.0, 2.0 })
    local opt = optim.SGD({ p }, { lr = 0.1 })
    local y = p * p                           -- saves p
    p.grad = mm.ones(2, F64)
    opt:step()
    H.error_with(function() y:backward(mm.ones(2, F64)) end, "modified by an in-place operation")
  end)

  it("gives the same result with one thread and with two", function()
    local n = 100000
    local function go(threads)
      mm.set_num_threads(threads)
      mm.manual_seed(7)
      local p = mm.randn(n, F64)
      p.requires_grad = true
      local opt = optim.AdamW({ p }, { lr = 0.01, amsgrad = true })
      for _ = 1, 3 do p.grad = mm.randn(n, F64); opt:step() end
      return p
    end
    local before = mm.get_num_threads()
    local a, b = go(1), go(2)
    mm.set_num_threads(before)
    for k = 1, n, 997 do assert.are.equal(a:_get(k), b:_get(k)) end
    assert.are.equal(a:_get(n), b:_get(n))
  end)
end)

describe("parameter groups", function()
  it("apply each group's own hyper-parameters and inherit the rest", function()
    local a, b = param({ 1.0 }), param({ 1.0 })
    local opt = optim.AdamW({ { params = { a }, weight_decay = 0 }, { params = { b }, lr = 0.1 } },
                            { lr = 0.01, weight_decay = 0.5 })
    assert.are.equal(0.01, opt.param_groups[1].lr)
    assert.are.equal(0, opt.param_groups[1].weight_decay)
    assert.are.equal(0.1, opt.param_groups[2].lr)
    assert.are.equal(0.5, opt.param_groups[2].weight_decay)
    local grads = { { 1.0 }, { 1.0 } }
    for _, g in ipairs(grads) do
      a.grad = mm.tensor(g, F64); b.grad = mm.tensor(g, F64)
      opt:step()
    end
    local base = { betas = { 0.9, 0.999 }, eps = 1e-8, amsgrad = false }
    local oa = setmetatable({ lr = 0.01, weight_decay = 0 }, { __index = base })
    local ob = setmetatable({ lr = 0.1, weight_decay = 0.5 }, { __index = base })
    assert_close(ref.adam({ 1.0 }, grads, oa, true), H.values(a), 1e-12, "group 1")
    assert_close(ref.adam({ 1.0 }, grads, ob, true), H.values(b), 1e-12, "group 2")
  end)

  it("refuse a tensor in two groups, unknown options and bad values", function()
    local a = param({ 1.0 })
    H.error_with(function() optim.SGD({ { params = { a } }, { params = { a } } }) end,
                     "appears twice")
    H.error_with(function() optim.Adam({ a }, { learning_rate = 1 }) end, "unknown option 'learning_rate'")
    H.error_with(function() optim.Adam({ a }, { lr = -1 }) end, "expected lr in >= 0, got -1")
    H.error_with(function() optim.Adam({ a }, { betas = { 0.9, 1.0 } }) end, "betas[2] in [0, 1), got 1")
    H.error_with(function() optim.SGD({ a }, { nesterov = true }) end, "momentum > 0 and dampening = 0")
    H.error_with(function() optim.SGD({}) end, "at least one parameter")
    H.error_with(function() optim.SGD({ a, 3 }) end, "parameter 2 to be a tensor, got number")
    local nonleaf = a * 2
    H.error_with(function() optim.SGD({ nonleaf }) end, "non-leaf")
    H.error_with(function() optim.SGD({ mm.tensor({ 1, 2 }) }) end, "float32 or float64 parameters, got int64")
  end)

  it("zero_grad sets gradients to nil, or to zeros in place", function()
    local a = param({ 1.0, 2.0 })
    local opt = optim.SGD({ a }, { lr = 0.1 })
    a.grad = mm.ones(2, F64)
    local g = a.grad
    opt:zero_grad(false)
    assert.are.same({ 0, 0 }, H.values(g))
    opt:zero_grad()
    assert.is_nil(a.grad)
  end)
end)

describe("optimizer state_dict", function()
  it("round-trips: a restored optimizer continues exactly like the original", function()
    local o = { lr = 0.05, amsgrad = true, weight_decay = 0.1 }
    local p = param(P0)
    local opt = optim.AdamW({ { params = { p } } }, o)
    run(p, opt, { GRADS[1], GRADS[2] })
    local sd = opt:state_dict()
    assert.are.equal(2, sd.state[1].step)
    assert.are.same({ 1 }, sd.param_groups[1].params)

    local q = mm.tensor(p, { dtype = "float64", requires_grad = true })
    local opt2 = optim.AdamW({ q }, { lr = 1 })       -- hyper-parameters come from sd
    opt2:load_state_dict(sd)
    assert.are.equal(0.05, opt2.param_groups[1].lr)
    assert.are_not.equal(sd.state[1].exp_avg, opt2.state[q].exp_avg)   -- copied, not aliased
    local a = run(p, opt, { GRADS[3], GRADS[4] })
    local b = run(q, opt2, { GRADS[3], GRADS[4] })
    assert.are.same(a, b)
  end)

  it("refuses a state_dict of another shape", function()
    local p, q = param({ 1.0, 2.0 }), param({ 1.0 })
    local opt = optim.Adam({ p })
    p.grad = mm.ones(2, F64); opt:step()
    local sd = opt:state_dict()
    H.error_with(function() optim.Adam({ q }):load_state_dict(sd) end,
                     "state 'exp_avg' of parameter 1 has shape (2)", "parameter has shape (1)")
    H.error_with(function() optim.Adam({ { params = { p } }, { params = { q } } }):load_state_dict(sd) end,
                     "expected 2 parameter groups, got 1")
  end)
end)

describe("optim.clip_grad_norm", function()
  it("returns the global norm and rescales only above max_norm", function()
    local a, b, c = param({ 0.0, 0.0 }), param({ 0.0 }), param({ 0.0 })
    a.grad = mm.tensor({ 3.0, 4.0 }, F64)
    b.grad = mm.tensor({ 12.0 }, F64)          -- c has no gradient
    assert.are.equal(13, optim.clip_grad_norm({ a, b, c }, 100))
    assert.are.same({ 3, 4 }, H.values(a.grad))
    local total = optim.clip_grad_norm({ a, b, c }, 6.5)
    assert.are.equal(13, total)
    local s = 6.5 / (13 + 1e-6)
    assert_close({ 3 * s, 4 * s }, H.values(a.grad), 1e-15, "a")
    assert_close({ 12 * s }, H.values(b.grad), 1e-15, "b")
  end)

  it("supports the max norm and float32 gradients, and checks its arguments", function()
    local a = param({ 0.0, 0.0 }, "float32")
    a.grad = mm.tensor({ -5.0, 2.0 })
    assert.are.equal(5, optim.clip_grad_norm(a, 1, math.huge))
    assert_close({ -5 / (5 + 1e-6), 2 / (5 + 1e-6) }, H.values(a.grad), 1e-6, "inf norm")
    H.error_with(function() optim.clip_grad_norm({ a }, -1) end, "max_norm >= 0, got -1")
    H.error_with(function() optim.clip_grad_norm({ a }, 1, 0) end, "norm_type > 0")
  end)
end)

describe("schedulers", function()
  local function lrs(sched, n)
    local out = { sched:get_last_lr()[1] }
    for _ = 1, n do sched:step(); out[#out + 1] = sched:get_last_lr()[1] end
    return out
  end

  it("StepLR multiplies by gamma every step_size steps", function()
    local opt = optim.SGD({ param({ 1.0 }) }, { lr = 1.0 })
    local got = lrs(optim.StepLR(opt, { step_size = 2, gamma = 0.5 }), 6)
    assert_close({ 1, 1, 0.5, 0.5, 0.25, 0.25, 0.125 }, got, 1e-15, "StepLR")
    assert.are.equal(0.125, opt.param_groups[1].lr)
  end)

  it("CosineAnnealingLR follows half a cosine, after a linear warmup", function()
    local opt = optim.SGD({ param({ 1.0 }) }, { lr = 1.0 })
    local got = lrs(optim.CosineAnnealingLR(opt, { T_max = 4, eta_min = 0.1 }), 5)
    local want = {}
    for t = 0, 4 do want[t + 1] = 0.1 + 0.9 * (1 + math.cos(math.pi * t / 4)) / 2 end
    want[6] = 0.1
    assert_close(want, got, 1e-15, "cosine")

    local opt2 = optim.SGD({ param({ 1.0 }) }, { lr = 2.0 })
    local got2 = lrs(optim.CosineAnnealingLR(opt2, { T_max = 6, warmup = 2 }), 6)
    assert_close({ 0, 1, 2, 2 * (1 + math.cos(math.pi / 4)) / 2, 1, 2 * (1 + math.cos(3 * math.pi / 4)) / 2, 0 },
                 got2, 1e-15, "warmup + cosine")
  end)

  it("LinearWarmup ramps from start_factor to the base lr, per group", function()
    local opt = optim.SGD({ { params = { param({ 1.0 }) }, lr = 1.0 }, { params = { param({ 1.0 }) }, lr = 0.1 } })
    local sched = optim.LinearWarmup(opt, { warmup_steps = 4, start_factor = 0.2 })
    assert_close({ 0.2, 0.4, 0.6, 0.8, 1, 1 }, lrs(sched, 5), 1e-15, "warmup")
    assert_close({ 1.0, 0.1 }, sched:get_last_lr(), 1e-15, "groups")
  end)

  it("restores from state_dict and checks its arguments", function()
    local opt = optim.SGD({ param({ 1.0 }) }, { lr = 1.0 })
    local s1 = optim.StepLR(opt, { step_size = 1, gamma = 0.5 })
    s1:step(); s1:step()
    local sd = s1:state_dict()
    local opt2 = optim.SGD({ param({ 1.0 }) }, { lr = 1.0 })
    local s2 = optim.StepLR(opt2, { step_size = 1, gamma = 0.5 })
    s2:load_state_dict(sd)
    assert.are.equal(0.25, opt2.param_groups[1].lr)
    s2:step()
    assert.are.equal(0.125, opt2.param_groups[1].lr)
    H.error_with(function() optim.StepLR(opt, { step_size = 0 }) end, "step_size to be an integer >= 1, got 0")
    H.error_with(function() optim.CosineAnnealingLR(opt, { T_max = 3, warmup = 5 }) end, "warmup")
    H.error_with(function() optim.LinearWarmup(opt, {}) end, "warmup_steps to be an integer >= 1, got nil")
  end)

  it("a LambdaLR whose lambda raises changes nothing", function()
    local opt = optim.SGD({ param({ 1.0 }) }, { lr = 1.0 })
    local sched = optim.LambdaLR(opt, function(t)
      if t == 2 then error("bad step") end
      return 1 / (t + 1)
    end)
    sched:step()
    assert.are.equal(0.5, opt.param_groups[1].lr)
    H.error_with(function() sched:step() end, "bad step")
    assert.are.equal(1, sched.last_epoch)
    assert.are.equal(0.5, opt.param_groups[1].lr)
    local bad = optim.LambdaLR(optim.SGD({ param({ 1.0 }) }, { lr = 1.0 }), function(t)
      return t == 0 and 1 or "x"
    end)
    H.error_with(function() bad:step() end, "the lambda returned string at step 1 (expected a number)")
    assert.are.equal(0, bad.last_epoch)
  end)
end)

describe("fused kernels", function()
  it("name what is wrong with their tensors", function()
    local p = mm.zeros(2, 3, F64)
    local g = mm.zeros(2, 3, F64)
    H.error_with(function() mm._adamw_step(p, g, mm.zeros(3, F64), mm.zeros(2, 3, F64), nil, 0.1, 0.9, 0.999, 1e-8, 0, 1) end,
                     "adamw_step: expected exp_avg of the parameter's shape (2, 3), got (3)")
    H.error_with(function() mm._adam_step(p, mm.zeros(2, 3), mm.zeros(2, 3, F64), mm.zeros(2, 3, F64), nil, 0.1, 0.9, 0.999, 1e-8, 0, 1) end,
                     "adam_step: expected grad to have the parameter's dtype float64, got float32")
    H.error_with(function() mm._adamw_step(p, g, mm.zeros(2, 3, F64), mm.zeros(2, 3, F64), nil, 0.1, 0.9, 0.999, 1e-8, 0, 0) end,
                     "step count >= 1", "got 0")
    H.error_with(function() mm._sgd_step(mm.zeros(2, { dtype = "int64" }), mm.zeros(2, { dtype = "int64" }), nil, 0.1, 0, 0, 0, false, true) end,
                     "sgd_step: expected a float32 or float64 parameter, got int64")
    H.error_with(function() mm._sgd_step(p, g, nil, 0.1, 0.9, 0, 0, false, true) end,
                     "sgd_step: expected a momentum tensor, got nothing")
    local nc = mm.zeros(3, 2, F64):t()
    H.error_with(function() mm._adamw_step(p, g, nc, mm.zeros(2, 3, F64), nil, 0.1, 0.9, 0.999, 1e-8, 0, 1) end,
                     "expected a contiguous exp_avg buffer")
    H.error_with(function() mm._norm_accumulate(mm.zeros(2, { dtype = "int64" })) end,
                     "expected a float32 or float64 tensor, got int64")
  end)
end)

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

  local function run_script(n, kernel, wd, threads, env)
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
        local auto = run_script(n, case[1], case[2], 2)
        assert.is_truthy(auto:match("^%-?0x"), "worker failed: " .. auto:sub(1, 300))
        local portable = run_script(n, case[1], case[2], 1, "MICROML_KERNEL=portable")
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
      local a, b = H.values(p64), H.values(p32)
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
    local got = H.values(p)
    for k = 1, 3 do assert.is_true(math.abs(got[k] - want[k]) < 1e-6, ("element %d: %.9g vs %.9g"):format(k, got[k], want[k])) end
    assert.are.same({ 0.025, -0.4, 0 }, (function()
      local r = H.values(m)
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

describe("an optimizer step interrupted at any Lua instruction", function()
  -- The interpreter's Ctrl-C handler raises "interrupted" from a hook at the
  -- next Lua instruction; here a count hook raises at the N-th instruction of
  -- opt:step() for every N until a step completes.  Whatever N, the step is
  -- all or nothing: parameters, moments and step counts agree.
  for _, name in ipairs({ "Adam", "AdamW" }) do
    it(name .. " leaves parameters and step counts consistent", function()
      local completed = false
      for n = 1, 5000 do
        mm.manual_seed(3)
        local a, b = mm.randn(3, 2):requires_grad_(), mm.randn(4):requires_grad_()
        local opt = optim[name]({ a, b }, { lr = 0.1 })
        a.grad, b.grad = mm.ones(3, 2), mm.ones(4)
        local a0, b0 = H.values(a), H.values(b)
        local ok, err = pcall(function()
          debug.sethook(function() debug.sethook(); error("interrupted", 0) end, "", n)
          opt:step()
          debug.sethook()
        end)
        debug.sethook()
        local st_a, st_b = opt.state[a], opt.state[b]
        local step_a, step_b = st_a and st_a.step or 0, st_b and st_b.step or 0
        local moved = H.values(a)[1] ~= a0[1]
        assert.are.equal(moved, H.values(b)[1] ~= b0[1], "both parameters or neither")
        assert.are.equal(moved and 1 or 0, step_a, "a's step count at N = " .. n)
        assert.are.equal(moved and 1 or 0, step_b, "b's step count at N = " .. n)
        if not ok then assert.are.equal("interrupted", err) end
        if ok then completed = true; break end
        -- a retried step after the interrupt is the one step it should be
        if not moved then
          opt:step()
          assert.are.equal(1, opt.state[a].step)
        end
      end
      assert.is_true(completed, "the step never completed within the sweep")
    end)
  end
end)

describe("Adam over a whole group in one call (mm._adam_multi)", function()
  -- A model-like set: sizes that split into many blocks, one that does not,
  -- and a 1-element bias; float32 as in training.
  local SIZES = { { 300, 70 }, { 300 }, { 70, 9 }, { 1 } }

  local function make(dtype, seed)
    mm.manual_seed(seed or 3)
    local ps = {}
    for i, s in ipairs(SIZES) do
      ps[i] = mm.randn(s, { dtype = dtype })
      ps[i].requires_grad = true
    end
    return ps
  end

  local function grads_for(ps, step)
    mm.manual_seed(100 + step)
    for _, p in ipairs(ps) do p.grad = mm.randn(table.unpack(p:size())):to(p:dtype()) end
  end

  -- The one-tensor-at-a-time kernel is the reference the fused loop must match bit for bit.
  local function reference(ps, o, decoupled, steps)
    local st = {}
    for s = 1, steps do
      grads_for(ps, s)
      for i, p in ipairs(ps) do
        st[i] = st[i] or { m = mm.zeros_like(p), v = mm.zeros_like(p), x = mm.zeros_like(p) }
        local kernel = decoupled and mm._adamw_step or mm._adam_step
        kernel(p, p.grad, st[i].m, st[i].v, o.amsgrad and st[i].x or nil, o.lr, o.betas[1], o.betas[2],
               o.eps, o.weight_decay, s)
      end
    end
  end

  local function fused(ps, o, cls, steps)
    local opt = cls(ps, o)
    for s = 1, steps do grads_for(ps, s); opt:step() end
    return opt
  end

  local cases = {
    { "AdamW float32", optim.AdamW, true, "float32", { lr = 0.01, betas = { 0.9, 0.999 }, eps = 1e-8, weight_decay = 0.01, amsgrad = false } },
    { "Adam L2 float32", optim.Adam, false, "float32", { lr = 0.02, betas = { 0.8, 0.99 }, eps = 1e-6, weight_decay = 0.1, amsgrad = false } },
    { "AdamW float64", optim.AdamW, true, "float64", { lr = 0.01, betas = { 0.9, 0.999 }, eps = 1e-8, weight_decay = 0.01, amsgrad = false } },
    { "AdamW AMSGrad float32", optim.AdamW, true, "float32", { lr = 0.05, betas = { 0.5, 0.9 }, eps = 1e-8, weight_decay = 0.01, amsgrad = true } },
  }
  for _, c in ipairs(cases) do
    it("matches the per-tensor kernel bit for bit: " .. c[1], function()
      local a, b = make(c[4]), make(c[4])
      reference(a, c[5], c[3], 4)
      local opt = fused(b, c[5], c[2], 4)
      for i = 1, #a do H.assert_identical(a[i], b[i]) end
      for _, p in ipairs(b) do assert.are.equal(4, opt.state[p].step) end
    end)
  end

  it("gives the same bits with one thread and with two", function()
    local before = mm.get_num_threads()
    local o = { lr = 0.01, weight_decay = 0.01 }
    mm.set_num_threads(1)
    local a = make("float32"); fused(a, o, optim.AdamW, 3)
    mm.set_num_threads(2)
    local b = make("float32"); fused(b, o, optim.AdamW, 3)
    mm.set_num_threads(before)
    for i = 1, #a do H.assert_identical(a[i], b[i]) end
  end)

  it("steps a parameter without a gradient not at all, and keeps per-parameter step counts", function()
    local ps = make("float32")
    local opt = optim.AdamW(ps)
    grads_for(ps, 1); opt:step()
    local frozen = ps[2]:clone()
    grads_for(ps, 2); ps[2].grad = nil; opt:step()
    H.assert_identical(frozen, ps[2])
    assert.are.equal(2, opt.state[ps[1]].step)
    assert.are.equal(1, opt.state[ps[2]].step)
    -- and the next step of ps[2] uses its own count (2), as the per-tensor kernel would
    local ref = frozen:clone()
    local st = opt.state[ps[2]]
    local m, v = st.exp_avg:clone(), st.exp_avg_sq:clone()
    grads_for(ps, 3); opt:step()
    mm._adamw_step(ref, ps[2].grad, m, v, nil, 1e-3, 0.9, 0.999, 1e-8, 1e-2, 2)
    H.assert_identical(ref, ps[2])
  end)

  it("updates a non-contiguous parameter through its view", function()
    local base = mm.tensor({ { 1.0, 2.0, 3.0 }, { 4.0, 5.0, 6.0 } })
    local p = base:t()
    p.requires_grad = true
    local q = mm.tensor({ 1.0, 2.0, 3.0, 4.0, 5.0, 6.0 })
    q.requires_grad = true
    local opt = optim.AdamW({ p, q }, { lr = 0.1 })
    p.grad = mm.ones(3, 2)
    q.grad = mm.ones(6)
    opt:step()
    -- first AdamW step with g = 1: p * (1 - lr*wd) - lr
    local want = {}
    for k = 1, 6 do want[k] = k * (1 - 0.1 * 0.01) - 0.1 end
    assert_close(want, H.values(q), 1e-6, "contiguous")
    assert_close(want, H.values(base), 1e-6, "through the transposed view")
  end)

  it("checks every parameter before it updates any, and does not advance the step", function()
    local ps = make("float32")
    local opt = optim.AdamW(ps)
    grads_for(ps, 1); opt:step()
    local before = {}
    for i, p in ipairs(ps) do before[i] = p:clone() end
    grads_for(ps, 2)
    opt.state[ps[3]].exp_avg = mm.zeros(9, 70)   -- a wrong buffer, third of four
    H.error_with(function() opt:step() end, "adamw_step (parameter 3): expected exp_avg of the parameter's shape (70, 9), got (9, 70)")
    for i, p in ipairs(ps) do H.assert_identical(before[i], p) end
    for _, p in ipairs(ps) do assert.are.equal(1, opt.state[p].step) end
  end)

  it("names bad lists and entries", function()
    local p, g = mm.zeros(2), mm.zeros(2)
    local m, v = mm.zeros(2), mm.zeros(2)
    H.error_with(function() mm._adam_multi(true, { p }, { g }, { m }, {}, nil, { 1 }, 0.1, 0.9, 0.999, 1e-8, 0) end,
                     "expected exp_avg_sqs to have 1 entries like params, got 0")
    H.error_with(function() mm._adam_multi(true, { p }, { "x" }, { m }, { v }, nil, { 1 }, 0.1, 0.9, 0.999, 1e-8, 0) end,
                     "expected a Tensor as grads[1], got string")
    H.error_with(function() mm._adam_multi(true, { p }, { g }, { m }, { v }, nil, { 1.5 }, 0.1, 0.9, 0.999, 1e-8, 0) end,
                     "expected an integer as steps[1], got number")
    H.error_with(function() mm._adam_multi(true, { p }, { g }, { m }, { v }, nil, { 0 }, 0.1, 0.9, 0.999, 1e-8, 0) end,
                     "adamw_step (parameter 1): expected a step count >= 1")
    -- aliased buffers: still correct (one at a time), no race
    local q = mm.ones(4)
    mm._adam_multi(true, { q, q }, { mm.ones(4), mm.ones(4) }, { mm.zeros(4), mm.zeros(4) },
                   { mm.zeros(4), mm.zeros(4) }, nil, { 1, 1 }, 0.1, 0.9, 0.999, 1e-8, 0)
    assert_close({ 0.8, 0.8, 0.8, 0.8 }, H.values(q), 1e-6, "two steps of the same tensor")
  end)
end)
