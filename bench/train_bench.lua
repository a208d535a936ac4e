--- bench/train_bench.lua — training speed of MicroML against PyTorch, side by side.
--
--   build/microml bench/train_bench.lua [--epochs 3] [--rounds 3] [--threads 1,2] [--seed 1]
--
-- Owns the driver and the MicroML worker of the training benchmark.  The
-- recipe is examples/train.lua's default (MLP 784-256-128-10, ReLU, AdamW lr
-- 1e-3 wd 1e-2, batch 128, standardised pixels, per-step cosine lr over the
-- whole run); bench/train_torch.py runs the same one in PyTorch.  Each
-- configuration is a fresh process, so each reports its own peak resident
-- memory (VmHWM) and start-up costs stay out of the epoch times.
--
-- The driver alternates the two sides within every round (MicroML, then
-- PyTorch, at each thread count), so a neighbour's load on a shared machine
-- falls on both; it reports medians over rounds of each run's median epoch
-- time.  PyTorch's 2-thread runs are tried with OpenMP's default (spinning)
-- wait policy and with OMP_WAIT_POLICY=PASSIVE, and its best configuration
-- is what the ratio is taken against.  Without PyTorch it says so and prints
-- MicroML's figures alone.
--
-- Accuracy is compared on equal terms.  Left to their own generators the two
-- sides would start from different weights and see different batch orders,
-- and the gap between their test accuracies would be seed noise (+-0.004 at
-- 3 epochs), which says nothing about whether they compute the same thing.
-- So for every round the driver writes, into a private temporary directory
-- removed at the end of the round (also when something fails):
--   param_K.npy  the K-th tensor of model:parameters() of the MicroML MLP
--                after mm.manual_seed(seed): weights [out, in] (the layout
--                of torch's nn.Linear.weight), biases [out]; float32;
--   perm_E.npy   epoch E's order of the training rows, int64, 0-based (the
--                file format's and PyTorch's convention).
-- MicroML's default Linear init is torch's (weight and bias uniform in
-- +-1/sqrt(fan_in)), so the shared start is one PyTorch could have drawn.
-- Both workers take --init DIR and train from exactly those weights through
-- exactly those batches; the MicroML worker's DataLoader walks the order
-- read from the file (its sampler option, as torch's sampler=) instead of
-- shuffling with its own generator, so the order is the same by
-- construction, not by two RNGs agreeing.  Round
-- r uses seed = --seed + r - 1 on both sides: each configuration's mean
-- accuracy is over several starting points, and each round is a paired
-- comparison whose difference is what the two implementations' arithmetic
-- (summation orders, float32 rounding) makes of the same problem.
--
-- Worker mode (used by the driver):
--   --worker --threads N --epochs E [--seed S] [--init DIR]   prints
--   RESULT side=microml threads=N epoch_times=t1,... test_acc=A vmhwm_kib=K
-- Without --init the worker initialises from mm.manual_seed(S) and shuffles
-- epoch E with a generator seeded S * 100003 + E — the same weights and
-- orders the driver writes for seed S, so both modes train identically.
local mm = require "microml"
local common = dofile((arg[0]:match("^(.*)/") or ".") .. "/common.lua")
local median, sh_quote, vmhwm_kib = common.median, common.sh_quote, common.vmhwm_kib

local SIZES = { 784, 256, 128, 10 }

local function parse(argv)
  -- peak: the two cores' FMA peak in GFLOP/s (Zen 4: 2 cores x 32 flop/cycle x ~3.7 GHz),
  -- which gives the matmul-only floor of an epoch; --peak-gflops for other machines.
  local o = { epochs = 3, rounds = 3, threads = { 1, 2 }, seed = 1, batch_size = 128, peak = 235 }
  local i = 1
  while i <= #argv do
    local a, v = argv[i], argv[i + 1]
    if a == "--worker" then o.worker = true; i = i + 1
    else
      if v == nil then error("train_bench: " .. a .. " needs a value", 0) end
      if a == "--epochs" then o.epochs = math.tointeger(tonumber(v))
      elseif a == "--rounds" then o.rounds = math.tointeger(tonumber(v))
      elseif a == "--seed" then o.seed = math.tointeger(tonumber(v))
      elseif a == "--init" then o.init = v
      elseif a == "--python" then o.python = v
      elseif a == "--peak-gflops" then o.peak = tonumber(v)
      elseif a == "--threads" then
        o.threads = {}
        for p in v:gmatch("[^,]+") do o.threads[#o.threads + 1] = math.tointeger(tonumber(p)) end
      else error("train_bench: unknown option " .. a, 0) end
      i = i + 2
    end
  end
  return o
end

-- ---------------------------------------------------------------------------
-- the shared starting point

local function new_model(seed)
  mm.manual_seed(seed)
  return mm.nn.MLP { sizes = SIZES, activation = "relu" }
end

-- Epoch e's order of n rows as a 1-based int64 tensor: what a DataLoader
-- {shuffle = true, seed = seed * 100003 + e} would draw (its own generator,
-- seeded, then one randperm), so a worker without --init shuffles as the
-- benchmark always has.  The global generator is left as it was.
local function own_permutation(n, seed, e)
  local saved = mm.get_rng_state()
  -- randperm's values may start at 0 or 1 (see data.lua); randperm(1) draws nothing.
  local base = mm.randperm(1):_get(1)
  mm.manual_seed(seed * 100003 + e)
  local p = mm.randperm(n)
  if base == 0 then p:add_(1) end
  mm.set_rng_state(saved)
  return p
end

local function param_file(dir, k) return ("%s/param_%d.npy"):format(dir, k) end
local function perm_file(dir, e) return ("%s/perm_%d.npy"):format(dir, e) end

-- Writes the round's weights and orders into dir, listing each file in
-- files before it is written (so a failure half way still cleans up).
local function write_init(dir, seed, n, epochs, files)
  for k, p in ipairs(new_model(seed):parameters()) do
    files[#files + 1] = param_file(dir, k)
    mm.save_npy(files[#files], p:detach())
  end
  for e = 1, epochs do
    files[#files + 1] = perm_file(dir, e)
    mm.save_npy(files[#files], own_permutation(n, seed, e) - 1)   -- 0-based on disk
  end
end

local function shape_str(t) return "[" .. table.concat(t:shape(), ", ") .. "]" end

-- Loads dir's weights into model.
local function read_params(dir, model)
  for k, p in ipairs(model:parameters()) do
    local src = mm.load_npy(param_file(dir, k))
    if shape_str(src) ~= shape_str(p) then
      error(("train_bench: %s holds %s, parameter %d is %s"):format(param_file(dir, k), shape_str(src),
            k, shape_str(p)), 0)
    end
    mm.no_grad(function() p:copy_(src) end)
  end
end

-- dir's order for epoch e, 1-based.
local function read_permutation(dir, n, e)
  local p = mm.load_npy(perm_file(dir, e))
  if p:dtype() ~= "int64" or p:dim() ~= 1 or p:size(1) ~= n
     or p:min():item() ~= 0 or p:max():item() ~= n - 1 then
    error(("train_bench: %s is not an int64 permutation of 0..%d"):format(perm_file(dir, e), n - 1), 0)
  end
  return p:add_(1)
end

-- ---------------------------------------------------------------------------
-- worker: one training run

local function worker(o)
  local nn, optim, data = mm.nn, mm.optim, mm.data
  mm.set_num_threads(o.threads[1])
  local clock = mm._time
  local train_x, train_y, test_x, test_y = data.fashion_mnist()
  -- In place, as the PyTorch side does: one copy of the pixels, not three.
  local mean, std = train_x:mean():item(), train_x:std():item()
  train_x:sub_(mean):div_(std)
  test_x:sub_(mean):div_(std)
  local n, bs = train_x:size(1), o.batch_size
  local train_set = data.TensorDataset(train_x, train_y)

  local model = new_model(o.seed)
  if o.init then read_params(o.init, model) end
  local opt = optim.AdamW(model:parameters(), { lr = 1e-3, weight_decay = 1e-2 })
  local steps = (n + bs - 1) // bs
  local sched = optim.CosineAnnealingLR(opt, { T_max = o.epochs * steps })

  local times = {}
  for epoch = 1, o.epochs do
    -- Drawn or read before the clock starts, one epoch's at a time.
    local perm = o.init and read_permutation(o.init, n, epoch) or own_permutation(n, o.seed, epoch)
    model:train()
    local t0 = clock()
    local loader = data.DataLoader(train_set, { batch_size = bs, sampler = perm })
    for xb, yb in loader:iter() do
      local loss = nn.cross_entropy(model(xb), yb)
      opt:zero_grad()
      loss:backward()
      opt:step()
      sched:step()
      loss:item()
    end
    times[#times + 1] = ("%.4f"):format(clock() - t0)
  end

  model:eval()
  local correct = 0
  mm.no_grad(function()
    for i = 1, test_x:size(1), 1000 do
      local len = math.min(1000, test_x:size(1) - i + 1)
      local pred = model(test_x:narrow(1, i, len)):argmax(2)
      correct = correct + pred:eq(test_y:narrow(1, i, len)):sum():item()
    end
  end)
  print(("RESULT side=microml threads=%d epoch_times=%s test_acc=%.4f vmhwm_kib=%d")
        :format(o.threads[1], table.concat(times, ","), correct / test_x:size(1), vmhwm_kib()))
end

-- ---------------------------------------------------------------------------
-- driver

-- Runs a worker command; returns its parsed RESULT line or nil, message.
local function run(cmd)
  -- coreutils' timeout keeps one pathological run (see below) from hanging make bench.
  local p = io.popen("timeout 600 " .. cmd .. " 2>&1")
  local out = p:read("a")
  local ok, how, code = p:close()
  local line = out:match("RESULT ([^\n]*)")
  if not line then
    return nil, ("failed (%s %s): %s"):format(tostring(how), tostring(code), out:sub(-400))
  end
  local r = {}
  for k, v in line:gmatch("(%S+)=(%S+)") do r[k] = v end
  local times = {}
  for t in r.epoch_times:gmatch("[^,]+") do times[#times + 1] = tonumber(t) end
  -- The first epoch carries one-time costs (page faults of fresh buffers,
  -- the thread pool starting); the median of the epochs is the steady rate.
  return { epoch = median(times), acc = tonumber(r.test_acc), rss = tonumber(r.vmhwm_kib) / 1024 },
         nil, ok
end

-- The number of training rows, from the labels file alone (the driver never
-- needs the 188 MB of pixels); a missing data set fails with data.lua's hint.
local function train_rows()
  local dir = mm.data.FASHION_MNIST_DIR
  for _, name in ipairs { "train-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte" } do
    local f = io.open(dir .. "/" .. name, "rb")
    if f then
      f:close()
      return mm.read_idx(dir .. "/" .. name, { dtype = "int64" }):size(1)
    end
  end
  return (mm.data.fashion_mnist()):size(1)
end

-- A fresh private directory: os.tmpname() reserves a unique name (mkstemp
-- creates the file), which becomes a directory; mkdir without -p fails
-- rather than reuse a name someone else took in between.
local function make_temp_dir()
  for _ = 1, 5 do
    local name = os.tmpname()
    os.remove(name)
    if os.execute("mkdir -m 700 " .. sh_quote(name) .. " 2>/dev/null") then return name end
  end
  error("train_bench: cannot create a temporary directory", 0)
end

local function remove_dir(dir, files)
  for _, f in ipairs(files) do os.remove(f) end
  os.remove(dir)   -- remove(3) removes an empty directory
end

local function mean_of(xs)
  local s = 0
  for _, x in ipairs(xs) do s = s + x end
  return #xs > 0 and s / #xs or nil
end

local function driver(o)
  local here = (arg and arg[0] or "bench/train_bench.lua")
  local program = os.getenv("MICROML") or (arg and arg[-1]) or "build/microml"
  local python = o.python or os.getenv("PYTHON") or "/usr/bin/python3"
  local torch_script = here:gsub("train_bench%.lua$", "train_torch.py")
  local probe = io.popen(sh_quote(python) .. " -c 'import torch' >/dev/null 2>&1 && echo yes")
  local have_torch = probe:read("a"):match("yes") ~= nil
  probe:close()
  local n = train_rows()

  print(("Training benchmark: MLP 784-256-128-10, AdamW, batch 128, cosine lr, %d epochs per run, "
         .. "%d rounds, sides alternating"):format(o.epochs, o.rounds))
  print(("Round r uses seed %d + r - 1; in every round all runs start from the same weights and see "
         .. "the same batches"):format(o.seed))
  if not have_torch then
    print(("PyTorch not available (%s cannot import torch): MicroML's figures alone"):format(python))
  end

  -- configs: label, side, threads, cmd (each round appends --seed and --init)
  local configs = {}
  for _, t in ipairs(o.threads) do
    local mm_cmd = ("%s %s --worker --threads %d --epochs %d"):format(sh_quote(program), sh_quote(here),
                    t, o.epochs)
    configs[#configs + 1] = { label = ("microml %dT"):format(t), side = "microml", threads = t, cmd = mm_cmd }
    if have_torch then
      local base = ("%s %s --threads %d --epochs %d"):format(sh_quote(python), sh_quote(torch_script),
                   t, o.epochs)
      configs[#configs + 1] = { label = ("torch %dT"):format(t), side = "torch", threads = t, cmd = base }
      if t > 1 then
        configs[#configs + 1] = { label = ("torch %dT passive"):format(t), side = "torch", threads = t,
                                  cmd = "env OMP_WAIT_POLICY=PASSIVE " .. base }
      end
    end
  end
  -- acc_by_round[r]: that round's accuracy, for the paired comparison.
  for _, c in ipairs(configs) do c.epochs, c.accs, c.rss, c.acc_by_round = {}, {}, {}, {} end

  local function run_round(round, seed, dir)
    for _, c in ipairs(configs) do
      if not c.dropped then
        local r, err = run(("%s --seed %d --init %s"):format(c.cmd, seed, sh_quote(dir)))
        if not r then
          io.stderr:write(("train_bench: %s: %s\n"):format(c.label, err))
        else
          c.epochs[#c.epochs + 1], c.accs[#c.accs + 1], c.rss[#c.rss + 1] = r.epoch, r.acc, r.rss
          c.acc_by_round[round] = r.acc
          print(("  round %d  %-18s epoch %.3f s  test_acc %.4f  peak RSS %.0f MiB")
                :format(round, c.label, r.epoch, r.acc, r.rss))
          io.stdout:flush()
        end
      end
    end
  end

  for round = 1, o.rounds do
    local seed = o.seed + round - 1
    local dir = make_temp_dir()
    local files = {}
    local ok, err = pcall(function()
      write_init(dir, seed, n, o.epochs, files)
      run_round(round, seed, dir)
    end)
    remove_dir(dir, files)
    if not ok then error(err, 0) end
    -- A configuration more than 3x slower than the best of its side (OpenMP
    -- threads spinning against another process for the second core run 10-30x
    -- slower) cannot be the best one; rerunning it would only blow the
    -- time budget.  Its first figure stays in the table.
    local best = {}
    for _, c in ipairs(configs) do
      local m = #c.epochs > 0 and median(c.epochs)
      if m and (not best[c.side] or m < best[c.side]) then best[c.side] = m end
    end
    for _, c in ipairs(configs) do
      local m = #c.epochs > 0 and median(c.epochs)
      if m and not c.dropped and m > 3 * best[c.side] and round < o.rounds then
        c.dropped = true
        print(("  (%s: %.1fx slower than the best %s configuration; not rerun)")
              :format(c.label, m / best[c.side], c.side))
      end
    end
  end

  print()
  print(("%-18s %12s %10s %14s"):format("configuration", "s/epoch", "test_acc", "peak RSS MiB"))
  local best_mm, best_torch
  for _, c in ipairs(configs) do
    c.med, c.acc, c.mrss = median(c.epochs), mean_of(c.accs), median(c.rss)
    if c.med then
      print(("%-18s %12.3f %10.4f %14.0f"):format(c.label, c.med, c.acc, c.mrss))
      if c.side == "microml" and (not best_mm or c.med < best_mm.med) then best_mm = c end
      if c.side == "torch" and (not best_torch or c.med < best_torch.med) then best_torch = c end
    end
  end
  print("(s/epoch and peak RSS: medians over rounds; test_acc: mean over rounds)")
  print()
  -- 784*256 + 256*128 + 128*10 multiply-adds per sample and pass; three
  -- passes (forward, grad of the input, grad of the weight) except that the
  -- first layer needs no input gradient.
  local macs = 784 * 256 + 256 * 128 + 128 * 10
  local flops = 2 * 60000 * (3 * macs - 784 * 256)
  print(("matmul work per epoch: %.1f GFLOP"):format(flops / 1e9))
  local floor = flops / (o.peak * 1e9)
  for _, c in ipairs(configs) do
    if c.side == "microml" and c.med then
      print(("  %s: %.1f GFLOP/s end to end"):format(c.label, flops / c.med / 1e9))
    end
  end
  print(("matmul-only floor at %g GFLOP/s (all cores' FMA peak): %.3f s/epoch"):format(o.peak, floor))
  for _, c in ipairs(configs) do
    if c.side == "microml" and c.med and c.threads == 2 then
      print(("  %s / floor = %.2f (target <= 1.5)"):format(c.label, c.med / floor))
    end
  end
  if best_mm and best_torch then
    print(("best MicroML (%s) %.3f s/epoch vs best PyTorch (%s) %.3f s/epoch: ratio %.2f (target <= 0.50)")
          :format(best_mm.label, best_mm.med, best_torch.label, best_torch.med, best_mm.med / best_torch.med))
    -- Paired by round: the same seed, weights and batches on both sides.
    local am, at, diffs = {}, {}, {}
    for round = 1, o.rounds do
      local a, b = best_mm.acc_by_round[round], best_torch.acc_by_round[round]
      if a and b then am[#am + 1], at[#at + 1], diffs[#diffs + 1] = a, b, a - b end
    end
    if #diffs > 0 then
      local worst, each = 0, {}
      for k, d in ipairs(diffs) do
        worst = math.max(worst, math.abs(d))
        each[k] = ("%+.4f"):format(d)
      end
      print(("test accuracy: MicroML %.4f, PyTorch %.4f (means over the %d rounds both ran)")
            :format(mean_of(am), mean_of(at), #diffs))
      print(("  paired (same initial weights, same batches each round): MicroML - PyTorch mean %+.4f, "
             .. "largest |diff| %.4f (rounds: %s)"):format(mean_of(diffs), worst, table.concat(each, " ")))
    else
      print(("test accuracy: MicroML %.4f, PyTorch %.4f (no round in which both ran)")
            :format(best_mm.acc, best_torch.acc))
    end
    print(("peak RSS: MicroML %.0f MiB, PyTorch %.0f MiB: ratio %.2f (target <= 0.50)")
          :format(best_mm.mrss, best_torch.mrss, best_mm.mrss / best_torch.mrss))
    for _, t in ipairs(o.threads) do
      local m, p
      for _, c in ipairs(configs) do
        if c.threads == t and c.med then
          if c.side == "microml" then m = c elseif not p or c.med < p.med then p = c end
        end
      end
      if m and p then
        print(("  at %d thread%s: MicroML / PyTorch (%s) = %.2f"):format(t, t > 1 and "s" or "",
              p.label, m.med / p.med))
      end
    end
  end
end

local o = parse(arg or {})
if o.worker then worker(o) else driver(o) end
