-- Shared helpers for the busted specs.
local mm = require "microml"
local assert = require "luassert"
local H = {}

-- Flattens a nested Lua table of numbers.
local function flatten(t, out)
  out = out or {}
  if type(t) ~= "table" then out[#out + 1] = t; return out end
  for _, v in ipairs(t) do flatten(v, out) end
  return out
end
H.flatten = flatten

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

-- Runs fn, asserts it raises, and that the message contains every pattern
-- (plain substring match).  Returns the message.
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

-- A float64 leaf that requires grad: H.leaf(2, 3) or H.leaf({2, 3}).
function H.leaf(...)
  local shape = type((...)) == "table" and (...) or { ... }
  return mm.randn(shape, { dtype = "float64", requires_grad = true })
end

-- A non-contiguous float64 leaf of shape [a, b]: the transpose of a [b, a] tensor.
function H.tleaf(a, b)
  local x = mm.randn(b, a, { dtype = "float64" }):t()
  assert(not x:is_contiguous())
  x.requires_grad = true
  return x
end

-- Bytes in live storages once the collector has run (twice: finalisers).
function H.live_bytes()
  collectgarbage()
  collectgarbage()
  return mm.memory_stats().bytes_live
end

-- The elements of t in row-major order, as a flat Lua list.
function H.values(t)
  local out = {}
  for i = 1, t:numel() do out[i] = t:_get(i) end
  return out
end

-- Asserts two tensors are equal bit for bit (same values, same count).
function H.assert_identical(x, y)
  local fx, fy = flatten(x:totable()), flatten(y:totable())
  assert.are.equal(#fx, #fy)
  for i = 1, #fx do
    if fx[i] ~= fy[i] then error(("element %d: %.17g vs %.17g"):format(i, fx[i], fy[i]), 2) end
  end
end

H.mm = mm
return H
