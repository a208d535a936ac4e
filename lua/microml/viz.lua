--- microml.viz — see the autograd graph and the gradients that flow through it.
--
--   viz.dot(t [, opts])              -> DOT text of the graph that produced t
--   viz.render(t, path [, opts])     -> path; draws it with Graphviz's `dot`
--   viz.grad_report(params [, opts]) -> rows, text; per-parameter gradient health
--   viz.enable_stats(on)             -> previous setting; per-node gradient stats
--   viz.named(params)                -> list of {name, tensor}, sorted if a map
--
-- `params` (opts.params for dot/render) is what a model's named_parameters()
-- returns: a list of {name, tensor} pairs, a name -> tensor table, an
-- iterator of (name, tensor) (microml.nn's), or the model itself (anything
-- with a :named_parameters() method).
--
-- dot/render options:
--   params     names for leaves: `fc1.weight [256, 784] float32` instead of `tensor`
--   max_nodes  refuse graphs that would draw more nodes (default 2000)
--   collapse   {prefix, ...} (or one string): draw each module as one node.
--              "fc1" takes the parameters named fc1 and fc1.*, the ops that
--              use them (directly or through a transpose/reshape/view of them
--              alone), and every op on a path between those — so activations
--              inside the module join it, the ones after it do not.  A
--              parameter shared by distant parts of a network (tied weights)
--              pulls the path between them into the module.
--   legend     false hides the colour legend (default true)
--   title      a caption for the graph
-- render only:
--   dot        the Graphviz program (default $MICROML_DOT or "dot")
--
-- Colours: after a backward with viz.enable_stats(true), every op is filled by
-- the L2 norm of the gradient that reached it, bucketed by powers of ten
-- (blue: vanishing, orange: large), red for NaN/inf; parameters by their .grad.
local mm = require "microml.core"

local viz = {}

local function is_tensor(x) return mm.is_tensor(x) end

