--- microml — the Lua face of the MicroML runtime.
-- `local mm = require "microml"` gives the tensor library (from the C core,
-- microml.core) plus the Lua-side pieces, loaded on first use:
-- mm.nn, mm.optim, mm.data, mm.viz, mm.progress, mm.checkpoint, mm.autograd.
local core = require "microml.core"

local M = core

local submodules = { nn = true, optim = true, data = true, viz = true, progress = true,
                     checkpoint = true, autograd = true }

setmetatable(M, {
  __index = function(t, k)
    if submodules[k] then
      local mod = require("microml." .. k)
      rawset(t, k, mod)
      return mod
    end
  end,
})

-- gradcheck is a function, not a table of functions.
M.gradcheck = function(...) return require("microml.gradcheck")(...) end

return M
