--- microml.optim — optimizers, learning-rate schedulers and gradient
-- clipping (training checkpoints: microml.checkpoint, re-exported here).
--
-- Owns the bookkeeping around the fused C updates (runtime/optim.c):
-- parameter groups with per-group hyper-parameters, per-parameter state
-- allocated once on the first step, state_dict round trips, schedulers that
-- rewrite each group's lr, clip_grad_norm.
--
--   local opt = optim.AdamW(model:parameters(), {lr = 1e-3, weight_decay = 1e-2})
--   opt:zero_grad(); loss:backward(); opt:step()
--
-- Each parameter is updated by ONE call into C per step: no chain of Lua-level
-- tensor ops, no temporaries.  The semantics follow torch.optim.
local mm = require "microml"

local options = require "microml.options"

local M = {}

local is_tensor = mm.is_tensor
local NONE = options.NONE

-- torch.optim options MicroML does not have (yet): only their defaults pass.
local OPTIM_UNSUPPORTED = { maximize = false, foreach = NONE, differentiable = false, fused = NONE,
                            capturable = false }

-- The option names of an optimizer class (sorted), and of its param groups
-- (the same plus params, and initial_lr that schedulers add).
local function option_names(cls)
  if not cls._option_names then
    local known = {}
    for name in pairs(cls.defaults) do known[#known + 1] = name end
    table.sort(known)
    local group = { "params" }
    for _, k in ipairs(known) do group[#group + 1] = k end
    group[#group + 1] = "initial_lr"
    cls._option_names, cls._group_names = known, group
  end
  return cls._option_names, cls._group_names
end

-- ---------------------------------------------------------------------------
-- parameter lists and groups

-- A module (anything with :parameters()), a tensor, or a list of tensors ->
-- a fresh list of tensors.
local function as_param_list(x, where)
  if type(x) == "table" and type(x.parameters) == "function" and not is_tensor(x) then
    return x:parameters()
  end
  if is_tensor(x) then return { x } end
  if type(x) ~= "table" then
    error(("%s: expected a list of tensors, a tensor or a module, got %s"):format(where, type(x)), 3)
  end
  local out = {}
  for i, p in ipairs(x) do
    if not is_tensor(p) then
      error(("%s: expected parameter %d to be a tensor, got %s"):format(where, i, type(p)), 3)
    end
    out[i] = p
  end
  return out
end

local function is_group_list(x)
  return type(x) == "table" and not is_tensor(x) and type(x.parameters) ~= "function"
     and type(x[1]) == "table" and not is_tensor(x[1]) and x[1].params ~= nil
end

local function copy_value(v)
  if type(v) == "table" and not is_tensor(v) then
    local c = {}
    for k, x in pairs(v) do c[k] = copy_value(x) end
    return c
  end
  return v
end

-- ---------------------------------------------------------------------------
-- Optimizer base

local Optimizer = {}
Optimizer.__index = Optimizer
M.Optimizer = Optimizer

--- Builds an optimizer of class cls.  params: list of tensors, a module, or
-- a list of groups {params = ..., <hyper-parameter> = ...}; opts override
-- the class defaults; every group takes the defaults it does not set.
local function new_optimizer(cls, params, opts, where)
  opts = opts or {}
  if type(opts) ~= "table" then
    error(("%s: expected an options table as argument 2, got %s"):format(where, type(opts)), 3)
  end
  local known, group_known = option_names(cls)
  options.check(opts, where, known, OPTIM_UNSUPPORTED, 3)
  local defaults = {}
  for k, v in pairs(cls.defaults) do defaults[k] = copy_value(v) end
  for k, v in pairs(opts) do defaults[k] = copy_value(v) end

  local self = setmetatable({ defaults = defaults, param_groups = {}, state = {} }, cls)
  local groups = is_group_list(params) and params or { { params = params } }
  local seen = {}
  for gi, g in ipairs(groups) do
    if groups == params then
      options.check(g, ("%s: param group %d"):format(where, gi), group_known, OPTIM_UNSUPPORTED, 3)
    end
    local group = {}
    for k, v in pairs(g) do if k ~= "params" then group[k] = copy_value(v) end end
    for k, v in pairs(defaults) do if group[k] == nil then group[k] = copy_value(v) end end
    group.params = as_param_list(g.params, where)
    for i, p in ipairs(group.params) do
      if seen[p] then
        error(("%s: a tensor appears twice (group %d, parameter %d); each parameter may "
               .. "belong to one group only"):format(where, gi, i), 3)
      end
      seen[p] = true
      local dt = p:dtype()
      if dt ~= "float32" and dt ~= "float64" then
        error(("%s: expected float32 or float64 parameters, got %s for group %d, parameter %d")
              :format(where, dt, gi, i), 3)
      end
      if not p.is_leaf then
        error(("%s: cannot optimize a non-leaf tensor (group %d, parameter %d has grad_fn %s); "
               .. "optimize the leaves it is computed from"):format(where, gi, i, p.grad_fn), 3)
      end
    end
    cls.validate(group, where, gi)
    self.param_groups[gi] = group
  end
  local n = 0
  for _, g in ipairs(self.param_groups) do n = n + #g.params end
  if n == 0 then error(where .. ": expected at least one parameter, got an empty list", 3) end
  return self
end

local function check_range(where, gi, name, v, lo, hi, hi_open)
  if type(v) ~= "number" or v ~= v or v < lo or (hi and (hi_open and v >= hi or v > hi)) then
    local range = hi and ("[%g, %g%s"):format(lo, hi, hi_open and ")" or "]") or (">= %g"):format(lo)
    error(("%s: expected %s in %s, got %s (group %d)"):format(where, name, range, tostring(v), gi), 4)
  end
end

--- Adds a group to a live optimizer (e.g. unfrozen layers).
function Optimizer:add_param_group(g)
  local where = self.name .. ":add_param_group"
  if type(g) ~= "table" or g.params == nil then
    error(where .. ": expected a table {params = ..., ...}", 2)
  end
  local _, group_known = option_names(getmetatable(self))
  options.check(g, where, group_known, OPTIM_UNSUPPORTED)
  local group = {}
  for k, v in pairs(g) do if k ~= "params" then group[k] = copy_value(v) end end
  for k, v in pairs(self.defaults) do if group[k] == nil then group[k] = copy_value(v) end end
  group.params = as_param_list(g.params, where)
  for _, old in ipairs(self.param_groups) do
    for _, p in ipairs(old.params) do
      for _, q in ipairs(group.params) do
        if p == q then error(where .. ": a tensor already belongs to another group", 2) end
      end
    end
  end
  self.validate(group, where, #self.param_groups + 1)
  self.param_groups[#self.param_groups + 1] = group
end

--- Sets every parameter's gradient to nil (default: frees the memory and
-- the next backward starts fresh), or to zeros with set_to_none = false.
function Optimizer:zero_grad(set_to_none)
  for _, g in ipairs(self.param_groups) do
    for _, p in ipairs(g.params) do
      if set_to_none == false then
        local gr = p.grad
        if gr then mm.no_grad(gr.zero_, gr) end
      else
        p.grad = nil
      end
    end
  end
end

--- One update of every parameter that has a gradient.  closure, if given,
-- re-evaluates the model and returns the loss (it is called with grad on).
function Optimizer:step(closure)
  local loss
  if closure ~= nil and type(closure) ~= "function" then
    error(("step: expected a closure function or nothing, got %s"):format(type(closure)), 2)
  end
  if closure then loss = closure() end
  for _, group in ipairs(self.param_groups) do
    if self.update_group then
      self:update_group(group)
      goto next_group
    end
    for _, p in ipairs(group.params) do
      local g = p.grad
      if g then
        local st = self.state[p]
        if not st then st = {}; self.state[p] = st end
        self:update(p, g, group, st)
      end
    end
    ::next_group::
  end
  return loss
end

-- The parameters in group order, numbered 1..N as in state_dict.
local function indexed_params(self)
  local list = {}
  for _, g in ipairs(self.param_groups) do
    for _, p in ipairs(g.params) do list[#list + 1] = p end
  end
  return list
end

--- { state = { [i] = {step = n, <buffer> = tensor, ...} },
--    param_groups = { {lr = ..., ..., params = {i, ...}} } }
-- with parameters numbered 1..N across groups, as torch does.  The state
-- tensors are the live buffers; load_state_dict copies them.
function Optimizer:state_dict()
  local sd = { state = {}, param_groups = {} }
  local index = 0
  for gi, g in ipairs(self.param_groups) do
    local group = {}
    for k, v in pairs(g) do if k ~= "params" then group[k] = copy_value(v) end end
    group.params = {}
    for _, p in ipairs(g.params) do
      index = index + 1
      group.params[#group.params + 1] = index
      local st = self.state[p]
      if st then
        local c = {}
        for k, v in pairs(st) do c[k] = v end
        sd.state[index] = c
      end
    end
    sd.param_groups[gi] = group
  end
  return sd
end

--- Restores hyper-parameters and state from state_dict() output (also after
-- a checkpoint round trip, where integer keys may have become strings).
-- The group structure must match this optimizer's; buffers are copied and
-- cast to each parameter's dtype.
function Optimizer:load_state_dict(sd)
  local where = self.name .. ":load_state_dict"
  if type(sd) ~= "table" or type(sd.param_groups) ~= "table" then
    error(where .. ": expected a table from state_dict() with param_groups and state", 2)
  end
  local groups = sd.param_groups
  local function at(t, i) return t[i] ~= nil and t[i] or t[tostring(i)] end
  local ngroups = 0
  for k in pairs(groups) do ngroups = math.max(ngroups, math.tointeger(tonumber(k)) or 0) end
  if ngroups ~= #self.param_groups then
    error(("%s: expected %d parameter groups, got %d"):format(where, #self.param_groups, ngroups), 2)
  end
  local params = indexed_params(self)
  local newstate = {}
  for gi, g in ipairs(self.param_groups) do
    local sg = at(groups, gi)
    if type(sg) ~= "table" then
      error(("%s: saved parameter group %d is missing"):format(where, gi), 2)
    end
    local n = 0
    if type(sg.params) == "table" then
      for k in pairs(sg.params) do n = math.max(n, math.tointeger(tonumber(k)) or 0) end
    end
    if n ~= #g.params then
      error(("%s: group %d has %d parameters but the saved group has %d"):format(where, gi, #g.params, n), 2)
    end
  end
  local state = sd.state or {}
  -- Sorted, so that the first problem reported does not depend on hash order.
  local function sorted_keys(t)
    local keys = {}
    for k in pairs(t) do keys[#keys + 1] = k end
    table.sort(keys, function(a, b)
      local na, nb = tonumber(a), tonumber(b)
      if na and nb then return na < nb end
      return tostring(a) < tostring(b)
    end)
    return keys
  end
  for _, key in ipairs(sorted_keys(state)) do
    local st = state[key]
    local i = math.tointeger(tonumber(key))
    local p = i and params[i]
    if not p then
      error(("%s: saved state for parameter %s, but the optimizer has %d parameters")
            :format(where, tostring(key), #params), 2)
    end
    local c = {}
    for _, k in ipairs(sorted_keys(st)) do
      local v = st[k]
      if is_tensor(v) then
        local ps, vs = p:shape(), v:shape()
        if table.concat(ps, ",") ~= table.concat(vs, ",") then
          error(("%s: state '%s' of parameter %d has shape (%s) but the parameter has shape (%s)")
                :format(where, k, i, table.concat(vs, ", "), table.concat(ps, ", ")), 2)
        end
        c[k] = mm.no_grad(function() return v:detach():to(p:dtype()):clone():contiguous() end)
      else
        c[k] = v
      end
    end
    newstate[p] = c
  end
  for gi, g in ipairs(self.param_groups) do
    for k, v in pairs(at(groups, gi)) do
      if k ~= "params" then g[k] = copy_value(v) end
    end
  end
  self.state = newstate
end

function Optimizer:__tostring()
  local lines = { self.name .. " (" }
  for gi, g in ipairs(self.param_groups) do
    local keys = {}
    for k in pairs(g) do if k ~= "params" then keys[#keys + 1] = k end end
    table.sort(keys)
    local parts = {}
    for _, k in ipairs(keys) do
      local v = g[k]
      if type(v) == "table" then
        local s = {}
        for i, x in ipairs(v) do s[i] = tostring(x) end
        v = "{" .. table.concat(s, ", ") .. "}"
      end
      parts[#parts + 1] = k .. "=" .. tostring(v)
    end
    lines[#lines + 1] = ("  group %d: %d tensors, %s"):format(gi, #g.params, table.concat(parts, ", "))
  end
  lines[#lines + 1] = ")"
  return table.concat(lines, "\n")
end

-- update(self, p, grad, group, state) steps one parameter; a class may give
-- update_group(self, group) instead, which steps a whole group at once.
local function optimizer_class(name, defaults, validate, update, update_group)
  local cls = setmetatable({}, { __index = Optimizer })
  cls.__index = cls
  cls.__tostring = Optimizer.__tostring
  cls.name, cls.defaults, cls.validate = name, defaults, validate
  cls.update, cls.update_group = update, update_group
  return cls
end

-- ---------------------------------------------------------------------------
-- SGD

local SGD = optimizer_class("SGD",
  { lr = 1e-3, momentum = 0, dampening = 0, weight_decay = 0, nesterov = false },
  function(g, where, gi)
    check_range(where, gi, "lr", g.lr, 0)
    check_range(where, gi, "momentum", g.momentum, 0)
    check_range(where, gi, "dampening", g.dampening, -math.huge)
    check_range(where, gi, "weight_decay", g.weight_decay, 0)
    if g.nesterov and (g.momentum <= 0 or g.dampening ~= 0) then
      error(("%s: Nesterov momentum expects momentum > 0 and dampening = 0, got momentum %g and "
             .. "dampening %g (group %d)"):format(where, g.momentum, g.dampening, gi), 4)
    end
  end,
  function(_, p, grad, g, st)
    local buf, first = nil, false
    if g.momentum ~= 0 then
      buf = st.momentum_buffer
      if not buf then
        buf = mm.zeros_like(p)
        st.momentum_buffer = buf
        first = true
      end
    end
    mm._sgd_step(p, grad, buf, g.lr, g.momentum, g.dampening, g.weight_decay, g.nesterov, first)
  end)

--- optim.SGD(params, {lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=false})
-- weight_decay is an L2 term added to the gradient, as in torch.optim.SGD.
function M.SGD(params, opts, ...)
  options.arity("SGD", 2, select("#", ...) + 2)
  return new_optimizer(SGD, params, opts, "SGD")
end

-- ---------------------------------------------------------------------------
-- Adam and AdamW

local function validate_adam(g, where, gi)
  check_range(where, gi, "lr", g.lr, 0)
  check_range(where, gi, "eps", g.eps, 0)
  check_range(where, gi, "weight_decay", g.weight_decay, 0)
  if type(g.betas) ~= "table" or #g.betas ~= 2 then
    error(("%s: expected betas = {beta1, beta2}, got %s (group %d)"):format(where, tostring(g.betas), gi), 4)
  end
  check_range(where, gi, "betas[1]", g.betas[1], 0, 1, true)
  check_range(where, gi, "betas[2]", g.betas[2], 0, 1, true)
end

-- A whole group in one call: mm._adam_multi steps every parameter that has
-- a gradient as one parallel loop (bit for bit what mm._adam_step or
-- mm._adamw_step does to each tensor), instead of one pool dispatch per
-- tensor; state buffers are made on a parameter's first step.  The lists are kept
-- between steps so a step allocates nothing; they are emptied after the
-- call so they never keep a gradient alive.
local function adam_update_group(decoupled)
  local fields = { "ps", "gs", "ms", "vs", "xs", "steps", "sts" }
  return function(self, g)
    local s = self._lists
    if not s then
      s = { ps = {}, gs = {}, ms = {}, vs = {}, xs = {}, steps = {}, sts = {} }
      self._lists = s
    end
    -- Empty already, unless the last step was interrupted before it cleared
    -- them: stale entries past this step's count would be stepped again.
    for _, f in ipairs(fields) do
      local t = s[f]
      for k = #t, 1, -1 do t[k] = nil end
    end
    local ps, gs, ms, vs, xs, steps, sts = s.ps, s.gs, s.ms, s.vs, s.xs, s.steps, s.sts
    local amsgrad = g.amsgrad
    local n = 0
    for _, p in ipairs(g.params) do
      local grad = p.grad
      if grad then
        local st = self.state[p]
        if not st then st = {}; self.state[p] = st end
        -- Both moments or neither: a state half made by an interrupted step
        -- (which never stepped) is made again.
        if not (st.exp_avg and st.exp_avg_sq) then
          st.step = 0
          st.exp_avg = mm.zeros_like(p)
          st.exp_avg_sq = mm.zeros_like(p)
        end
        if amsgrad and not st.max_exp_avg_sq then st.max_exp_avg_sq = mm.zeros_like(p) end
        n = n + 1
        ps[n], gs[n], ms[n], vs[n], steps[n], sts[n] = p, grad, st.exp_avg, st.exp_avg_sq, st.step + 1, st
        if amsgrad then xs[n] = st.max_exp_avg_sq end
      end
    end
    local ok, err = true, nil
    -- The kernel checks every parameter before it updates any, and sets each
    -- state's step count in the same C call as the update: an error leaves
    -- both as they were, and an interrupt (delivered between Lua
    -- instructions) cannot land between the parameters and their counts.
    if n > 0 then
      ok, err = pcall(mm._adam_multi, decoupled, ps, gs, ms, vs, amsgrad and xs or nil, steps,
                      g.lr, g.betas[1], g.betas[2], g.eps, g.weight_decay, sts)
    end
    for _, f in ipairs(fields) do
      local t = s[f]
      for k = 1, n do t[k] = nil end
    end
    if not ok then error(err, 0) end
  end
end

local Adam = optimizer_class("Adam",
  { lr = 1e-3, betas = { 0.9, 0.999 }, eps = 1e-8, weight_decay = 0, amsgrad = false },
  validate_adam, nil, adam_update_group(false))

local AdamW = optimizer_class("AdamW",
  { lr = 1e-3, betas = { 0.9, 0.999 }, eps = 1e-8, weight_decay = 1e-2, amsgrad = false },
  validate_adam, nil, adam_update_group(true))

--- optim.Adam(params, {lr=1e-3, betas={0.9, 0.999}, eps=1e-8, weight_decay=0, amsgrad=false})
-- weight_decay is an L2 term added to the gradient (coupled with the
-- adaptive scaling), as in torch.optim.Adam.
function M.Adam(params, opts, ...)
  options.arity("Adam", 2, select("#", ...) + 2)
  return new_optimizer(Adam, params, opts, "Adam")
end

--- optim.AdamW(params, {lr=1e-3, betas={0.9, 0.999}, eps=1e-8, weight_decay=1e-2, amsgrad=false})
-- Decoupled weight decay (Loshchilov & Hutter, "Decoupled Weight Decay
-- Regularization"): p *= 1 - lr * weight_decay before the Adam step, so the
-- decay is not divided by the adaptive denominator.  Bias-corrected moments.
function M.AdamW(params, opts, ...)
  options.arity("AdamW", 2, select("#", ...) + 2)
  return new_optimizer(AdamW, params, opts, "AdamW")
end

-- ---------------------------------------------------------------------------
-- gradient clipping

--- optim.clip_grad_norm(params, max_norm [, norm_type = 2]) -> total norm
-- The norm of all gradients taken together (as if concatenated); when it
-- exceeds max_norm every gradient is scaled in place by
-- max_norm / (total + 1e-6), as torch.nn.utils.clip_grad_norm_ does.
-- norm_type may be math.huge for the max-abs norm.  Parameters without a
-- gradient are skipped.
function M.clip_grad_norm(params, max_norm, norm_type, ...)
  options.arity("clip_grad_norm", 3, select("#", ...) + 3)
  params = as_param_list(params, "clip_grad_norm")
  if type(max_norm) ~= "number" or max_norm ~= max_norm or max_norm < 0 then
    error(("clip_grad_norm: expected max_norm >= 0, got %s"):format(tostring(max_norm)), 2)
  end
  norm_type = norm_type or 2
  if type(norm_type) ~= "number" or not (norm_type > 0) then
    error(("clip_grad_norm: expected norm_type > 0 (or math.huge), got %s"):format(tostring(norm_type)), 2)
  end
  local grads = {}
  for _, p in ipairs(params) do
    local g = p.grad
    if g then grads[#grads + 1] = g end
  end
  local total = 0
  for _, g in ipairs(grads) do
    local s = mm._norm_accumulate(g, norm_type)
    if norm_type == math.huge then
      if s > total or s ~= s then total = s end
    else
      total = total + s
    end
  end
  if norm_type ~= math.huge then total = total ^ (1 / norm_type) end
  local coef = max_norm / (total + 1e-6)
  if coef < 1 then
    mm.no_grad(function()
      for _, g in ipairs(grads) do g:mul_(coef) end
    end)
  end
  return total
end

-- ---------------------------------------------------------------------------
-- learning-rate schedulers
--
-- A scheduler owns each group's lr as a function of its step counter t
-- (0 at construction): lr = f(t, base_lr), evaluated in closed form so that
-- state_dict/load_state_dict (just t and the base lrs) restore it exactly.
-- Call sched:step() after opt:step(), once per iteration or per epoch,
-- whichever unit the schedule was written in.

local Scheduler = {}
Scheduler.__index = Scheduler
M.Scheduler = Scheduler

local function new_scheduler(cls, opt, where)
  if type(opt) ~= "table" or type(opt.param_groups) ~= "table" then
    error(where .. ": expected an optimizer as argument 1", 3)
  end
  local self = setmetatable({ optimizer = opt, last_epoch = 0, base_lrs = {} }, cls)
  for i, g in ipairs(opt.param_groups) do
    if g.initial_lr == nil then g.initial_lr = g.lr end
    self.base_lrs[i] = g.initial_lr
  end
  return self
end

-- Every group's lr at step t, computed before anything is changed, so a
-- schedule that raises (a user's lambda) leaves the scheduler and the
-- optimizer exactly as they were.
function Scheduler:_lrs(t)
  local lrs = {}
  for i in ipairs(self.optimizer.param_groups) do
    local lr = self:lr_at(t, self.base_lrs[i])
    if type(lr) ~= "number" or lr ~= lr then
      error(("%s: the schedule gave lr %s for group %d at step %d (expected a number)")
            :format(self.name, tostring(lr), i, t), 3)
    end
    lrs[i] = lr
  end
  return lrs
end
function Scheduler:_apply()
  for i, lr in ipairs(self:_lrs(self.last_epoch)) do self.optimizer.param_groups[i].lr = lr end
end

--- Advances the schedule by one step and sets each group's lr.
function Scheduler:step()
  local lrs = self:_lrs(self.last_epoch + 1)
  self.last_epoch = self.last_epoch + 1
  for i, lr in ipairs(lrs) do self.optimizer.param_groups[i].lr = lr end
end

--- The lr of each group as last set (a list).
function Scheduler:get_last_lr()
  local out = {}
  for i, g in ipairs(self.optimizer.param_groups) do out[i] = g.lr end
  return out
end

function Scheduler:state_dict()
  return { last_epoch = self.last_epoch, base_lrs = copy_value(self.base_lrs) }
end

function Scheduler:load_state_dict(sd)
  if type(sd) ~= "table" or type(sd.last_epoch) ~= "number" then
    error("scheduler:load_state_dict: expected a table from state_dict()", 2)
  end
  self.last_epoch = math.tointeger(sd.last_epoch) or sd.last_epoch
  if sd.base_lrs then
    for i = 1, #self.base_lrs do
      local v = sd.base_lrs[i] or sd.base_lrs[tostring(i)]
      if v then self.base_lrs[i] = v end
    end
  end
  self:_apply()
end

local function scheduler_class(name, lr_at)
  local cls = setmetatable({ name = name, lr_at = lr_at }, { __index = Scheduler })
  cls.__index = cls
  return cls
end

local function positive_int(where, name, v)
  if math.type(v) ~= "integer" and not (type(v) == "number" and v == math.floor(v)) or v < 1 then
    error(("%s: expected %s to be an integer >= 1, got %s"):format(where, name, tostring(v)), 3)
  end
  return math.tointeger(v)
end

local StepLR = scheduler_class("StepLR", function(self, t, base)
  return base * self.gamma ^ (t // self.step_size)
end)

--- optim.StepLR(opt, {step_size =, gamma = 0.1}): lr = base * gamma^floor(t / step_size).
function M.StepLR(opt, opts, ...)
  options.arity("StepLR", 2, select("#", ...) + 2)
  opts = options.check(opts, "StepLR", { "step_size:number", "gamma:number" }, { last_epoch = -1 })
  local self = new_scheduler(StepLR, opt, "StepLR")
  self.step_size = positive_int("StepLR", "step_size", opts.step_size)
  self.gamma = opts.gamma or 0.1
  self:_apply()
  return self
end

-- Linear ramp from start_factor * base at t = 0 to base at t = warmup.
local function warmup_factor(t, warmup, start)
  if warmup <= 0 or t >= warmup then return 1 end
  return start + (1 - start) * t / warmup
end

local Cosine = scheduler_class("CosineAnnealingLR", function(self, t, base)
  if t < self.warmup then return base * warmup_factor(t, self.warmup, self.start_factor) end
  local span = self.T_max - self.warmup
  if t >= self.T_max or span <= 0 then return self.eta_min end
  return self.eta_min + (base - self.eta_min) * (1 + math.cos(math.pi * (t - self.warmup) / span)) / 2
end)

--- optim.CosineAnnealingLR(opt, {T_max =, eta_min = 0, warmup = 0, warmup_start_factor = 0})
-- For t < warmup: a linear ramp from warmup_start_factor * base up to base;
-- then half a cosine from base at t = warmup down to eta_min at t = T_max,
-- and eta_min after that.  T_max counts all steps, warmup included.  With
-- warmup = 0 this is torch's CosineAnnealingLR over one half period.
function M.CosineAnnealingLR(opt, opts, ...)
  options.arity("CosineAnnealingLR", 2, select("#", ...) + 2)
  opts = options.check(opts, "CosineAnnealingLR", { "T_max:number", "eta_min:number", "warmup:number",
                       "warmup_start_factor:number" }, { last_epoch = -1 })
  local self = new_scheduler(Cosine, opt, "CosineAnnealingLR")
  self.T_max = positive_int("CosineAnnealingLR", "T_max", opts.T_max)
  self.eta_min = opts.eta_min or 0
  self.warmup = opts.warmup or 0
  self.start_factor = opts.warmup_start_factor or 0
  if math.type(self.warmup) ~= "integer" or self.warmup < 0 or self.warmup > self.T_max then
    error(("CosineAnnealingLR: expected warmup to be an integer in 0..T_max (%d), got %s")
          :format(self.T_max, tostring(opts.warmup)), 2)
  end
  self:_apply()
  return self
end

local Warmup = scheduler_class("LinearWarmup", function(self, t, base)
  return base * warmup_factor(t, self.warmup_steps, self.start_factor)
end)

--- optim.LinearWarmup(opt, {warmup_steps =, start_factor = 0}): lr rises
-- linearly from start_factor * base at t = 0 to base at t = warmup_steps,
-- then stays at base.
function M.LinearWarmup(opt, opts, ...)
  options.arity("LinearWarmup", 2, select("#", ...) + 2)
  opts = options.check(opts, "LinearWarmup", { "warmup_steps:number", "start_factor:number" },
                       { last_epoch = -1 })
  local self = new_scheduler(Warmup, opt, "LinearWarmup")
  self.warmup_steps = positive_int("LinearWarmup", "warmup_steps", opts.warmup_steps)
  self.start_factor = opts.start_factor or 0
  if type(self.start_factor) ~= "number" or self.start_factor < 0 or self.start_factor > 1 then
    error(("LinearWarmup: expected start_factor in [0, 1], got %s"):format(tostring(opts.start_factor)), 2)
  end
  self:_apply()
  return self
end

local Lambda = scheduler_class("LambdaLR", function(self, t, base)
  local f = self.fn(t)
  if type(f) ~= "number" then
    error(("LambdaLR: the lambda returned %s at step %d (expected a number)"):format(type(f), t), 0)
  end
  return base * f
end)

--- optim.LambdaLR(opt, fn): lr = base * fn(t).
function M.LambdaLR(opt, fn, ...)
  options.arity("LambdaLR", 2, select("#", ...) + 2)
  if type(fn) ~= "function" then error("LambdaLR: expected a function as argument 2", 2) end
  local self = new_scheduler(Lambda, opt, "LambdaLR")
  self.fn = fn
  self:_apply()
  return self
end

-- ---------------------------------------------------------------------------
-- checkpoints: whole training states live in microml.checkpoint (the data
-- and I/O layer); optim.save_checkpoint/load_checkpoint stay as the names
-- training scripts use.

local checkpoint = require "microml.checkpoint"
M.save_checkpoint = checkpoint.save_checkpoint
M.load_checkpoint = checkpoint.load_checkpoint

return M
