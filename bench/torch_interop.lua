--- bench/torch_interop.lua DIR — the MicroML half of bench/torch_interop.py.
--
-- For each architecture (an MLP, a small CNN): loads the weights PyTorch
-- saved as safetensors under torch's names (DIR/<name>_torch.safetensors,
-- which also holds the input batch "input"), runs the same input, and
-- writes the outputs (DIR/<name>_mm_out.safetensors: "from_torch" with
-- PyTorch's weights, "own" with a fresh MicroML initialisation) and the
-- fresh model's weights under torch's names (DIR/<name>_mm.safetensors)
-- for PyTorch to load back.  The architectures must match ARCHS in the
-- Python script.
local mm = require "microml"
local nn = mm.nn

local dir = arg[1]
if not dir then
  io.stderr:write("usage: microml bench/torch_interop.lua DIR (run by bench/torch_interop.py)\n")
  os.exit(2)
end

local archs = {
  -- torch: Net with self.layers = nn.Sequential(Linear(8, 16), ReLU(), Linear(16, 16), ReLU(), Linear(16, 4))
  mlp = function() return nn.MLP{ sizes = { 8, 16, 16, 4 } } end,
  -- torch: nn.Sequential(Conv2d(1, 4, 3, padding=1), ReLU(), MaxPool2d(2), Conv2d(4, 8, 3), ReLU(),
  --                      Flatten(), Linear(32, 10)) on 8x8 inputs
  cnn = function()
    return nn.Sequential(nn.Conv2d(1, 4, 3, { padding = 1 }), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 2 * 2, 10))
  end,
}

mm.manual_seed(1)
for _, name in ipairs({ "mlp", "cnn" }) do
  local sd = mm.load(("%s/%s_torch.safetensors"):format(dir, name))
  local x = assert(sd.input, "no 'input' tensor in the file")
  sd.input = nil
  local model = archs[name]():eval()
  model:load_state_dict(sd)   -- strict: every torch name must map onto one of ours
  local own = archs[name]():eval()
  local from_torch = mm.no_grad(function() return model(x) end)
  local own_out = mm.no_grad(function() return own(x) end)
  mm.save(("%s/%s_mm_out.safetensors"):format(dir, name), { from_torch = from_torch, own = own_out })
  mm.save(("%s/%s_mm.safetensors"):format(dir, name), own:state_dict{ torch_names = true })
  print(("%s: %d parameter tensors in from PyTorch, %d out"):format(name, #model:parameters(), #own:parameters()))
end
