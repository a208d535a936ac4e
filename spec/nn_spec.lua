-- nn_spec.lua — Module bookkeeping (registration, dotted names, sharing,
-- train/eval, state_dict, the printed tree), the layers' forward values and
-- gradients, nn.init, and the losses written in Lua.
local mm = require "microml"
local nn = mm.nn
local H = require "helpers"

local F64 = { dtype = "float64" }

describe("Module bookkeeping", function()
  local Net = nn.Module:extend("Net")
  function Net:init()
    self.encoder = nn.Linear(4, 3)
    self.decoder = nn.Linear(3, 4)
    self.decoder.weight = self.encoder.weight:t()          -- not a leaf: refused below
  end

  it("registers children on assignment and parameters through nn.Parameter", function()
    local M = nn.Module:extend("M")
    function M:init()
      self.fc = nn.Linear(2, 3)
      self.scale = nn.Parameter(mm.ones(3))
      self.plain = mm.zeros(1)                 -- an unmarked tensor is just a field
      self.note = "hello"
    end
    function M:forward(x) return self.fc(x) * self.scale end
    local m = M()
    local names = {}
    for name, p in m:named_parameters() do names[#names + 1] = name; assert.is_true(p.requires_grad) end
    assert.are.same({ "scale", "fc.weight", "fc.bias" }, names)
    assert.are.equal(2 * 3 + 3 + 3, m:num_parameters())
    assert.are.equal("hello", m.note)
    assert.are.equal(1, #m:children())
    -- replacing a registered parameter keeps the registry true
    m.scale = mm.full(3, 2.0)
    assert.are.equal(2, m:parameters()[1]:_get(1))
    m.scale = nil
    assert.are.equal(2, #m:parameters())
    assert.is_nil(m.scale)
  end)

  it("names nested parameters with dots and counts shared ones once", function()
    local Tied = nn.Module:extend("Tied")
    function Tied:init()
      self.a = nn.Linear(3, 3)
      self.b = nn.Linear(3, 3, { bias = false })
      self.b.weight = self.a.weight          -- one tensor, two modules
      self.c = self.a                        -- one module, two names
    end
    local m = Tied()
    local names = {}
    for name in m:named_parameters() do names[#names + 1] = name end
    assert.are.same({ "a.weight", "a.bias" }, names)
    assert.are.equal(#m:parameters(), 2)
    assert.are.equal(9 + 3, m:num_parameters())
    -- state_dict lists a shared tensor under each of its names, as torch does
    local sd = m:state_dict()
    for _, k in ipairs { "a.weight", "a.bias", "b.weight" } do assert.is_truthy(sd[k], k) end
    local mlp = nn.MLP { sizes = { 5, 4, 3, 2 } }
    names = {}
    for name in mlp:named_parameters() do names[#names + 1] = name end
    assert.are.same({ "layers.1.weight", "layers.1.bias", "layers.3.weight", "layers.3.bias",
                      "layers.5.weight", "layers.5.bias" }, names)
    assert.are.equal(5 * 4 + 4 + 4 * 3 + 3 + 3 * 2 + 2, mlp:num_parameters())
  end)

  it("refuses non-leaf parameters and dotted names", function()
    assert.has_error(function() Net() end)
    H.error_with(function() Net() end, "parameter 'weight' must be a leaf tensor")
    local m = nn.Linear(2, 2)
    H.error_with(function() m:register_parameter("a.b", mm.zeros(1)) end, "name without dots")
    H.error_with(function() m:register_parameter("w", mm.zeros(2, { dtype = "int64" })) end,
                 "must be float32 or float64, got int64")
  end)

  it("lists children and modules in registration order", function()
    local seq = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    assert.are.equal(3, #seq)
    assert.are.equal("ReLU", seq[2].__name)
    local names = {}
    for name, m in seq:named_children() do names[#names + 1] = name .. ":" .. m.__name end
    assert.are.same({ "1:Linear", "2:ReLU", "3:Linear" }, names)
    local all = {}
    for name in seq:named_modules() do all[#all + 1] = name end
    assert.are.same({ "", "1", "2", "3" }, all)
    seq:add(nn.Sigmoid())
    assert.are.equal(4, #seq:children())
    assert.are.equal(5, #seq:modules())
  end)

  it("propagates train() and eval() to every descendant", function()
    local mlp = nn.MLP { sizes = { 4, 8, 8, 2 }, dropout = 0.5 }
    local function modes()
      local out = {}
      for _, m in ipairs(mlp:modules()) do out[#out + 1] = m.training end
      return out
    end
    assert.is_true(#mlp:modules() > 5)
    assert.are.equal(mlp, mlp:eval())
    for _, v in ipairs(modes()) do assert.is_false(v) end
    mlp:train()
    for _, v in ipairs(modes()) do assert.is_true(v) end
    mlp.layers:train(false)
    assert.is_true(mlp.training)
    assert.is_false(mlp.layers[3].training)
  end)

  it("zero_grad clears gradients to nil or zeros", function()
    local lin = nn.Linear(3, 2)
    local y = lin(mm.ones(4, 3))
    y:sum():backward()
    assert.are.same({ 4, 4 }, H.values(lin.bias.grad))
    lin:zero_grad(false)
    assert.are.same({ 0, 0 }, H.values(lin.bias.grad))
    lin:zero_grad()
    assert.is_nil(lin.bias.grad)
    assert.is_nil(lin.weight.grad)
  end)

  it("round-trips state_dict, nested or flat, and copies values", function()
    mm.manual_seed(1)
    local a = nn.MLP { sizes = { 3, 5, 2 }, norm = "layernorm" }
    mm.manual_seed(2)
    local b = nn.MLP { sizes = { 3, 5, 2 }, norm = "layernorm" }
    local x = mm.randn(4, 3)
    assert.is_true(mm.no_grad(function() return (a(x) - b(x)):abs():max():item() end) > 1e-3)
    local missing, unexpected = b:load_state_dict(a:state_dict())
    assert.are.same({}, missing)
    assert.are.same({}, unexpected)
    H.assert_close(b(x), a(x):totable(), 0)
    -- the loaded values are copies: changing a does not change b
    mm.no_grad(function() a.layers[1].weight:fill_(0) end)
    assert.is_true(b.layers[1].weight:abs():sum():item() > 0)
    -- nested tables (as data.nest gives) load too
    b:load_state_dict({ layers = { ["1"] = { weight = mm.zeros(5, 3), bias = mm.zeros(5) },
                                   ["2"] = { weight = mm.ones(5), bias = mm.zeros(5) },
                                   ["4"] = { weight = mm.zeros(2, 5), bias = mm.ones(2) } } })
    H.assert_close(b(x), { { 1, 1 }, { 1, 1 }, { 1, 1 }, { 1, 1 } }, 0)
  end)

  it("casts loaded tensors to the parameters' dtype", function()
    local lin = nn.Linear(2, 2)
    lin:load_state_dict({ weight = mm.eye(2, F64), bias = mm.tensor({ 1.5, -2.0 }, F64) })
    assert.are.equal("float32", lin.weight:dtype())
    assert.are.same({ 1, 0, 0, 1 }, H.values(lin.weight))
    assert.are.same({ 1.5, -2 }, H.values(lin.bias))
  end)

  it("reports missing, unexpected and mis-shaped entries", function()
    local lin = nn.Linear(3, 2)
    local before = H.values(lin.weight)
    local msg = H.error_with(function()
      lin:load_state_dict({ weight = mm.zeros(3, 2), extra = mm.zeros(1) })
    end, "load_state_dict (Linear)", "shape mismatch for weight: expected shape (2, 3), got (3, 2)",
         "missing keys: bias", "unexpected keys: extra")
    assert.is_truthy(msg)
    assert.are.same(before, H.values(lin.weight))   -- nothing was copied
    H.error_with(function() lin:load_state_dict({ weight = mm.zeros(2, 3) }) end, "missing keys: bias")
    local missing, unexpected = lin:load_state_dict({ weight = mm.zeros(2, 3), junk = mm.ones(1) }, false)
    assert.are.same({ "bias" }, missing)
    assert.are.same({ "junk" }, unexpected)
    assert.are.same({ 0, 0, 0, 0, 0, 0 }, H.values(lin.weight))
    H.error_with(function() lin:load_state_dict({ weight = mm.zeros(1) }, false) end,
                 "shape mismatch for weight")
  end)

  it("prints the tree with shapes and parameter counts", function()
    local mlp = nn.MLP { sizes = { 784, 256, 128, 10 }, dropout = 0.1 }
    local s = tostring(mlp)
    for _, piece in ipairs {
      "MLP(784 -> 256 -> 128 -> 10)  [235,146]",
      "(layers): Sequential()  [235,146]",
      "(1): Linear(784 -> 256)  weight (256, 784), bias (256)  [200,960]",
      "(2): ReLU()",
      "(3): Dropout(p=0.1)",
      "(7): Linear(128 -> 10)  weight (10, 128), bias (10)  [1,290]",
      "235,146 parameters",
    } do
      assert.is_truthy(s:find(piece, 1, true), ("tree lacks %q:\n%s"):format(piece, s))
    end
    assert.are.equal(235146, mlp:num_parameters())
  end)

  it("converts parameters with to(dtype), keeping sharing", function()
    local m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    m[2].weight = m[1].weight
    m:double()
    assert.are.equal("float64", m[1].weight:dtype())
    assert.are.equal(m[1].weight, m[2].weight)
    assert.is_true(m[1].weight.requires_grad)
    assert.are.equal(3, #m:parameters())
  end)
end)

describe("layers", function()
  it("Linear computes x W^T + b and has torch's default initialisation bounds", function()
    local lin = nn.Linear(2, 3)
    lin:load_state_dict({ weight = mm.tensor { { 1.0, 2.0 }, { 0.0, -1.0 }, { 0.5, 0.5 } },
                          bias = mm.tensor { 0.5, 0.0, -1.0 } })
    H.assert_close(lin(mm.tensor { { 1.0, 1.0 }, { 2.0, -1.0 } }), { { 3.5, -1, 0 }, { 0.5, 1, -0.5 } }, 1e-6)
    -- batched input [..., in]
    assert.are.same({ 2, 4, 3 }, lin(mm.zeros(2, 4, 2)):shape())
    mm.manual_seed(3)
    local big = nn.Linear(400, 300)
    local bound = 1 / math.sqrt(400)
    local wmax = big.weight:abs():max():item()
    assert.is_true(wmax <= bound and wmax > 0.95 * bound)
    local bmax = big.bias:abs():max():item()
    assert.is_true(bmax <= bound and bmax > 0.9 * bound)
    H.error_with(function() lin(mm.zeros(4, 5)) end, "Linear(2 -> 3): expected an input whose last dimension is 2, got shape (4, 5)")
    H.error_with(function() nn.Linear(0.5, 2) end, "in_features to be an integer >= 0, got 0.5")
    assert.is_nil(nn.Linear(2, 3, { bias = false }).bias)
  end)

  it("Linear and an MLP pass a float64 gradcheck, also on transposed input", function()
    mm.manual_seed(4)
    local lin = nn.Linear(3, 2, { dtype = "float64" })
    local x = mm.randn(4, 3, F64)
    x.requires_grad = true
    assert.is_true(mm.gradcheck(function(xx, w, b)
      return mm.linear(xx, w, b)
    end, { x, lin.weight, lin.bias }))
    local xt = mm.randn(3, 4, F64):t()
    xt.requires_grad = true
    assert.is_true(mm.gradcheck(function(xx) return lin(xx) end, { xt }))
    local mlp = nn.MLP { sizes = { 3, 4, 2 }, activation = "tanh", dtype = "float64" }
    local p = mlp:parameters()
    assert.is_true(mm.gradcheck(function(xx) return mlp(xx) end, { x, p[1], p[2], p[3], p[4] }))
  end)

  it("activations match their closed forms", function()
    local x = mm.tensor({ -2.0, -0.5, 0.0, 1.5 }, F64)
    local function each(f)
      local out = {}
      for i, v in ipairs(H.values(x)) do out[i] = f(v) end
      return out
    end
    local sig = function(v) return 1 / (1 + math.exp(-v)) end
    H.assert_close(nn.ReLU()(x), each(function(v) return math.max(v, 0) end), 0)
    H.assert_close(nn.Tanh()(x), each(function(v) return (math.exp(2 * v) - 1) / (math.exp(2 * v) + 1) end), 1e-14)
    H.assert_close(nn.Sigmoid()(x), each(sig), 1e-14)
    H.assert_close(nn.SiLU()(x), each(function(v) return v * sig(v) end), 1e-14)
    H.assert_close(nn.LeakyReLU(0.2)(x), each(function(v) return v > 0 and v or 0.2 * v end), 1e-15)
    H.assert_close(nn.GELU("tanh")(x), each(function(v)
      return 0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ^ 3)))
    end), 1e-12)
    H.assert_close(nn.Identity()(x), H.values(x), 0)
    H.error_with(function() nn.GELU("fast") end, "expected approximate 'none' or 'tanh', got 'fast'")
    H.error_with(function() nn.MLP { sizes = { 2, 2 }, activation = "swish" } end, "unknown activation 'swish'")
  end)

  it("Sequential chains and MLP builds Linear/LayerNorm/activation/Dropout stacks", function()
    local seq = nn.Sequential { nn.Linear(2, 2), nn.ReLU() }
    seq[1]:load_state_dict({ weight = mm.tensor { { 1.0, 0.0 }, { 0.0, -1.0 } }, bias = mm.zeros(2) })
    H.assert_close(seq(mm.tensor { { 3.0, 4.0 } }), { { 3, 0 } }, 0)
    local mlp = nn.MLP { sizes = { 4, 6, 6, 2 }, norm = "layernorm", dropout = 0.2, activation = "gelu" }
    local kinds = {}
    for _, m in ipairs(mlp.layers:children()) do kinds[#kinds + 1] = m.__name end
    assert.are.same({ "Linear", "LayerNorm", "GELU", "Dropout", "Linear", "LayerNorm", "GELU", "Dropout",
                      "Linear" }, kinds)
    H.error_with(function() nn.MLP { sizes = { 4 } } end, "at least two sizes")
    H.error_with(function() nn.Sequential(nn.ReLU(), 3) end, "expected a module at position 2, got number")
  end)

  it("Flatten keeps the batch dimension", function()
    assert.are.same({ 2, 12 }, nn.Flatten()(mm.zeros(2, 3, 4)):shape())
    assert.are.same({ 6, 4 }, nn.Flatten(1, 2)(mm.zeros(2, 3, 4)):shape())
  end)

  it("Embedding looks up rows (1-based) and starts N(0, 1)", function()
    local emb = nn.Embedding(4, 2)
    emb:load_state_dict({ weight = mm.tensor { { 1.0, 2.0 }, { 3.0, 4.0 }, { 5.0, 6.0 }, { 7.0, 8.0 } } })
    H.assert_close(emb(mm.tensor { { 4, 1 }, { 2, 2 } }), { { { 7, 8 }, { 1, 2 } }, { { 3, 4 }, { 3, 4 } } }, 0)
    mm.manual_seed(5)
    local big = nn.Embedding(200, 50)
    local w = big.weight
    assert.is_true(math.abs(w:mean():item()) < 0.02)
    assert.is_true(math.abs(w:std():item() - 1) < 0.02)
  end)

  it("Conv2d and MaxPool2d give the expected shapes and values", function()
    local conv = nn.Conv2d(1, 1, 2, { padding = 0 })
    conv:load_state_dict({ weight = mm.ones(1, 1, 2, 2), bias = mm.tensor { 0.5 } })
    local x = mm.arange(9, { dtype = "float32" }):reshape(1, 1, 3, 3)   -- 0..8
    H.assert_close(conv(x), { { { { 8.5, 12.5 }, { 20.5, 24.5 } } } }, 1e-6)
    local conv2 = nn.Conv2d(3, 8, 3, { stride = 2, padding = 1 })
    assert.are.same({ 2, 8, 4, 4 }, conv2(mm.zeros(2, 3, 8, 8)):shape())
    assert.are.same({ 8, 3, 3, 3 }, conv2.weight:shape())
    local bound = 1 / math.sqrt(3 * 9)
    assert.is_true(conv2.weight:abs():max():item() <= bound)
    H.assert_close(nn.MaxPool2d(2)(mm.arange(16, { dtype = "float32" }):reshape(1, 1, 4, 4)),
                   { { { { 5, 7 }, { 13, 15 } } } }, 0)
    H.error_with(function() nn.Conv2d(1, 1, 0) end, "kernel_size[1] to be an integer >= 1, got 0")
  end)

  it("LayerNorm normalises the trailing dims (weight 1, bias 0 at start)", function()
    local ln = nn.LayerNorm(4)
    local y = ln(mm.tensor { { 1.0, 2.0, 3.0, 4.0 } })
    local sd = math.sqrt(1.25 + 1e-5)
    H.assert_close(y, { { -1.5 / sd, -0.5 / sd, 0.5 / sd, 1.5 / sd } }, 1e-5)
    assert.are.same({ 4 }, ln.weight:shape())
    assert.is_nil(nn.LayerNorm(4, { elementwise_affine = false }).weight)
  end)

  it("Dropout is the identity in eval mode and scales kept elements in training", function()
    mm.manual_seed(6)
    local d = nn.Dropout(0.25)
    local x = mm.ones(1000)
    local y = d(x)
    local kept = 0
    for k = 1, 1000 do
      local v = y:_get(k)
      assert.is_true(v == 0 or math.abs(v - 1 / 0.75) < 1e-6)
      if v ~= 0 then kept = kept + 1 end
    end
    assert.is_true(kept > 700 and kept < 800)
    d:eval()
    assert.are.equal(1000, d(x):sum():item())
    H.error_with(function() nn.Dropout(1.5) end, "expected a probability p in [0, 1], got 1.5")
  end)
end)

describe("nn.init", function()
  it("draws from the seeded generator and fills in place", function()
    local a, b = mm.empty(50, 40), mm.empty(50, 40)
    mm.manual_seed(9); nn.init.xavier_uniform_(a)
    mm.manual_seed(9); nn.init.xavier_uniform_(b)
    assert.are.same(H.values(a), H.values(b))
    local bound = math.sqrt(6 / 90)
    local m = a:abs():max():item()
    assert.is_true(m <= bound and m > 0.95 * bound)
  end)

  it("uses torch's fans and gains", function()
    mm.manual_seed(10)
    local w = mm.empty(64, 32, 3, 3)                 -- fan_in 288, fan_out 576
    nn.init.kaiming_uniform_(w, { nonlinearity = "relu" })
    local bound = math.sqrt(2) * math.sqrt(3 / 288)
    local m = w:abs():max():item()
    assert.is_true(m <= bound and m > 0.95 * bound)
    nn.init.kaiming_normal_(w, 0, "fan_out", "relu")
    assert.is_true(math.abs(w:std():item() / (math.sqrt(2) / math.sqrt(576)) - 1) < 0.05)
    nn.init.xavier_normal_(w, 2)
    assert.is_true(math.abs(w:std():item() / (2 * math.sqrt(2 / (288 + 576))) - 1) < 0.05)
    nn.init.normal_(w, 3, 0.5)
    assert.is_true(math.abs(w:mean():item() - 3) < 0.02)
    nn.init.zeros_(w)
    assert.are.equal(0, w:abs():sum():item())
    assert.are.equal(5 / 3, nn.init.calculate_gain("tanh"))
    assert.are.equal(math.sqrt(2 / (1 + 0.2 ^ 2)), nn.init.calculate_gain("leaky_relu", 0.2))
  end)

  it("works on parameters that require grad and reports bad input", function()
    local p = mm.zeros(3, 3, { requires_grad = true })
    nn.init.uniform_(p, 1, 2)
    assert.is_true(p:min():item() >= 1)
    assert.is_true(p.requires_grad and p.is_leaf)
    H.error_with(function() nn.init.xavier_uniform_(mm.zeros(5)) end,
                 "at least 2 dimensions, got shape (5)")
    H.error_with(function() nn.init.kaiming_normal_(mm.zeros(2, 2), { mode = "fan_mid" }) end,
                 "expected mode 'fan_in' or 'fan_out', got 'fan_mid'")
    H.error_with(function() nn.init.normal_(mm.zeros(2, { dtype = "int64" })) end,
                 "expected a float32 or float64 tensor, got int64")
    H.error_with(function() nn.init.calculate_gain("softplus") end, "unknown nonlinearity 'softplus'")
  end)
end)

describe("losses", function()
  local a = mm.tensor({ { 1.0, -2.0, 0.5 }, { 3.0, 0.0, -0.25 } }, F64)
  local b = mm.tensor({ { 0.0, 1.0, 0.5 }, { 0.5, -0.2, 1.0 } }, F64)

  it("l1_loss and huber_loss match hand-computed values", function()
    -- d = a - b = {1, -3, 0, 2.5, 0.2, -1.25}
    H.assert_close(nn.l1_loss(a, b), 7.95 / 6, 1e-14)
    H.assert_close(nn.l1_loss(a, b, { reduction = "sum" }), 7.95, 1e-14)
    H.assert_close(nn.l1_loss(a, b, { reduction = "none" }), { { 1, 3, 0 }, { 2.5, 0.2, 1.25 } }, 1e-14)
    -- delta 1: {0.5, 2.5, 0, 2.0, 0.02, 0.75}
    H.assert_close(nn.huber_loss(a, b, { reduction = "none" }), { { 0.5, 2.5, 0 }, { 2.0, 0.02, 0.75 } }, 1e-14)
    H.assert_close(nn.huber_loss(a, b), 5.77 / 6, 1e-14)
    -- delta 2: {0.5, 4, 0, 3, 0.02, 0.78125}
    H.assert_close(nn.HuberLoss { delta = 2, reduction = "sum" }(a, b), 8.30125, 1e-14)
    H.assert_close(nn.L1Loss { reduction = "sum" }(a, b), 7.95, 1e-14)
  end)

  it("l1_loss and huber_loss pass a float64 gradcheck, also on views", function()
    mm.manual_seed(11)
    local x = mm.randn(3, 4, F64) * 2
    local y = mm.randn(4, 3, F64):t()
    x.requires_grad = true
    y.requires_grad = true
    assert.is_true(mm.gradcheck(function(p, q) return nn.huber_loss(p, q, { delta = 0.7 }) end, { x, y }))
    assert.is_true(mm.gradcheck(function(p, q) return nn.l1_loss(p, q, { reduction = "sum" }) end, { x, y }))
    local row = mm.randn(1, 4, F64)
    row.requires_grad = true
    assert.is_true(mm.gradcheck(function(p, q) return nn.huber_loss(p:expand(3, 4), q) end, { row, x }))
    local col, col2 = mm.randn(3, 1, F64), mm.randn(3, 1, F64)     -- size-1 dims
    col.requires_grad = true
    assert.is_true(mm.gradcheck(function(p, q) return nn.huber_loss(p, q, { reduction = "none" }) end, { col, col2 }))
    assert.is_true(mm.gradcheck(function(p, q) return nn.l1_loss(p, q) end, { col, col2 }))
  end)

  it("refuse shapes that would broadcast silently and unknown reductions", function()
    H.error_with(function() nn.l1_loss(mm.zeros(3, 1), mm.zeros(3)) end,
                 "l1_loss: expected input and target of the same shape, got (3, 1) and (3)")
    H.error_with(function() nn.huber_loss(a, b, { reduction = "avg" }) end,
                 "expected reduction 'mean', 'sum' or 'none', got 'avg'")
    H.error_with(function() nn.huber_loss(a, b, { delta = 0 }) end, "expected delta > 0, got 0")
  end)

  it("cross_entropy, mse and BCE are reachable as functions and modules", function()
    local logits = mm.tensor({ { 2.0, 0.0, -1.0 }, { 0.0, 0.0, 0.0 } }, F64)
    local labels = mm.tensor { 1, 3 }
    local function ce_row(z, k)
      local s = 0
      for _, v in ipairs(z) do s = s + math.exp(v) end
      return math.log(s) - z[k]
    end
    local want = (ce_row({ 2, 0, -1 }, 1) + ce_row({ 0, 0, 0 }, 3)) / 2
    H.assert_close(nn.cross_entropy(logits, labels), want, 1e-12)
    H.assert_close(nn.CrossEntropyLoss()(logits, labels), want, 1e-12)
    H.assert_close(nn.NLLLoss()(mm.log_softmax(logits, 2), labels), want, 1e-12)
    H.assert_close(nn.MSELoss()(a, b), (1 + 9 + 0 + 6.25 + 0.04 + 1.5625) / 6, 1e-12)
    local z, t = mm.tensor({ 0.0, 2.0 }, F64), mm.tensor({ 1.0, 0.0 }, F64)
    H.assert_close(nn.BCEWithLogitsLoss { reduction = "sum" }(z, t), math.log(2) + math.log(1 + math.exp(2)), 1e-12)
  end)
end)
