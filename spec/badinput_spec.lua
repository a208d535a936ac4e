-- badinput_spec.lua — every public function of the Lua API, called with bad
-- input (owner Rel); then the error messages of common mistakes (sizes,
-- dims, indices, shapes, argument types, non-tensors), which must say what
-- was expected and what was given.
--
-- The walk takes the functions from the module table, the Tensor methods
-- table and the nn/optim/data/viz tables, and calls each with wrong types,
-- wrong counts, nil, NaN, inf, huge and negative sizes, empty, zero-size,
-- 0-dim, transposed and freed tensors, and mismatched dtypes and shapes.
-- A call may succeed or raise an error; the error must be a non-empty
-- string and must not be Lua's own "attempt to ..." (which means our Lua
-- code indexed or did arithmetic on an argument it never checked).  A crash
-- ends the process, so busted reports it; `make sanitize` runs this walk
-- under ASan/UBSan/LSan too.
--
-- MICROML_BADINPUT_TRACE=1 prints every call to stderr before making it,
-- which finds the call that crashed.
local mm = require "microml"
local H = require "helpers"

local TRACE = os.getenv("MICROML_BADINPUT_TRACE")
-- MICROML_BADINPUT_ONLY=pattern walks only the functions whose names match.
local ONLY = os.getenv("MICROML_BADINPUT_ONLY")
-- Huge sizes must fail fast as errors, not swap the machine.
local LIMIT = 512 * 1024 * 1024
local THREADS = mm.get_num_threads()

-- Errors that say "our Lua code trusted an argument".
local BAD_MESSAGES = {
  "attempt to index", "attempt to call", "attempt to perform arithmetic",
  "attempt to compare", "attempt to concatenate", "attempt to get length",
  "attempt to do bitwise", "number has no integer representation",
  "stack overflow", "C stack overflow",
}

local function show(v)
  if mm.is_tensor(v) then
    local ok, s = pcall(function() return v:dtype() .. "(" .. table.concat(v:shape(), ",") .. ")" end)
    return ok and ("T" .. s) or "T<freed>"
  elseif type(v) == "string" then return string.format("%q", v)
  elseif type(v) == "number" then return tostring(v)
  end
  return type(v)
end

local function describe_args(args)
  local parts = {}
  for i = 1, args.n do parts[i] = show(args[i]) end
  return "(" .. table.concat(parts, ", ") .. ")"
end

-- Fresh argument values for every call: an in-place method or a freed box
-- must not poison the next call.  Each maker builds one value.
local SCALARS = {
  nil, true, "", "/nonexistent-microml-dir/x", {}, {1, "a"}, {-1, 2}, function() end,
  0, 1, 2, -1, -7, 2.5, 0 / 0, math.huge, -math.huge, 1e300, 2 ^ 62,
  math.maxinteger, math.mininteger, 1e6,
}
local NS = 22
local TENSOR_MAKERS = {
  function() return mm.randn(2, 3) end,                            -- float32 matrix
  function() return mm.randn(3, 2):t() end,                        -- non-contiguous
  function() return mm.zeros(0, 3) end,                            -- zero-size
  function() return mm.tensor(1.5) end,                            -- 0-dim
  function() return mm.tensor({{1, 2, 3}, {4, 5, 6}}) end,         -- int64
  function() return mm.randn(2, 3, {dtype = "float64", requires_grad = true}) end,
  function() return mm.randn(4, 1, 5, 5) end,                      -- 4-D (conv/pool shapes)
  function() return mm.tensor({0 / 0, math.huge, -math.huge}) end, -- non-finite values
  function() return mm.randn(1, 3):expand(4, 3) end,               -- stride-0 view
  function() local t = mm.ones(2); t:free(); return t end,         -- freed box
}
local NT = #TENSOR_MAKERS

local function tensor_value(i) return TENSOR_MAKERS[i]() end

-- Value i of the whole pool: scalars first, then tensors.
local NP = NS + NT
local function value(i)
  if i > NS then return tensor_value(i - NS) end
  local v = SCALARS[i]
  if type(v) == "table" then  -- tables may be filled in by the callee
    local c = {}
    for k, x in pairs(v) do c[k] = x end
    return c
  end
  return v
end

