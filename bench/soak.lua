-- soak.lua — resident memory of a long training loop (owner Rel).
--
--   build/microml bench/soak.lua [steps=50000] [sample_every=1000]
--
-- The Fashion-MNIST MLP recipe of examples/train.lua (784-256-128-10, ReLU,
-- AdamW, cross-entropy, batch 128, shuffled DataLoader epochs) on synthetic
-- data of the same shape: random images and labels from a fixed seed, so
-- the run needs no dataset and is the same every time.  There is no
-- collectgarbage() in the loop: the collector must keep up on its own from
-- the allocation debt the bindings report.  Resident memory is read from
-- /proc/self/statm every `sample_every` steps; the figure is the growth from
-- step 2,000 (allocator caches and the collector have reached their steady
-- state) to the end, with the peak.  Target: growth < 5%.
local mm = require "microml"
local nn, optim, data = mm.nn, mm.optim, mm.data

local STEPS = math.tointeger(tonumber(arg and arg[1] or "")) or 50000
local EVERY = math.tointeger(tonumber(arg and arg[2] or "")) or 1000
local N, BATCH = 10240, 128      -- 80 batches an epoch: many epoch boundaries too

local PAGE = 4096
local function rss_bytes()
  local f = io.open("/proc/self/statm")
  if not f then return nil end
  local _, resident = f:read("n", "n")
  f:close()
  return resident * PAGE
end

local function mib(b) return b / 1048576 end

mm.manual_seed(1)
local train_x = mm.rand(N, 784)
local train_y = mm.randint(1, 11, N)          -- labels 1..10, as the real set
local set = data.TensorDataset(train_x, train_y)
local model = nn.MLP { sizes = { 784, 256, 128, 10 }, activation = "relu" }
local opt = optim.AdamW(model:parameters(), { lr = 1e-3, weight_decay = 1e-2 })

local clock = mm._time or os.clock
local t0 = clock()
local step, epoch = 0, 0
local samples = {}                          -- step -> RSS bytes
local peak, base = 0, nil
local loss_value
while step < STEPS do
  epoch = epoch + 1
  local loader = data.DataLoader(set, { batch_size = BATCH, shuffle = true, seed = epoch })
  for xb, yb in loader:iter() do
    local loss = nn.cross_entropy(model(xb), yb)
    opt:zero_grad()
    loss:backward()
    opt:step()
    step = step + 1
    if step % EVERY == 0 or step == STEPS then
      loss_value = loss:item()
      local r = rss_bytes()
      if r then
        samples[#samples + 1] = { step, r }
        if r > peak then peak = r end
        if step >= 2000 and not base then base = r end
      end
      local st = mm.memory_stats()
      print(("step %6d  loss %.4f  rss %7.1f MiB  live %6.1f MiB  cached %6.1f MiB  lua %6.1f MiB")
            :format(step, loss_value, mib(r or 0), mib(st.bytes_live), mib(st.bytes_cached),
                    collectgarbage("count") / 1024))
      io.stdout:flush()
    end
    if step >= STEPS then break end
  end
end
local secs = clock() - t0

local last = samples[#samples] and samples[#samples][2]
if base and last then
  local growth = (last - base) / base * 100
  print(("soak: %d steps in %.1f s (%.2f ms/step); RSS at step 2000 %.1f MiB, at the end %.1f MiB, "
         .. "growth %+.2f%%, peak %.1f MiB (target: growth < 5%%)")
        :format(STEPS, secs, secs / STEPS * 1000, mib(base), mib(last), growth, mib(peak)))
  if growth >= 5 then
    io.stderr:write("soak: resident memory grew by more than 5%\n")
    os.exit(1)
  end
else
  print(("soak: %d steps in %.1f s; too few steps (or no /proc) to measure growth from step 2000")
        :format(STEPS, secs))
end
