--- microml.nn — modules, layers, weight initialisers and losses.
--
-- Owns the Module base class (parameter and child registration, dotted
-- names, train/eval, state_dict, the printed tree), the standard layers
-- built on the C ops (Linear, Conv2d, LayerNorm, Embedding, ...), nn.init,
-- and the losses as functions and as modules.  Layers have no hand-written
-- backward: autograd records the ops their forward calls.
--
-- Writing a module:
--
--   local Net = nn.Module:extend("Net")
--   function Net:init(n)                      -- the constructor: Net(n)
--     self.fc1 = nn.Linear(n, 64)             -- modules register on assignment
--     self.fc2 = nn.Linear(64, 1)
--     self.scale = nn.Parameter(mm.ones(1))   -- tensors register when marked
--   end
--   function Net:forward(x) return self.fc2(mm.relu(self.fc1(x))) * self.scale end
--
--   local net = Net(10); local y = net(x)     -- __call runs forward
local mm = require "microml"

local options = require "microml.options"

local nn = {}
local is_tensor = mm.is_tensor
local NONE = options.NONE

-- Options of a module constructor (init runs under the class's __call, so
-- errors blame the caller two levels up) and its positional arity.
local function init_opts(opts, where, accepted, unsupported)
  return options.check(opts, where, accepted, unsupported, 4)
end
local function init_arity(where, max, n) options.arity(where, max, n, 4) end

-- ---------------------------------------------------------------------------
-- small helpers

local function shape_str(t)
  return "(" .. table.concat(t:shape(), ", ") .. ")"
end

local function same_shape(a, b)
  local sa, sb = a:shape(), b:shape()
  if #sa ~= #sb then return false end
  for i = 1, #sa do if sa[i] ~= sb[i] then return false end end
  return true
end

local function group_digits(n)
  local s = tostring(n)
  local out = s:reverse():gsub("(%d%d%d)", "%1,"):reverse()
  return (out:gsub("^,", ""))
end

local function check_size(where, name, v, min)
  min = min or 1
  if math.type(v) ~= "integer" or v < min then
    error(("%s: expected %s to be an integer >= %d, got %s"):format(where, name, min, tostring(v)), 3)
  end
end

-- A pair {h, w} from a number or a table.
local function pair(where, name, v, min)
  if type(v) == "number" then v = { v, v } end
  if type(v) ~= "table" or #v ~= 2 then
    error(("%s: expected %s to be a number or {h, w}, got %s"):format(where, name, tostring(v)), 3)
  end
  for i = 1, 2 do check_size(where, name .. "[" .. i .. "]", math.tointeger(v[i]) or v[i], min) end
  return { math.tointeger(v[1]), math.tointeger(v[2]) }
end

-- Tensors that nn.Parameter marked: assigning one to a module field
-- registers it as a parameter.  Weak keys: the mark dies with the tensor.
local param_marks = setmetatable({}, { __mode = "k" })

--- nn.Parameter(t) — marks t as a parameter (requires_grad = true) so that
-- `self.name = nn.Parameter(t)` inside a module registers it.
function nn.Parameter(t)
  if not is_tensor(t) then error("Parameter: expected a tensor, got " .. type(t), 2) end
  t.requires_grad = true
  param_marks[t] = true
  return t
end

-- ---------------------------------------------------------------------------
-- Module

local Module = {}
nn.Module = Module
local module_classes = setmetatable({}, { __mode = "k" })

--- nn.is_module(x) — true for instances of any Module class.
function nn.is_module(x)
  return type(x) == "table" and module_classes[getmetatable(x)] == true
end
local is_module = nn.is_module

local function new_class(name, parent)
  local cls = {}
  module_classes[cls] = true
  cls.__name = name
  -- Fields resolve to registered parameters, buffers and children first
  -- (so that replacing one keeps the registry true), then to methods.
  cls.__index = function(self, k)
    local reg = rawget(self, "_parameters")
    if reg then
      local v = reg[k]
      if v ~= nil then return v end
      v = rawget(self, "_modules")[k]
      if v ~= nil then return v end
      v = rawget(self, "_buffers")[k]
      if v ~= nil then return v end
      if math.type(k) == "integer" then   -- seq[2] for the child named "2"
        v = rawget(self, "_modules")[tostring(k)]
        if v ~= nil then return v end
      end
    end
    return cls[k]
  end
  cls.__newindex = function(self, k, v) self:_assign(k, v) end
  cls.__call = function(self, ...) return self:forward(...) end
  cls.__tostring = function(self) return self:_tree() end
  cls.__len = function(self) return #rawget(self, "_module_order") end
  setmetatable(cls, {
    __index = parent,
    __call = function(c, ...)
      local obj = setmetatable({
        _parameters = {}, _param_order = {}, _modules = {}, _module_order = {},
        _buffers = {}, _buffer_order = {}, training = true,
      }, c)
      obj:init(...)
      return obj
    end,
  })
  return cls
end

--- nn.Module:extend(name) — a subclass; instances are made by calling it,
-- which runs cls:init(...).
function Module:extend(name)
  if type(name) ~= "string" then error("Module:extend: expected a class name", 2) end
  return new_class(name, self)
end

function Module:init() end

function Module:forward()
  error(("%s: forward is not implemented"):format(self.__name), 2)
end

local function remove_name(order, name)
  for i, n in ipairs(order) do
    if n == name then table.remove(order, i); return end
  end
end