-- Calls fn(args) and records an offence; returns nothing.
local offences = {}
local calls = 0
local function try(name, fn, args)
  calls = calls + 1
  if TRACE then io.stderr:write(name, describe_args(args), "\n"); io.stderr:flush() end
  local ok, err = pcall(fn, table.unpack(args, 1, args.n))
  -- Setters called with junk must not change the conditions of the next call.
  mm.set_memory_limit(LIMIT)
  mm.set_grad_enabled(true)
  mm.set_num_threads(THREADS)
  if ok then return end
  local msg = type(err) == "string" and err or nil
  local why
  if not msg then why = "error value is a " .. type(err) .. ", not a string"
  elseif msg:gsub("^[^:]*:%d+: ", "") == "" then why = "empty error message"
  elseif not msg:find("badinput_spec.lua", 1, true) then  -- `-nil` in this file is not a fault
    for _, bad in ipairs(BAD_MESSAGES) do
      if msg:find(bad, 1, true) then why = "unchecked argument: " .. msg; break end
    end
  end
  if why then
    offences[#offences + 1] = { key = name .. ": " .. why:gsub("%(local '.-'%)", ""),
                                text = name .. describe_args(args) .. ": " .. why }
  end
end

-- Argument lists for one function: no arguments, one bad value, a tensor
-- followed by one or two bad values, and two tensors followed by one.
local function walk(name, fn)
  try(name, fn, { n = 0 })
  for i = 1, NP do try(name, fn, { n = 1, value(i) }) end
  for f = 1, NT do
    for i = 1, NP do try(name, fn, { n = 2, tensor_value(f), value(i) }) end
  end
  -- Pairs of bad values after a float tensor: shapes, dims, options.
  local few = { 1, -1, 0, 2 ^ 62, 0 / 0, "", n = 6 }
  for i = 1, NP do
    for j = 1, few.n do try(name, fn, { n = 3, tensor_value(1), value(i), few[j] }) end
  end
  -- Two tensors of every kind, then a third argument.
  for i = 1, NT do
    for j = 1, NT do try(name, fn, { n = 3, tensor_value(i), tensor_value(j), 1 }) end
  end
end

-- Functions whose arguments name files to write, or that run for long with
-- valid defaults: walked with arguments that cannot write outside /tmp.
local SKIP = {
  -- Writes to a terminal on purpose; walked below with a closed stream.
  ["progress.new"] = true,
}

