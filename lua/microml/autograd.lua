--- microml.autograd — gradients on demand (mm.autograd.grad) next to the
-- tensor methods the C core provides (t:backward, t:register_hook,
-- mm.no_grad, mm.enable_grad).
local core = require "microml.core"

local M = {}

local options = require "microml.options"

local GRAD_OPTIONS = { "grad_outputs", "retain_graph", "create_graph", "allow_unused" }
local GRAD_UNSUPPORTED = { is_grads_batched = false, materialize_grads = false }

--- mm.autograd.grad(outputs, inputs [, {grad_outputs =, retain_graph = false,
--- allow_unused = false}]) -> list of gradients, one per input.
-- outputs and inputs are tensors or lists of tensors; no .grad is touched
-- (torch.autograd.grad).  grad_outputs gives each output's incoming
-- gradient (nil entries for one-element outputs).  An input the outputs do
-- not depend on is an error unless allow_unused, which gives nil for it.
-- Example: local gx = mm.autograd.grad((x * x):sum(), x)[1]  -- 2 x
function M.grad(outputs, inputs, opts, ...)
  options.arity("autograd.grad", 3, select("#", ...) + 3)
  opts = options.check(opts, "autograd.grad", GRAD_OPTIONS, GRAD_UNSUPPORTED)
  if opts.create_graph then
    error("autograd.grad: create_graph = true (higher-order gradients) is not supported yet", 2)
  end
  return core._autograd_grad(outputs, inputs, opts.grad_outputs, opts.retain_graph,
                             opts.allow_unused)
end

return M
