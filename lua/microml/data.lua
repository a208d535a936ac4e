--- microml.data — datasets, batching, and the MNIST-family loaders.
--
-- Owns TensorDataset, DataLoader (batches, shuffling, drop_last), the
-- Fashion-MNIST / MNIST loaders built on mm.read_idx, and data.nest, which
-- turns the flat dotted table mm.load returns back into nested tables.
--
--   local data = mm.data
--   local ds = data.TensorDataset(x, y)               -- rows of x pair with rows of y
--   local loader = data.DataLoader(ds, {batch_size = 64, shuffle = true, seed = 1})
--   for epoch = 1, 10 do
--     for xb, yb in loader:iter() do ... end           -- #loader batches per epoch
--   end
--
-- A batch of a TensorDataset is gathered with one index_select per tensor
-- (a narrow view, with no copy at all, when not shuffling), so an epoch
-- never copies the whole data set.  Shuffling draws a permutation per epoch
-- from mm's generator (reproducible under mm.manual_seed), or from the
-- loader's own generator when it was given a seed, which then leaves the
-- global generator's sequence untouched.
local mm = require "microml"

local options = require "microml.options"
local data = {}

local function shape_str(t)
  return "(" .. table.concat(t:shape(), ", ") .. ")"
end

local function check_int(v, what, min)
  if math.type(v) ~= "integer" and not (type(v) == "number" and v == math.floor(v)) then
    error(("%s: expected an integer, got %s"):format(what, v == nil and "nil" or tostring(v)), 3)
  end
  v = math.tointeger(v)
  if v < min then error(("%s: expected an integer >= %d, got %d"):format(what, min, v), 3) end
  return v
end

-- mm.randperm's values in Lua may start at 0 or at 1; index_select takes
-- 1-based indices.  randperm(1) draws nothing from the generator, so
-- probing it is free and leaves the random sequence unchanged.
local perm_base
local function one_based_perm(n)
  if perm_base == nil then perm_base = mm.randperm(1):_get(1) end
  local p = mm.randperm(n)
  if perm_base == 0 then p:add_(1) end
  return p
end

-- ---------------------------------------------------------------------------
-- TensorDataset

local TensorDataset = {}
TensorDataset.__index = TensorDataset
TensorDataset.__name = "TensorDataset"

--- data.TensorDataset(t1, t2, ...): sample i is (t1[i], t2[i], ...); every
-- tensor must have the same size along dimension 1.
function data.TensorDataset(...)
  local tensors = table.pack(...)
  if tensors.n == 0 then error("TensorDataset: expected at least one tensor", 2) end
  local n
  for i = 1, tensors.n do
    local t = tensors[i]
    if not mm.is_tensor(t) then
      error(("TensorDataset: argument %d: expected a tensor, got %s"):format(i, type(t)), 2)
    end
    if t:dim() == 0 then
      error(("TensorDataset: argument %d: expected at least 1 dimension, got a scalar"):format(i), 2)
    end
    if n == nil then
      n = t:size(1)
    elseif t:size(1) ~= n then
      error(("TensorDataset: size mismatch along dimension 1: argument 1 has shape %s, argument %d "
             .. "has shape %s"):format(shape_str(tensors[1]), i, shape_str(t)), 2)
    end
  end
  return setmetatable({tensors = {table.unpack(tensors, 1, tensors.n)}, n = n}, TensorDataset)
end

function TensorDataset:len() return self.n end
TensorDataset.__len = TensorDataset.len

--- ds:get(i) -> t1[i], t2[i], ... (1-based; negative counts from the end).
function TensorDataset:get(i)
  local n = self.n
  i = check_int(i, "TensorDataset:get", -n)
  if i == 0 or i > n then
    error(("TensorDataset:get: index %d is out of range (expected 1..%d)"):format(i, n), 2)
  end
  local out = {}
  for k, t in ipairs(self.tensors) do out[k] = t[i] end
  return table.unpack(out)
end

-- Rows start..start+len-1 (through order, a 1-based int64 index tensor,
-- when shuffling) of every tensor.
local function gather_rows(t, order, start, len)
  if not order then return t:narrow(1, start, len) end
  local idx = order:narrow(1, start, len)
  if t.index_select then return t:index_select(1, idx) end
  -- Fallback for a build without index_select: copy row by row.
  local shape = t:shape()
  shape[1] = len
  local out = mm.empty(shape, {dtype = t:dtype()})
  for k = 1, len do out[k] = t[idx:_get(k)] end
  return out
