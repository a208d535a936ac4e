-- Strict options: every function that takes an options table refuses an
-- unknown key (naming it and the accepted ones), PyTorch options MicroML
-- does not support yet unless they hold PyTorch's default, and extra
-- positional arguments (microml.options, mm_lua_check_options).
local H = require "helpers"
local mm = H.mm
local nn, optim, data, viz, progress = mm.nn, mm.optim, mm.data, mm.viz, mm.progress

local function err(f)
  local ok, e = pcall(f)
  assert.is_false(ok, "expected an error")
  return tostring(e)
end

local function expect(f, ...)
  local e = err(f)
  for _, s in ipairs({ ... }) do
    assert.is_truthy(e:find(s, 1, true), ("expected %q in: %s"):format(s, e))
  end
end

local function leaf() return mm.randn(3, 2, { requires_grad = true }) end
local function opt() return optim.SGD({ leaf() }, { lr = 0.1 }) end

describe("strict options", function()
  local x4 = mm.randn(1, 3, 6, 6)
  local w4 = mm.randn(6, 3, 3, 3)
  local logits, labels = mm.randn(4, 3), mm.tensor({ 1, 2, 3, 1 })

  -- { where, call with an unknown key 'bogus' }
  local calls = {
    { "Linear", function(o) return nn.Linear(2, 2, o) end },
    { "Conv2d", function(o) return nn.Conv2d(3, 6, 3, o) end },
    { "MaxPool2d", function(o) return nn.MaxPool2d(2, o) end },
    { "AvgPool2d", function(o) return nn.AvgPool2d(2, o) end },
    { "Embedding", function(o) return nn.Embedding(10, 4, o) end },
    { "LayerNorm", function(o) return nn.LayerNorm(4, o) end },
    { "GELU", function(o) return nn.GELU(o) end },
    { "ReLU", function(o) return nn.ReLU(o) end },
    { "LeakyReLU", function(o) return nn.LeakyReLU(o) end },
    { "Softplus", function(o) return nn.Softplus(o) end },
    { "MLP", function(o) o.sizes = { 2, 3 }; return nn.MLP(o) end },
    { "CrossEntropyLoss", function(o) return nn.CrossEntropyLoss(o) end },
    { "NLLLoss", function(o) return nn.NLLLoss(o) end },
    { "MSELoss", function(o) return nn.MSELoss(o) end },
    { "L1Loss", function(o) return nn.L1Loss(o) end },
    { "HuberLoss", function(o) return nn.HuberLoss(o) end },
    { "BCEWithLogitsLoss", function(o) return nn.BCEWithLogitsLoss(o) end },
    { "l1_loss", function(o) return nn.l1_loss(logits, logits, o) end },
    { "huber_loss", function(o) return nn.huber_loss(logits, logits, o) end },
    { "cross_entropy", function(o) return nn.cross_entropy(logits, labels, o) end },
    { "nll_loss", function(o) return mm.nll_loss(logits, labels, o) end },
    { "mse_loss", function(o) return mm.mse_loss(logits, logits, o) end },
    { "binary_cross_entropy_with_logits",
      function(o) return mm.binary_cross_entropy_with_logits(logits, logits, o) end },
    { "state_dict", function(o) return nn.Linear(2, 2):state_dict(o) end },
    { "load_state_dict", function(o) local m = nn.Linear(2, 2); return m:load_state_dict(m:state_dict(), o) end },
    { "SGD", function(o) return optim.SGD({ leaf() }, o) end },
    { "Adam", function(o) return optim.Adam({ leaf() }, o) end },
    { "AdamW", function(o) return optim.AdamW({ leaf() }, o) end },
    { "SGD: param group 1", function(o) o.params = { leaf() }; return optim.SGD({ o }) end },
    { "add_param_group", function(o) o.params = { leaf() }; return opt():add_param_group(o) end },
    { "StepLR", function(o) o.step_size = 1; return optim.StepLR(opt(), o) end },
    { "CosineAnnealingLR", function(o) o.T_max = 2; return optim.CosineAnnealingLR(opt(), o) end },
    { "LinearWarmup", function(o) o.warmup_steps = 2; return optim.LinearWarmup(opt(), o) end },
    { "DataLoader", function(o) return data.DataLoader(data.TensorDataset(mm.zeros(4, 2)), o) end },
    { "viz.dot", function(o) return viz.dot((leaf() * 2):sum(), o) end },
    { "viz.render", function(o) return viz.render((leaf() * 2):sum(), "/tmp/x.dot", o) end },
    { "viz.grad_report", function(o) return viz.grad_report({ leaf() }, o) end },
    { "progress.new", function(o) return progress.new(o) end },
    { "autograd.grad", function(o) local a = leaf(); return mm.autograd.grad((a * 2):sum(), a, o) end },
    { "backward", function(o) return (leaf() * 2):sum():backward(o) end },
    { "tensor", function(o) return mm.tensor({ 1, 2 }, o) end },
    { "zeros", function(o) return mm.zeros(2, 3, o) end },
    { "ones", function(o) return mm.ones({ 2, 3 }, o) end },
    { "empty", function(o) return mm.empty(2, o) end },
    { "full", function(o) return mm.full(2, 3, 1.5, o) end },
    { "rand", function(o) return mm.rand(2, o) end },
    { "randn", function(o) return mm.randn(2, o) end },
    { "zeros_like", function(o) return mm.zeros_like(logits, o) end },
    { "full_like", function(o) return mm.full_like(logits, 2, o) end },
    { "arange", function(o) return mm.arange(0, 4, o) end },
    { "linspace", function(o) return mm.linspace(0, 1, 5, o) end },
    { "eye", function(o) return mm.eye(3, o) end },
    { "read_idx", function(o) return mm.read_idx("/nonexistent", o) end },
    { "read_csv", function(o) return mm.read_csv("/nonexistent", o) end },
    { "leaky_relu", function(o) return mm.leaky_relu(logits, o) end },
  }

  for _, c in ipairs(calls) do
    it(c[1] .. " refuses an unknown option, naming it and the accepted ones", function()
      expect(function() return c[2]({ bogus = 1 }) end,
             c[1] .. ": unknown option 'bogus' (accepted: ")
    end)
  end

  it("names non-string keys", function()
    expect(function() return nn.Linear(2, 2, { false }) end, "Linear: unknown option [1] (a number key)")
  end)

  it("refuses the typo'd and unsupported options the issue found", function()
    expect(function() return nn.Linear(2, 2, { bais = false }) end,
           "Linear: unknown option 'bais' (accepted: bias, dtype)")
    expect(function() return nn.Conv2d(3, 6, 3, { groups = 3 }) end,
           "Conv2d: option 'groups' is not supported yet (PyTorch's groups")
    expect(function() return nn.Conv2d(3, 6, 3, { dilation = 2 }) end,
           "Conv2d: option 'dilation' is not supported yet")
    expect(function() return nn.Embedding(10, 4, { padding_idx = 1 }) end,
           "Embedding: option 'padding_idx' is not supported yet")
    expect(function() return nn.MaxPool2d(2, { ceil_mode = true }) end,
           "MaxPool2d: option 'ceil_mode' is not supported yet")
    expect(function() return nn.AvgPool2d(2, { count_include_pad = false }) end,
           "AvgPool2d: option 'count_include_pad' is not supported yet")
    local ds = data.TensorDataset(mm.zeros(4, 2))
    expect(function() return data.DataLoader(ds, { num_workers = 2 }) end,
           "DataLoader: option 'num_workers' is not supported yet")
    expect(function() return data.DataLoader(ds, { shufle = true }) end,
           "DataLoader: unknown option 'shufle' (accepted: batch_size, shuffle")
    expect(function() return mm.cross_entropy(logits, labels, { weight = mm.ones(3) }) end,
           "cross_entropy: option 'weight' is not supported yet")
    expect(function() return optim.Adam({ leaf() }, { maximize = true }) end,
           "Adam: option 'maximize' is not supported yet")
  end)

  it("accepts PyTorch's defaults for the unsupported options", function()
    assert.are.same({ 6, 3, 3, 3 }, nn.Conv2d(3, 6, 3, { groups = 1, dilation = { 1, 1 } }).weight:size())
    nn.Embedding(10, 4, { padding_idx = nil })
    nn.MaxPool2d(2, { ceil_mode = false, dilation = 1 })
    nn.AvgPool2d(2, { count_include_pad = true, ceil_mode = false })
    data.DataLoader(data.TensorDataset(mm.zeros(4, 2)), { num_workers = 0, shuffle = true })
    nn.Linear(2, 2, { device = "cpu" })
  end)

  it("checks option types", function()
    expect(function() return nn.Linear(2, 2, { bias = 0 }) end, "Linear: expected bias to be a boolean, got number")
    expect(function() return nn.Linear(2, 2, 5) end, "Linear: expected an options table, got integer")
  end)

  it("refuses extra positional arguments", function()
    expect(function() return mm.conv2d(x4, w4, nil, 1, 0, 2) end,
           "conv2d: expected at most 5 arguments", "dilation and groups are not supported yet")
    expect(function() return mm.max_pool2d(x4, 2, 2, 0, 1) end, "max_pool2d: expected at most 4 arguments")
    expect(function() return mm.avg_pool2d(x4, 2, 2, 0, true) end, "avg_pool2d: expected at most 4 arguments")
    expect(function() return mm.cross_entropy(logits, labels, {}, 1) end,
           "cross_entropy: expected at most 3 arguments, got 4")
    expect(function() return nn.Linear(2, 2, {}, true) end, "Linear: expected at most 3 arguments, got 4")
    expect(function() return nn.Conv2d(3, 6, 3, {}, 1) end, "Conv2d: expected at most 4 arguments, got 5")
    expect(function() return nn.MaxPool2d(2, 2, 0, 1) end, "MaxPool2d: expected at most 3 arguments, got 4")
    expect(function() return nn.Dropout(0.5, true) end, "Dropout: expected at most 1 argument, got 2")
    expect(function() return nn.ReLU(true) end, "ReLU: expected at most 0 arguments, got 1")
    expect(function() return mm.leaky_relu(logits, 0.1, 2) end, "leaky_relu: expected at most 2 arguments, got 3")
    expect(function() return mm.zeros(2, 3, {}, 4) end, "zeros: expected at most 3 arguments, got 4")
    expect(function() return mm.randn(2, nil, { dtype = "float64" }) end,
           "expected a size or an options table, got nil")
    expect(function() return optim.SGD({ leaf() }, {}, 1) end, "SGD: expected at most 2 arguments, got 3")
    expect(function() return data.DataLoader(data.TensorDataset(mm.zeros(4, 2)), {}, 1) end,
           "DataLoader: expected at most 2 arguments, got 3")
  end)

  it("still takes the ordinary forms", function()
    assert.are.same({ 1, 6, 4, 4 }, nn.Conv2d(3, 6, 3, { stride = 1, padding = 0, bias = false })(x4):size())
    assert.are.same({ 1, 3, 3, 3 }, nn.MaxPool2d(2, { stride = 2 })(x4):size())
    assert.are.same({ 1, 3, 3, 3 }, nn.AvgPool2d({ 2, 2 }, { 2, 2 })(x4):size())
    assert.are.same({ 4, 3 }, nn.LeakyReLU(0.2)(logits):size())
    assert.are.same({ 4, 3 }, nn.Softplus({ beta = 2 })(logits):size())
    assert.are.same({ 4, 3 }, nn.GELU("tanh")(logits):size())
    assert.equal("float64", mm.randn({ 3 }, { dtype = "float64" }):dtype())
  end)
end)
