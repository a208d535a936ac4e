-- torch_names_spec.lua — PyTorch's names for a model's tensors:
-- state_dict{torch_names = true} numbers Sequential children from 0 and
-- keeps the layers' own names (which are torch's); load_state_dict takes
-- either spelling.  The expected key lists are what torch 1.13's
-- state_dict() gives for the same architectures (bench/torch_interop.py
-- checks the values against PyTorch itself).  Also a safetensors file
-- written by hand, as the Python side writes it, without Python.
local mm = require "microml"
local nn = mm.nn
local H = require "helpers"

local function keys(sd)
  local out = {}
  for k in pairs(sd) do out[#out + 1] = k end
  table.sort(out)
  return out
end

local function shapes(sd)
  local out = {}
  for k, t in pairs(sd) do out[k] = table.concat(t:shape(), "x") end
  return out
end

-- torch (8x8 inputs): nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
--   nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 2 * 2, 10))
local function small_cnn()
  return nn.Sequential(nn.Conv2d(1, 4, 3, { padding = 1 }), nn.ReLU(), nn.MaxPool2d(2),
                       nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 2 * 2, 10))
end

describe("state_dict{torch_names = true}", function()
  it("numbers Sequential children from 0 (MLP: layers.0, layers.2, ...)", function()
    local m = nn.MLP{ sizes = { 4, 8, 8, 3 } }
    assert.are.same({ "layers.1.bias", "layers.1.weight", "layers.3.bias", "layers.3.weight",
                      "layers.5.bias", "layers.5.weight" }, keys(m:state_dict()))
    assert.are.same({ "layers.0.bias", "layers.0.weight", "layers.2.bias", "layers.2.weight",
                      "layers.4.bias", "layers.4.weight" }, keys(m:state_dict{ torch_names = true }))
  end)

  it("gives torch's keys and shapes for a CNN (Conv2d, Linear)", function()
    local sd = small_cnn():state_dict{ torch_names = true }
    assert.are.same({ ["0.weight"] = "4x1x3x3", ["0.bias"] = "4", ["3.weight"] = "8x4x3x3",
                      ["3.bias"] = "8", ["6.weight"] = "10x32", ["6.bias"] = "10" }, shapes(sd))
  end)

  it("keeps LayerNorm's and Embedding's names, nested Sequentials renumbered at each level", function()
    local m = nn.Module:extend("Tagger")
    function m:init()
      self.emb = nn.Embedding(10, 4)
      self.body = nn.Sequential(nn.Sequential(nn.Linear(4, 4, { bias = false }), nn.LayerNorm(4)),
                                nn.GELU(), nn.Linear(4, 2))
    end
    assert.are.same({ "body.0.0.weight", "body.0.1.bias", "body.0.1.weight", "body.2.bias",
                      "body.2.weight", "emb.weight" }, keys(m():state_dict{ torch_names = true }))
  end)

  it("shares storage with the model, as the MicroML spelling does", function()
    local m = nn.Sequential(nn.Linear(2, 2))
    local sd = m:state_dict{ torch_names = true }
    mm.no_grad(function() m[1].weight:fill_(7) end)
    assert.are.equal(7, sd["0.weight"]:_get(1))
    assert.is_false(sd["0.weight"].requires_grad)
  end)

  it("applies a layer's _torch_names to its parameters and buffers", function()
    local Scale = nn.Module:extend("Scale")
    Scale._torch_names = { gain = "weight", count = "num_batches_tracked" }
    function Scale:init()
      self.gain = nn.Parameter(mm.ones(3))
      self:register_buffer("count", mm.zeros(1))
    end
    local m = nn.Sequential(Scale())
    assert.are.same({ "1.count", "1.gain" }, keys(m:state_dict()))
    assert.are.same({ "0.num_batches_tracked", "0.weight" }, keys(m:state_dict{ torch_names = true }))
    local sd = { ["0.weight"] = mm.full(3, 2.0), ["0.num_batches_tracked"] = mm.full(1, 5.0) }
    m:load_state_dict(sd)
    assert.are.same({ 2, 2, 2 }, H.values(m[1].gain))
    assert.are.same({ 5 }, H.values(m[1].count))
  end)

  it("rejects options that are not a table", function()
    H.error_with(function() nn.Linear(2, 2):state_dict(true) end,
                 "state_dict: expected an options table {torch_names = true} as argument 1, got boolean")
  end)
end)