local function module_functions(tbl, prefix, list)
  local names = {}
  for k, v in pairs(tbl) do
    if type(v) == "function" and type(k) == "string" then names[#names + 1] = k end
  end
  table.sort(names)
  for _, k in ipairs(names) do
    if not SKIP[prefix .. k] and (not ONLY or (prefix .. k):find(ONLY)) then
      list[#list + 1] = { prefix .. k, tbl[k] }
    end
  end
end

describe("bad input", function()
  local limit_before

  setup(function()
    limit_before = mm.memory_stats().bytes_limit
    mm.set_memory_limit(LIMIT)
  end)

  teardown(function()
    mm.set_memory_limit(limit_before or 0)
    mm.set_grad_enabled(true)
    mm.set_num_threads(THREADS)
  end)

  before_each(function() offences = {}; calls = 0 end)

  local function report()
    if #offences > 0 then
      -- One line per distinct fault (function and message), with an example.
      local seen, shown = {}, {}
      for _, o in ipairs(offences) do
        if not seen[o.key] then seen[o.key] = true; shown[#shown + 1] = o.text end
      end
      error(string.format("%d of %d calls misbehaved, %d distinct:\n  %s", #offences, calls,
                          #shown, table.concat(shown, "\n  ")), 0)
    end
    assert.is_true(calls > 0)
  end

  it("module functions never crash and explain their errors", function()
    local list = {}
    module_functions(mm, "mm.", list)
    for _, e in ipairs(list) do
      local name = e[1]
      -- Writing functions get a path that cannot be created.
      walk(name, e[2])
    end
    report()
    mm.set_grad_enabled(true)
  end)

  it("Tensor methods never crash and explain their errors", function()
    local list = {}
    module_functions(mm.Tensor, "Tensor:", list)
    for _, e in ipairs(list) do
      local fn = e[2]
      -- Methods take the tensor first: walk them with every kind of self,
      -- and with a non-tensor self.
      walk(e[1], fn)
    end
    report()
  end)

  it("metamethods and properties never crash", function()
    local ops = {
      add = function(a, b) return a + b end, sub = function(a, b) return a - b end,
      mul = function(a, b) return a * b end, div = function(a, b) return a / b end,
      pow = function(a, b) return a ^ b end, unm = function(a) return -a end,
      len = function(a) return #a end, index = function(a, k) return a[k] end,
      newindex = function(a, k) a[k] = 1 end, tostring = function(a) return tostring(a) end,
      grad = function(a, g) a.grad = g end, requires_grad = function(a, v) a.requires_grad = v end,
    }
    for name, fn in pairs(ops) do
      for i = 1, NT do
        for j = 1, NP do
          try("op " .. name, fn, { n = 2, tensor_value(i), value(j) })
          try("op " .. name, fn, { n = 2, value(j), tensor_value(i) })
        end
      end
    end
    report()
  end)

  it("nn, optim, data and viz entry points never crash and explain their errors", function()
    local list = {}
    for _, sub in ipairs({ "nn", "optim", "data", "viz" }) do
      local tbl = mm[sub]
      local names = {}
      for k, v in pairs(tbl) do names[#names + 1] = k end
      table.sort(names)
      for _, k in ipairs(names) do
        local v = tbl[k]
        local full = sub .. "." .. k
        if type(v) == "function" then
          list[#list + 1] = { full, v }
        elseif type(v) == "table" and getmetatable(v) and getmetatable(v).__call then
          list[#list + 1] = { full, function(...) return v(...) end }
        elseif type(v) == "table" and type(v.new) == "function" then
          list[#list + 1] = { full .. ".new", v.new }
        end
      end
    end
    for _, e in ipairs(list) do
      -- The dataset readers load 70,000 images when their arguments are
      -- valid defaults; one walk of them with bad values is enough.
      if e[1]:match("fashion_mnist$") or e[1]:match("%.mnist$") then
        for _, v in ipairs({ 1, "/nonexistent-microml-dir", {}, true }) do try(e[1], e[2], { n = 1, v }) end
        try(e[1], e[2], { n = 2, "/nonexistent-microml-dir", 0 / 0 })
      else
        walk(e[1], e[2])
      end
    end
    report()
  end)

  it("module methods (forward, step, parameters) never crash on bad input", function()
    local nn, optim = mm.nn, mm.optim
    local function models()
      return {
        nn.Linear(3, 2), nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)),
        nn.Conv2d(1, 2, 3), nn.LayerNorm(3), nn.Embedding(5, 3), nn.Dropout(0.5),
        nn.MaxPool2d(2), nn.CrossEntropyLoss(), nn.MSELoss(), nn.Flatten(),
      }
    end
    for mi = 1, #models() do
      for i = 1, NP do
        local m = models()[mi]
        try(tostring(m) .. ":forward", function(a) return m:forward(a) end, { n = 1, value(i) })
        try(tostring(m) .. "()", function(a, b) return m(a, b) end, { n = 2, value(i), mm.randn(2, 3) })
        try(tostring(m) .. ":to", function(a) return m:to(a) end, { n = 1, value(i) })
        try(tostring(m) .. ":load_state_dict", function(a) return m:load_state_dict(a) end,
            { n = 1, value(i) })
      end
    end
    for _, name in ipairs({ "SGD", "Adam", "AdamW" }) do
      for i = 1, NP do
        for j = 1, NP do
          try("optim." .. name, optim[name], { n = 2, value(i), value(j) })
        end
        local ok, opt = pcall(optim[name], nn.Linear(3, 2):parameters(), { lr = 0.1 })
        if ok then
          try("optim." .. name .. ":step", function(a) return opt:step(a) end, { n = 1, value(i) })
          try("optim." .. name .. ":load_state_dict", function(a) return opt:load_state_dict(a) end,
              { n = 1, value(i) })
        end
      end
    end
    report()
  end)

  it("leaves the runtime usable: grad mode on, threads and memory sane", function()
    assert.is_true(mm.is_grad_enabled())
    local a = mm.randn(64, 64)
    local b = (a:matmul(a) + 1):sum()
    assert.is_true(mm.is_tensor(b))
    assert.is_true(mm.get_num_threads() >= 1)
  end)
end)

describe("error messages", function()
  it("sizes: negative, non-integer, too large to allocate, too many dims", function()
    H.error_with(function() mm.zeros(2, -3) end, ">= 0", "-3")
    H.error_with(function() mm.zeros(2.5) end, "integer", "2.5")
    H.error_with(function() mm.zeros({ 2, "x" }) end, "size 2 must be an integer")
    H.error_with(function() mm.zeros(1e6, 1e6) end, "cannot allocate 4000000000000 bytes")
    H.error_with(function() mm.zeros(2 ^ 30, 2 ^ 30) end, "too many elements")
    H.error_with(function() mm.zeros(1, 1, 1, 1, 1, 1, 1, 1, 1) end, "too many dimensions")
    H.error_with(function() mm.zeros(2 ^ 22, 2 ^ 21) end, "cannot allocate")
  end)

  it("dims out of range name the valid range", function()
    local t = mm.zeros(2, 3)
    H.error_with(function() t:transpose(1, 3) end, "expected 1..2 or -2..-1, got 3")
    H.error_with(function() t:size(0) end, "dimension out of range")
    H.error_with(function() t:select(-3, 1) end, "expected 1..2")
    H.error_with(function() t:unsqueeze(4) end, "expected 1..3")
  end)

  it("indices out of range name the valid range", function()
    local t = mm.zeros(2, 3)
    H.error_with(function() return t[3] end, "index 3 is out of range", "size 2", "1..2")
    H.error_with(function() return t[0] end, "index 0", "1-based")
    H.error_with(function() t[5] = 1 end, "out of range")
    H.error_with(function() t:narrow(2, 3, 2) end, "out of bounds", "size 3")
    H.error_with(function() t:_get(7) end, "1..6")
  end)

  it("shape errors name both shapes", function()
    local t = mm.zeros(2, 3)
    H.error_with(function() t:reshape(4, 2) end, "(4, 2)", "(2, 3)")
    H.error_with(function() t:reshape(-1, -1) end, "only one dimension can be -1")
    H.error_with(function() t:expand(4, 4) end, "cannot expand shape (2, 3) to (4, 4)")
    H.error_with(function() t:copy_(mm.zeros(4)) end, "(4)", "(2, 3)")
    H.error_with(function() t:permute(1, 1) end, "twice")
    H.error_with(function() t:item() end, "one element", "(2, 3)")
  end)

  it("wrong argument types", function()
    H.error_with(function() return mm.zeros(2) + "a" end, "Tensor or number")
    H.error_with(function() return mm.zeros(2):reshape("a") end, "integer")
    H.error_with(function() mm.zeros(2, { dtype = "float16" }) end, "unknown dtype 'float16'")
    H.error_with(function() mm.zeros(2):to("complex") end, "unknown dtype")
    H.error_with(function() mm.ones(2).foo = 1 end, "cannot set field 'foo'")
    H.error_with(function() mm.tensor({ 1, 2 }):exp() end, "float32 or float64", "int64")
    H.error_with(function() mm.set_num_threads(0) end, "1..")
    H.error_with(function() mm.arange(0, 1, 0) end, "non-zero step")
  end)

  it("NaN and inf as sizes or counts are rejected", function()
    H.error_with(function() mm.zeros(0 / 0) end, "integer")
    H.error_with(function() mm.zeros(math.huge) end, "integer")
    H.error_with(function() mm.linspace(0, 1, 0 / 0) end, "integer")
  end)
end)

describe("tensor recognition in the bindings", function()
  it("rejects other userdata with a message naming Tensor", function()
    for _, fn in ipairs {
      function() return mm.zeros(2) + io.stdout end,
      function() return io.stdout * mm.zeros(2) end,
      function() return mm.relu(io.stdout) end,
      function() return mm.exp({}) end,
    } do
      assert.has_error(fn)
      local _, err = pcall(fn)
      assert.is_truthy(tostring(err):find("Tensor", 1, true), tostring(err))
    end
    assert.is_false(mm.is_tensor(io.stdout))
    assert.is_true(mm.is_tensor(mm.zeros(1)))
  end)

  it("still reports a freed tensor", function()
    local t = mm.zeros(2)
    t:free()
    local ok, err = pcall(function() return t + 1 end)
    assert.is_false(ok)
    assert.is_truthy(tostring(err):find("freed", 1, true), tostring(err))
  end)
end)
