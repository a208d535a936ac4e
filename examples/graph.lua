-- examples/graph.lua — draw the autograd graph of one training step of a
-- small MLP and check the health of its gradients.
--
--   build/microml examples/graph.lua [out.svg]     (default: graph.svg)
--
-- Builds a 3-layer MLP (with microml.nn if present, else by hand), runs
-- forward + backward + one SGD step with gradient statistics on, renders the
-- graph through Graphviz with parameter names, shapes and gradient norms,
-- and prints the gradient report.  A second picture, out-modules.svg,
-- collapses each layer into one node.
local mm = require "microml"
local viz = mm.viz

local out = arg and arg[1] or "graph.svg"
mm.manual_seed(0)

-- The model: an nn.Module when microml.nn is there, else the same layers by
-- hand (weights as plain tensors).  Either way the parameters are named
-- fc1.weight, fc1.bias, ..., and those names are what the picture shows.
local has_nn, nn = pcall(require, "microml.nn")
local model, params
if has_nn then
  local MLP = nn.Module:extend("MLP")
  function MLP:init()
    self.fc1 = nn.Linear(8, 16)
    self.fc2 = nn.Linear(16, 16)
    self.fc3 = nn.Linear(16, 4)
  end
  function MLP:forward(x) return self.fc3(mm.relu(self.fc2(mm.relu(self.fc1(x))))) end
  local net = MLP()
  model, params = function(x) return net(x) end, viz.named(net)
else
  local function linear(x, w, b)   -- y = x·wᵀ + b with whatever the build provides
    if mm.linear then return mm.linear(x, w, b) end
    if mm.matmul then return mm.matmul(x, w:t()) + b end
    return (x:unsqueeze(2) * w:unsqueeze(1)):sum(3) + b
  end
  params = {}
  local function layer(name, fan_in, fan_out)
    -- Kaiming-style scale keeps the activations' variance steady through ReLUs.
    local w = (mm.randn(fan_out, fan_in) * math.sqrt(2 / fan_in)):requires_grad_()
    local b = mm.zeros({ fan_out }, { requires_grad = true })
    params[#params + 1] = { name .. ".weight", w }
    params[#params + 1] = { name .. ".bias", b }
    return function(x) return linear(x, w, b) end
  end
  local fc1, fc2, fc3 = layer("fc1", 8, 16), layer("fc2", 16, 16), layer("fc3", 16, 4)
  model = function(x) return fc3(mm.relu(fc2(mm.relu(fc1(x))))) end
end

-- A toy batch: 32 points, 4 classes.
local x = mm.randn(32, 8)
local labels = mm.randint(1, 5, 32)

viz.enable_stats(true)
local logits = model(x)
local loss
if mm.cross_entropy then
  loss = mm.cross_entropy(logits, labels)
else  -- mean squared error against one-hot targets, from elementwise ops
  local target = mm.zeros(32, 4)
  for i = 1, 32 do target[i][labels:_get(i)] = 1 end
  local d = logits - target
  loss = (d * d):mean()
end
loss:backward()
print(("loss %.4f"):format(loss:item()))

viz.render(loss, out, { params = params, title = "MLP 8-16-16-4, one step" })
print("wrote " .. out)
local modules = out:gsub("(%.%w+)$", "-modules%1")
viz.render(loss, modules, { params = params, collapse = { "fc1", "fc2", "fc3" } })
print("wrote " .. modules)

viz.grad_report(params)

-- The step itself: plain SGD, outside the graph.
mm.no_grad(function()
  for _, p in ipairs(params) do
    local w = p[2]
    w:sub_(w.grad * 0.1)
    w.grad = nil
  end
end)
viz.enable_stats(false)
