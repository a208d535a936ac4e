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

return function(fn, inputs, opts)
  opts = opts or {}
  assert(type(opts) == "table", "gradcheck: expected an options table as argument 3, got " .. type(opts))
  local eps, atol, rtol = opts.eps or 1e-6, opts.atol or 1e-5, opts.rtol or 1e-3
  assert(type(fn) == "function", "gradcheck: expected a function as argument 1")
  assert(type(inputs) == "table", "gradcheck: expected a table of inputs as argument 2")
  local checked = {}
  for i, x in ipairs(inputs) do
    if mm.is_tensor(x) and x.requires_grad then
      if x:dtype() ~= "float64" then
        error(("gradcheck: input %d is %s; finite differences need float64"):format(i, x:dtype()), 2)
      end
      x.grad = nil
      checked[#checked + 1] = i
    end
  end
  if #checked == 0 then error("gradcheck: no input requires grad", 2) end

  local out = fn(table.unpack(inputs))
  if not mm.is_tensor(out) then error("gradcheck: fn must return a tensor", 2) end
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
      x:_set(k, orig + eps)
      local fp = mm.no_grad(function() return project(fn(table.unpack(inputs)), r) end)
      x:_set(k, orig - eps)
      local fm = mm.no_grad(function() return project(fn(table.unpack(inputs)), r) end)
      x:_set(k, orig)
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
  if worst.err > 0 then
    local msg = ("gradcheck failed: input %d, element %s: analytic %.10g vs numeric %.10g "
                 .. "(|diff| %.3g > tolerance %.3g)"):format(worst.input,
                 flat_index(worst.shape, worst.k), worst.a, worst.n, worst.abs, worst.tol)
    if opts.raise == false then return false, msg end
    error(msg, 2)
  end
  return true
end
