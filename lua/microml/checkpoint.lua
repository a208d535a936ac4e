--- microml.checkpoint — whole training checkpoints on top of mm.save/mm.load
-- (safetensors): tensors plus plain Lua values in one file, written
-- crash-safely by the runtime's writer.
--
-- A checkpoint is any nested Lua table of tensors, numbers, strings and
-- booleans ({model = model:state_dict(), optimizer = opt:state_dict(),
-- epoch = 3, rng = mm.get_rng_state()}).  Tensors go into the safetensors
-- body under their dotted paths; the rest of the table, with each tensor
-- replaced by a reference to its name, goes into one metadata string as
-- JSON data (checkpoint format 2, grammar in runtime/io.h), which the
-- runtime's strict reader turns back into the table exactly: integers
-- over all of int64, floats in hex, strings as bytes, integer and string
-- keys kept apart.  Loading never runs anything from the file.
--
-- Format 1 stored that part as a Lua literal and ran it with load(), so a
-- crafted file could hang the loader or compute values; such files are
-- refused with a message naming the format.

local mm = require "microml"
local options = require "microml.options"
local is_tensor = mm.is_tensor
local M = {}

local META_KEY = "microml.checkpoint"
local FORMAT_KEY = "microml.checkpoint.format"
local FORMAT = "2"

-- A byte string as a JSON string of printable ASCII: every other byte,
-- and '"' and '\', as \u00XX, so NUL and invalid UTF-8 survive.
local function jstring(s)
  return '"' .. s:gsub('[%z\1-\31"\\\127-\255]', function(c)
    return ("\\u%04x"):format(c:byte())
  end) .. '"'
end

local function literal(v)
  local tv = math.type(v)
  if tv == "integer" then return ("%d"):format(v) end
  if tv == "float" then
    local f
    if v ~= v then f = "nan"
    elseif v == math.huge then f = "inf"
    elseif v == -math.huge then f = "-inf"
    else f = ("%a"):format(v) end
    return ('{"f":"%s"}'):format(f)
  end
  if type(v) == "string" then return jstring(v) end
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
        s = '{"tensor":' .. jstring(name) .. "}"
      elseif type(v) == "table" then
        s = walk(v, name)
      else
        s = literal(v)
        if not s then
          error(("save_checkpoint: cannot save a %s at '%s' (expected tensors, numbers, strings, "
                 .. "booleans and tables of them)"):format(type(v), name), 4)
        end
      end
      parts[#parts + 1] = ("[%s,%s]"):format(literal(k), s)
    end
    seen[t] = nil
    return '{"t":[' .. table.concat(parts, ",") .. "]}"
  end
  local skeleton = walk(tbl, "")
  return tensors, skeleton
end

--- checkpoint.save_checkpoint(path, tbl) (also optim.save_checkpoint) — see above; needs mm.save.
function M.save_checkpoint(path, tbl, ...)
  options.arity("save_checkpoint", 2, select("#", ...) + 2)
  if type(path) ~= "string" then error("save_checkpoint: expected a path as argument 1", 2) end
  if type(tbl) ~= "table" or is_tensor(tbl) then
    error("save_checkpoint: expected a table as argument 2", 2)
  end
  local tensors, skeleton = split_checkpoint(tbl)
  mm.save(path, tensors, { [META_KEY] = skeleton, [FORMAT_KEY] = FORMAT })
end

--- checkpoint.load_checkpoint(path) (also optim.load_checkpoint) -> the table given to save_checkpoint.
function M.load_checkpoint(path, ...)
  options.arity("load_checkpoint", 1, select("#", ...) + 1)
  local tensors, meta = mm.load(path)
  local skeleton = meta and meta[META_KEY]
  if type(skeleton) ~= "string" then
    error(("load_checkpoint: '%s' has no '%s' metadata (was it written by save_checkpoint?)")
          :format(tostring(path), META_KEY), 2)
  end
  local format = meta[FORMAT_KEY]
  if format == nil then
    error(("load_checkpoint: '%s' is a checkpoint in format 1 (Lua-literal metadata, no '%s' "
           .. "entry), which is no longer read because reading it meant running it as code; "
           .. "expected format %s (load it with an older MicroML only if you trust it, and save "
           .. "it again)"):format(tostring(path), FORMAT_KEY, FORMAT), 2)
  end
  if format ~= FORMAT then
    error(("load_checkpoint: '%s' has checkpoint format '%s', expected format %s")
          :format(tostring(path), format:sub(1, 40), FORMAT), 2)
  end
  return mm._checkpoint_decode(skeleton, tensors, tostring(path))
end

return M
