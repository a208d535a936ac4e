--- bench/overhead.lua — per-op overhead of MicroML against PyTorch, side by side.
--
--   build/microml bench/overhead.lua [--iters 20000] [--reps 5] [--rounds 3]
--
-- Owns the MicroML side and the driver of the overhead benchmark: how many
-- microseconds the whole path from the script down to the kernel and back
-- costs for ops too small for the arithmetic to matter, on one thread:
--   add      a + b on one-element float32 tensors
--   mm8      8x8 matmul of two requires_grad tensors, :sum(), backward
--   linear1  nn.Linear(64 -> 32) + ReLU forward and backward at batch 1
-- bench/overhead_torch.py runs the same cases in PyTorch.  Each side is its
-- own process (so each reports its own peak RSS); the driver alternates
-- them over rounds and prints the median of all timed repeats per case.
-- Without PyTorch it says so and prints MicroML's figures alone.
--
-- Worker mode: --worker prints lines RESULT case=NAME us=r1,r2,... as the
-- Python side does, then RESULT case=vmhwm kib=K.
local mm = require "microml"
local common = dofile((arg[0]:match("^(.*)/") or ".") .. "/common.lua")
local median, sh_quote, vmhwm_kib = common.median, common.sh_quote, common.vmhwm_kib

local function parse(argv)
  local o = { iters = 20000, reps = 5, rounds = 3 }
  local i = 1
  while i <= #argv do
    local a, v = argv[i], argv[i + 1]
    if a == "--worker" then o.worker = true; i = i + 1
    else
      if v == nil then error("overhead: " .. a .. " needs a value", 0) end
      if a == "--iters" then o.iters = math.tointeger(tonumber(v))
      elseif a == "--reps" then o.reps = math.tointeger(tonumber(v))
      elseif a == "--rounds" then o.rounds = math.tointeger(tonumber(v))
      elseif a == "--python" then o.python = v
      else error("overhead: unknown option " .. a, 0) end
      i = i + 2
    end
  end
  return o
end

local function worker(o)
  mm.set_num_threads(1)
  mm.manual_seed(1)
  local clock = mm._time

  local function case_add(n)
    local a, b = mm.rand(1), mm.rand(1)
    for _ = 1, n do local _ = a + b end
  end

  local function case_mm8(n)
    local a, b = mm.rand(8, 8), mm.rand(8, 8)
    a.requires_grad, b.requires_grad = true, true
    for _ = 1, n do
      a.grad, b.grad = nil, nil
      a:matmul(b):sum():backward()
    end
  end

  local lin, x1 = mm.nn.Linear(64, 32), mm.rand(1, 64)
  local function case_linear1(n)
    local w, bias = lin.weight, lin.bias
    for _ = 1, n do
      w.grad, bias.grad = nil, nil
      mm.relu(lin(x1)):sum():backward()
    end
  end

  local cases = { { "add", case_add, 1 }, { "mm8", case_mm8, 10 }, { "linear1", case_linear1, 10 } }
  for _, c in ipairs(cases) do
    local name, fn, div = c[1], c[2], c[3]
    local iters = math.max(1, o.iters // div)
    fn(iters // 10 + 1)
    local rounds = {}
    for r = 1, o.reps do
      local t0 = clock()
      fn(iters)
      rounds[r] = ("%.4f"):format((clock() - t0) / iters * 1e6)
    end
    print(("RESULT case=%s us=%s"):format(name, table.concat(rounds, ",")))
    io.stdout:flush()
  end
  print("RESULT case=vmhwm kib=" .. vmhwm_kib())
end

-- ---------------------------------------------------------------------------
-- driver

local function run(cmd, into)
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("a")
  p:close()
  local any = false
  for name, rest in out:gmatch("RESULT case=(%S+) (%S+)") do
    any = true
    into[name] = into[name] or {}
    local v = rest:match("^us=(.*)") or rest:match("^kib=(.*)")
    for x in v:gmatch("[^,]+") do table.insert(into[name], tonumber(x)) end
  end
  if not any then io.stderr:write("overhead: no result from: ", cmd, "\n", out:sub(-400), "\n") end
end

local function driver(o)
  local here = arg and arg[0] or "bench/overhead.lua"
  local program = os.getenv("MICROML") or (arg and arg[-1]) or "build/microml"
  local python = o.python or os.getenv("PYTHON") or "/usr/bin/python3"
  local torch_script = here:gsub("overhead%.lua$", "overhead_torch.py")
  local probe = io.popen(sh_quote(python) .. " -c 'import torch' >/dev/null 2>&1 && echo yes")
  local have_torch = probe:read("a"):match("yes") ~= nil
  probe:close()
  print(("Per-op overhead, 1 thread, µs/op (median of %d rounds x %d repeats, sides alternating)")
        :format(o.rounds, o.reps))
  if not have_torch then
    print(("PyTorch not available (%s cannot import torch): MicroML's figures alone"):format(python))
  end
  local mmr, tr = {}, {}
  local args = (" --iters %d --reps %d"):format(o.iters, o.reps)
  for _ = 1, o.rounds do
    run(sh_quote(program) .. " " .. sh_quote(here) .. " --worker" .. args, mmr)
    if have_torch then run(sh_quote(python) .. " " .. sh_quote(torch_script) .. args, tr) end
  end
  local targets = { add = 0.20, mm8 = 0.15 }
  local labels = { add = "a + b, one element", mm8 = "8x8 matmul + backward",
                   linear1 = "Linear+ReLU fwd+bwd, batch 1" }
  print(("%-30s %12s %12s %8s %8s"):format("case", "MicroML", "PyTorch", "ratio", "target"))
  for _, name in ipairs { "add", "mm8", "linear1" } do
    local m = mmr[name] and median(mmr[name])
    local t = tr[name] and median(tr[name])
    print(("%-30s %12s %12s %8s %8s"):format(labels[name], m and ("%.3f"):format(m) or "-",
          t and ("%.3f"):format(t) or "-", (m and t) and ("%.3f"):format(m / t) or "-",
          targets[name] and ("<= %.2f"):format(targets[name]) or ""))
  end
  local mk = mmr.vmhwm and median(mmr.vmhwm)
  local tk = tr.vmhwm and median(tr.vmhwm)
  print(("peak RSS: MicroML %s MiB, PyTorch %s MiB"):format(mk and ("%.0f"):format(mk / 1024) or "-",
        tk and ("%.0f"):format(tk / 1024) or "-"))
end

local o = parse(arg or {})
if o.worker then worker(o) else driver(o) end
