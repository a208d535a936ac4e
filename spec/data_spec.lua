-- microml.data: TensorDataset, DataLoader (batch counts, drop_last,
-- shuffling that is reproducible and complete), the Fashion-MNIST / MNIST
-- loaders (on small hand-made IDX files, and on the installed data set when
-- it is there), and data.nest.
local mm = require "microml"
local H = require "helpers"
local data = mm.data

local values = H.values

local function fails_with(needles, fn, ...)
  local args = table.pack(...)
  assert.has_error(function() fn(table.unpack(args, 1, args.n)) end)
  local ok, msg = pcall(fn, table.unpack(args, 1, args.n))
  assert(not ok)
  msg = tostring(msg)
  if type(needles) == "string" then needles = {needles} end
  for _, s in ipairs(needles) do
    assert(msg:find(s, 1, true), ("expected %q in the error message, got: %s"):format(s, msg))
  end
end

-- x = [[0, 100], [1, 101], ...] (row i-1 holds i-1 and i+99), y = 10 * (i-1)
local function toy(n)
  local x = mm.stack({mm.arange(n, {dtype = "float32"}), mm.arange(n, {dtype = "float32"}) + 100}, 2)
  local y = mm.arange(n) * 10
  return x, y
end

-- The order in which a loader visits rows, read from x's first column.
local function epoch_order(loader)
  local seen = {}
  for xb, yb in loader:iter() do
    for k = 1, xb:size(1) do
      local row = math.tointeger(xb:_get(2 * k - 1))
      assert.are.equal(row + 100, xb:_get(2 * k))      -- rows stay whole
      assert.are.equal(row * 10, yb:_get(k))            -- and aligned with their labels
      seen[#seen + 1] = row
    end
  end
  return seen
end

describe("TensorDataset", function()
  it("pairs rows of its tensors", function()
    local x, y = toy(5)
    local ds = data.TensorDataset(x, y)
    assert.are.equal(5, ds:len())
    assert.are.equal(5, #ds)
    local xi, yi = ds:get(3)
    assert.are.same({2, 102}, values(xi))
    assert.are.equal(20, yi:item())
    local xl = ds:get(-1)
    assert.are.same({4, 104}, values(xl))
  end)

  it("rejects mismatched sizes, non-tensors and bad indices", function()
    fails_with({"size mismatch", "(5, 2)", "(4)"}, data.TensorDataset, mm.zeros(5, 2), mm.zeros(4))
    fails_with({"argument 2: expected a tensor, got number"}, data.TensorDataset, mm.zeros(2), 3)
    fails_with({"at least one tensor"}, data.TensorDataset)
    local ds = data.TensorDataset(mm.zeros(3))
    fails_with({"index 4 is out of range (expected 1..3)"}, ds.get, ds, 4)
    fails_with({"index 0 is out of range"}, ds.get, ds, 0)
  end)
end)

describe("DataLoader", function()
  it("counts batches with and without drop_last", function()
    local x, y = toy(10)
    local ds = data.TensorDataset(x, y)
    assert.are.equal(4, #data.DataLoader(ds, {batch_size = 3}))
    assert.are.equal(3, #data.DataLoader(ds, {batch_size = 3, drop_last = true}))
    assert.are.equal(2, #data.DataLoader(ds, {batch_size = 5, drop_last = true}))
    assert.are.equal(1, #data.DataLoader(ds, {batch_size = 64}))
    assert.are.equal(0, #data.DataLoader(ds, {batch_size = 64, drop_last = true}))
    assert.are.equal(10, #data.DataLoader(ds))
    local sizes = {}
    for xb, yb in data.DataLoader(ds, {batch_size = 3}):iter() do
      sizes[#sizes + 1] = xb:size(1)
      assert.are.same({xb:size(1), 2}, xb:shape())
      assert.are.same({xb:size(1)}, yb:shape())
    end
    assert.are.same({3, 3, 3, 1}, sizes)
    sizes = {}
    for xb in data.DataLoader(ds, {batch_size = 3, drop_last = true, shuffle = true}):iter() do
      sizes[#sizes + 1] = xb:size(1)
    end
    assert.are.same({3, 3, 3}, sizes)
  end)

  it("visits rows in order without copying when not shuffling", function()
    local x, y = toy(7)
    local loader = data.DataLoader(data.TensorDataset(x, y), {batch_size = 3})
    assert.are.same({0, 1, 2, 3, 4, 5, 6}, epoch_order(loader))
    local first = loader:iter()()
    first:_set(1, -1)                      -- a view: writes reach the data set
    assert.are.equal(-1, x:_get(1))
  end)

  it("shuffles: every sample once per epoch, a new order each epoch", function()
    local x, y = toy(50)
    local loader = data.DataLoader(data.TensorDataset(x, y), {batch_size = 8, shuffle = true, seed = 7})
    local e1, e2 = epoch_order(loader), epoch_order(loader)
    for _, order in ipairs {e1, e2} do
      assert.are.equal(50, #order)
      local sorted = {table.unpack(order)}
      table.sort(sorted)
      for i = 1, 50 do assert.are.equal(i - 1, sorted[i]) end
    end
    assert.are_not.same(e1, e2)
    local identity = {}
    for i = 1, 50 do identity[i] = i - 1 end
    assert.are_not.same(identity, e1)
    assert.are.equal(2, loader.epoch)
  end)

  it("drop_last with shuffling sees distinct samples", function()
    local x, y = toy(10)
    local order = epoch_order(data.DataLoader(data.TensorDataset(x, y),
      {batch_size = 4, shuffle = true, drop_last = true, seed = 1}))
    assert.are.equal(8, #order)
    local seen = {}
    for _, r in ipairs(order) do
      assert.is_nil(seen[r])
      seen[r] = true
    end
  end)

  it("is reproducible under the same seed, and a loader seed leaves the global generator alone", function()
    local x, y = toy(30)
    local ds = data.TensorDataset(x, y)
    local a = data.DataLoader(ds, {batch_size = 4, shuffle = true, seed = 42})
    local b = data.DataLoader(ds, {batch_size = 4, shuffle = true, seed = 42})
    local c = data.DataLoader(ds, {batch_size = 4, shuffle = true, seed = 43})
    local a1, b1, c1 = epoch_order(a), epoch_order(b), epoch_order(c)
    assert.are.same(a1, b1)
    assert.are_not.same(a1, c1)
    assert.are.same(epoch_order(a), epoch_order(b))   -- second epochs agree too

    mm.manual_seed(5)
    local r1 = values(mm.rand(4))
    mm.manual_seed(5)
    epoch_order(data.DataLoader(ds, {batch_size = 4, shuffle = true, seed = 9}))
    assert.are.same(r1, values(mm.rand(4)))

    -- without a loader seed, mm.manual_seed makes shuffling reproducible
    local g = data.DataLoader(ds, {batch_size = 4, shuffle = true})
    mm.manual_seed(11)
    local g1 = epoch_order(g)
    mm.manual_seed(11)
    assert.are.same(g1, epoch_order(g))
  end)

  it("stacks samples of a dataset that only has len and get", function()
    local ds = {len = function() return 5 end,
                get = function(_, i) return mm.full({2}, i), i * 2 end}
    local batches = {}
    for xb, yb in data.DataLoader(ds, {batch_size = 2}):iter() do batches[#batches + 1] = {xb, yb} end
    assert.are.equal(3, #batches)
    assert.are.same({2, 2}, batches[1][1]:shape())
    assert.are.same({1, 1, 2, 2}, values(batches[1][1]))
    assert.are.same({2, 4}, values(batches[1][2]))
    assert.are.same({10}, values(batches[3][2]))
  end)

  it("walks a given order with sampler=, every epoch, for both kinds of dataset", function()
    local x = mm.arange(10):reshape(10, 1)
    local order = mm.tensor({3, 1, 2, 10, 9, 9, 7}, {dtype = "int64"})   -- a subset, a repeat
    local loader = data.DataLoader(data.TensorDataset(x), {batch_size = 3, sampler = order})
    assert.are.equal(3, #loader)
    for _ = 1, 2 do
      local seen = {}
      for xb in loader:iter() do for _, v in ipairs(values(xb)) do seen[#seen + 1] = v end end
      assert.are.same({2, 0, 1, 9, 8, 8, 6}, seen)
    end
    local generic = {len = function() return 10 end, get = function(_, i) return i end}
    local got = {}
    for b in data.DataLoader(generic, {batch_size = 4, sampler = order}):iter() do
      for _, v in ipairs(values(b)) do got[#got + 1] = v end
    end
    assert.are.same({3, 1, 2, 10, 9, 9, 7}, got)
    local ds = data.TensorDataset(mm.zeros(4))
    fails_with({"sampler", "1-D int64 tensor", "got float32(4)"}, data.DataLoader, ds, {sampler = mm.zeros(4)})
    fails_with({"sampler", "got table"}, data.DataLoader, ds, {sampler = {1, 2}})
    fails_with({"sampler index 5 is out of range (expected 1..4)"}, data.DataLoader, ds,
               {sampler = mm.tensor({1, 5}, {dtype = "int64"})})
    fails_with({"sampler index 0 is out of range"}, data.DataLoader, ds,
               {sampler = mm.tensor({0, 1}, {dtype = "int64"})})
    fails_with({"sampler and shuffle exclude each other"}, data.DataLoader, ds,
               {shuffle = true, sampler = mm.tensor({1}, {dtype = "int64"})})
  end)

  describe("gathering the next shuffled batch in the background", function()
    local threads
    setup(function() threads = mm.get_num_threads() end)
    teardown(function() mm.set_num_threads(threads) end)

    local function epoch(ds, opts)
      local xs, ys = {}, {}
      for xb, yb in data.DataLoader(ds, opts):iter() do
        xs[#xs + 1], ys[#ys + 1] = xb, yb
        mm.matmul(mm.ones(64, 64), mm.ones(64, 64))   -- pool work between batches
      end
      return xs, ys
    end

    for _, nt in ipairs({1, 2}) do
      it(("hands out the same batches as gathering on demand (%d thread%s)"):format(nt, nt > 1 and "s" or ""), function()
        mm.set_num_threads(nt)
        mm.manual_seed(5)
        local x, y = mm.randn(1000, 37), mm.randint(1, 11, {1000})
        local ds = data.TensorDataset(x, y)
        local a, ay = epoch(ds, {batch_size = 64, shuffle = true, seed = 9})
        local b, by = epoch(ds, {batch_size = 64, shuffle = true, seed = 9, prefetch = false})
        assert.are.equal(16, #a)
        assert.are.equal(#b, #a)
        for k = 1, #a do
          H.assert_identical(b[k], a[k])
          H.assert_identical(by[k], ay[k])
        end
        -- and they are the right rows: the sampler order, by hand
        local order = mm.randperm(1000)
        local c = epoch(ds, {batch_size = 100, sampler = order})
        H.assert_identical(x:index_select(1, order:narrow(1, 901, 100)), c[10])
      end)
    end

    it("gives the rows as they are when the batch is handed out, after in-place writes", function()
      mm.set_num_threads(2)
      local x = mm.zeros(500, 8)
      local loader = data.DataLoader(data.TensorDataset(x), {batch_size = 50, shuffle = true, seed = 1})
      local k = 0
      for xb in loader:iter() do
        k = k + 1
        -- every row holds k - 1 when batch k is handed out
        assert.are.equal(k - 1, xb:min():item())
        assert.are.equal(k - 1, xb:max():item())
        x:add_(1)            -- while batch k + 1 may be being gathered
      end
      assert.are.equal(10, k)
    end)

    it("leaves nothing behind when a loop stops early", function()
      mm.set_num_threads(2)
      local ds = data.TensorDataset(mm.randn(2000, 64))
      collectgarbage(); collectgarbage()
      local before = H.live_bytes()
      for _ = 1, 3 do
        for xb in data.DataLoader(ds, {batch_size = 100, shuffle = true}):iter() do
          if xb then break end
        end
      end
      collectgarbage(); collectgarbage()
      assert.are.equal(before, H.live_bytes())
    end)

    it("records the graph of a source that requires grad, and names bad arguments", function()
      mm.set_num_threads(2)
      local w = mm.randn(20, 3)
      w.requires_grad = true
      local idx = mm.tensor({4, 1, 4}, {dtype = "int64"})
      local h = mm._index_select_start({w}, idx)
      local rows = mm._index_select_finish(h)
      rows:sum():backward()
      assert.are.same({0, 0, 0}, values(w.grad[2]))
      assert.are.same({1, 1, 1}, values(w.grad[1]))
      assert.are.same({2, 2, 2}, values(w.grad[4]))
      fails_with({"already collected"}, mm._index_select_finish, h)
      fails_with({"index 21 is out of range", "1..20"}, mm._index_select_start, {w}, mm.tensor({21}, {dtype = "int64"}))
      fails_with({"expected tensors of 20 rows like the first, got 5"}, mm._index_select_start, {w, mm.zeros(5)}, idx)
      fails_with({"expected a Tensor as entry 2, got number"}, mm._index_select_start, {w, 3}, idx)
      fails_with({"expected a list of 1 to 8 tensors, got 0"}, mm._index_select_start, {}, idx)
      fails_with({"expected int64 indices, got float32"}, mm._index_select_start, {w}, mm.zeros(2))
    end)
  end)

  it("handles an empty data set and rejects bad options", function()
    local empty = data.TensorDataset(mm.zeros(0, 3))
    local loader = data.DataLoader(empty, {batch_size = 4, shuffle = true})
    assert.are.equal(0, #loader)
    for _ in loader:iter() do error("an empty data set yields no batch") end
    local ds = data.TensorDataset(mm.zeros(4))
    fails_with({"batch_size", ">= 1", "got 0"}, data.DataLoader, ds, {batch_size = 0})
    fails_with({"batch_size", "expected an integer, got 2.5"}, data.DataLoader, ds, {batch_size = 2.5})
    fails_with({"no get(i) method"}, data.DataLoader, {len = function() return 1 end})
    fails_with({"expected a dataset"}, data.DataLoader, 5)
  end)
end)

describe("MNIST-family loaders", function()
  local dir

  -- Four tiny IDX files in the MNIST layout: 3 train images of 2x2, 2 test.
  local function make_set(gz)
    dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p '" .. dir .. "'"))
    local function idx(name, type_dims, payload)
      local f = assert(io.open(dir .. "/" .. name, "wb"))
      f:write(string.pack(">BBBB", 0, 0, 8, #type_dims))
      for _, d in ipairs(type_dims) do f:write(string.pack(">I4", d)) end
      f:write(payload)
      f:close()
      if gz then assert(os.execute(("gzip -n '%s/%s'"):format(dir, name))) end
    end
    idx("train-images-idx3-ubyte", {3, 2, 2}, string.char(0, 51, 102, 255, 1, 2, 3, 4, 5, 6, 7, 8))
    idx("train-labels-idx1-ubyte", {3}, string.char(0, 9, 4))
    idx("t10k-images-idx3-ubyte", {2, 2, 2}, string.char(255, 255, 0, 0, 0, 0, 255, 255))
    idx("t10k-labels-idx1-ubyte", {2}, string.char(1, 2))
  end
  after_each(function() if dir then os.execute("rm -rf '" .. dir .. "'") end end)

  for _, gz in ipairs {false, true} do
    it("scales images to [0, 1], flattens them and shifts labels to 1..10 (" ..
       (gz and "gzip" or "plain") .. ")", function()
      make_set(gz)
      local tx, ty, vx, vy = data.fashion_mnist(dir)
      assert.are.same({3, 4}, tx:shape())
      assert.are.equal("float32", tx:dtype())
      local v = values(tx)
      assert.are.same({0, 0.2, 0.4, 1}, {v[1], (math.floor(v[2] * 1e6 + 0.5) / 1e6),
                                         (math.floor(v[3] * 1e6 + 0.5) / 1e6), v[4]})
      assert.are.equal("int64", ty:dtype())
      assert.are.same({1, 10, 5}, values(ty))
      assert.are.same({2, 4}, vx:shape())
      assert.are.same({2, 3}, values(vy))
      local mx = data.mnist(dir)
      assert.are.same({3, 4}, mx:shape())
    end)
  end

  it("names the package and the --data option when the files are missing", function()
    fails_with({"fashion_mnist", "/nonexistent/dir", "dataset-fashion-mnist", "--data"},
      data.fashion_mnist, "/nonexistent/dir")
    fails_with({"mnist", "--data"}, data.mnist, "/nonexistent/dir")
  end)

  -- make test installs dataset-fashion-mnist first: its absence is a failure.
  it("loads the installed Fashion-MNIST: shapes, dtypes, ranges", function()
    local tx, ty, vx, vy = data.fashion_mnist()
    assert.are.same({60000, 784}, tx:shape())
    assert.are.same({60000}, ty:shape())
    assert.are.same({10000, 784}, vx:shape())
    assert.are.same({10000}, vy:shape())
    assert.are.equal("float32", tx:dtype())
    assert.are.equal("int64", ty:dtype())
    local lo, hi = math.huge, -math.huge
    for i = 1, 60000 do
      local v = ty:_get(i)
      lo, hi = math.min(lo, v), math.max(hi, v)
    end
    assert.are.same({1, 10}, {lo, hi})
    lo, hi = math.huge, -math.huge
    for i = 1, 784 * 20 do
      local v = tx:_get(i)
      lo, hi = math.min(lo, v), math.max(hi, v)
    end
    assert.are.equal(0, lo)
    assert.is_true(hi > 0.5 and hi <= 1)
  end)
end)

describe("data.nest", function()
  it("turns dotted names into nested tables and digit segments into list indices", function()
    local a, b, c = mm.zeros(1), mm.ones(1), mm.ones(2)
    local n = data.nest {["model.fc1.weight"] = a, ["model.fc1.bias"] = b, ["layers.1"] = c, top = a}
    assert.are.equal(a, n.model.fc1.weight)
    assert.are.equal(b, n.model.fc1.bias)
    assert.are.equal(c, n.layers[1])
    assert.are.equal(a, n.top)
  end)

  it("rejects a name that is both a tensor and a prefix", function()
    fails_with({"both a tensor and a prefix"}, data.nest, {a = mm.zeros(1), ["a.b"] = mm.zeros(1)})
  end)
end)
