--- mm.gradcheck(fn, inputs [, opts]) — compares the gradients autograd
-- computes with central finite differences, in float64.
--
-- fn(inputs...) must return one tensor.  Every input with requires_grad is
-- checked element by element.  The output is projected on a fixed random
-- direction r, so one backward (out:backward(r)) gives the analytic
-- gradient of <out, r>, and two evaluations per element the numeric one.
-- Inputs must own their elements (no expanded/stride-0 views): perturbing
-- one element of such a view perturbs several.  Expand inside fn instead.
--
-- opts: eps (1e-6), atol (1e-5), rtol (1e-3), raise (true): on failure
-- raise an error naming the worst element, or return false, message.
local mm = require "microml.core"

local function flat_index(shape, k)          -- 1-based flat -> {i, j, ...}
  local idx, rest = {}, k - 1
  for d = #shape, 1, -1 do
    idx[d] = rest % shape[d] + 1
    rest = rest // shape[d]
  end
  return "{" .. table.concat(idx, ", ") .. "}"
end

local function project(out, r)               -- <out, r> as a Lua number
  local s = 0
  for k = 1, out:numel() do s = s + out:_get(k) * r[k] end
  return s
end

-- The check runs inside pcall: whatever fn does (including raising), every
-- input is left as it was given — the element being perturbed is restored
-- and each input's .grad is put back (gradcheck computes gradients of its
-- own and must not leave them, or wipe a gradient the caller accumulated).
local function run(fn, inputs, checked, eps, atol, rtol, state)
  local out = fn(table.unpack(inputs))
  if not mm.is_tensor(out) then error("gradcheck: fn must return a tensor", 0) end
  local r, rt = {}, mm.randn(table.unpack(out:shape()))
  for k = 1, out:numel() do r[k] = rt:_get(k) end
  rt = mm.tensor(r, { dtype = "float64" }):reshape(out:shape())
  if out:numel() > 0 then out:backward(rt) end

  local worst = { err = -1 }
  for _, i in ipairs(checked) do
    local x = inputs[i]
    local g = x.grad
    for k = 1, x:numel() do
      local orig = x:_get(k)
      state.x, state.k, state.orig = x, k, orig
      local fp = mm.no_grad(function()   -- a leaf is written only with grad mode off
        x:_set(k, orig + eps)
        return project(fn(table.unpack(inputs)), r)
      end)
      local fm = mm.no_grad(function()
        x:_set(k, orig - eps)
        return project(fn(table.unpack(inputs)), r)
      end)
      mm.no_grad(function() x:_set(k, orig) end)
      state.x = nil
      local numeric = (fp - fm) / (2 * eps)
      local analytic = g and g:_get(k) or 0
      local err = math.abs(analytic - numeric)
      local tol = atol + rtol * math.abs(numeric)
      local excess = err - tol
      if excess ~= excess then excess = math.huge end     -- NaN counts as a failure
      if excess > worst.err then
        worst = { err = excess, input = i, k = k, shape = x:shape(), a = analytic, n = numeric,
                  abs = err, tol = tol }
      end
    end
  end
  return worst
end

local function option(opts, name, default)
  local v = opts[name]
  if v == nil then return default end
  if type(v) ~= "number" or not (v >= 0) then
    error(("gradcheck: expected %s to be a non-negative number, got %s"):format(name, tostring(v)), 3)
  end
  return v
end

return function(fn, inputs, opts)
  opts = opts or {}
  if type(opts) ~= "table" then
    error("gradcheck: expected an options table as argument 3, got " .. type(opts), 2)
  end
  local eps, atol, rtol = option(opts, "eps", 1e-6), option(opts, "atol", 1e-5), option(opts, "rtol", 1e-3)
  if eps == 0 then error("gradcheck: expected eps > 0, got 0", 2) end
  if type(fn) ~= "function" then error("gradcheck: expected a function as argument 1, got " .. type(fn), 2) end
  if type(inputs) ~= "table" then
    error("gradcheck: expected a table of inputs as argument 2, got " .. type(inputs), 2)
  end
  local checked, saved_grads = {}, {}
  for i, x in ipairs(inputs) do
    if mm.is_tensor(x) and x.requires_grad then
      if x:dtype() ~= "float64" then
        error(("gradcheck: input %d is %s; finite differences need float64"):format(i, x:dtype()), 2)
      end
      checked[#checked + 1] = i
    end
  end
  if #checked == 0 then error("gradcheck: no input requires grad", 2) end
  for _, i in ipairs(checked) do
    saved_grads[i] = inputs[i].grad or false
    inputs[i].grad = nil
  end

  local state = {}
  local ok, worst = pcall(run, fn, inputs, checked, eps, atol, rtol, state)
  if state.x then   -- fn raised mid-perturbation
    mm.no_grad(function() state.x:_set(state.k, state.orig) end)
  end
  for _, i in ipairs(checked) do inputs[i].grad = saved_grads[i] or nil end
  if not ok then error(worst, 2) end

  if worst.err > 0 then
    local msg = ("gradcheck failed: input %d, element %s: analytic %.10g vs numeric %.10g "
                 .. "(|diff| %.3g > tolerance %.3g)"):format(worst.input,
                 flat_index(worst.shape, worst.k), worst.a, worst.n, worst.abs, worst.tol)
    if opts.raise == false then return false, msg end
    error(msg, 2)
  end
  return true
end
