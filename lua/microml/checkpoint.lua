--- microml.checkpoint — whole training checkpoints on top of mm.save/mm.load
-- (safetensors): tensors plus plain Lua values in one file, written
-- crash-safely by the runtime's writer.
--
-- A checkpoint is any nested Lua table of tensors, numbers, strings and
-- booleans ({model = model:state_dict(), optimizer = opt:state_dict(),
-- epoch = 3, rng = mm.get_rng_state()}).  Tensors go into the safetensors
-- body under their dotted paths; the rest of the table, with each tensor
-- replaced by a reference to its name, goes into one metadata string as a
-- Lua literal that loads back exactly (floats are written in hex).

local mm = require "microml"
local is_tensor = mm.is_tensor
local M = {}

local META_KEY = "microml.checkpoint"

local function literal(v)
  local tv = math.type(v)
  -- "-9223372036854775808" would read back as a float (the minus sign is
  -- an operator applied to a literal that overflows), so spell it out.
  if v == math.mininteger then return "(-9223372036854775807-1)" end
  if tv == "integer" then return ("%d"):format(v) end
  if tv == "float" then
    if v ~= v then return "(0/0)" end
    if v == math.huge then return "(1/0)" end
    if v == -math.huge then return "(-1/0)" end
    return ("%a"):format(v)
  end
  if type(v) == "string" then return ("%q"):format(v) end
  if type(v) == "boolean" then return tostring(v) end
  return nil
end

local function split_checkpoint(tbl)
  local tensors, seen = {}, {}
  local function walk(t, path)
    if seen[t] then error("save_checkpoint: the table contains a cycle at '" .. path .. "'", 4) end
    seen[t] = true
    local keys = {}
    for k in pairs(t) do
      if math.type(k) ~= "integer" and type(k) ~= "string" then
        error(("save_checkpoint: keys must be strings or integers, got a %s key under '%s'")
              :format(type(k), path), 4)
      end
      keys[#keys + 1] = k
    end
    table.sort(keys, function(a, b)
      if type(a) == type(b) then return a < b end
      return type(a) == "number"
    end)
    local parts = {}
    for _, k in ipairs(keys) do
      local v, name = t[k], path == "" and tostring(k) or path .. "." .. tostring(k)
      local s
      if is_tensor(v) then
        if tensors[name] then
          error(("save_checkpoint: two tensors would both be saved as '%s'"):format(name), 4)
        end
        tensors[name] = v
        s = ("{__tensor=%q}"):format(name)
      elseif type(v) == "table" then
        s = walk(v, name)
      else
        s = literal(v)
        if not s then
          error(("save_checkpoint: cannot save a %s at '%s' (expected tensors, numbers, strings, "
                 .. "booleans and tables of them)"):format(type(v), name), 4)
        end
      end
      parts[#parts + 1] = ("[%s]=%s"):format(literal(k), s)
    end
    seen[t] = nil
    return "{" .. table.concat(parts, ",") .. "}"
  end
  local skeleton = walk(tbl, "")
  return tensors, skeleton
end

--- checkpoint.save_checkpoint(path, tbl) (also optim.save_checkpoint) — see above; needs mm.save.
function M.save_checkpoint(path, tbl)
  if type(path) ~= "string" then error("save_checkpoint: expected a path as argument 1", 2) end
  if type(tbl) ~= "table" or is_tensor(tbl) then
    error("save_checkpoint: expected a table as argument 2", 2)
  end
  local tensors, skeleton = split_checkpoint(tbl)
  mm.save(path, tensors, { [META_KEY] = skeleton })
end

--- checkpoint.load_checkpoint(path) (also optim.load_checkpoint) -> the table given to save_checkpoint.
function M.load_checkpoint(path)
  local tensors, meta = mm.load(path)
  local skeleton = meta and meta[META_KEY]
  if type(skeleton) ~= "string" then
    error(("load_checkpoint: '%s' has no '%s' metadata (was it written by save_checkpoint?)")
          :format(tostring(path), META_KEY), 2)
  end
  local chunk, err = load("return " .. skeleton, "=checkpoint", "t", {})
  if not chunk then error("load_checkpoint: corrupt metadata in '" .. path .. "': " .. err, 2) end
  local ok, tbl = pcall(chunk)
  if not ok or type(tbl) ~= "table" then
    error("load_checkpoint: corrupt metadata in '" .. path .. "'", 2)
  end
  local function resolve(t)
    for k, v in pairs(t) do
      if type(v) == "table" then
        if v.__tensor then
          local x = tensors[v.__tensor]
          if not x then
            error(("load_checkpoint: '%s' lacks the tensor '%s'"):format(path, v.__tensor), 3)
          end
          t[k] = x
        else
          resolve(v)
        end
      end
    end
  end
  resolve(tbl)
  return tbl
end

return M
