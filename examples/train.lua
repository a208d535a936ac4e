--- examples/train.lua — the main job: an MLP classifier on Fashion-MNIST.
--
--   build/microml examples/train.lua [options]        (`make train` runs it)
--
-- The default recipe — 784-256-128-10 ReLU MLP, AdamW (lr 1e-3, weight
-- decay 1e-2), batches of 128, 10 epochs, pixels standardised, the lr
-- decayed from 1e-3 to 0 along a cosine — reaches 0.893-0.895 test
-- accuracy over seeds 1-3 (with a constant lr and raw pixels: 0.877-0.887,
-- depending on where the last noisy steps leave the weights).  Each epoch
-- prints one line on stdout:
--
--   epoch  3/10  train_loss=0.301234  test_acc=0.8712  time=2.9s
--
-- --save PATH writes a checkpoint after every epoch (model, optimizer and
-- scheduler state, epoch, generator state); --resume PATH continues from
-- one and, given the same options, produces exactly the losses the
-- uninterrupted run would have: the generator state is restored and each
-- epoch's shuffle comes from its own seed.
local mm = require "microml"
local nn, optim, data = mm.nn, mm.optim, mm.data

local USAGE = [[
usage: microml examples/train.lua [options]
  --data DIR           directory with the Fashion-MNIST IDX files
                       (default: ]] .. tostring(data.FASHION_MNIST_DIR) .. [[)
  --epochs N           epochs to train up to (default 10)
  --batch-size N       minibatch size (default 128)
  --lr X               AdamW learning rate (default 1e-3)
  --weight-decay X     AdamW decoupled weight decay (default 1e-2)
  --schedule NAME      learning rate over the run: cosine (from --lr down to 0,
                       per step) or constant (default cosine)
  --standardize yes|no standardise pixels with the training mean/std (default yes)
  --hidden A,B,...     hidden layer sizes (default 256,128)
  --dropout P          dropout after each hidden activation (default 0)
  --seed N             seed for initialisation and shuffling (default 1)
  --threads N          worker threads (default: all cores)
  --limit N            train on the first N training images only (quick runs)
  --save PATH          write a checkpoint after every epoch (a %d in PATH becomes
                       the epoch number, keeping one file per epoch)
  --resume PATH        continue from a checkpoint written by --save; pass the
                       same options (the cosine schedule spans --epochs)
  --graph FILE.svg     draw the autograd graph of the first training step, coloured
                       by gradient norm (.svg, .png, .pdf, or .dot; needs Graphviz)
  --help               this text]]

local function usage_error(msg)
  io.stderr:write("train.lua: ", msg, "\n\n", USAGE, "\n")
  os.exit(2)
end