--- Normalises named parameters into a list of {name, tensor} pairs.  Maps are
-- sorted by name so that everything built from them is deterministic.
function viz.named(params, where)
  where = where or "viz"
  if type(params) == "table" and type(params.named_parameters) == "function" then
    params = params:named_parameters()
  end
  local out = {}
  if type(params) == "function" then         -- an iterator: for name, t in params do
    for name, t in params do
      if type(name) ~= "string" or not is_tensor(t) then
        error(("%s: named parameter %d: the iterator gave (%s, %s), expected (name, tensor)"):format(
          where, #out + 1, type(name), is_tensor(t) and "tensor" or type(t)), 3)
      end
      out[#out + 1] = { name, t }
    end
    return out
  end
  if type(params) ~= "table" then
    error(("%s: expected named parameters (a list of {name, tensor} pairs, a name -> tensor "
           .. "table, an iterator of (name, tensor), or a model with :named_parameters()), got %s")
          :format(where, type(params)), 3)
  end
  if #params > 0 then
    for i, p in ipairs(params) do
      local name, t
      if type(p) == "table" and not is_tensor(p) then
        name, t = p[1] or p.name, p[2] or p.tensor or p.param
      end
      if type(name) ~= "string" or not is_tensor(t) then
        error(("%s: named parameter %d: expected a {name, tensor} pair, got %s"):format(
          where, i, type(p) == "table" and ("{%s, %s}"):format(type(name), type(t)) or type(p)), 3)
      end
      out[#out + 1] = { name, t }
    end
  else
    for name, t in pairs(params) do
      if type(name) ~= "string" or not is_tensor(t) then
        error(("%s: expected a name -> tensor table, got key %s (%s) -> %s"):format(
          where, tostring(name), type(name), is_tensor(t) and "tensor" or type(t)), 3)
      end
      out[#out + 1] = { name, t }
    end
    table.sort(out, function(a, b) return a[1] < b[1] end)
  end
  return out
end

local options = require "microml.options"

local DOT_OPTIONS = { "params", "max_nodes", "collapse", "legend:boolean", "title:string" }
local RENDER_OPTIONS = { "params", "max_nodes", "collapse", "legend:boolean",
                         "title:string", "dot:string" }
local REPORT_OPTIONS = { "vanish:number", "explode:number", "out", "print:boolean" }

local function check_opts(opts, where, accepted)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    error(("%s: expected an options table, got %s"):format(where, type(opts)), 3)
  end
  return options.check(opts, where, accepted, nil, 3)
end

local function core_opts(opts, where)
  local collapse = opts.collapse
  if type(collapse) == "string" then collapse = { collapse } end
  if collapse ~= nil and type(collapse) ~= "table" then
    error(("%s: opts.collapse must be a prefix or a list of prefixes, got %s"):format(where, type(collapse)), 3)
  end
  local max_nodes = opts.max_nodes
  if max_nodes ~= nil and (math.type(max_nodes) ~= "integer" or max_nodes < 1) then
    error(("%s: opts.max_nodes must be an integer >= 1, got %s"):format(where, tostring(max_nodes)), 3)
  end
  return { max_nodes = max_nodes, collapse = collapse, legend = opts.legend, title = opts.title }
end

--- DOT text for the autograd graph that produced t.
function viz.dot(t, opts, ...)
  options.arity("viz.dot", 2, select("#", ...) + 2)
  if not is_tensor(t) then
    error(("viz.dot: expected a tensor as argument 1, got %s"):format(type(t)), 2)
  end
  opts = check_opts(opts, "viz.dot", DOT_OPTIONS)
  local params = opts.params ~= nil and viz.named(opts.params, "viz.dot") or nil
  local ok, res = pcall(mm._graph_dot, t, params, core_opts(opts, "viz.dot"))
  if not ok then error("viz.dot: " .. tostring(res):gsub("^graph_dot: ", ""), 2) end
  return res
end

local formats = { svg = "svg", png = "png", pdf = "pdf" }

local function shell_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function read_all(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("a") or ""
  f:close()
  return s
end

--- Draws the graph of t into path; the format follows the extension (.svg,
-- .png, .pdf; .dot/.gv writes the DOT text itself).  Returns path.
function viz.render(t, path, opts, ...)
  options.arity("viz.render", 3, select("#", ...) + 3)
  if type(path) ~= "string" then
    error(("viz.render: expected an output path as argument 2, got %s"):format(type(path)), 2)
  end
  opts = check_opts(opts, "viz.render", RENDER_OPTIONS)
  local ext = (path:match("%.([%w]+)$") or ""):lower()
  if not formats[ext] and ext ~= "dot" and ext ~= "gv" then
    error(("viz.render: expected a path ending in .svg, .png, .pdf (or .dot/.gv for the text), got '%s'")
      :format(path), 2)
  end
  local dot_opts = {}
  for k, v in pairs(opts) do if k ~= "dot" then dot_opts[k] = v end end
  local ok, text = pcall(viz.dot, t, dot_opts)
  if not ok then error(tostring(text):gsub("^viz%.dot", "viz.render"), 2) end

  if not formats[ext] then
    local f, err = io.open(path, "wb")
    if not f then error("viz.render: cannot write " .. tostring(err), 2) end
    f:write(text)
    f:close()
    return path
  end

  local program = opts.dot or os.getenv("MICROML_DOT") or "dot"
  if type(program) ~= "string" or program == "" then
    error(("viz.render: opts.dot must be the Graphviz program's name or path, got %s"):format(type(program)), 2)
  end
  local input, errfile = os.tmpname(), os.tmpname()
  local function cleanup() os.remove(input); os.remove(errfile) end
  local f = io.open(input, "wb")
  if not f then cleanup(); error("viz.render: cannot create a temporary file for the DOT text", 2) end
  f:write(text)
  f:close()
  local cmd = ("%s -T%s -o %s <%s 2>%s"):format(shell_quote(program), formats[ext], shell_quote(path),
                                               shell_quote(input), shell_quote(errfile))
  local _, how, code = os.execute(cmd)
  local stderr = read_all(errfile):gsub("%s+$", "")
  cleanup()
  if how ~= "exit" or code ~= 0 then
    if how == "exit" and (code == 127 or code == 126) then
      error(("viz.render: could not run the Graphviz program '%s' (%s); install Graphviz "
             .. "(e.g. apt-get install graphviz) or pass opts.dot = '/path/to/dot'")
        :format(program, stderr ~= "" and stderr or "not found"), 2)
    end
    error(("viz.render: '%s -T%s' failed (%s %s)%s"):format(program, formats[ext], how, tostring(code),
                                                           stderr ~= "" and (": " .. stderr) or ""), 2)
  end
  local out = io.open(path, "rb")
  local size = out and out:seek("end") or 0
  if out then out:close() end
  if size == 0 then
    error(("viz.render: '%s' reported success but wrote nothing to %s%s"):format(program, path,
      stderr ~= "" and (": " .. stderr) or ""), 2)
  end
  return path
end

-- No getter exists in the runtime, so the module remembers what it set.
local stats_on = false

--- Turns per-node gradient statistics on or off (they cost a pass over each
-- gradient in backward); returns the previous setting.
function viz.enable_stats(on)
  local prev = stats_on
  stats_on = on == nil and true or not not on
  mm._autograd_stats(stats_on)
  return prev
end

local function num(x)
  if x == nil then return "-" end
  if x ~= x then return "nan" end
  if x == math.huge then return "inf" end
  return ("%.3e"):format(x)
end

--- Gradient health per parameter: |grad|, |weight| and their ratio, with
-- vanishing (no grad, zero grad, ratio < opts.vanish = 1e-7) and exploding
-- (NaN/inf gradient or weight, ratio > opts.explode = 1e2) parameters flagged.  A parameter
-- whose weights are all zero (a fresh bias) has no ratio and is judged by
-- its gradient alone.  Prints the table (to opts.out, default io.stdout;
-- opts.print = false to stay quiet) and returns the rows and the text.
function viz.grad_report(params, opts, ...)
  options.arity("viz.grad_report", 2, select("#", ...) + 2)
  opts = check_opts(opts, "viz.grad_report", REPORT_OPTIONS)
  local list = viz.named(params, "viz.grad_report")
  local vanish, explode = opts.vanish or 1e-7, opts.explode or 1e2
  local rows = {}
  local counts = { ok = 0, vanishing = 0, exploding = 0 }
  for _, p in ipairs(list) do
    local name, w = p[1], p[2]
    local row = { name = name, shape = w:shape(), status = "ok" }
    local wn, _, wnan, winf = mm._norm_stats(w)
    row.weight_norm = (wnan > 0 and 0 / 0) or (winf > 0 and math.huge) or wn
    local g = w.grad
    if wnan + winf > 0 then
      row.status, row.reason = "exploding", ("%d non-finite weight"):format(wnan + winf)
      if g then row.grad_norm = (mm._norm_stats(g)) end
    elseif not g then
      row.status, row.reason = "vanishing", "no grad"
    else
      local gn, gmax, gnan, ginf = mm._norm_stats(g)
      row.grad_norm = (gnan > 0 and 0 / 0) or (ginf > 0 and math.huge) or gn
      row.grad_max = gmax
      if gnan + ginf > 0 then
        row.status, row.reason = "exploding", ("%d non-finite grad"):format(gnan + ginf)
      elseif gn == 0 then
        row.ratio = row.weight_norm > 0 and 0 or nil
        row.status, row.reason = "vanishing", "zero grad"
      elseif row.weight_norm > 0 and row.weight_norm < math.huge then
        row.ratio = gn / row.weight_norm
        if row.ratio < vanish then
          row.status, row.reason = "vanishing", ("ratio < %g"):format(vanish)
        elseif row.ratio > explode then
          row.status, row.reason = "exploding", ("ratio > %g"):format(explode)
        end
      end
    end
    counts[row.status] = counts[row.status] + 1
    rows[#rows + 1] = row
  end

  local wname, wshape = #"parameter", #"shape"
  for _, r in ipairs(rows) do
    wname = math.max(wname, #r.name)
    wshape = math.max(wshape, #("[" .. table.concat(r.shape, ", ") .. "]"))
  end
  local fmt = "%-" .. wname .. "s  %-" .. wshape .. "s  %10s  %10s  %10s  %s"
  local lines = { fmt:format("parameter", "shape", "|grad|", "|weight|", "ratio", "status") }
  for _, r in ipairs(rows) do
    local status = r.status == "ok" and "ok" or (r.status:upper() .. " (" .. r.reason .. ")")
    lines[#lines + 1] = fmt:format(r.name, "[" .. table.concat(r.shape, ", ") .. "]", num(r.grad_norm),
                                   num(r.weight_norm), num(r.ratio), status)
  end
  lines[#lines + 1] = ("%d parameters: %d ok, %d vanishing, %d exploding"):format(
    #rows, counts.ok, counts.vanishing, counts.exploding)
  local text = table.concat(lines, "\n") .. "\n"
  if opts.print ~= false then (opts.out or io.stdout):write(text) end
  rows.counts = counts
  return rows, text
end

return viz
