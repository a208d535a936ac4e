-- The pointwise table (runtime/pointwise.def): the ops added as one line
-- each (hardtanh, elu, softplus) against values computed with PyTorch
-- 2.x (torch.nn.functional, float64 unless noted), parameters positional and
-- by name, error messages, the nn modules over them, and a walk over the
-- whole table through mm._pointwise_ops() so that a new line is covered
-- without naming it here: callable as function and method, int64 accepted
-- or refused as the table says, float64 gradcheck for every
-- differentiable op.
local H = require "helpers"
local mm = H.mm
local nn = require "microml.nn"

local function f64(t) return mm.tensor(t, { dtype = "float64" }) end
-- two tensors equal within tol (H.assert_close takes a plain table)
local function close(a, b, tol) H.assert_close(a, b:totable(), tol) end
local X = { -3.0, -1.5, -0.5, 0.0, 0.25, 1.0, 2.5, 30.0 }

describe("pointwise table: new ops", function()
  it("hardtanh matches torch (defaults, positional and named bounds)", function()
    local x = f64(X)
    H.assert_close(mm.hardtanh(x), { -1, -1, -0.5, 0, 0.25, 1, 1, 1 }, 0)
    H.assert_close(x:hardtanh(-0.5, 2.0), { -0.5, -0.5, -0.5, 0, 0.25, 1, 2, 2 }, 0)
    H.assert_close(mm.hardtanh(x, { max_val = 2.0, min_val = -0.5 }), { -0.5, -0.5, -0.5, 0, 0.25, 1, 2, 2 }, 0)
    local n = mm.hardtanh(f64 { 0 / 0 }):totable()
    assert.is_true(n[1] ~= n[1])   -- NaN stays NaN, as torch
  end)

  it("elu matches torch", function()
    local x = f64(X)
    H.assert_close(mm.elu(x), { -0.950212931632136, -0.7768698398515702, -0.3934693402873666,
      0.0, 0.25, 1.0, 2.5, 30.0 }, 1e-14)
    H.assert_close(x:elu(0.7), { -0.6651490521424952, -0.5438088878960992, -0.2754285382011566,
      0.0, 0.25, 1.0, 2.5, 30.0 }, 1e-14)
    close(mm.elu(x, { alpha = 0.7 }), x:elu(0.7), 0)
    -- float32, against torch's float32 results
    H.assert_close(mm.elu(x:float()), { -0.9502129554748535, -0.7768698334693909,
      -0.39346933364868164, 0.0, 0.25, 1.0, 2.5, 30.0 }, 1e-6)
  end)

  it("softplus matches torch, linear above the threshold", function()
    local x = f64(X)
    H.assert_close(mm.softplus(x), { 0.04858735157374206, 0.2014132779827524, 0.4740769841801067,
      0.6931471805599453, 0.8259394198788436, 1.3132616875182228, 2.5788897342925496, 30.0 }, 1e-14)
    local want2 = { 0.0012378425688652247, 0.02429367578687103, 0.15663084375911143,
      0.34657359027997264, 0.48703849209005334, 1.0634640055214863, 2.5, 30.0 }
    H.assert_close(x:softplus(2, 3), want2, 1e-14)
    H.assert_close(mm.softplus(x, { threshold = 3, beta = 2 }), want2, 1e-14)
    close(mm.softplus(x, { beta = 2, threshold = 3 }), x:softplus(2, 3), 0)
    H.assert_close(mm.softplus(x:float()), { 0.04858735203742981, 0.20141328871250153,
      0.4740769863128662, 0.6931471824645996, 0.825939416885376, 1.31326162815094,
      2.578889846801758, 30.0 }, 1e-6)
  end)

  it("gradients match torch, kinks included", function()
    local cases = {
      { function(t) return t:hardtanh(-0.5, 2.0) end, "HardtanhBackward",
        { 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0 } },
      { function(t) return t:elu(0.7) end, "EluBackward",
        { 0.03485094785750476, 0.15619111210390085, 0.42457146179884336, 0.7, 1.0, 1.0, 1.0, 1.0 } },
      { function(t) return t:softplus(2, 3) end, "SoftplusBackward",
        { 0.0024726231566347748, 0.04742587317756679, 0.2689414213699951, 0.5,
          0.6224593312018546, 0.8807970779778824, 1.0, 1.0 } },
    }
    for _, c in ipairs(cases) do
      local x = mm.tensor(X, { dtype = "float64", requires_grad = true })
      local y = c[1](x)
      assert.are.equal(c[2], y.grad_fn)
      y:sum():backward()
      H.assert_close(x.grad, c[3], 1e-14)
    end
  end)

  it("pass gradcheck away from the kinks, strided and broadcast inputs", function()
    mm.manual_seed(7)
    local x = mm.tensor({ { -1.7, -0.6, 0.3 }, { 0.45, 1.4, 2.6 } }, { dtype = "float64", requires_grad = true })
    mm.gradcheck(function(a) return a:hardtanh(-1.2, 2.0) end, { x })
    mm.gradcheck(function(a) return a:elu(0.7) * a end, { x })
    mm.gradcheck(function(a) return mm.softplus(a, { beta = 2, threshold = 3 }) end, { x })
    mm.gradcheck(function(a) return mm.softplus(a * 10) end, { x })   -- both sides of threshold 20
    mm.gradcheck(function(a) return mm.leaky_relu(a, 0.3) end, { x })
    mm.gradcheck(function(a) return a:clamp(-1, 1) end, { x })
    local t = H.tleaf(3, 4)
    mm.gradcheck(function(a) return a:elu() end, { t })
    mm.gradcheck(function(a) return a:softplus() end, { t })
    local r = H.leaf(1, 4)
    mm.gradcheck(function(a) return (a:expand(3, 4) * 0.5):hardtanh() end, { r })
  end)

  it("refuses int64 input and parameters of the wrong type", function()
    H.error_with(function() mm.hardtanh(mm.arange(3)) end, "hardtanh", "float32 or float64", "int64")
    H.error_with(function() mm.arange(3):elu() end, "elu", "float32 or float64", "int64")
    H.error_with(function() mm.softplus(mm.arange(3)) end, "softplus", "float32 or float64", "int64")
    local x = f64 { 1, 2 }
    H.error_with(function() mm.leaky_relu(x, "a") end, "leaky_relu", "negative_slope", "number or nil", "string")
    H.error_with(function() mm.softplus(x, { beta = {} }) end, "softplus", "beta", "number or nil", "table")
    H.error_with(function() x:elu(true) end, "elu", "alpha", "number or nil", "boolean")
    H.error_with(function() x:hardtanh(nil, "1") end, "hardtanh", "max_val", "string")
    H.error_with(function() mm.clamp(x) end, "clamp", "at least one of min and max")
    H.error_with(function() mm.arange(3):clamp(1e19) end, "clamp", "min", "outside the int64 range")
  end)
end)