local function add_name(order, map, name)
  if map[name] == nil then order[#order + 1] = name end
end

-- Drops name from every registry (before it is re-registered elsewhere).
local function unregister(self, name)
  if self._parameters[name] ~= nil then
    self._parameters[name] = nil; remove_name(self._param_order, name)
  end
  if self._modules[name] ~= nil then
    self._modules[name] = nil; remove_name(self._module_order, name)
  end
  if self._buffers[name] ~= nil then
    self._buffers[name] = nil; remove_name(self._buffer_order, name)
  end
end

function Module:_assign(k, v)
  if type(k) == "string" or math.type(k) == "integer" then
    local name = tostring(k)
    if is_module(v) then return self:add_module(name, v) end
    if is_tensor(v) and (param_marks[v] or self._parameters[name] ~= nil) then
      return self:register_parameter(name, v)
    end
    if is_tensor(v) and self._buffers[name] ~= nil then return self:register_buffer(name, v) end
    if self._parameters[name] ~= nil or self._modules[name] ~= nil or self._buffers[name] ~= nil then
      unregister(self, name)
      if v == nil then return end
    end
  end
  rawset(self, k, v)
end

--- Registers t (a tensor, made to require grad) as parameter `name`.
function Module:register_parameter(name, t)
  if type(name) ~= "string" or name == "" or name:find(".", 1, true) then
    error(("register_parameter: expected a name without dots, got %s"):format(tostring(name)), 2)
  end
  if t == nil then unregister(self, name); return end
  if not is_tensor(t) then
    error(("register_parameter: expected a tensor for '%s', got %s"):format(name, type(t)), 2)
  end
  local dt = t:dtype()
  if dt ~= "float32" and dt ~= "float64" then
    error(("register_parameter: parameter '%s' must be float32 or float64, got %s"):format(name, dt), 2)
  end
  if not t.is_leaf then
    error(("register_parameter: parameter '%s' must be a leaf tensor, got one with grad_fn %s "
           .. "(use :detach())"):format(name, t.grad_fn), 2)
  end
  if self._modules[name] ~= nil or self._buffers[name] ~= nil then unregister(self, name) end
  t.requires_grad = true
  add_name(self._param_order, self._parameters, name)
  self._parameters[name] = t
  rawset(self, name, nil)
end

--- Registers a tensor that is state but not a parameter (saved in
-- state_dict, not returned by parameters()).
function Module:register_buffer(name, t)
  if type(name) ~= "string" or name == "" or name:find(".", 1, true) then
    error(("register_buffer: expected a name without dots, got %s"):format(tostring(name)), 2)
  end
  if t ~= nil and not is_tensor(t) then
    error(("register_buffer: expected a tensor for '%s', got %s"):format(name, type(t)), 2)
  end
  if t == nil then unregister(self, name); return end
  if self._modules[name] ~= nil or self._parameters[name] ~= nil then unregister(self, name) end
  add_name(self._buffer_order, self._buffers, name)
  self._buffers[name] = t
  rawset(self, name, nil)
end

--- Registers a child module under `name` (also done by `self.name = m`).
function Module:add_module(name, m)
  name = tostring(name)
  if name == "" or name:find(".", 1, true) then
    error(("add_module: expected a name without dots, got '%s'"):format(name), 2)
  end
  if not is_module(m) then error(("add_module: expected a module for '%s', got %s"):format(name, type(m)), 2) end
  if self._parameters[name] ~= nil or self._buffers[name] ~= nil then unregister(self, name) end
  add_name(self._module_order, self._modules, name)
  self._modules[name] = m
  rawset(self, name, nil)
  return m
end

-- Depth-first over (prefix, module) pairs; each module once.
local function walk_modules(root, fn)
  local seen = {}
  local function go(m, prefix)
    if seen[m] then return end
    seen[m] = true
    fn(prefix, m)
    for _, name in ipairs(m._module_order) do
      go(m._modules[name], prefix == "" and name or prefix .. "." .. name)
    end
  end
  go(root, "")
end

local function list_iter(list)
  local i = 0
  return function()
    i = i + 1
    local e = list[i]
    if e then return e[1], e[2] end
  end
end

--- for name, p in model:named_parameters() — dotted names
-- ("layers.1.weight"), in registration order, each tensor once even when
-- shared by several modules (under the first name it was found).
function Module:named_parameters()
  local list, seen = {}, {}
  walk_modules(self, function(prefix, m)
    for _, name in ipairs(m._param_order) do
      local p = m._parameters[name]
      if not seen[p] then
        seen[p] = true
        list[#list + 1] = { prefix == "" and name or prefix .. "." .. name, p }
      end
    end
  end)
  return list_iter(list)
end

--- A list of the parameter tensors (each once), for optimizers.
function Module:parameters()
  local out = {}
  for _, p in self:named_parameters() do out[#out + 1] = p end
  return out
end

--- for name, b in model:named_buffers()
function Module:named_buffers()
  local list, seen = {}, {}
  walk_modules(self, function(prefix, m)
    for _, name in ipairs(m._buffer_order) do
      local b = m._buffers[name]
      if not seen[b] then
        seen[b] = true
        list[#list + 1] = { prefix == "" and name or prefix .. "." .. name, b }
      end
    end
  end)
  return list_iter(list)
end

--- The immediate children as a list (each once).
function Module:children()
  local out, seen = {}, {}
  for _, name in ipairs(self._module_order) do
    local m = self._modules[name]
    if not seen[m] then seen[m] = true; out[#out + 1] = m end
  end
  return out
end

--- for name, child in model:named_children()
function Module:named_children()
  local list, seen = {}, {}
  for _, name in ipairs(self._module_order) do
    local m = self._modules[name]
    if not seen[m] then seen[m] = true; list[#list + 1] = { name, m } end
  end
  return list_iter(list)
end

--- for name, m in model:named_modules() — the module itself first (name "").
function Module:named_modules()
  local list = {}
  walk_modules(self, function(prefix, m) list[#list + 1] = { prefix, m } end)
  return list_iter(list)
end

--- Every module in the tree, this one first.
function Module:modules()
  local out = {}
  walk_modules(self, function(_, m) out[#out + 1] = m end)
  return out
end

--- Calls fn(m) on every module, children before parents (as torch does);
-- returns self.  Typical use: custom initialisation.
function Module:apply(fn)
  for _, m in ipairs(self:children()) do m:apply(fn) end
  fn(self)
  return self
end

--- Number of parameter elements (shared tensors counted once).
function Module:num_parameters()
  local n = 0
  for _, p in ipairs(self:parameters()) do n = n + p:numel() end
  return n
end

--- Clears gradients: to nil (the default, as torch), or to zeros in place
-- with set_to_none = false.
function Module:zero_grad(set_to_none)
  for _, p in ipairs(self:parameters()) do
    if set_to_none == false then
      local g = p.grad
      if g then mm.no_grad(g.zero_, g) end
    else
      p.grad = nil
    end
  end
end

--- Sets training mode on this module and every descendant; returns self.
function Module:train(mode)
  if mode == nil then mode = true end
  for _, m in ipairs(self:modules()) do m.training = not not mode end
  return self
end

--- Evaluation mode (dropout off); returns self.
function Module:eval() return self:train(false) end

--- Converts every parameter and buffer to dtype ("float32"/"float64"),
-- keeping sharing; returns self.  Build optimizers after this: the
-- converted parameters are new tensors.
function Module:to(dtype)
  local map = {}
  local function conv(t, is_param)
    if map[t] then return map[t] end
    local c = t
    if t:dtype() ~= dtype then
      c = mm.no_grad(function() return t:detach():to(dtype):contiguous() end)
      if is_param then c.requires_grad = true end
    end
    map[t] = c
    return c
  end
  for _, m in ipairs(self:modules()) do
    for _, name in ipairs(m._param_order) do m._parameters[name] = conv(m._parameters[name], true) end
    for _, name in ipairs(m._buffer_order) do m._buffers[name] = conv(m._buffers[name], false) end
  end
  return self
end
function Module:double() return self:to("float64") end
function Module:float() return self:to("float32") end

-- PyTorch's spelling of the same names (state_dict{torch_names = true}).
-- Containers whose children are numbered (Sequential: "1", "2", ...; a
-- class sets _numbered_children) count from 1 here, as Lua does, and from
-- 0 in torch ("0", "1", ...).  The parameter and buffer names of the layers
-- both have (Linear, Conv2d, LayerNorm, Embedding: weight, bias) are
-- torch's already; a layer whose names differed would map them in its class
-- field _torch_names = {ours = "theirs"}.
local function torch_child_name(m, name)
  if m._numbered_children and name:match("^%d+$") then return tostring(tonumber(name) - 1) end
  return name
end

-- name -> live tensor for every parameter and buffer, under every name it
-- has (a shared tensor appears under each path, as in torch); with torch
-- set, under PyTorch's names.
local function own_tensors(self, torch)
  local out, order = {}, {}
  local function go(m, prefix, stack)
    if stack[m] then return end
    stack[m] = true
    local rename = torch and m._torch_names or {}
    for _, name in ipairs(m._param_order) do
      local key = prefix .. (rename[name] or name)
      order[#order + 1] = key; out[key] = m._parameters[name]
    end
    for _, name in ipairs(m._buffer_order) do
      local key = prefix .. (rename[name] or name)
      order[#order + 1] = key; out[key] = m._buffers[name]
    end
    for _, name in ipairs(m._module_order) do
      local seg = torch and torch_child_name(m, name) or name
      go(m._modules[name], prefix .. seg .. ".", stack)
    end
    stack[m] = nil
  end
  go(self, "", {})
  return out, order
end

--- A flat table of dotted name -> tensor (parameters and buffers, detached,
-- sharing storage with the model), ready for mm.save.  With
-- {torch_names = true}, the names PyTorch gives the same model
-- ("layers.0.weight" for MicroML's "layers.1.weight"), so that a file saved
-- with mm.save loads with torch's load_state_dict as it is.
function Module:state_dict(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error(("state_dict: expected an options table {torch_names = true} as argument 1, got %s")
          :format(type(opts)), 2)
  end
  options.check(opts, "state_dict", { "torch_names:boolean" }, { destination = NONE, prefix = "",
                keep_vars = false })
  local live = own_tensors(self, opts and opts.torch_names)
  local sd = {}
  for name, t in pairs(live) do sd[name] = t:detach() end
  return sd
end

-- Accepts flat dotted names and nested tables alike (mm.load gives flat).
local function flatten_sd(sd, prefix, out)
  for k, v in pairs(sd) do
    local name = prefix .. tostring(k)
    if is_tensor(v) then
      out[name] = v
    elseif type(v) == "table" then
      flatten_sd(v, name .. ".", out)
    else
      error(("load_state_dict: expected tensors, got a %s at '%s'"):format(type(v), name), 3)
    end
  end
  return out
end

--- Copies tensors from sd into the model's parameters and buffers (cast to
-- their dtypes).  Every shape must match.  strict (default true): names the
-- model has but sd lacks (missing) or sd has but the model lacks
-- (unexpected) are an error; with strict = false they are returned:
-- missing, unexpected (sorted lists).  Nothing is copied when it fails.
-- Names may be MicroML's or PyTorch's (see state_dict): the spelling that
-- names more of sd's keys is used, MicroML's on a tie; opts.torch_names =
-- true or false fixes it.  load_state_dict(sd, strict) or
-- load_state_dict(sd, {strict =, torch_names =}).
function Module:load_state_dict(sd, opts)
  local strict, torch = true, nil
  if type(opts) == "table" then
    options.check(opts, "load_state_dict", { "strict:boolean", "torch_names:boolean" }, { assign = false })
    if opts.strict ~= nil then strict = opts.strict end
    torch = opts.torch_names
  elseif opts ~= nil then
    strict = opts
  end
  if type(sd) ~= "table" then error("load_state_dict: expected a table of tensors, got " .. type(sd), 2) end
  local flat = flatten_sd(sd, "", {})
  if torch == nil then
    -- A whole-model dict matches one spelling entirely; counting per key
    -- (not per spelling) would be wrong: "layers.1.weight" can exist in both
    -- and name different tensors.
    local ours, theirs = own_tensors(self, false), own_tensors(self, true)
    local n_ours, n_theirs = 0, 0
    for name in pairs(flat) do
      if ours[name] then n_ours = n_ours + 1 end
      if theirs[name] then n_theirs = n_theirs + 1 end
    end
    torch = n_theirs > n_ours
  end
  local live, order = own_tensors(self, torch)
  local missing, unexpected, bad = {}, {}, {}
  for _, name in ipairs(order) do
    local src = flat[name]
    if src == nil then
      missing[#missing + 1] = name
    elseif not same_shape(src, live[name]) then
      bad[#bad + 1] = ("%s: expected shape %s, got %s"):format(name, shape_str(live[name]), shape_str(src))
    end
  end
  for name in pairs(flat) do
    if live[name] == nil then unexpected[#unexpected + 1] = name end
  end
  table.sort(missing)
  table.sort(unexpected)
  local problems = {}
  if #bad > 0 then problems[#problems + 1] = "shape mismatch for " .. table.concat(bad, "; ") end
  if strict and #missing > 0 then problems[#problems + 1] = "missing keys: " .. table.concat(missing, ", ") end
  if strict and #unexpected > 0 then
    problems[#problems + 1] = "unexpected keys: " .. table.concat(unexpected, ", ")
  end
  if #problems > 0 then
    error(("load_state_dict (%s%s): %s"):format(self.__name, torch and ", PyTorch names" or "",
                                               table.concat(problems, "; ")), 2)
  end
  mm.no_grad(function()
    for _, name in ipairs(order) do
      local src = flat[name]
      if src ~= nil then live[name]:copy_(src:to(live[name]:dtype())) end
    end
  end)
  return missing, unexpected
end

--- One line of description inside the parentheses of tostring(model).
function Module:extra_repr() return "" end

function Module:_tree()
  local lines = {}
  local function count(m)
    local n, seen = 0, {}
    for _, p in m:named_parameters() do
      if not seen[p] then seen[p] = true; n = n + p:numel() end
    end
    return n
  end
  local function go(m, label, indent)
    local line = indent .. label .. m.__name .. "(" .. m:extra_repr() .. ")"
    local own = {}
    for _, name in ipairs(m._param_order) do
      own[#own + 1] = name .. " " .. shape_str(m._parameters[name])
    end
    if #own > 0 then line = line .. "  " .. table.concat(own, ", ") end
    local n = count(m)
    if n > 0 and (#m._module_order > 0 or #own > 0) then
      line = line .. "  [" .. group_digits(n) .. "]"
    end
    lines[#lines + 1] = line
    for _, name in ipairs(m._module_order) do go(m._modules[name], "(" .. name .. "): ", indent .. "  ") end
  end
  go(self, "", "")
  lines[#lines + 1] = ("%s parameters"):format(group_digits(count(self)))
  return table.concat(lines, "\n")
end

-- ---------------------------------------------------------------------------
-- nn.init — in-place initialisers.  They draw from the seeded generator
-- (mm.manual_seed), run without recording, and return the tensor.

local init = {}
nn.init = init

local function fill_from(t, src)
  mm.no_grad(function() t:copy_(src) end)
  return t
end

local function check_float(where, t)
  if not is_tensor(t) then error(("%s: expected a tensor, got %s"):format(where, type(t)), 3) end
  local dt = t:dtype()
  if dt ~= "float32" and dt ~= "float64" then
    error(("%s: expected a float32 or float64 tensor, got %s"):format(where, dt), 3)
  end
end

local function fans(where, t)
  local s = t:shape()
  if #s < 2 then
    error(("%s: fan in and fan out need a tensor with at least 2 dimensions, got shape %s")
          :format(where, shape_str(t)), 3)
  end
  local receptive = 1
  for i = 3, #s do receptive = receptive * s[i] end
  return s[2] * receptive, s[1] * receptive
end

--- nn.init.calculate_gain(nonlinearity [, param]) — torch's table of gains.
function init.calculate_gain(nonlinearity, param)
  local n = nonlinearity
  if n == "linear" or n == "sigmoid" or n == "identity" or (type(n) == "string" and n:match("^conv")) then
    return 1
  elseif n == "tanh" then return 5 / 3
  elseif n == "relu" then return math.sqrt(2)
  elseif n == "leaky_relu" then
    local slope = param or 0.01
    return math.sqrt(2 / (1 + slope * slope))
  elseif n == "selu" then return 3 / 4
  end
  error(("calculate_gain: unknown nonlinearity '%s' (expected linear, conv1d/2d/3d, sigmoid, tanh, "
         .. "relu, leaky_relu or selu)"):format(tostring(n)), 2)
end

--- nn.init.uniform_(t, a = 0, b = 1)
function init.uniform_(t, a, b)
  check_float("uniform_", t)
  a, b = a or 0, b or 1
  return fill_from(t, mm.rand(t:shape(), { dtype = t:dtype() }) * (b - a) + a)
end

--- nn.init.normal_(t, mean = 0, std = 1)
function init.normal_(t, mean, std)
  check_float("normal_", t)
  mean, std = mean or 0, std or 1
  return fill_from(t, mm.randn(t:shape(), { dtype = t:dtype() }) * std + mean)
end

function init.constant_(t, v)
  check_float("constant_", t)
  mm.no_grad(function() t:fill_(v) end)
  return t
end
function init.zeros_(t) return init.constant_(t, 0) end
function init.ones_(t) return init.constant_(t, 1) end

--- nn.init.xavier_uniform_(t, gain = 1): U(-b, b), b = gain * sqrt(6 / (fan_in + fan_out)).
function init.xavier_uniform_(t, gain)
  check_float("xavier_uniform_", t)
  local fi, fo = fans("xavier_uniform_", t)
  local b = (gain or 1) * math.sqrt(6 / (fi + fo))
  return init.uniform_(t, -b, b)
end

--- nn.init.xavier_normal_(t, gain = 1): N(0, std), std = gain * sqrt(2 / (fan_in + fan_out)).
function init.xavier_normal_(t, gain)
  check_float("xavier_normal_", t)
  local fi, fo = fans("xavier_normal_", t)
  return init.normal_(t, 0, (gain or 1) * math.sqrt(2 / (fi + fo)))
end

-- kaiming_*_(t, a, mode, nonlinearity) or kaiming_*_(t, {a=, mode=, nonlinearity=})
local function kaiming_std(where, t, a, mode, nonlinearity)
  if type(a) == "table" then a, mode, nonlinearity = a.a, a.mode, a.nonlinearity end
  a, mode, nonlinearity = a or 0, mode or "fan_in", nonlinearity or "leaky_relu"
  local fi, fo = fans(where, t)
  local fan
  if mode == "fan_in" then fan = fi
  elseif mode == "fan_out" then fan = fo
  else error(("%s: expected mode 'fan_in' or 'fan_out', got '%s'"):format(where, tostring(mode)), 3) end
  if fan == 0 then return 0 end
  return init.calculate_gain(nonlinearity, a) / math.sqrt(fan)
end

--- nn.init.kaiming_uniform_(t, a = 0, mode = "fan_in", nonlinearity = "leaky_relu")
-- U(-b, b) with b = gain * sqrt(3 / fan), He et al.
function init.kaiming_uniform_(t, a, mode, nonlinearity)
  check_float("kaiming_uniform_", t)
  local b = math.sqrt(3) * kaiming_std("kaiming_uniform_", t, a, mode, nonlinearity)
  return init.uniform_(t, -b, b)
end

--- nn.init.kaiming_normal_(t, a = 0, mode = "fan_in", nonlinearity = "leaky_relu"): N(0, gain / sqrt(fan)).
function init.kaiming_normal_(t, a, mode, nonlinearity)
  check_float("kaiming_normal_", t)
  return init.normal_(t, 0, kaiming_std("kaiming_normal_", t, a, mode, nonlinearity))
end

-- ---------------------------------------------------------------------------
-- layers

local function class(name) return Module:extend(name) end

local function dtype_opt(where, opts)
  local dt = opts.dtype or "float32"
  if dt ~= "float32" and dt ~= "float64" then
    error(("%s: expected dtype float32 or float64, got %s"):format(where, tostring(dt)), 3)
  end
  return dt
end

-- torch's default for Linear and Conv2d: kaiming_uniform_ with a = sqrt(5),
-- which works out to U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the weight,
-- and the bias uniform in the same bound.
local function default_init(weight, bias)
  init.kaiming_uniform_(weight, math.sqrt(5))
  if bias then
    local fan_in = fans("reset_parameters", weight)
    local b = fan_in > 0 and 1 / math.sqrt(fan_in) or 0
    init.uniform_(bias, -b, b)
  end
end

--- nn.Linear(in_features, out_features [, {bias = true, dtype = "float32"}])
-- y = x W^T + b with W [out, in] (torch's layout); x may be [..., in].
local Linear = class("Linear")
nn.Linear = Linear
function Linear:init(in_features, out_features, opts, ...)
  init_arity("Linear", 3, select("#", ...) + 3)
  opts = init_opts(opts, "Linear", { "bias:boolean", "dtype:string" }, { device = "cpu" })
  check_size("Linear", "in_features", in_features, 0)
  check_size("Linear", "out_features", out_features, 0)
  local dt = dtype_opt("Linear", opts)
  self.in_features, self.out_features = in_features, out_features
  self:register_parameter("weight", mm.empty(out_features, in_features, { dtype = dt }))
  if opts.bias ~= false then self:register_parameter("bias", mm.empty(out_features, { dtype = dt })) end
  self:reset_parameters()
end
function Linear:reset_parameters() default_init(self.weight, self.bias) end
function Linear:forward(x)
  if not is_tensor(x) then error("Linear: expected a tensor input, got " .. type(x), 2) end
  if x:dim() == 0 or x:size(-1) ~= self.in_features then
    error(("Linear(%d -> %d): expected an input whose last dimension is %d, got shape %s")
          :format(self.in_features, self.out_features, self.in_features, shape_str(x)), 2)
  end
  return mm.linear(x, self.weight, self.bias)
end
function Linear:extra_repr()
  return ("%d -> %d%s"):format(self.in_features, self.out_features, self.bias and "" or ", bias=false")
end

--- nn.Sequential(m1, m2, ...) or nn.Sequential{m1, m2, ...}: children
-- named "1", "2", ... applied in order; seq[i] is the i-th, #seq the count.
local Sequential = class("Sequential")
nn.Sequential = Sequential
Sequential._numbered_children = true   -- "0", "1", ... in PyTorch's names
function Sequential:init(...)
  local mods = { ... }
  if select("#", ...) == 1 and type(mods[1]) == "table" and not is_module(mods[1]) then mods = mods[1] end
  for i, m in ipairs(mods) do
    if not is_module(m) then
      error(("Sequential: expected a module at position %d, got %s"):format(i, type(m)), 3)
    end
    self:add_module(tostring(i), m)
  end
end
--- seq:add(m) appends a module; returns seq.
function Sequential:add(m)
  self:add_module(tostring(#self._module_order + 1), m)
  return self
end
function Sequential:forward(x)
  for _, name in ipairs(self._module_order) do x = self._modules[name](x) end
  return x
end

-- activations

local function activation(name, fn, repr)
  local cls = class(name)
  nn[name] = cls
  cls.forward = fn
  if repr then cls.extra_repr = repr end
  return cls
end
activation("Identity", function(_, x) return x end)
local GELU = activation("GELU", function(self, x) return mm.gelu(x, self.approximate) end,
  function(self) return self.approximate == "tanh" and "approximate=tanh" or "" end)
--- nn.GELU([approximate = "none" | "tanh"])
function GELU:init(approximate, ...)
  init_arity("GELU", 1, select("#", ...) + 1)
  if type(approximate) == "table" then
    approximate = init_opts(approximate, "GELU", { "approximate:string" }).approximate
  end
  approximate = approximate or "none"
  if approximate ~= "none" and approximate ~= "tanh" then
    error(("GELU: expected approximate 'none' or 'tanh', got '%s'"):format(tostring(approximate)), 3)
  end
  self.approximate = approximate
end

-- Activation modules over pointwise ops: one line each, {module, op}.  The
-- constructor takes the op's parameters (names and defaults from the
-- pointwise table, runtime/pointwise.def) positionally or as an options
-- table, as the function does: nn.LeakyReLU(0.2), nn.Softplus{beta = 2}.
local pointwise_activations = {
  { "ReLU", "relu" }, { "Tanh", "tanh" }, { "Sigmoid", "sigmoid" }, { "SiLU", "silu" },
  { "LeakyReLU", "leaky_relu" }, { "Hardtanh", "hardtanh" }, { "ELU", "elu" },
  { "Softplus", "softplus" },
}
local inplace_activations = { ReLU = true, LeakyReLU = true, Hardtanh = true, ELU = true, SiLU = true }
local pointwise_params = {}
for _, op in ipairs(mm._pointwise_ops()) do pointwise_params[op.name] = op.params end

for _, entry in ipairs(pointwise_activations) do
  local name, fn = entry[1], entry[2]
  local params = assert(pointwise_params[fn], fn)
  local f = mm[fn]
  local cls = activation(name, function(self, x)
    if #params == 0 then return f(x) end
    if #params == 1 then return f(x, self[params[1].name]) end
    return f(x, self[params[1].name], self[params[2].name])
  end)
  local accepted = {}
  for i, p in ipairs(params) do accepted[i] = p.name .. ":number" end
  local unsupported = inplace_activations[name] and { inplace = false } or nil
  if #params == 0 then
    function cls:init(first, ...)
      init_arity(name, type(first) == "table" and 1 or 0, select("#", ...) + (first ~= nil and 1 or 0))
      init_opts(first, name, accepted, unsupported)
    end
  end
  if #params > 0 then
    function cls:init(first, ...)
      if type(first) == "table" then
        init_arity(name, 1, select("#", ...) + 1)
        init_opts(first, name, accepted, unsupported)
      else
        init_arity(name, #params, select("#", ...) + 1)
      end
      local args = type(first) == "table" and first or { first, ... }
      for i, p in ipairs(params) do
        local v = args[p.name]
        if v == nil then v = args[i] end
        if v == nil then v = p.default end
        if type(v) ~= "number" then
          error(("%s: expected %s to be a number, got %s"):format(name, p.name, type(v)), 3)
        end
        self[p.name] = v
      end
    end
    function cls:extra_repr()
      local parts = {}
      for i, p in ipairs(params) do parts[i] = p.name .. "=" .. tostring(self[p.name]) end
      return table.concat(parts, ", ")
    end
  end
end

-- MLP's activation = "<op>": every module above by its op's name.
local activations = { gelu = nn.GELU, identity = nn.Identity, none = nn.Identity }
for _, entry in ipairs(pointwise_activations) do activations[entry[2]] = nn[entry[1]] end

--- nn.Dropout([p = 0.5]): zeroes elements with probability p in training
-- mode and scales the rest by 1/(1-p); the identity in eval mode.
local Dropout = class("Dropout")
nn.Dropout = Dropout
function Dropout:init(p, ...)
  init_arity("Dropout", 1, select("#", ...) + 1)
  p = p or 0.5
  if type(p) ~= "number" or not (p >= 0 and p <= 1) then
    error(("Dropout: expected a probability p in [0, 1], got %s"):format(tostring(p)), 3)
  end
  self.p = p
end
function Dropout:forward(x)
  if not self.training or self.p == 0 then return x end
  return mm.dropout(x, self.p, true)
end
function Dropout:extra_repr() return "p=" .. self.p end

--- nn.LayerNorm(normalized_shape [, {eps = 1e-5, elementwise_affine = true, bias = true, dtype =}])
-- normalized_shape: an integer or a table of the trailing sizes.  The
-- affine weight starts at ones and the bias at zeros.
local LayerNorm = class("LayerNorm")
nn.LayerNorm = LayerNorm
function LayerNorm:init(shape, opts, ...)
  init_arity("LayerNorm", 2, select("#", ...) + 2)
  opts = init_opts(opts, "LayerNorm", { "eps:number", "elementwise_affine:boolean", "bias:boolean",
                   "dtype:string" }, { device = "cpu" })
  if math.type(shape) == "integer" then shape = { shape } end
  if type(shape) ~= "table" or #shape == 0 then
    error(("LayerNorm: expected normalized_shape as an integer or a table of sizes, got %s")
          :format(tostring(shape)), 3)
  end
  for i, s in ipairs(shape) do check_size("LayerNorm", "normalized_shape[" .. i .. "]", s) end
  local dt = dtype_opt("LayerNorm", opts)
  self.normalized_shape = { table.unpack(shape) }
  self.eps = opts.eps or 1e-5
  if opts.elementwise_affine ~= false then
    self:register_parameter("weight", mm.ones(shape, { dtype = dt }))
    if opts.bias ~= false then self:register_parameter("bias", mm.zeros(shape, { dtype = dt })) end
  end
end
function LayerNorm:forward(x)
  return mm.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
end
function LayerNorm:extra_repr()
  return ("(%s), eps=%g%s"):format(table.concat(self.normalized_shape, ", "), self.eps,
                                  self.weight and "" or ", elementwise_affine=false")
end

--- nn.Embedding(num_embeddings, embedding_dim [, {dtype =}]): a lookup
-- table initialised N(0, 1) as in torch; indices are int64, 1-based.
local Embedding = class("Embedding")
nn.Embedding = Embedding
function Embedding:init(num, dim, opts, ...)
  init_arity("Embedding", 3, select("#", ...) + 3)
  opts = init_opts(opts, "Embedding", { "dtype:string" }, { padding_idx = NONE, max_norm = NONE,
                   norm_type = 2, scale_grad_by_freq = false, sparse = false, _weight = NONE,
                   _freeze = false, device = "cpu" })
  check_size("Embedding", "num_embeddings", num)
  check_size("Embedding", "embedding_dim", dim)
  self.num_embeddings, self.embedding_dim = num, dim
  self:register_parameter("weight", mm.randn(num, dim, { dtype = dtype_opt("Embedding", opts) }))
end
function Embedding:forward(idx) return mm.embedding(self.weight, idx) end
function Embedding:extra_repr() return ("%d, %d"):format(self.num_embeddings, self.embedding_dim) end

--- nn.Flatten([start_dim = 2 [, end_dim = -1]]): merges dims start..end;
-- the default keeps the batch dim, as torch's nn.Flatten.
local Flatten = class("Flatten")
nn.Flatten = Flatten
function Flatten:init(start_dim, end_dim, ...)
  init_arity("Flatten", 2, select("#", ...) + 2)
  self.start_dim, self.end_dim = start_dim or 2, end_dim or -1
end
function Flatten:forward(x)
  if not is_tensor(x) then error(("Flatten: expected a tensor, got %s"):format(type(x)), 2) end
  return x:flatten(self.start_dim, self.end_dim)
end
function Flatten:extra_repr() return ("start_dim=%d, end_dim=%d"):format(self.start_dim, self.end_dim) end

--- nn.Conv2d(in_channels, out_channels, kernel_size [, {stride = 1, padding = 0, bias = true, dtype =}])
-- NCHW; kernel_size, stride and padding a number or {h, w}.  Weight
-- [out, in, kh, kw] with torch's default initialisation (see Linear).
local Conv2d = class("Conv2d")
nn.Conv2d = Conv2d
function Conv2d:init(cin, cout, kernel, opts, ...)
  init_arity("Conv2d", 4, select("#", ...) + 4)
  opts = init_opts(opts, "Conv2d", { "stride:number|table", "padding:number|table", "bias:boolean",
                   "dtype:string" }, { dilation = 1, groups = 1, padding_mode = "zeros", device = "cpu" })
  check_size("Conv2d", "in_channels", cin)
  check_size("Conv2d", "out_channels", cout)
  local k = pair("Conv2d", "kernel_size", kernel, 1)
  self.in_channels, self.out_channels, self.kernel_size = cin, cout, k
  self.stride = pair("Conv2d", "stride", opts.stride or 1, 1)
  self.padding = pair("Conv2d", "padding", opts.padding or 0, 0)
  local dt = dtype_opt("Conv2d", opts)
  self:register_parameter("weight", mm.empty(cout, cin, k[1], k[2], { dtype = dt }))
  if opts.bias ~= false then self:register_parameter("bias", mm.empty(cout, { dtype = dt })) end
  self:reset_parameters()
end
function Conv2d:reset_parameters() default_init(self.weight, self.bias) end
function Conv2d:forward(x)
  return mm.conv2d(x, self.weight, self.bias, self.stride, self.padding)
end
function Conv2d:extra_repr()
  return ("%d, %d, kernel_size={%d, %d}, stride={%d, %d}, padding={%d, %d}%s"):format(
    self.in_channels, self.out_channels, self.kernel_size[1], self.kernel_size[2],
    self.stride[1], self.stride[2], self.padding[1], self.padding[2], self.bias and "" or ", bias=false")
end

-- pooling: nn.MaxPool2d(kernel [, stride = kernel [, padding = 0]]), also
-- with an options table {stride =, padding =} as the second argument.
local function pool(name, fn, unsupported)
  local cls = class(name)
  nn[name] = cls
  function cls:init(kernel, stride, padding, ...)
    if type(stride) == "table" and stride[1] == nil then   -- an options table, not {h, w}
      init_arity(name, 2, select("#", ...) + (padding ~= nil and 3 or 2))
      local o = init_opts(stride, name, { "stride:number|table", "padding:number|table" }, unsupported)
      stride, padding = o.stride, o.padding
    else
      init_arity(name, 3, select("#", ...) + 3)
    end
    self.kernel_size = pair(name, "kernel_size", kernel, 1)
    self.stride = pair(name, "stride", stride or kernel, 1)
    self.padding = pair(name, "padding", padding or 0, 0)
  end
  function cls:forward(x) return mm[fn](x, self.kernel_size, self.stride, self.padding) end
  function cls:extra_repr()
    return ("kernel_size={%d, %d}, stride={%d, %d}, padding={%d, %d}"):format(self.kernel_size[1],
      self.kernel_size[2], self.stride[1], self.stride[2], self.padding[1], self.padding[2])
  end
end
pool("MaxPool2d", "max_pool2d", { dilation = 1, return_indices = false, ceil_mode = false })
-- MaxPool2d's windows count padding as PyTorch's default count_include_pad = true.
pool("AvgPool2d", "avg_pool2d", { ceil_mode = false, count_include_pad = true, divisor_override = NONE })

--- nn.MLP{sizes = {784, 256, 128, 10} [, activation = "relu"] [, dropout = p]
--         [, norm = "layernorm"] [, bias = true] [, dtype =]}
-- Linear layers between consecutive sizes; after each but the last:
-- [LayerNorm] -> activation -> [Dropout].  The stack is `layers`, so
-- parameter names read layers.1.weight, layers.1.bias, ...
local MLP = class("MLP")
nn.MLP = MLP
function MLP:init(opts, ...)
  init_arity("MLP", 1, select("#", ...) + 1)
  if type(opts) ~= "table" or type(opts.sizes) ~= "table" or #opts.sizes < 2 then
    error("MLP: expected {sizes = {in, hidden..., out}} with at least two sizes", 3)
  end
  init_opts(opts, "MLP", { "sizes:table", "activation", "dropout:number", "norm:string", "bias:boolean",
            "dtype:string" })
  local sizes = opts.sizes
  for i, s in ipairs(sizes) do check_size("MLP", "sizes[" .. i .. "]", s) end
  local act = opts.activation or "relu"
  local make_act
  if type(act) == "string" then
    local cls = activations[act]
    if not cls then
      local names = {}
      for k in pairs(activations) do names[#names + 1] = k end
      table.sort(names)
      error(("MLP: unknown activation '%s' (expected one of: %s)"):format(act, table.concat(names, ", ")), 3)
    end
    make_act = function() return cls() end
  elseif type(act) == "function" or (type(act) == "table" and module_classes[act]) then
    make_act = act
  else
    error("MLP: expected activation to be a name, a module class or a function returning a module", 3)
  end
  if opts.norm ~= nil and opts.norm ~= "layernorm" and opts.norm ~= "none" then
    error(("MLP: expected norm 'layernorm' or 'none', got '%s'"):format(tostring(opts.norm)), 3)
  end
  local dropout = opts.dropout or 0
  local layers = {}
  for i = 1, #sizes - 1 do
    layers[#layers + 1] = Linear(sizes[i], sizes[i + 1], { bias = opts.bias, dtype = opts.dtype })
    if i < #sizes - 1 then
      if opts.norm == "layernorm" then layers[#layers + 1] = LayerNorm(sizes[i + 1], { dtype = opts.dtype }) end
      layers[#layers + 1] = make_act()
      if dropout > 0 then layers[#layers + 1] = Dropout(dropout) end
    end
  end
  self.sizes = { table.unpack(sizes) }
  self.layers = Sequential(layers)
end
function MLP:forward(x) return self.layers(x) end
function MLP:extra_repr() return table.concat(self.sizes, " -> ") end

-- ---------------------------------------------------------------------------
-- losses: functions (nn.cross_entropy(input, target, opts)) and modules
-- (nn.CrossEntropyLoss(opts)(input, target)).  The fused ones live in C.

-- The options each loss takes (its module and its function alike), and the
-- ones PyTorch has that MicroML does not support yet.
local LOSS_OPTIONS = {
  CrossEntropyLoss = { "reduction:string", "label_smoothing:number", "ignore_index:number" },
  NLLLoss = { "reduction:string", "ignore_index:number" },
  MSELoss = { "reduction:string" },
  L1Loss = { "reduction:string" },
  HuberLoss = { "delta:number", "reduction:string" },
  BCEWithLogitsLoss = { "reduction:string" },
}
local LOSS_UNSUPPORTED = {
  CrossEntropyLoss = { weight = NONE },
  NLLLoss = { weight = NONE },
  BCEWithLogitsLoss = { weight = NONE, pos_weight = NONE },
}

local function reduce(where, t, reduction)
  reduction = reduction or "mean"
  if reduction == "mean" then return t:mean()
  elseif reduction == "sum" then return t:sum()
  elseif reduction == "none" then return t end
  error(("%s: expected reduction 'mean', 'sum' or 'none', got '%s'"):format(where, tostring(reduction)), 3)
end

local function check_pair(where, a, b)
  if not is_tensor(a) or not is_tensor(b) then
    error(("%s: expected input and target tensors, got %s and %s"):format(where, type(a), type(b)), 3)
  end
  -- Broadcasting a target against an input is almost always a bug (an
  -- [N, 1] output against an [N] target gives an [N, N] loss).
  if not same_shape(a, b) then
    error(("%s: expected input and target of the same shape, got %s and %s")
          :format(where, shape_str(a), shape_str(b)), 3)
  end
end

--- nn.cross_entropy(logits [N, C], labels [N] int64 in 1..C [, {reduction =, label_smoothing =, ignore_index =}])
function nn.cross_entropy(input, target, opts, ...) return mm.cross_entropy(input, target, opts, ...) end
--- nn.nll_loss(log_probs [N, C], labels [N] [, opts])
function nn.nll_loss(input, target, opts, ...) return mm.nll_loss(input, target, opts, ...) end
--- nn.mse_loss(input, target [, {reduction = "mean"}])
function nn.mse_loss(input, target, opts, ...) return mm.mse_loss(input, target, opts, ...) end
--- nn.binary_cross_entropy_with_logits(logits, targets in [0, 1] [, {reduction =}])
function nn.binary_cross_entropy_with_logits(input, target, opts, ...)
  return mm.binary_cross_entropy_with_logits(input, target, opts, ...)
end

--- nn.l1_loss(input, target [, {reduction = "mean"}]): |input - target|.
function nn.l1_loss(input, target, opts, ...)
  options.arity("l1_loss", 3, select("#", ...) + 3)
  check_pair("l1_loss", input, target)
  if opts ~= nil and type(opts) ~= "table" then
    error(("l1_loss: expected an options table as argument 3, got %s"):format(type(opts)), 2)
  end
  options.check(opts, "l1_loss", LOSS_OPTIONS.L1Loss)
  return reduce("l1_loss", (input - target):abs(), opts and opts.reduction)
end

--- nn.huber_loss(input, target [, {delta = 1, reduction = "mean"}]):
-- 0.5 d^2 where |d| <= delta, delta (|d| - delta/2) elsewhere, d = input - target.
function nn.huber_loss(input, target, opts, ...)
  options.arity("huber_loss", 3, select("#", ...) + 3)
  opts = opts or {}
  if type(opts) ~= "table" then
    error(("huber_loss: expected an options table as argument 3, got %s"):format(type(opts)), 2)
  end
  options.check(opts, "huber_loss", LOSS_OPTIONS.HuberLoss)
  check_pair("huber_loss", input, target)
  local delta = opts.delta or 1
  if type(delta) ~= "number" or not (delta > 0) then
    error(("huber_loss: expected delta > 0, got %s"):format(tostring(delta)), 2)
  end
  local d = input - target
  local ad = d:abs()
  local quad = d * d * 0.5
  local lin = (ad - 0.5 * delta) * delta
  return reduce("huber_loss", mm.where(ad:le(delta), quad, lin), opts.reduction)
end

local function loss_module(name, fn)
  local cls = class(name)
  nn[name] = cls
  function cls:init(opts, ...)
    init_arity(name, 1, select("#", ...) + 1)
    self.opts = init_opts(opts, name, LOSS_OPTIONS[name], LOSS_UNSUPPORTED[name])
  end
  function cls:forward(input, target) return fn(input, target, self.opts) end
  function cls:extra_repr()
    local keys = {}
    for k in pairs(self.opts) do keys[#keys + 1] = k end
    table.sort(keys)
    for i, k in ipairs(keys) do keys[i] = k .. "=" .. tostring(self.opts[k]) end
    return table.concat(keys, ", ")
  end
end
loss_module("CrossEntropyLoss", nn.cross_entropy)
loss_module("NLLLoss", nn.nll_loss)
loss_module("MSELoss", nn.mse_loss)
loss_module("L1Loss", nn.l1_loss)
loss_module("HuberLoss", nn.huber_loss)
loss_module("BCEWithLogitsLoss", nn.binary_cross_entropy_with_logits)

return nn