describe("load_state_dict with either spelling", function()
  it("loads torch names and MicroML names into the same tensors", function()
    local src = small_cnn()
    for _, sd in ipairs({ src:state_dict{ torch_names = true }, src:state_dict() }) do
      local dst = small_cnn()
      dst:load_state_dict(sd)
      local x = mm.randn(2, 1, 8, 8)
      H.assert_identical(src(x), dst(x))
    end
  end)

  it("picks the spelling by whole dict, where one key names different tensors in each", function()
    -- "2.weight" is the second Linear in torch's names and the third here
    local function net() return nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 3)) end
    local src, dst = net(), net()
    dst:load_state_dict(src:state_dict{ torch_names = true })
    for i = 1, 3 do H.assert_identical(src[i].weight, dst[i].weight) end
  end)

  it("takes the spelling as an option, and strict in the options table", function()
    local src, dst = nn.MLP{ sizes = { 2, 3, 2 } }, nn.MLP{ sizes = { 2, 3, 2 } }
    local sd = src:state_dict{ torch_names = true }
    sd["layers.0.bias"] = nil
    local missing, unexpected = dst:load_state_dict(sd, { strict = false, torch_names = true })
    assert.are.same({ "layers.0.bias" }, missing)
    assert.are.same({}, unexpected)
    H.assert_identical(src.layers[1].weight, dst.layers[1].weight)
    H.error_with(function() dst:load_state_dict(sd, { torch_names = true }) end,
                 "load_state_dict (MLP, PyTorch names): missing keys: layers.0.bias")
  end)

  it("names the shape it expected and the one it was given, in torch's spelling", function()
    local sd = nn.Sequential(nn.Linear(2, 3)):state_dict{ torch_names = true }
    sd["0.weight"] = mm.zeros(2, 3)
    H.error_with(function() nn.Sequential(nn.Linear(2, 3)):load_state_dict(sd) end,
                 "load_state_dict (Sequential, PyTorch names)",
                 "0.weight: expected shape (3, 2), got (2, 3)")
  end)
end)

-- A safetensors file as bench/torch_interop.py writes it from PyTorch:
-- 8 bytes of little-endian header length, a JSON header, raw LE data.
local function write_safetensors(path, tensors)
  local names, header, body, offset = {}, {}, {}, 0
  for name in pairs(tensors) do names[#names + 1] = name end
  table.sort(names)
  for _, name in ipairs(names) do
    local t = tensors[name]
    local bytes = {}
    for i, v in ipairs(t.values) do bytes[i] = string.pack("<f", v) end
    local data = table.concat(bytes)
    header[#header + 1] = ('"%s":{"dtype":"F32","shape":[%s],"data_offsets":[%d,%d]}')
      :format(name, table.concat(t.shape, ","), offset, offset + #data)
    body[#body + 1] = data
    offset = offset + #data
  end
  local json = "{" .. table.concat(header, ",") .. "}"
  H.write_file(path, string.pack("<I8", #json) .. json .. table.concat(body))
end

describe("a hand-written safetensors file with torch names", function()
  it("loads into the model through mm.load and load_state_dict", function()
    local path = H.tmpname("torch_names")
    -- torch: nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    write_safetensors(path, {
      ["0.weight"] = { shape = { 2, 2 }, values = { 1, 2, 3, 4 } },
      ["0.bias"] = { shape = { 2 }, values = { 0.5, -10 } },
      ["2.weight"] = { shape = { 1, 2 }, values = { 1, -1 } },
      ["2.bias"] = { shape = { 1 }, values = { 0.25 } },
    })
    local m = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    m:load_state_dict((mm.load(path)))
    os.remove(path)
    -- x = (1, 1): hidden = relu(3.5, -3) = (3.5, 0); out = 3.5 - 0 + 0.25
    H.assert_close(m(mm.ones(1, 2)), { { 3.75 } })
  end)

  it("is what mm.save writes from state_dict{torch_names = true}", function()
    local path = H.tmpname("torch_names_out")
    mm.save(path, nn.MLP{ sizes = { 3, 2 } }:state_dict{ torch_names = true })
    local bytes = H.read_file(path)
    os.remove(path)
    local n = string.unpack("<I8", bytes)
    local json = bytes:sub(9, 8 + n)
    assert.truthy(json:find('"layers.0.weight":{"dtype":"F32","shape":[2,3]', 1, true), json)
    assert.truthy(json:find('"layers.0.bias":{"dtype":"F32","shape":[2]', 1, true), json)
  end)
end)