describe("pointwise table: nn modules", function()
  it("Hardtanh, ELU, Softplus wrap the functions with their parameters", function()
    local x = f64(X)
    close(nn.Hardtanh()(x), mm.hardtanh(x), 0)
    close(nn.Hardtanh(-0.5, 2)(x), x:hardtanh(-0.5, 2), 0)
    close(nn.ELU(0.7)(x), x:elu(0.7), 0)
    close(nn.Softplus { beta = 2, threshold = 3 }(x), x:softplus(2, 3), 0)
    assert.are.equal("alpha=0.7", nn.ELU(0.7):extra_repr())
    assert.are.equal("beta=2, threshold=3", nn.Softplus { beta = 2, threshold = 3 }:extra_repr())
    assert.are.equal("negative_slope=0.01", nn.LeakyReLU():extra_repr())
    H.error_with(function() nn.ELU("big") end, "ELU", "alpha", "number", "string")
    local mlp = nn.MLP { sizes = { 3, 4, 2 }, activation = "softplus" }
    assert.are.same({ 5, 2 }, mlp(mm.randn(5, 3)):shape())
    assert.is_true(nn.MLP { sizes = { 3, 4, 2 }, activation = "elu" } ~= nil)
  end)
end)

describe("pointwise table: every line", function()
  local ops = mm._pointwise_ops()

  it("lists each op once, the new ones included", function()
    local seen = {}
    for _, op in ipairs(ops) do
      assert.is_nil(seen[op.name], op.name)
      seen[op.name] = op
    end
    for _, name in ipairs { "relu", "leaky_relu", "clamp", "hardtanh", "elu", "softplus" } do
      assert.is_not_nil(seen[name], name)
    end
    assert.are.equal("negative_slope", seen.leaky_relu.params[1].name)
    assert.are.equal(0.01, seen.leaky_relu.params[1].default)
  end)

  -- The op's parameters at their defaults, given explicitly (clamp has
  -- infinite defaults and needs at least one given).
  local function defaults(op)
    local p = {}
    for i, q in ipairs(op.params) do p[i] = q.default end
    return p
  end

  it("is callable as mm.<name> and t:<name>, int64 as the table says", function()
    for _, op in ipairs(ops) do
      local x = f64 { -1.5, -0.4, 0.3, 2.2 }
      local p = defaults(op)
      local a, b = mm[op.name](x, table.unpack(p)), x[op.name](x, table.unpack(p))
      close(a, b, 0)
      assert.are.same({ 4 }, a:shape(), op.name)
      local i = mm.tensor { -2, 0, 3 }
      if op.int64 then
        assert.are.equal("int64", mm[op.name](i, table.unpack(p)):dtype(), op.name)
      else
        H.error_with(function() mm[op.name](i, table.unpack(p)) end, op.name, "float32 or float64", "int64")
      end
      -- float32 and float64 agree
      close(mm[op.name](x:float(), table.unpack(p)), a, 1e-5)
    end
  end)

  it("passes float64 gradcheck for every differentiable op", function()
    -- Away from every kink (0, +-1) and from the softplus threshold; ops
    -- defined only for x > 0 (NaN elsewhere) get positive inputs.
    local vals = { { -1.7, -0.6, -0.3 }, { 0.45, 0.8, 1.4 } }
    for _, op in ipairs(ops) do
      local p = defaults(op)
      local x = mm.tensor(vals, { dtype = "float64" })
      local y = mm[op.name](x, table.unpack(p))
      local nan = false
      for _, v in ipairs(H.flatten(y:totable())) do nan = nan or v ~= v end
      if nan then x = x:abs() end
      x.requires_grad = true
      local out = mm[op.name](x, table.unpack(p))
      if op.node then
        assert.are.equal(op.node, out.grad_fn, op.name)
        mm.gradcheck(function(a) return mm[op.name](a, table.unpack(p)) end, { x })
        -- a non-contiguous input goes through the strided loops
        mm.gradcheck(function(a) local at = a:t(); return at[op.name](at, table.unpack(p)) end, { x })
      else
        assert.is_nil(out.grad_fn, op.name)   -- not differentiable: never recorded
      end
    end
  end)
end)
