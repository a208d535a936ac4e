-- train_spec.lua — the training stack end to end: small problems that must
-- converge, a whole AdamW step that ends in the same bits on 1 and 2
-- threads, and a resumed run that reproduces the uninterrupted one loss for
-- loss (in process, and through examples/train.lua itself).  The
-- checkpoint format itself is tested in data_io_spec.lua.
local mm = require "microml"
local nn, optim, data = mm.nn, mm.optim, mm.data
local H = require "helpers"

--- spiral(n, k): n points per class on k interleaved arms.
local function spiral(n, k)
  local noise = mm.randn(n * k)
  local xs, ys = {}, {}
  for c = 1, k do
    for i = 1, n do
      local r = (i - 1) / (n - 1)
      local t = (c - 1) * 2 * math.pi / k + r * 1.75 * math.pi + noise:_get((c - 1) * n + i) * 0.1
      xs[#xs + 1] = { r * math.cos(t), r * math.sin(t) }
      ys[#ys + 1] = c
    end
  end
  return mm.tensor(xs, { dtype = "float32" }), mm.tensor(ys)
end

local function accuracy(model, x, y)
  model:eval()
  local acc = mm.no_grad(function() return model(x):argmax(2):eq(y):sum():item() / x:size(1) end)
  model:train()
  return acc
end

describe("training loops", function()
  it("fit three spirals to > 95% with AdamW and cross-entropy", function()
    mm.manual_seed(3)
    local x, y = spiral(100, 3)
    local model = nn.MLP { sizes = { 2, 64, 64, 3 } }
    local opt = optim.AdamW(model:parameters(), { lr = 1e-2, weight_decay = 1e-4 })
    local before = accuracy(model, x, y)
    local first, last
    for step = 1, 300 do
      opt:zero_grad()
      local loss = nn.cross_entropy(model(x), y)
      loss:backward()
      opt:step()
      if step == 1 then first = loss:item() end
      last = loss:item()
    end
    local acc = accuracy(model, x, y)
    assert.is_true(before < 0.6, "an untrained model should not already separate the spirals")
    assert.is_true(acc > 0.95, ("spiral accuracy %.3f"):format(acc))
    assert.is_true(last < 0.2 * first, ("loss went from %.3f to %.3f"):format(first, last))
  end)

  it("separate two Gaussian blobs with minibatch SGD, a schedule and clipping", function()
    mm.manual_seed(4)
    local n = 400
    local x = mm.randn(n, 2)
    local y = mm.randint(1, 3, n)                    -- labels 1..2
    -- shift each point by +-1.5 along (1, 1) according to its class
    local shift = (y:double() * 2 - 3):reshape(n, 1):float() * 1.5
    x = x + shift
    local model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))
    local opt = optim.SGD(model:parameters(), { lr = 0.1, momentum = 0.9, nesterov = true })
    local sched = optim.StepLR(opt, { step_size = 5, gamma = 0.5 })
    local loader = data.DataLoader(data.TensorDataset(x, y), { batch_size = 32, shuffle = true, seed = 5 })
    for _ = 1, 10 do
      for xb, yb in loader:iter() do
        opt:zero_grad()
        nn.cross_entropy(model(xb), yb):backward()
        optim.clip_grad_norm(model:parameters(), 1.0)
        opt:step()
      end
      sched:step()
    end
    assert.are.equal(0.1 * 0.25, opt.param_groups[1].lr)
    local acc = accuracy(model, x, y)
    assert.is_true(acc > 0.95, ("blob accuracy %.3f"):format(acc))
  end)
end)

