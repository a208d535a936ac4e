--- examples/spiral.lua — three interleaved spirals, a classic 2-D toy set.
--
-- The points are generated here (300 per class by default, a little
-- Gaussian noise on the angle); a 2-64-64-3 ReLU MLP learns to separate them
-- with full-batch AdamW and cross-entropy, then the script draws the
-- decision regions it learned as a character map, with the training points
-- on top.  Runs in a couple of seconds:
--
--   build/microml examples/spiral.lua [points_per_class] [steps]
local mm = require "microml"
local nn, optim = mm.nn, mm.optim

local N = math.tointeger(tonumber(arg and arg[1]) or 300)
local STEPS = math.tointeger(tonumber(arg and arg[2]) or 1000)
local K = 3

--- spiral(n, k) -> x [n*k, 2] float32, y [n*k] int64 in 1..k.  Class c's
-- arm sweeps a quarter turn more than the last as the radius grows to 1.
local function spiral(n, k)
  local noise = mm.randn(n * k)
  local xs, ys = {}, {}
  for c = 1, k do
    for i = 1, n do
      local r = (i - 1) / (n - 1)
      local t = (c - 1) * 2 * math.pi / k + r * 1.75 * math.pi + noise:_get((c - 1) * n + i) * 0.15
      xs[#xs + 1] = { r * math.cos(t), r * math.sin(t) }
      ys[#ys + 1] = c
    end
  end
  return mm.tensor(xs, { dtype = "float32" }), mm.tensor(ys)
end

mm.manual_seed(1)
local x, y = spiral(N, K)
local model = nn.MLP { sizes = { 2, 64, 64, K } }
local opt = optim.AdamW(model:parameters(), { lr = 1e-2, weight_decay = 1e-4 })
print(("%d points in %d spirals; model:"):format(N * K, K))
print(model)
print()

local function accuracy()
  return mm.no_grad(function()
    return model(x):argmax(2):eq(y):sum():item() / (N * K)
  end)
end

local t0 = os.clock()
for step = 1, STEPS do
  opt:zero_grad()
  local loss = nn.cross_entropy(model(x), y)
  loss:backward()
  opt:step()
  if step == 1 or step % (STEPS // 5) == 0 then
    print(("step %4d  loss %.4f  train_acc %.3f"):format(step, loss:item(), accuracy()))
  end
end
print(("trained in %.1f s of CPU time\n"):format(os.clock() - t0))

-- The decision regions over [-1, 1]^2 (classes as . : o), with the
-- training points as 1 2 3.
local W, H = 60, 26
local grid = {}
for r = 1, H do
  for c = 1, W do
    grid[#grid + 1] = { -1 + 2 * (c - 0.5) / W, 1 - 2 * (r - 0.5) / H }
  end
end
local pred = mm.no_grad(function() return model(mm.tensor(grid, { dtype = "float32" })):argmax(2) end)
local canvas, shade = {}, { ".", ":", "o" }
for r = 1, H do
  canvas[r] = {}
  for c = 1, W do canvas[r][c] = shade[pred:_get((r - 1) * W + c)] end
end
for i = 1, N * K, 4 do
  local c = math.floor((x:_get(2 * i - 1) + 1) / 2 * W) + 1
  local r = math.floor((1 - x:_get(2 * i)) / 2 * H) + 1
  if r >= 1 and r <= H and c >= 1 and c <= W then canvas[r][c] = tostring(y:_get(i)) end
end
for r = 1, H do print(table.concat(canvas[r])) end
print(("\nfinal train accuracy %.3f"):format(accuracy()))