local function parse_args(argv)
  local o = { epochs = 10, batch_size = 128, lr = 1e-3, weight_decay = 1e-2, hidden = { 256, 128 },
              dropout = 0, seed = 1, schedule = "cosine", standardize = true }
  local function int(name, v, min)
    local n = math.tointeger(tonumber(v))
    if not n or n < min then usage_error(("%s expects an integer >= %d, got '%s'"):format(name, min, tostring(v))) end
    return n
  end
  local function num(name, v, min)
    local n = tonumber(v)
    if not n or n ~= n or n < min then usage_error(("%s expects a number >= %g, got '%s'"):format(name, min, tostring(v))) end
    return n
  end
  local handlers = {
    data = function(v) o.data = v end,
    epochs = function(v) o.epochs = int("--epochs", v, 1) end,
    ["batch-size"] = function(v) o.batch_size = int("--batch-size", v, 1) end,
    lr = function(v) o.lr = num("--lr", v, 0) end,
    ["weight-decay"] = function(v) o.weight_decay = num("--weight-decay", v, 0) end,
    hidden = function(v)
      o.hidden = {}
      for part in (v .. ","):gmatch("([^,]*),") do o.hidden[#o.hidden + 1] = int("--hidden", part, 1) end
    end,
    dropout = function(v)
      o.dropout = num("--dropout", v, 0)
      if o.dropout >= 1 then usage_error("--dropout expects a probability below 1, got " .. v) end
    end,
    schedule = function(v)
      if v ~= "cosine" and v ~= "constant" then usage_error("--schedule expects cosine or constant, got '" .. v .. "'") end
      o.schedule = v
    end,
    standardize = function(v)
      if v ~= "yes" and v ~= "no" then usage_error("--standardize expects yes or no, got '" .. v .. "'") end
      o.standardize = v == "yes"
    end,
    seed = function(v) o.seed = int("--seed", v, math.mininteger) end,
    threads = function(v) o.threads = int("--threads", v, 1) end,
    limit = function(v) o.limit = int("--limit", v, 1) end,
    save = function(v) o.save = v end,
    resume = function(v) o.resume = v end,
    graph = function(v)
      local ext = (v:match("%.(%w+)$") or ""):lower()
      if not ({ svg = 1, png = 1, pdf = 1, dot = 1, gv = 1 })[ext] then
        usage_error("--graph expects a file ending in .svg, .png, .pdf or .dot, got '" .. v .. "'")
      end
      o.graph = v
    end,
  }
  local i = 1
  while i <= #argv do
    local a = argv[i]
    if a == "--help" or a == "-h" then print(USAGE); os.exit(0) end
    local name, value = a:match("^%-%-([%w%-]+)=(.*)$")
    if not name then
      name = a:match("^%-%-([%w%-]+)$")
      if not name then usage_error("unexpected argument '" .. a .. "'") end
      i = i + 1
      value = argv[i]
      if value == nil then usage_error("--" .. name .. " needs a value") end
    end
    local h = handlers[name]
    if not h then usage_error("unknown option --" .. name) end
    h(value)
    i = i + 1
  end
  return o
end

local opts = parse_args(arg or {})
if opts.threads then mm.set_num_threads(opts.threads) end
local clock = mm._time or os.clock
local has_progress, progress = pcall(require, "microml.progress")

-- ---------------------------------------------------------------------------
-- data

local train_x, train_y, test_x, test_y = data.fashion_mnist(opts.data)
if opts.limit and opts.limit < train_x:size(1) then
  train_x, train_y = train_x:narrow(1, 1, opts.limit), train_y:narrow(1, 1, opts.limit)
end
-- Standardise with the training set's mean and standard deviation (one
-- pair for all pixels, as torchvision's Normalize is used for this set):
-- centred inputs make the first layer's gradients better conditioned.
local note = ""
if opts.standardize then
  local mean, std = train_x:mean():item(), train_x:std():item()
  -- In place: `(x - mean) / std` would hold two more copies of the
  -- training images (188 MB each) until the collector got to them.
  train_x:sub_(mean):div_(std)
  test_x:sub_(mean):div_(std)
  note = (" (standardised: mean %.4f, std %.4f)"):format(mean, std)
end
local train_set = data.TensorDataset(train_x, train_y)
print(("Fashion-MNIST: %d training images, %d test images%s, %d threads")
      :format(train_x:size(1), test_x:size(1), note, mm.get_num_threads()))

-- ---------------------------------------------------------------------------
-- model and optimizer

mm.manual_seed(opts.seed)
local sizes = { 784 }
for _, h in ipairs(opts.hidden) do sizes[#sizes + 1] = h end
sizes[#sizes + 1] = 10
local model = nn.MLP { sizes = sizes, activation = "relu", dropout = opts.dropout }
local opt = optim.AdamW(model:parameters(), { lr = opts.lr, weight_decay = opts.weight_decay })
local steps_per_epoch = (train_x:size(1) + opts.batch_size - 1) // opts.batch_size
-- Cosine decay per step from --lr to 0 at the end of the last epoch: the
-- late epochs take small steps, so the final weights do not sit wherever
-- the last noisy minibatches threw them.
local sched = opts.schedule == "cosine"
  and optim.CosineAnnealingLR(opt, { T_max = opts.epochs * steps_per_epoch }) or nil

local start_epoch = 1
if opts.resume then
  local ck = optim.load_checkpoint(opts.resume)
  local saved = table.concat(ck.config and ck.config.sizes or {}, ",")
  if saved ~= table.concat(sizes, ",") then
    usage_error(("--resume: '%s' holds an MLP with sizes %s, but the options ask for %s (pass the "
                 .. "same --hidden)"):format(opts.resume, saved, table.concat(sizes, ",")))
  end
  model:load_state_dict(ck.model)
  opt:load_state_dict(ck.optimizer)
  if sched then
    if not ck.scheduler then usage_error("--resume: the checkpoint was written without a schedule (pass --schedule constant)") end
    sched:load_state_dict(ck.scheduler)
  end
  mm.set_rng_state(ck.rng)
  start_epoch = ck.epoch + 1
  print(("resumed from %s after epoch %d"):format(opts.resume, ck.epoch))
end
print(model)
print(opt)

-- ---------------------------------------------------------------------------
-- training

local function evaluate(x, y)
  model:eval()
  local correct, n, bs = 0, x:size(1), 1000
  mm.no_grad(function()
    for i = 1, n, bs do
      local len = math.min(bs, n - i + 1)
      local pred = model(x:narrow(1, i, len)):argmax(2)
      correct = correct + pred:eq(y:narrow(1, i, len)):sum():item()
    end
  end)
  model:train()
  return correct / n
end

local function save_checkpoint(epoch)
  -- Written beside the target and renamed, so an interrupted save never
  -- leaves a truncated checkpoint where a good one was.
  local path = opts.save:gsub("%%d", tostring(epoch))
  local tmp = path .. ".tmp"
  optim.save_checkpoint(tmp, {
    model = model:state_dict(), optimizer = opt:state_dict(), epoch = epoch,
    scheduler = sched and sched:state_dict() or nil,
    rng = mm.get_rng_state(), config = { sizes = sizes, seed = opts.seed },
  })
  local ok, err = os.rename(tmp, path)
  if not ok then error("--save: cannot move the checkpoint into place: " .. tostring(err)) end
end

if start_epoch > opts.epochs then
  print(("nothing to do: the checkpoint is already at epoch %d of %d"):format(start_epoch - 1, opts.epochs))
end

for epoch = start_epoch, opts.epochs do
  -- One seed per epoch: the shuffle of epoch k does not depend on how the
  -- run got there, which is what makes --resume exact.
  local loader = data.DataLoader(train_set, { batch_size = opts.batch_size, shuffle = true,
                                              seed = opts.seed * 100003 + epoch })
  local bar = has_progress and progress.new { total = #loader, desc = ("epoch %d/%d"):format(epoch, opts.epochs) }
  local t0 = clock()
  local loss_sum, seen = 0, 0
  model:train()
  for xb, yb in loader:iter() do
    local draw = opts.graph and epoch == start_epoch and seen == 0
    local prev_stats = draw and mm.viz.enable_stats(true)
    local loss = nn.cross_entropy(model(xb), yb)
    opt:zero_grad()
    loss:backward()
    if draw then
      mm.viz.render(loss, opts.graph, { params = model, title = ("MLP %s, first step of epoch %d")
                                          :format(table.concat(sizes, "-"), epoch) })
      mm.viz.enable_stats(prev_stats)
      io.stderr:write("wrote the autograd graph of the first step to ", opts.graph, "\n")
    end
    opt:step()
    if sched then sched:step() end
    local l, n = loss:item(), xb:size(1)
    loss_sum, seen = loss_sum + l * n, seen + n
    if bar then bar:update(1, { loss = l }) end
  end
  if bar then bar:close() end
  local acc = evaluate(test_x, test_y)
  print(("epoch %2d/%d  train_loss=%.6f  test_acc=%.4f  time=%.1fs")
        :format(epoch, opts.epochs, loss_sum / seen, acc, clock() - t0))
  io.stdout:flush()
  if opts.save then save_checkpoint(epoch) end
end