describe("a whole AdamW training step", function()
  it("ends with the same loss and parameters on 1 and 2 threads", function()
    local function train()
      mm.manual_seed(5)
      local model = mm.nn.MLP { sizes = { 96, 130, 70, 10 }, activation = "relu" }
      local opt = mm.optim.AdamW(model:parameters(), { lr = 1e-2, weight_decay = 1e-2 })
      local x, y = mm.randn(64, 96), mm.randint(1, 11, { 64 })
      local loss
      for _ = 1, 3 do
        loss = mm.nn.cross_entropy(model(x), y)
        opt:zero_grad()
        loss:backward()
        opt:step()
      end
      local p = model:parameters()
      return loss:detach(), p[1]:detach(), p[2]:detach(), p[#p]:detach()
    end
    H.same_bits_1_2(train)
  end)
end)

-- A small training run with dropout (so the generator state matters) whose
-- loader is re-seeded per epoch, as examples/train.lua does.
local function make_run(seed)
  mm.manual_seed(seed)
  local model = nn.MLP { sizes = { 2, 16, 3 }, dropout = 0.3 }
  local opt = optim.AdamW(model:parameters(), { lr = 1e-2, amsgrad = true })
  return model, opt
end

local function train_epochs(model, opt, set, from, to)
  local losses = {}
  for epoch = from, to do
    local loader = data.DataLoader(set, { batch_size = 16, shuffle = true, seed = 1000 + epoch })
    for xb, yb in loader:iter() do
      opt:zero_grad()
      local loss = nn.cross_entropy(model(xb), yb)
      loss:backward()
      opt:step()
      losses[#losses + 1] = loss:item()
    end
  end
  return losses
end

describe("save and resume", function()
  it("continues exactly like an uninterrupted run", function()
    mm.manual_seed(0)
    local x, y = spiral(20, 3)
    local set = data.TensorDataset(x, y)

    local model, opt = make_run(1)
    local full = train_epochs(model, opt, set, 1, 4)

    local m1, o1 = make_run(1)
    local first = train_epochs(m1, o1, set, 1, 2)
    local path = H.tmpname("resume")
    optim.save_checkpoint(path, { model = m1:state_dict(), optimizer = o1:state_dict(), epoch = 2,
                                  rng = mm.get_rng_state() })
    mm.manual_seed(999)                           -- disturb everything the checkpoint restores
    local m2, o2 = make_run(2)
    local ck = optim.load_checkpoint(path)
    os.remove(path)
    m2:load_state_dict(ck.model)
    o2:load_state_dict(ck.optimizer)
    mm.set_rng_state(ck.rng)
    local rest = train_epochs(m2, o2, set, ck.epoch + 1, 4)

    assert.are.equal(#full, #first + #rest)
    for i, l in ipairs(first) do assert.are.equal(full[i], l) end
    for i, l in ipairs(rest) do
      assert.are.equal(full[#first + i], l, ("step %d after resuming"):format(i))
    end
  end)

  it("would differ without the generator state (the check above has teeth)", function()
    mm.manual_seed(0)
    local x, y = spiral(20, 3)
    local set = data.TensorDataset(x, y)
    local model, opt = make_run(1)
    local full = train_epochs(model, opt, set, 1, 3)
    local m1, o1 = make_run(1)
    train_epochs(m1, o1, set, 1, 2)
    local sd_m, sd_o = m1:state_dict(), o1:state_dict()
    local m2, o2 = make_run(2)                    -- generator left where make_run put it
    m2:load_state_dict(sd_m)
    o2:load_state_dict(sd_o)
    local rest = train_epochs(m2, o2, set, 3, 3)
    local same = true
    for i, l in ipairs(rest) do same = same and full[#full - #rest + i] == l end
    assert.is_false(same)
  end)
end)

describe("examples/train.lua", function()
  local program = os.getenv("MICROML") or "build/microml"
  local have_data = io.open(data.FASHION_MNIST_DIR .. "/train-images-idx3-ubyte.gz", "rb")
  if have_data then have_data:close() end
  local have_program = io.open(program, "rb")
  if have_program then have_program:close() end

  local function run(args)
    local p = io.popen(("%s examples/train.lua %s 2>/dev/null; echo \"exit=$?\""):format(program, args))
    local out = p:read("a")
    p:close()
    return out
  end
  local function epoch_losses(out)
    local t = {}
    for e, l, acc in out:gmatch("epoch%s+(%d+)/%d+%s+train_loss=(%S+)%s+test_acc=(%S+)") do
      t[tonumber(e)] = { loss = l, acc = tonumber(acc) }
    end
    return t
  end

  -- `make test` installs the dataset and builds the program first, so their
  -- absence is a failure, not a reason to skip.
  it("has what the script tests need", function()
    assert(have_data, "Fashion-MNIST is missing: install dataset-fashion-mnist (make deps)")
    assert(have_program, "build/microml is missing: run make")
  end)

  it("resumes from --save with the losses of an uninterrupted run", function()
    local dir = os.tmpname()
    os.remove(dir)
    local a = dir .. "_a_%d"          -- one checkpoint per epoch
    local common = "--limit 1500 --hidden 32 --dropout 0.2 --batch-size 100 --threads 1 --epochs 3"
    local full = run(("%s --save %s"):format(common, a))
    assert.is_truthy(full:find("exit=0", 1, true), full)
    local resumed = run(("%s --resume %s"):format(common, dir .. "_a_1"))
    for e = 1, 3 do os.remove(dir .. "_a_" .. e) end
    assert.is_truthy(resumed:find("resumed from", 1, true), resumed)
    local lf, lr = epoch_losses(full), epoch_losses(resumed)
    assert.is_nil(lr[1])
    for e = 2, 3 do
      assert.are.equal(lf[e].loss, lr[e].loss, "epoch " .. e)
      assert.are.equal(lf[e].acc, lr[e].acc, "epoch " .. e)
    end
    assert.is_true(lf[3].acc > 0.6, "even 1500 images give well above chance accuracy")
  end)

  it("draws the graph of the first step with --graph", function()
    local path = os.tmpname() .. ".dot"
    local out = run("--limit 300 --hidden 8 --epochs 1 --threads 1 --graph " .. path)
    assert.is_truthy(out:find("exit=0", 1, true), out)
    local f = assert(io.open(path, "rb"))
    local text = f:read("a")
    f:close()
    os.remove(path)
    assert.is_truthy(text:find("digraph", 1, true))
    for _, name in ipairs { "layers.1.weight", "layers.3.bias" } do
      assert.is_truthy(text:find(name, 1, true), "the graph names " .. name)
    end
  end)

  it("rejects bad options with a usage message and exit status 2", function()
    local p = io.popen(program .. " examples/train.lua --epochs 0 2>&1; echo \"exit=$?\"")
    local out = p:read("a")
    p:close()
    assert.is_truthy(out:find("--epochs expects an integer >= 1, got '0'", 1, true), out)
    assert.is_truthy(out:find("exit=2", 1, true), out)
    p = io.popen(program .. " examples/train.lua --bogus 1 2>&1; echo \"exit=$?\"")
    out = p:read("a")
    p:close()
    assert.is_truthy(out:find("unknown option --bogus", 1, true), out)
    p = io.popen(program .. " examples/train.lua --graph out.txt 2>&1; echo \"exit=$?\"")
    out = p:read("a")
    p:close()
    assert.is_truthy(out:find("--graph expects a file ending in .svg", 1, true), out)
    assert.is_truthy(out:find("exit=2", 1, true), out)
  end)
end)
