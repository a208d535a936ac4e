-- Shared helpers for the busted specs: `local H = require "helpers"`.
-- (make spec puts spec/ on LUA_PATH.)  One helper per job; a spec file keeps
-- a local helper only when no other file needs it.
local mm = require "microml"
local assert = require "luassert"
local H = {}

-- ---- tensors ----------------------------------------------------------------

-- Flattens a nested Lua table of numbers.
local function flatten(t, out)
  out = out or {}
  if type(t) ~= "table" then out[#out + 1] = t; return out end
  for _, v in ipairs(t) do flatten(v, out) end
  return out
end
H.flatten = flatten

-- A shape given either as one table or as the sizes themselves: shape_of({2, 3}) or shape_of(2, 3).
local function shape_of(...)
  return type((...)) == "table" and (...) or { ... }
end

-- A float64 tensor holding the given numbers: H.f64 { { 1, 2 }, { 3, 4 } }.
function H.f64(data) return mm.tensor(data, { dtype = "float64" }) end

-- An int64 tensor holding the given numbers (indices, labels): H.long { 3, 1, 2 }.
function H.long(data) return mm.tensor(data, { dtype = "int64" }) end

-- A float64 tensor of N(0, 1) draws that does not require grad: H.randn64(2, 3) or H.randn64({2, 3}).
function H.randn64(...) return mm.randn(shape_of(...), { dtype = "float64" }) end

-- A float64 leaf of N(0, 1) draws that requires grad: H.leaf(2, 3) or H.leaf({2, 3}).
function H.leaf(...)
  return mm.randn(shape_of(...), { dtype = "float64", requires_grad = true })
end

-- A float64 leaf with every element in [0.5, 1.5) (for log, sqrt, division): H.pos_leaf(3, 2).
function H.pos_leaf(...)
  return (mm.rand(shape_of(...), { dtype = "float64" }) + 0.5):requires_grad_()
end

-- A non-contiguous float64 leaf of shape [a, b]: the transpose of a [b, a] tensor.
function H.tleaf(a, b)
  local x = mm.randn(b, a, { dtype = "float64" }):t()
  assert(not x:is_contiguous())
  x.requires_grad = true
  return x
end

-- The elements of t in row-major order, as a flat Lua list.
function H.values(t)
  local out = {}
  for i = 1, t:numel() do out[i] = t:_get(i) end
  return out
end

-- ---- assertions ---------------------------------------------------------------

-- Asserts tensor t equals the nested table `expected` elementwise within tol.
function H.assert_close(t, expected, tol)
  tol = tol or 1e-6
  local got = flatten(t:totable())
  local want = flatten(expected)
  assert.are.equal(#want, #got, "element count")
  for i = 1, #want do
    local g, w = got[i], want[i]
    local ok = (g ~= g and w ~= w) or g == w or math.abs(g - w) <= tol * (1 + math.abs(w))
    if not ok then
      error(("element %d: got %.10g, expected %.10g"):format(i, g, w), 2)
    end
  end
end

-- Asserts two tensors are equal bit for bit (same values, same count).
function H.assert_identical(x, y)
  local fx, fy = flatten(x:totable()), flatten(y:totable())
  assert.are.equal(#fx, #fy)
  for i = 1, #fx do
    if fx[i] ~= fy[i] then error(("element %d: %.17g vs %.17g"):format(i, fx[i], fy[i]), 2) end
  end
end

-- Runs fn, asserts it raises, and that the message contains every pattern
-- (plain substring match).  Returns the message, so H.error_with(fn) alone
-- gives the message of a call that must fail.
function H.error_with(fn, ...)
  local ok, err = pcall(fn)
  assert.is_false(ok, "expected an error")
  err = tostring(err)
  for _, p in ipairs({ ... }) do
    if not err:find(p, 1, true) then
      error(("error message %q does not contain %q"):format(err, p), 2)
    end
  end
  return err
end

-- Asserts fn(...) fails with a message containing every plain string in
-- `needles` (one string or a list).  Returns the message.
function H.fails_with(needles, fn, ...)
  local args = table.pack(...)
  assert.has_error(function() fn(table.unpack(args, 1, args.n)) end)
  local ok, msg = pcall(fn, table.unpack(args, 1, args.n))
  assert(not ok)
  msg = tostring(msg)
  if type(needles) == "string" then needles = { needles } end
  for _, s in ipairs(needles) do
    assert(msg:find(s, 1, true), ("expected %q in the error message, got: %s"):format(s, msg))
  end
  return msg
end

-- mm.gradcheck that fails the test with `what` and gradcheck's own report.
function H.check_grad(fn, inputs, what)
  local ok, msg = mm.gradcheck(fn, inputs, { raise = false })
  assert(ok, (what or "") .. ": " .. tostring(msg))
end

-- ---- threads ------------------------------------------------------------------

-- Runs fn with the pool set to n threads, then restores the previous count
-- (also when fn fails).  Returns fn's first four results.
function H.on_threads(n, fn)
  local n0 = mm.get_num_threads()
  mm.set_num_threads(n)
  local ok, a, b, c, d = pcall(fn)
  mm.set_num_threads(n0)
  if not ok then error(a, 0) end
  return a, b, c, d
end

-- Runs fn on 1 and on 2 threads and asserts every returned tensor is the same bits.
function H.same_bits_1_2(fn)
  local r1 = { H.on_threads(1, fn) }
  local r2 = { H.on_threads(2, fn) }
  assert.are.equal(#r1, #r2)
  assert.is_true(#r1 > 0)
  for i = 1, #r1 do H.assert_identical(r1[i], r2[i]) end
end

-- ---- memory -------------------------------------------------------------------

-- Runs the collector twice (the second pass frees what finalisers released).
function H.full_gc()
  collectgarbage()
  collectgarbage()
end

-- Bytes in live storages once the collector has run.
function H.live_bytes()
  H.full_gc()
  return mm.memory_stats().bytes_live
end

-- ---- files and processes ------------------------------------------------------

-- The whole content of a file, as bytes.
function H.read_file(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

-- Writes bytes to path (replacing it); returns the path.
function H.write_file(path, bytes)
  local f = assert(io.open(path, "wb"))
  f:write(bytes)
  f:close()
  return path
end

-- Writes bytes to a new temporary file; returns its path (the caller removes it).
function H.write_temp(bytes) return H.write_file(os.tmpname(), bytes) end

-- Compresses path with the gzip program into path .. ".gz" (kept beside it); returns that name.
function H.gzip(path)
  assert(os.execute(("gzip -c -n '%s' > '%s.gz'"):format(path, path)))
  return path .. ".gz"
end

-- A path for a safetensors file in $TMPDIR (or /tmp), named after `tag`.
function H.tmpname(tag)
  return ("%s/microml_spec_%s_%d.safetensors"):format(os.getenv("TMPDIR") or "/tmp", tag,
                                                   math.random(1, 1 << 30))
end

-- s as one single-quoted shell word.
function H.quote(s)
  return "'" .. tostring(s):gsub("'", [['\'']]) .. "'"
end

-- Runs a shell command line with stdin from a string (or /dev/null);
-- returns stdout, stderr and the exit code (128 + n for signal n).
function H.sh(cmdline, stdin)
  local inp = H.write_temp(stdin or "")
  local out, err = os.tmpname(), os.tmpname()
  local _, how, code = os.execute(("%s < %s > %s 2> %s"):format(
    cmdline, H.quote(inp), H.quote(out), H.quote(err)))
  local o, e = H.read_file(out), H.read_file(err)
  os.remove(inp); os.remove(out); os.remove(err)
  if how == "signal" then code = 128 + code end
  return o, e, code
end

-- ---- text -----------------------------------------------------------------------

-- How many times the plain string `plain` occurs in s (without overlaps).
function H.count(s, plain)
  local n, at = 0, 1
  while true do
    local i = s:find(plain, at, true)
    if not i then return n end
    n, at = n + 1, i + #plain
  end
end

H.mm = mm
return H
