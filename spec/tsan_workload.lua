-- tsan_workload.lua — run by `make tsan` under ThreadSanitizer (owner Rel).
-- Not a busted spec: a plain script that drives every kernel family that
-- splits work across the pool, with shapes big enough to be split, on the
-- thread count from MICROML_NUM_THREADS.  TSan halts on the first report.
local mm = require "microml"
mm.manual_seed(7)
local n = mm.get_num_threads()
assert(n >= 2, "run with MICROML_NUM_THREADS >= 2 so the pool is used")

local x = mm.randn(256, 512, { requires_grad = true })
local y = mm.randn(256, 512)
for _ = 1, 3 do
  -- elementwise (broadcast and not), unary with backward
  local e = ((x * y + 1):tanh() * mm.randn(512)):sigmoid()
  -- reductions along each dim and whole
  local r = e:sum(1):sum() + e:mean(2):sum() + e:max() + e:logsumexp(2):sum() + e:norm()
  r:backward()
end
-- GEMM, linear, softmax/cross-entropy, layer norm
local w = mm.randn(128, 512, { requires_grad = true })
local h = mm.linear(x, w, nil)
local loss = mm.cross_entropy(h, mm.randint(1, 129, 256)) + mm.layer_norm(h, 128, nil, nil):sum()
loss:backward()
-- embedding forward and backward (scatter of gradients)
local emb = mm.randn(1000, 64, { requires_grad = true })
local idx = mm.randint(1, 1001, 64, 32)
mm.embedding(emb, idx):sum():backward()
-- conv and pooling
local img = mm.randn(8, 3, 32, 32, { requires_grad = true })
local k = mm.randn(16, 3, 3, 3, { requires_grad = true })
local c = mm.conv2d(img, k, nil, 1, 1)
mm.max_pool2d(c, 2):sum():backward()
mm.avg_pool2d(c:detach(), 2):sum()
-- a few training steps through nn and optim (fused AdamW)
local nn, optim = mm.nn, mm.optim
local model = nn.MLP { sizes = { 784, 256, 10 }, activation = "relu" }
local opt = optim.AdamW(model:parameters(), { lr = 1e-3 })
local xb, yb = mm.rand(128, 784), mm.randint(1, 11, 128)
for _ = 1, 5 do
  local l = nn.cross_entropy(model(xb), yb)
  opt:zero_grad()
  l:backward()
  opt:step()
end
-- the same through a shuffled DataLoader: the next batch is gathered by idle
-- workers (background loop) while the step runs, and one loop stops early
local loader = mm.data.DataLoader(mm.data.TensorDataset(mm.rand(640, 784), mm.randint(1, 11, 640)),
                                  { batch_size = 128, shuffle = true })
for _ = 1, 2 do
  for bx, by in loader:iter() do
    local l = nn.cross_entropy(model(bx), by)
    opt:zero_grad()
    l:backward()
    opt:step()
  end
end
for bx in loader:iter() do if bx then break end end
collectgarbage()
print(("tsan workload: ok on %d threads"):format(n))
