-- Graph visualisation (viz.dot / viz.render), gradient statistics and the
-- gradient report.  Every DOT text drawn here is also fed to Graphviz.
local H = require "helpers"
local mm = H.mm
local viz = mm.viz

-- ---- helpers ------------------------------------------------------------------

local function run(cmd)
  local ok, how, code = os.execute(cmd)
  return ok == true, how, code
end

-- Graphviz must accept the text without a word of complaint.
local function assert_dot_parses(text)
  local input, err = os.tmpname(), os.tmpname()
  H.write_file(input, text)
  local ok = run(("dot -Tsvg -o /dev/null %s 2>%s"):format(input, err))
  local msg = H.read_file(err)
  os.remove(input)
  os.remove(err)
  assert(ok, "dot rejected the graph: " .. msg)
  assert.are.equal("", msg, "dot warned: " .. msg)
end

-- Nodes (id -> {label=, attrs=}) and edges ({from, to} in order) of our DOT.
local function parse(text)
  local nodes, edges = {}, {}
  for id, label, attrs in text:gmatch('\n  (%w+) %[label="(.-)"(.-)%];') do
    nodes[id] = { label = label:gsub("\\n", "\n"), attrs = attrs, id = id }
  end
  for a, b in text:gmatch("\n  (%w+) %-> (%w+);") do edges[#edges + 1] = { a, b } end
  return nodes, edges
end

local function first_line(node) return node.label:match("^[^\n]*") end

-- All nodes whose label starts with `title` (an op name or a tensor name).
local function find(nodes, title)
  local out = {}
  for _, n in pairs(nodes) do
    if first_line(n) == title then out[#out + 1] = n end
  end
  table.sort(out, function(a, b) return a.id < b.id end)
  return out
end

local function one(nodes, title)
  local found = find(nodes, title)
  assert(#found == 1, ("expected exactly one node titled %q, found %d"):format(title, #found))
  return found[1]
end

-- Edges as "from-title -> to-title" strings, sorted, for structural checks.
local function edge_titles(nodes, edges)
  local out = {}
  for _, e in ipairs(edges) do
    out[#out + 1] = first_line(nodes[e[1]]) .. " -> " .. first_line(nodes[e[2]])
  end
  table.sort(out)
  return out
end

local function g3(x) return ("%.3g"):format(x) end

-- L2 norm from the values themselves, as a check on the exporter.
local function l2(t)
  local s = 0
  for _, v in ipairs(H.flatten(t:totable())) do s = s + v * v end
  return math.sqrt(s)
end

local function maxabs(t)
  local m = 0
  for _, v in ipairs(H.flatten(t:totable())) do m = math.max(m, math.abs(v)) end
  return m
end

-- y = x·wᵀ + b with whatever this build has (another engineer owns matmul).
local function linear(x, w, b)
  if mm.linear then return mm.linear(x, w, b) end
  if mm.matmul then return mm.matmul(x, w:t()) + b end
  local p = x:unsqueeze(2) * w:unsqueeze(1)
  local acc = p:select(3, 1)
  for k = 2, p:shape()[3] do acc = acc + p:select(3, k) end
  return acc + b
end

local function total(t)          -- sum to a scalar from views and adds only
  if t.sum then return t:sum() end
  local flat, acc = t:reshape(-1), nil
  for i = 1, flat:numel() do acc = acc and acc + flat:select(1, i) or flat:select(1, i) end
  return acc
end

-- A 3-layer MLP and one step of it; returns loss and the named parameters.
local function mlp_step(seed, dtype)
  mm.manual_seed(seed or 3)
  dtype = dtype or "float32"
  local params, layers = {}, {}
  for i, io in ipairs({ { 5, 6 }, { 6, 6 }, { 6, 3 } }) do
    local w = (mm.randn(io[2], io[1], { dtype = dtype }) * 0.5):requires_grad_()
    local b = mm.randn({ io[2] }, { dtype = dtype, requires_grad = true })
    params[#params + 1] = { "fc" .. i .. ".weight", w }
    params[#params + 1] = { "fc" .. i .. ".bias", b }
    layers[i] = { w, b }
  end
  local x = mm.randn(4, 5, { dtype = dtype })
  local h = linear(x, layers[1][1], layers[1][2]):relu()
  h = linear(h, layers[2][1], layers[2][2]):relu()
  local y = linear(h, layers[3][1], layers[3][2])
  local loss = total(y * y)
  loss:backward()
  return loss, params
end

-- ---- specs ------------------------------------------------------------------------

describe("viz.dot", function()
  local prev
  before_each(function() prev = viz.enable_stats(true) end)
  after_each(function() viz.enable_stats(prev) end)

  it("draws a diamond with the shared input once and edges in data-flow direction", function()
    local x = mm.tensor({ 1.0, 2.0 }, { requires_grad = true })
    local y = x * 3 + x:exp()
    local text = viz.dot(y, { params = { { "x", x } } })
    assert_dot_parses(text)
    local nodes, edges = parse(text)
    assert.are.same({ "Exp -> Add", "Mul -> Add", "x -> Exp", "x -> Mul" }, edge_titles(nodes, edges))
    local xn = one(nodes, "x")
    assert.truthy(xn.label:find("[2] float32", 1, true))
    assert.truthy(xn.attrs:find("shape=box", 1, true))
    assert.truthy(one(nodes, "Mul").attrs:find("shape=ellipse", 1, true))
    -- the output is marked, and only it
    assert.truthy(one(nodes, "Add").attrs:find("peripheries=2", 1, true))
    assert.are.equal(1, H.count(text, "peripheries=2"))
  end)

  it("draws a parameter shared by several consumers once, named from a map", function()
    local w = mm.tensor({ 0.5, -1.0, 2.0 }, { requires_grad = true })
    local a, b = mm.tensor({ 1.0, 2.0, 3.0 }), mm.tensor({ 3.0, 2.0, 1.0 })
    local y = (w * a) + (w * b) + w:tanh()
    local text = viz.dot(y, { params = { shared = w } })
    assert_dot_parses(text)
    local nodes, edges = parse(text)
    assert.are.same({ "Add -> Add", "Mul -> Add", "Mul -> Add", "Tanh -> Add",
                      "shared -> Mul", "shared -> Mul", "shared -> Tanh" }, edge_titles(nodes, edges))
    one(nodes, "shared")
    -- constants (a, b) are not drawn: nothing titled "tensor"
    assert.are.equal(0, #find(nodes, "tensor"))
  end)

  it("keeps both edges when an op reads the same input twice", function()
    local x = mm.tensor({ 2.0 }, { requires_grad = true })
    local text = viz.dot(x * x)
    local nodes, edges = parse(text)
    assert.are.same({ "tensor -> Mul", "tensor -> Mul" }, edge_titles(nodes, edges))
  end)

  it("labels an MLP step with parameter names, shapes and gradient norms", function()
    local loss, params = mlp_step(3)
    local text = viz.dot(loss, { params = params })
    assert_dot_parses(text)
    local nodes = parse(text)
    for _, p in ipairs(params) do
      local name, w = p[1], p[2]
      local n = one(nodes, name)
      local shape = "[" .. table.concat(w:shape(), ", ") .. "] float32"
      assert.are.equal(name .. "\n" .. shape .. "\n|g| " .. g3(l2(w.grad)) .. ", max|g| " .. g3(maxabs(w.grad)),
                       n.label)
    end
    assert.truthy(text:find("fc1.weight\\n[6, 5] float32", 1, true))
    -- every op carries the statistics of the gradient that reached it
    local ops = 0
    for _, n in pairs(nodes) do
      if n.attrs:find("ellipse", 1, true) then
        ops = ops + 1
        assert.truthy(n.label:find("\n|g| ", 1, true), n.label)
      end
    end
    assert.is_true(ops >= 6)
    -- the root's incoming gradient is the seed 1
    local root
    for _, n in pairs(nodes) do if n.attrs:find("peripheries=2", 1, true) then root = n end end
    assert.truthy(root.label:find("\n[] float32\n|g| 1, max|g| 1", 1, true), root.label)
  end)

  it("shows no op statistics when they are off, but still the leaves' .grad", function()
    viz.enable_stats(false)
    local loss, params = mlp_step(4)
    local text = viz.dot(loss, { params = params })
    local nodes = parse(text)
    for _, n in pairs(nodes) do
      if n.attrs:find("ellipse", 1, true) then
        assert.falsy(n.label:find("|g|", 1, true), n.label)
        assert.falsy(n.attrs:find("fillcolor", 1, true))
      end
    end
    assert.truthy(one(nodes, "fc2.bias").label:find("|g| " .. g3(l2(params[4][2].grad)), 1, true))
  end)

  it("colours nodes by gradient magnitude and explains the colours in a legend", function()
    local function filled(scale)
      local x = mm.tensor({ 1.0, 1.0 }, { requires_grad = true })
      local y = x * 1
      y:backward(mm.tensor({ scale, 0.0 }))
      return one(parse(viz.dot(y)), "Mul").attrs:match('fillcolor="([^"]+)"')
    end
    local tiny, small, mid, big = filled(1e-8), filled(1e-3), filled(0.5), filled(1e5)
    assert.are.equal("#4575b4", tiny)
    assert.are.equal("#e0f3f8", small)
    assert.are.equal("#ffffbf", mid)
    assert.are.equal("#fc8d59", big)
    assert.are.equal("#bdbdbd", filled(0))
    local text = viz.dot(mm.ones(1, { requires_grad = true }) * 2)
    assert.truthy(text:find("subgraph cluster_legend", 1, true))
    for _, c in ipairs({ tiny, small, mid, big, "red" }) do
      assert.truthy(text:find('BGCOLOR="' .. c .. '"', 1, true), c)
    end
    assert.falsy(viz.dot(mm.ones(1, { requires_grad = true }) * 2, { legend = false })
      :find("cluster_legend", 1, true))
  end)

  it("fills NaN/inf gradients red, in ops and leaves, and nothing else", function()
    local x = mm.tensor({ -1.0, 4.0 }, { requires_grad = true })
    local ok = mm.tensor({ 2.0, 3.0 }, { requires_grad = true })
    local s = (x * 1):sqrt()           -- d sqrt at -1 is NaN: it reaches Mul and x
    local y = s + ok
    y:backward(mm.ones(2))
    local text = viz.dot(y, { params = { { "x", x }, { "ok", ok } } })
    assert_dot_parses(text)
    local nodes = parse(text)
    local red = {}
    for _, n in pairs(nodes) do
      if n.attrs:find('fillcolor="red"', 1, true) then red[#red + 1] = first_line(n) end
    end
    table.sort(red)
    assert.are.same({ "Mul", "x" }, red)
    assert.truthy(one(nodes, "x").label:find("grad NaN/inf", 1, true))
    assert.truthy(one(nodes, "Mul").label:find("grad NaN/inf", 1, true))
    assert.falsy(one(nodes, "Sqrt").label:find("NaN", 1, true))
  end)

  it("gives byte-identical text for identical runs in one process", function()
    local loss, params = mlp_step(11)
    local a = viz.dot(loss, { params = params, collapse = { "fc2" } })
    -- rebuild with other graphs created in between (ids and addresses move)
    local keep = {}
    for i = 1, 3 do keep[i] = mlp_step(5) end
    local loss2, params2 = mlp_step(11)
    local b = viz.dot(loss2, { params = params2, collapse = { "fc2" } })
    assert.are.equal(a, b)
    assert.truthy(a:find("fc1.weight", 1, true))
    assert.truthy(a:find("|g| ", 1, true))
  end)

  it("draws a leaf on its own and refuses tensors outside any graph", function()
    local w = mm.zeros({ 2, 3 }, { requires_grad = true })
    local nodes = parse(viz.dot(w, { params = { { "w", w } } }))
    assert.truthy(one(nodes, "w").attrs:find("peripheries=2", 1, true))
    local msg = H.error_with(function() viz.dot(mm.ones(2) * 2) end, "viz.dot:", "does not require grad")
    assert.truthy(msg:find("autograd graph", 1, true))
  end)

  it("stops at max_nodes with an error naming the count and the option", function()
    local x = mm.ones(1, { requires_grad = true })
    local y = x
    for _ = 1, 2100 do y = y + 1 end
    H.error_with(function() viz.dot(y) end, "2101 nodes", "max_nodes = 2000", "collapse")
    H.error_with(function() viz.dot(x * 2 + 1, { max_nodes = 2 }) end, "3 nodes", "max_nodes = 2")
    local text = viz.dot(y, { max_nodes = 2101, legend = false })
    assert.are.equal(2101, H.count(text, "[label="))
  end)

  it("walks a 100,000-node chain without recursion", function()
    local x = mm.ones(1, { requires_grad = true })
    local y = x
    for _ = 1, 100000 do y = y * 1 end
    H.error_with(function() viz.dot(y) end, "100001 nodes", "max_nodes = 2000")
    local text = viz.dot(y, { max_nodes = 100001, legend = false })
    assert.are.equal(100001, H.count(text, "[label="))
    assert.are.equal(100000, H.count(text, " -> "))
  end)

  describe("collapse", function()
    it("draws each module as one node, keeping what lies between modules", function()
      local loss, params = mlp_step(6)
      local text = viz.dot(loss, { params = params, collapse = { "fc1", "fc2" } })
      assert_dot_parses(text)
      local nodes, edges = parse(text)
      local m1, m2 = one(nodes, "fc1"), one(nodes, "fc2")
      assert.truthy(m1.attrs:find("box3d", 1, true))
      assert.truthy(m1.label:find("2 params", 1, true))
      assert.truthy(m1.label:find("out [4, 6] float32", 1, true))
      -- parameter gradient norm of the module: sqrt(|gw|^2 + |gb|^2)
      local gn = math.sqrt(l2(params[1][2].grad) ^ 2 + l2(params[2][2].grad) ^ 2)
      assert.truthy(m1.label:find("params |g| " .. g3(gn), 1, true), m1.label)
      assert.are.equal(0, #find(nodes, "fc1.weight"))
      assert.are.equal(0, #find(nodes, "fc2.bias"))
      one(nodes, "fc3.weight")
      -- the ReLUs between layers stay outside: fc1 -> Relu -> fc2 -> Relu
      local e = edge_titles(nodes, edges)
      local set = {}
      for _, s in ipairs(e) do set[s] = true end
      assert.is_true(set["fc1 -> Relu"])
      assert.is_true(set["Relu -> fc2"])
      assert.is_true(set["fc2 -> Relu"])
      assert.are.equal(2, #find(nodes, "Relu"))
    end)

    it("pulls activations inside a module into it, and takes the longest prefix", function()
      local loss, params = mlp_step(6)
      for _, p in ipairs(params) do p[1] = p[1]:gsub("^fc([12])", "enc.fc%1") end
      local text = viz.dot(loss, { params = params, collapse = "enc" })
      assert_dot_parses(text)
      local nodes, edges = parse(text)
      local enc = one(nodes, "enc")
      assert.truthy(enc.label:find("4 params", 1, true))
      assert.are.equal(1, #find(nodes, "Relu"))     -- the inner ReLU joined enc
      local set = {}
      for _, s in ipairs(edge_titles(nodes, edges)) do set[s] = true end
      assert.is_true(set["enc -> Relu"])
      -- a more specific prefix wins its parameters
      local t2 = viz.dot(loss, { params = params, collapse = { "enc", "enc.fc2" } })
      local n2 = parse(t2)
      assert.truthy(one(n2, "enc").label:find("2 params", 1, true))
      assert.truthy(one(n2, "enc.fc2").label:find("2 params", 1, true))
      assert_dot_parses(t2)
    end)

    it("turns a module red when a gradient inside it is not finite", function()
      local w = mm.tensor({ -1.0, 4.0 }, { requires_grad = true })
      local y = (w * 1):sqrt() * 2
      y:backward(mm.ones(2))
      local nodes = parse(viz.dot(y, { params = { { "m.w", w } }, collapse = { "m" } }))
      local m = one(nodes, "m")
      assert.truthy(m.attrs:find('fillcolor="red"', 1, true))
      assert.truthy(m.label:find("NaN/inf", 1, true))
    end)
  end)

  it("rejects bad arguments with messages that say what was expected", function()
    local x = mm.ones(2, { requires_grad = true })
    local y = x * 2
    H.error_with(function() viz.dot(42) end, "viz.dot", "expected a tensor", "number")
    H.error_with(function() viz.dot(y, "fast") end, "options table", "string")
    H.error_with(function() viz.dot(y, { max_nodes = 0 }) end, "max_nodes", "integer >= 1", "0")
    H.error_with(function() viz.dot(y, { max_nodes = 2.5 }) end, "max_nodes", "2.5")
    H.error_with(function() viz.dot(y, { collapse = { "" } }) end, "collapse prefix 1 is empty")
    H.error_with(function() viz.dot(y, { collapse = 7 }) end, "collapse", "number")
    H.error_with(function() viz.dot(y, { params = 5 }) end, "named parameters", "number")
    H.error_with(function() viz.dot(y, { params = { { "w" } } }) end, "named parameter 1", "{name, tensor}")
    H.error_with(function() viz.dot(y, { params = { w = 3 } }) end, "name -> tensor", "number")
    H.error_with(function() viz.dot(y, { title = 3 }) end, "title", "string")
  end)
end)

describe("viz.render", function()
  local dir
  setup(function()
    dir = os.tmpname()
    os.remove(dir)
    assert(run("mkdir -p " .. dir))
  end)
  teardown(function() run("rm -rf " .. dir) end)

  local function graph()
    local w = mm.tensor({ 1.0, 2.0 }, { requires_grad = true })
    return (w * w):tanh(), w
  end

  it("writes SVG, PNG and the DOT text by extension", function()
    local y, w = graph()
    local svg = dir .. "/g.svg"
    assert.are.equal(svg, viz.render(y, svg, { params = { { "w", w } } }))
    local s = H.read_file(svg)
    assert.truthy(s:sub(1, 5) == "<?xml" or s:sub(1, 4) == "<svg", s:sub(1, 40))
    assert.truthy(s:find("</svg>", 1, true))
    assert.truthy(s:find(">w</text>", 1, true))          -- the parameter's name is drawn
    viz.render(y, dir .. "/g.png")
    assert.are.equal("\137PNG", H.read_file(dir .. "/g.png"):sub(1, 4))
    viz.render(y, dir .. "/g.dot", { params = { { "w", w } } })
    assert.are.equal(viz.dot(y, { params = { { "w", w } } }), H.read_file(dir .. "/g.dot"))
  end)

  it("explains a missing dot program", function()
    local y = graph()
    H.error_with(function() viz.render(y, dir .. "/x.svg", { dot = "/nonexistent/graphviz/dot" }) end,
                 "viz.render", "could not run", "/nonexistent/graphviz/dot", "install Graphviz")
  end)

  it("explains a missing dot when PATH is empty", function()
    -- a fresh interpreter with PATH="" and nothing else changed
    local lua = io.popen("command -v lua5.4"):read("l")
    assert.truthy(lua, "lua5.4 not found")
    local script = dir .. "/nopath.lua"
    H.write_file(script, ([[
      package.path = %q
      package.cpath = %q
      local mm = require "microml"
      local w = mm.ones(2, { requires_grad = true })
      local ok, err = pcall(mm.viz.render, w * 2, %q)
      io.write(ok and "rendered" or err)
    ]]):format(package.path, package.cpath, dir .. "/nopath.svg"))
    local out = io.popen(("env PATH= %s %s 2>&1"):format(lua, script)):read("a")
    assert.truthy(out:find("could not run the Graphviz program 'dot'", 1, true), out)
    assert.truthy(out:find("install Graphviz", 1, true), out)
  end)

  it("passes on what dot printed when it fails", function()
    local y = graph()
    local fake = dir .. "/fake-dot"
    H.write_file(fake, "#!/bin/sh\necho 'Error: simulated layout failure' >&2\nexit 1\n")
    assert(run("chmod +x " .. fake))
    H.error_with(function() viz.render(y, dir .. "/x.svg", { dot = fake }) end,
                 "failed", "exit 1", "simulated layout failure")
  end)

  it("runs the example script, which renders the graph and prints the report", function()
    local root = debug.getinfo(1, "S").source:match("^@(.*)spec/viz_spec%.lua$")
    local program = (root or "./") .. "build/microml"
    assert(io.open(program, "rb"), "build/microml is not built: run make")
    local svg = dir .. "/example.svg"
    local out = io.popen(("%s %sexamples/graph.lua %s 2>&1"):format(program, root or "./", svg)):read("a")
    assert.truthy(out:find("6 parameters:", 1, true), out)
    assert.truthy(out:find("fc1.weight", 1, true), out)
    assert.truthy(H.read_file(svg):find("fc3.bias", 1, true))
    assert.truthy(H.read_file(dir .. "/example-modules.svg"):find("fc2", 1, true))
  end)

  it("rejects unknown formats and bad paths", function()
    local y = graph()
    H.error_with(function() viz.render(y, dir .. "/g.jpg") end, "expected a path ending in .svg", "g.jpg")
    H.error_with(function() viz.render(y, nil) end, "output path", "nil")
    H.error_with(function() viz.render(y, dir .. "/no/such/dir/g.svg") end, "failed")
    H.error_with(function() viz.render(mm.ones(2), dir .. "/g.svg") end, "viz.render", "does not require grad")
  end)
end)

describe("viz.grad_report", function()
  local function quiet() return { print = false } end

  it("reports norms and their ratio, flagging vanishing and exploding parameters", function()
    local good = mm.tensor({ 3.0, 4.0 }, { requires_grad = true })           -- |w| = 5
    local dead = mm.tensor({ 1.0, 1.0 }, { requires_grad = true })
    local tiny = mm.tensor({ 1000.0, 0.0 }, { requires_grad = true })
    local huge = mm.tensor({ 1e-3, 0.0 }, { requires_grad = true, dtype = "float64" })
    local nan = mm.tensor({ -1.0, 1.0 }, { requires_grad = true })
    local unused = mm.tensor({ 1.0 }, { requires_grad = true })
    local bias = mm.zeros({ 2 }, { requires_grad = true })
    local y = good * mm.tensor({ 0.6, 0.8 }) + dead * 0 + tiny * 1e-6 + (huge * 1e3):float()
      + nan:sqrt() + bias
    y:backward(mm.ones(2))
    local params = { { "good", good }, { "dead", dead }, { "tiny", tiny }, { "huge", huge },
                     { "nan", nan }, { "unused", unused }, { "bias", bias } }
    local rows, text = viz.grad_report(params, quiet())
    local by = {}
    for _, r in ipairs(rows) do by[r.name] = r end
    assert.are.equal("ok", by.good.status)
    assert.is_true(math.abs(by.good.grad_norm - 1) < 1e-6)
    assert.is_true(math.abs(by.good.weight_norm - 5) < 1e-6)
    assert.is_true(math.abs(by.good.ratio - 0.2) < 1e-6)
    assert.are.same({ 2 }, by.good.shape)
    assert.are.equal("vanishing", by.dead.status)
    assert.are.equal("zero grad", by.dead.reason)
    assert.are.equal("vanishing", by.tiny.status)            -- 1.4e-6 / 1000
    assert.truthy(by.tiny.reason:find("ratio <", 1, true))
    assert.are.equal("exploding", by.huge.status)            -- 1414 / 1e-3
    assert.is_true(math.abs(by.huge.ratio - math.sqrt(2) * 1e6) < 1)
    assert.are.equal("exploding", by.nan.status)
    assert.is_true(by.nan.grad_norm ~= by.nan.grad_norm)     -- NaN
    assert.are.equal("vanishing", by.unused.status)
    assert.are.equal("no grad", by.unused.reason)
    assert.is_nil(by.unused.grad_norm)
    assert.are.equal("ok", by.bias.status)                   -- zero weights: no ratio
    assert.is_nil(by.bias.ratio)
    assert.are.same({ ok = 2, vanishing = 3, exploding = 2 }, rows.counts)
    assert.truthy(text:find("EXPLODING (1 non-finite grad)", 1, true))
    assert.truthy(text:find("VANISHING (zero grad)", 1, true))
    assert.truthy(text:find("VANISHING (no grad)", 1, true))
    assert.truthy(text:find("7 parameters: 2 ok, 3 vanishing, 2 exploding", 1, true))
    assert.truthy(text:find("\ngood +%[2%] +1%.000e%+00 +5%.000e%+00 +2%.000e%-01 +ok\n"), text)
  end)

  it("prints to opts.out, and accepts a model or a name -> tensor map", function()
    local loss, params = mlp_step(8)
    local model = { named_parameters = function() return params end }
    local buf = {}
    local sink = { write = function(_, s) buf[#buf + 1] = s end }
    local rows, text = viz.grad_report(model, { out = sink })
    assert.are.equal(text, table.concat(buf))
    assert.are.equal(6, #rows)
    assert.are.equal("fc1.weight", rows[1].name)
    local map = {}
    for _, p in ipairs(params) do map[p[1]] = p[2] end
    local rows2 = viz.grad_report(map, quiet())
    local names = {}
    for _, r in ipairs(rows2) do names[#names + 1] = r.name end
    assert.are.same({ "fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight", "fc3.bias", "fc3.weight" }, names)
    assert.is_true(math.abs(rows2[2].grad_norm - l2(params[1][2].grad)) < 1e-4 * l2(params[1][2].grad))
    assert.truthy(loss)
  end)

  it("accepts a (name, tensor) iterator, and microml.nn models", function()
    local a, b = mm.ones(2, { requires_grad = true }), mm.ones(3, { requires_grad = true })
    local list = { { "a", a }, { "b", b } }
    local i = 0
    local function iter()
      i = i + 1
      if list[i] then return list[i][1], list[i][2] end
    end
    local rows = viz.grad_report(iter, quiet())
    assert.are.same({ "a", "b" }, { rows[1].name, rows[2].name })
    H.error_with(function() viz.grad_report(function() return 1, 2 end, quiet()) end,
                 "iterator gave (number, number)")

    local nn = require "microml.nn"
    mm.manual_seed(2)
    local net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    local loss = total(net(mm.randn(5, 3)) ^ 2)
    loss:backward()
    local text = viz.dot(loss, { params = net })
    assert.are.equal(text, viz.dot(loss, { params = net:named_parameters() }))
    assert_dot_parses(text)
    local nodes = parse(text)
    assert.truthy(one(nodes, "1.weight").label:find("[4, 3] float32", 1, true))
    one(nodes, "3.bias")
    local names = {}
    for _, r in ipairs(viz.grad_report(net, quiet())) do names[#names + 1] = r.name end
    assert.are.same({ "1.weight", "1.bias", "3.weight", "3.bias" }, names)
    assert.truthy(one(parse(viz.dot(loss, { params = net, collapse = { "1" } })), "1").label
      :find("2 params", 1, true))
  end)

  it("honours custom thresholds and rejects bad input", function()
    local w = mm.tensor({ 1.0 }, { requires_grad = true })
    ;(w * 0.5):backward()
    local rows = viz.grad_report({ { "w", w } }, { print = false, explode = 0.1 })
    assert.are.equal("exploding", rows[1].status)
    rows = viz.grad_report({ { "w", w } }, { print = false, vanish = 0.9 })
    assert.are.equal("vanishing", rows[1].status)
    local bad = mm.tensor({ 1 / 0, 1.0 }, { requires_grad = true })
    ;(bad * 1):backward(mm.ones(2))
    rows = viz.grad_report({ { "bad", bad } }, quiet())
    assert.are.equal("exploding", rows[1].status)
    assert.are.equal("1 non-finite weight", rows[1].reason)
    H.error_with(function() viz.grad_report(nil) end, "viz.grad_report", "named parameters", "nil")
    H.error_with(function() viz.grad_report({ { 1, w } }, quiet()) end, "named parameter 1")
  end)
end)

describe("viz.enable_stats", function()
  it("returns the previous setting", function()
    local a = viz.enable_stats(true)
    assert.is_true(viz.enable_stats(false))
    assert.is_false(viz.enable_stats(a))
  end)
end)

describe("mm._norm_stats", function()
  it("gives the L2 norm and max |x| over finite elements, counting NaN and inf", function()
    local n, m, nans, infs = mm._norm_stats(mm.tensor({ 3.0, -4.0 }))
    assert.are.equal(5, n)
    assert.are.equal(4, m)
    assert.are.equal(0, nans + infs)
    n, m, nans, infs = mm._norm_stats(mm.tensor({ 0 / 0, 1 / 0, -1 / 0, 2.0 }, { dtype = "float64" }))
    assert.are.same({ 2, 2, 1, 2 }, { n, m, nans, infs })
    n = mm._norm_stats(mm.tensor({ 1e200, -1e200 }, { dtype = "float64" }))   -- no overflow
    assert.is_true(math.abs(n / (math.sqrt(2) * 1e200) - 1) < 1e-12)
    assert.are.equal(5, (mm._norm_stats(mm.tensor({ 3, 4 }))))                -- int64
    assert.are.equal(0, (mm._norm_stats(mm.zeros(0))))
    -- non-contiguous views read the right elements
    local t = mm.tensor({ { 1.0, 2.0 }, { 3.0, 4.0 } }):t():narrow(1, 2, 1)   -- {2, 4}
    n, m = mm._norm_stats(t)
    assert.is_true(math.abs(n - math.sqrt(20)) < 1e-6)
    assert.are.equal(4, m)
    n, m = mm._norm_stats(mm.tensor({ 5.0 }):expand(4))
    assert.are.equal(10, n)
    assert.are.equal(5, m)
  end)
end)
