--- microml.options — strict options tables, shared by every Lua-side
-- function that takes one (nn, optim, data, viz, progress, autograd).
--
--   options.check(opts, where, accepted [, unsupported [, level]]) -> opts or {}
--
-- accepted lists the option names, each optionally typed: "bias:boolean",
-- "stride:number|table", "dtype:string"; an untyped name takes any value.
-- unsupported maps options PyTorch has and MicroML does not (yet) to the
-- PyTorch default, which is the one value allowed for them:
-- {groups = 1, padding_idx = options.NONE} (NONE: PyTorch's None, so any
-- value is refused).  A table value equals a number default when all its
-- entries do ({1, 1} for dilation = 1).
--
-- Errors name the function, the key and what is accepted:
--   Conv2d: unknown option 'bais' (accepted: stride, padding, bias, dtype)
--   Conv2d: option 'groups' is not supported yet (PyTorch's groups; got 3, only 1 works)
--   Linear: expected bias to be a boolean, got number
-- The C bindings do the same with mm_lua_check_options (lua_helpers.h).
local core = require "microml.core"

local M = {}

--- PyTorch's None as an unsupported option's default: any value is refused.
M.NONE = setmetatable({}, { __tostring = function() return "nil" end })

local parsed = setmetatable({}, { __mode = "k" })

-- accepted list -> { names = {...}, types = {name = {type = true}} | name = false }
local function parse(accepted)
  local p = parsed[accepted]
  if p then return p end
  p = { names = {}, types = {} }
  for i, spec in ipairs(accepted) do
    local name, types = spec:match("^([^:]+):?(.*)$")
    p.names[i] = name
    if types == "" then p.types[name] = false
    else
      local set = { text = types:gsub("|", " or ") }
      for t in types:gmatch("[^|]+") do set[t] = true end
      p.types[name] = set
    end
  end
  parsed[accepted] = p
  return p
end

local function type_of(v)
  if core.is_tensor(v) then return "tensor" end
  if math.type(v) == "integer" then return "integer" end
  return type(v)
end

local function matches_default(v, default)
  if v == default then return true end
  if type(v) == "table" and not core.is_tensor(v) and type(default) == "number" then
    local n = 0
    for _, x in pairs(v) do
      if x ~= default then return false end
      n = n + 1
    end
    return n > 0
  end
  return false
end

local function key_str(k)
  if type(k) == "string" then return "'" .. k .. "'" end
  return ("[%s] (a %s key)"):format(tostring(k), type(k))
end

function M.check(opts, where, accepted, unsupported, level)
  level = (level or 2) + 1
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    error(("%s: expected an options table, got %s"):format(where, type_of(opts)), level)
  end
  local p = parse(accepted)
  for k, v in pairs(opts) do
    local types = p.types[k]
    if types == nil then
      if unsupported and type(k) == "string" and unsupported[k] ~= nil then
        local default = unsupported[k]
        if default == M.NONE or not matches_default(v, default) then
          error(("%s: option '%s' is not supported yet (PyTorch's %s; got %s, only %s works)")
                :format(where, k, k, tostring(v), default == M.NONE and "nil" or tostring(default)), level)
        end
      else
        error(("%s: unknown option %s (accepted: %s)"):format(where, key_str(k),
              #p.names > 0 and table.concat(p.names, ", ") or "none"), level)
      end
    elseif types then
      local t = type_of(v)
      if not (types[t] or (t == "integer" and types.number)) then
        error(("%s: expected %s to be a %s, got %s"):format(where, k, types.text,
              t == "integer" and "number" or t), level)
      end
    end
  end
  return opts
end

--- options.arity(where, max, n [, level]): refuses a call with more than
-- max arguments ("Linear: expected at most 3 arguments, got 4").
function M.arity(where, max, n, level)
  if n > max then
    error(("%s: expected at most %d argument%s, got %d"):format(where, max, max == 1 and "" or "s", n),
          (level or 2) + 1)
  end
end

return M