end

function TensorDataset:_batch(order, start, len)
  local out = {}
  for k, t in ipairs(self.tensors) do out[k] = gather_rows(t, order, start, len) end
  return table.unpack(out, 1, #self.tensors)
end

function TensorDataset:__tostring()
  local parts = {}
  for k, t in ipairs(self.tensors) do parts[k] = t:dtype() .. shape_str(t) end
  return ("TensorDataset(%d samples: %s)"):format(self.n, table.concat(parts, ", "))
end

-- ---------------------------------------------------------------------------
-- DataLoader

local DataLoader = {}
DataLoader.__index = DataLoader
DataLoader.__name = "DataLoader"

local function dataset_len(ds)
  if type(ds.len) == "function" then return ds:len() end
  local mt = getmetatable(ds)
  if mt and mt.__len then return #ds end
  error("DataLoader: the dataset has neither a len() method nor a __len metamethod", 3)
end

--- data.DataLoader(dataset, {batch_size=1, shuffle=false, drop_last=false, seed=nil, sampler=nil,
--                            prefetch=true})
-- dataset: a TensorDataset, or any object with len() (or __len) and get(i)
-- returning one sample (tensors and/or numbers), which are stacked.
-- prefetch (default true): while batch b is in use, idle pool workers gather
-- batch b+1 of a shuffled TensorDataset (a dataset tensor written in place
-- meanwhile is copied again when the batch is handed out, so a batch always
-- holds the rows as they are then); false gathers each batch when asked.
-- sampler: a 1-D int64 tensor of 1-based sample indices, the order every
-- epoch walks (any length, repeats allowed), as torch's sampler=; it
-- excludes shuffle.  E.g. an order written by another program, or a subset.
local LOADER_OPTIONS = { "batch_size:number", "shuffle:boolean", "drop_last:boolean", "prefetch:boolean",
                         "sampler", "seed:number" }
-- torch.utils.data.DataLoader's options MicroML does not have: only their
-- defaults pass (one process, no pinned memory, the built-in collation).
local LOADER_UNSUPPORTED = { num_workers = 0, batch_sampler = options.NONE, collate_fn = options.NONE,
  pin_memory = false, timeout = 0, worker_init_fn = options.NONE, generator = options.NONE,
  prefetch_factor = options.NONE, persistent_workers = false, pin_memory_device = "",
  multiprocessing_context = options.NONE, in_order = true }

function data.DataLoader(dataset, opts, ...)
  options.arity("DataLoader", 2, select("#", ...) + 2)
  if type(dataset) ~= "table" then
    error(("DataLoader: expected a dataset (a table with len and get), got %s"):format(type(dataset)), 2)
  end
  if getmetatable(dataset) ~= TensorDataset and type(dataset.get) ~= "function" then
    error("DataLoader: the dataset has no get(i) method", 2)
  end
  opts = opts or {}
  if type(opts) ~= "table" then
    error(("DataLoader: expected an options table as argument 2, got %s"):format(type(opts)), 2)
  end
  options.check(opts, "DataLoader", LOADER_OPTIONS, LOADER_UNSUPPORTED)
  local self = setmetatable({
    dataset = dataset,
    batch_size = check_int(opts.batch_size or 1, "DataLoader: batch_size", 1),
    shuffle = opts.shuffle and true or false,
    drop_last = opts.drop_last and true or false,
    prefetch = opts.prefetch ~= false,
    epoch = 0,
  }, DataLoader)
  local n = dataset_len(dataset)   -- fail now, not in the first epoch
  if opts.sampler ~= nil then
    local sp = opts.sampler
    if not mm.is_tensor(sp) or sp:dtype() ~= "int64" or sp:dim() ~= 1 then
      error(("DataLoader: expected sampler to be a 1-D int64 tensor of sample indices, got %s")
            :format(mm.is_tensor(sp) and (sp:dtype() .. shape_str(sp)) or type(sp)), 2)
    end
    if self.shuffle then
      error("DataLoader: sampler and shuffle exclude each other (the sampler is the order)", 2)
    end
    if sp:numel() > 0 then
      local lo, hi = sp:min():item(), sp:max():item()
      if lo < 1 or hi > n then
        error(("DataLoader: sampler index %d is out of range (expected 1..%d)")
              :format(lo < 1 and lo or hi, n), 2)
      end
    end
    self.sampler = sp
  end
  if opts.seed ~= nil then
    local seed = check_int(opts.seed, "DataLoader: seed", math.mininteger)
    -- The loader's own generator: seeded once, advanced only by its shuffles.
    local saved = mm.get_rng_state()
    mm.manual_seed(seed)
    self.rng_state = mm.get_rng_state()
    mm.set_rng_state(saved)
  end
  return self
end

--- #loader: batches per epoch.
function DataLoader:__len()
  local n, bs = self.sampler and self.sampler:numel() or dataset_len(self.dataset), self.batch_size
  if self.drop_last then return n // bs end
  -- not (n + bs - 1) // bs: that wraps for bs near math.maxinteger
  return n // bs + (n % bs > 0 and 1 or 0)
end
DataLoader.len = DataLoader.__len

function DataLoader:_permutation(n)
  if not self.rng_state then return one_based_perm(n) end
  local saved = mm.get_rng_state()
  mm.set_rng_state(self.rng_state)
  local ok, p = pcall(one_based_perm, n)
  self.rng_state = mm.get_rng_state()
  mm.set_rng_state(saved)
  if not ok then error(p, 0) end
  return p
end

-- Stacks the samples of a generic dataset field by field.
local function collate(samples, nfields)
  local out = {}
  for f = 1, nfields do
    local col = {}
    for k, s in ipairs(samples) do col[k] = s[f] end
    local first = col[1]
    if mm.is_tensor(first) then
      out[f] = mm.stack(col, 1)
    elseif type(first) == "number" then
      out[f] = mm.tensor(col)
    else
      out[f] = col
    end
  end
  return table.unpack(out, 1, nfields)
end

--- loader:iter(): `for x, y in loader:iter() do ... end` — one epoch.
function DataLoader:iter()
  local ds, bs = self.dataset, self.batch_size
  local n = self.sampler and self.sampler:numel() or dataset_len(ds)
  local nb = #self
  local order = self.sampler or self.shuffle and n > 0 and self:_permutation(n) or nil
  self.epoch = self.epoch + 1
  local b = 0
  local fast = getmetatable(ds) == TensorDataset
  -- Shuffled (or sampled) batches of a TensorDataset are copies of scattered
  -- rows; each is gathered by idle pool workers while the previous one is in
  -- use (mm._index_select_start), and collected when asked for.
  local background = fast and order and self.prefetch and #ds.tensors <= 8
  local pending
  local function start_next(nb_start)
    -- nb_start = start + bs only when batch b + 1 exists, so it is <= n and
    -- did not wrap
    if nb_start <= n then
      pending = mm._index_select_start(ds.tensors, order:narrow(1, nb_start, math.min(bs, n - nb_start + 1)))
    end
  end
  local function handing_out(next_start, ...)
    if b < nb then start_next(next_start) end
    return ...
  end
  return function()
    b = b + 1
    if b > nb then return nil end
    local start = (b - 1) * bs + 1
    local len = math.min(bs, n - start + 1)
    if background then
      local h = pending
      pending = nil
      if h then return handing_out(start + bs, mm._index_select_finish(h)) end
      return handing_out(start + bs, ds:_batch(order, start, len))
    end
    if fast then return ds:_batch(order, start, len) end
    local samples, nfields = {}, 0
    for k = 1, len do
      local i = order and order:_get(start + k - 1) or start + k - 1
      local s = table.pack(ds:get(i))
      samples[k] = s
      nfields = math.max(nfields, s.n)
    end
    return collate(samples, nfields)
  end
end

function DataLoader:__tostring()
  return ("DataLoader(%d batches of %d%s%s)"):format(#self, self.batch_size,
    self.shuffle and ", shuffled" or "", self.drop_last and ", drop_last" or "")
end

-- ---------------------------------------------------------------------------
-- MNIST-family loaders

data.FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
data.MNIST_DIR = "/usr/share/datasets/mnist"

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

local FILES = {
  train_x = "train-images-idx3-ubyte", train_y = "train-labels-idx1-ubyte",
  test_x = "t10k-images-idx3-ubyte", test_y = "t10k-labels-idx1-ubyte",
}

local function find_file(dir, base)
  for _, name in ipairs {base .. ".gz", base} do
    local p = dir .. "/" .. name
    if exists(p) then return p end
  end
end

-- images [N, H*W] float32 in [0, 1]; labels int64 in 1..10.
local function load_idx_set(what, dir, missing_hint)
  if type(dir) ~= "string" then
    error(("%s: expected a directory name, got %s"):format(what, type(dir)), 3)
  end
  local paths = {}
  for key, base in pairs(FILES) do
    paths[key] = find_file(dir, base)
    if not paths[key] then
      error(("%s: cannot find %s[.gz] in %s; %s"):format(what, base, dir, missing_hint), 3)
    end
  end
  local function images(p)
    local x = mm.read_idx(p)
    if x:dim() ~= 3 then
      error(("%s: %s holds shape %s, expected [N, rows, cols] images"):format(what, p, shape_str(x)), 4)
    end
    x = x:reshape(x:size(1), -1)
    x:div_(255)
    return x
  end
  local function labels(p)
    local y = mm.read_idx(p, {dtype = "int64"})
    if y:dim() ~= 1 then
      error(("%s: %s holds shape %s, expected [N] labels"):format(what, p, shape_str(y)), 4)
    end
    y:add_(1)   -- the files hold 0..9; Lua class labels are 1-based
    return y
  end
  local train_x, train_y = images(paths.train_x), labels(paths.train_y)
  local test_x, test_y = images(paths.test_x), labels(paths.test_y)
  if #train_x ~= #train_y or #test_x ~= #test_y then
    error(("%s: images and labels disagree in count (train %d vs %d, test %d vs %d)"):format(
      what, #train_x, #train_y, #test_x, #test_y), 3)
  end
  return train_x, train_y, test_x, test_y
end

--- data.fashion_mnist([dir]) -> train_x [60000, 784] float32 in [0, 1],
-- train_y [60000] int64 in 1..10, test_x [10000, 784], test_y [10000].
function data.fashion_mnist(dir, ...)
  options.arity("fashion_mnist", 1, select("#", ...) + 1)
  dir = dir or data.FASHION_MNIST_DIR
  return load_idx_set("fashion_mnist", dir,
    "install the Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist), "
    .. "or pass --data DIR with the directory that holds the four IDX files")
end

--- data.mnist([dir]) -> the same four tensors for the MNIST digits.
function data.mnist(dir, ...)
  options.arity("mnist", 1, select("#", ...) + 1)
  dir = dir or data.MNIST_DIR
  return load_idx_set("mnist", dir,
    "put the four MNIST IDX files there (no Debian package ships them), "
    .. "or pass --data DIR with the directory that holds them")
end

-- ---------------------------------------------------------------------------
-- checkpoints

--- data.nest(flat): {["model.fc1.weight"] = t} -> {model = {fc1 = {weight = t}}}.
-- Segments made of digits become integer keys, so a list saved by mm.save
-- ({layers = {a, b}} -> "layers.1", "layers.2") comes back as a list.
function data.nest(flat)
  if type(flat) ~= "table" then
    error(("nest: expected a table, got %s"):format(type(flat)), 2)
  end
  local root = {}
  local names = {}
  for name in pairs(flat) do names[#names + 1] = name end
  table.sort(names)
  for _, name in ipairs(names) do
    local node, parts = root, {}
    for part in (name .. "."):gmatch("(.-)%.") do
      parts[#parts + 1] = part:match("^%d+$") and math.tointeger(tonumber(part)) or part
    end
    for k = 1, #parts - 1 do
      local p = parts[k]
      if node[p] == nil then node[p] = {} end
      if mm.is_tensor(node[p]) then
        error(("nest: '%s' is both a tensor and a prefix of '%s'"):format(
          table.concat(parts, ".", 1, k), name), 2)
      end
      node = node[p]
    end
    local last = parts[#parts]
    if node[last] ~= nil then
      error(("nest: '%s' is both a tensor and a prefix of another name"):format(name), 2)
    end
    node[last] = flat[name]
  end
  return root
end

return data
