--- microml.autograd — gradients on demand (mm.autograd.grad) next to the
-- tensor methods the C core provides (t:backward, t:register_hook,
-- mm.no_grad, mm.enable_grad).
local core = require "microml.core"

local M = {}

local GRAD_OPTIONS = { "grad_outputs", "retain_graph", "create_graph", "allow_unused" }

local function check_options(opts, where, accepted)
  if opts == nil then return {} end
  if type(opts) ~= "table" or core.is_tensor(opts) then
    error(("%s: expected an options table, got %s"):format(where, type(opts)), 3)
  end
  for k in pairs(opts) do
    local ok = false
    for _, a in ipairs(accepted) do ok = ok or k == a end
    if not ok then
      error(("%s: unknown option '%s' (accepted: %s)"):format(where, tostring(k),
            table.concat(accepted, ", ")), 3)
    end
  end
  return opts
end

--- mm.autograd.grad(outputs, inputs [, {grad_outputs =, retain_graph = false,
--- allow_unused = false}]) -> list of gradients, one per input.
-- outputs and inputs are tensors or lists of tensors; no .grad is touched
-- (torch.autograd.grad).  grad_outputs gives each output's incoming
-- gradient (nil entries for one-element outputs).  An input the outputs do
-- not depend on is an error unless allow_unused, which gives nil for it.
-- Example: local gx = mm.autograd.grad((x * x):sum(), x)[1]  -- 2 x
function M.grad(outputs, inputs, opts)
  opts = check_options(opts, "autograd.grad", GRAD_OPTIONS)
  if opts.create_graph then
    error("autograd.grad: create_graph = true (higher-order gradients) is not supported yet", 2)
  end
  return core._autograd_grad(outputs, inputs, opts.grad_outputs, opts.retain_graph,
                             opts.allow_unused)
end

return M
