-- Views share storage; reshape/view/transpose/permute/narrow/select/expand/
-- squeeze/unsqueeze, views of views, writing through them, and the
-- gradients that flow back through each kind of view.
local H = require "helpers"
local mm = H.mm

describe("views", function()
  local base
  before_each(function() base = mm.arange(12):float():reshape(3, 4) end)

  it("reshape and view share storage", function()
    local v = base:view(4, 3)
    v[1] = 100
    H.assert_close(base[1], { 100, 100, 100, 3 })
    assert.are.same({ 2, 6 }, base:reshape(2, -1):shape())
    assert.are.same({ 12 }, base:view(-1):shape())
  end)

  it("transpose and t swap strides without copying", function()
    local t = base:t()
    assert.are.same({ 4, 3 }, t:shape())
    assert.are.same({ 1, 4 }, t:stride())
    assert.is_false(t:is_contiguous())
    H.assert_close(t[2], { 1, 5, 9 })
    t[1][2] = -1 -- element (2, 1) of base
    assert.are.equal(-1, base[2][1]:item())
  end)

  it("view of a non-contiguous tensor fails clearly; reshape copies", function()
    local t = base:t()
    H.error_with(function() t:view(12) end, "view", "contiguous")
    local r = t:reshape(12)
    H.assert_close(r, { 0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11 })
    r[1] = 55 -- a copy: base unchanged
    assert.are.equal(0, base[1][1]:item())
  end)

  it("view splits and merges compatible dims of a non-contiguous tensor", function()
    local x = mm.arange(24):reshape(2, 3, 4):permute(2, 1, 3) -- [3, 2, 4]
    -- dims 2 and 3 are not contiguous with each other: no view, as in PyTorch
    H.error_with(function() x:view(3, 8) end, "not compatible")
    local w = x:view(3, 2, 2, 2)
    assert.are.same({ 3, 2, 2, 2 }, w:shape())
    H.assert_close(w[2][2][1], { 16, 17 })
  end)

  it("permute reorders dims", function()
    local x = mm.arange(24):reshape(2, 3, 4)
    local p = x:permute(3, 1, 2)
    assert.are.same({ 4, 2, 3 }, p:shape())
    assert.are.equal(x[2][3][4]:item(), p[4][2][3]:item())
    assert.are.same({ 4, 2, 3 }, x:permute({ -1, 1, 2 }):shape())
  end)

  it("narrow and select are windows onto the base", function()
    local n = base:narrow(2, 2, 2)
    H.assert_close(n, { { 1, 2 }, { 5, 6 }, { 9, 10 } })
    n:fill_(0)
    H.assert_close(base[1], { 0, 0, 0, 3 })
    local s = base:select(2, -1)
    H.assert_close(s, { 3, 7, 11 })
    assert.are.equal(1, s:dim())
  end)

  it("views of views write through to the base", function()
    local v = base:t():narrow(1, 2, 2):select(2, 3) -- column 2..3 of base, row 3
    H.assert_close(v, { 9, 10 })
    v:fill_(-5)
    H.assert_close(base[3], { 8, -5, -5, 11 })
  end)

  it("expand stretches size-1 dims with stride 0", function()
    local c = mm.tensor({ { 1 }, { 2 } })
    local e = c:expand(2, 3)
    H.assert_close(e, { { 1, 1, 1 }, { 2, 2, 2 } })
    assert.are.same({ 1, 0 }, e:stride())
    assert.are.same({ 4, 2, 3 }, c:expand(4, -1, 3):shape())
    assert.are.same({ 2, 3 }, c:expand_as(mm.zeros(2, 3)):shape())
  end)

  it("squeeze and unsqueeze", function()
    local x = mm.zeros(1, 3, 1, 2)
    assert.are.same({ 3, 2 }, x:squeeze():shape())
    assert.are.same({ 3, 1, 2 }, x:squeeze(1):shape())
    assert.are.same({ 1, 3, 1, 2 }, x:squeeze(2):shape()) -- size 3: unchanged
    assert.are.same({ 1, 3 }, mm.zeros(3):unsqueeze(1):shape())
    assert.are.same({ 3, 1 }, mm.zeros(3):unsqueeze(-1):shape())
  end)

  it("contiguous copies only when needed; clone always copies", function()
    local c = base:contiguous()
    c[1] = 9
    assert.are.equal(9, base[1][1]:item()) -- same storage
    local t = base:t():contiguous()
    assert.is_true(t:is_contiguous())
    local k = base:clone()
    k[1] = 1
    assert.are.equal(9, base[1][1]:item())
  end)

  it("flatten merges a range of dims", function()
    assert.are.same({ 24 }, mm.zeros(2, 3, 4):flatten():shape())
    assert.are.same({ 2, 12 }, mm.zeros(2, 3, 4):flatten(2):shape())
    assert.are.same({ 6, 4 }, mm.zeros(2, 3, 4):flatten(1, 2):shape())
  end)

  it("zero-size dims", function()
    local z = mm.zeros(0, 3)
    assert.are.equal(0, z:numel())
    assert.are.same({ 3, 0 }, z:t():shape())
    assert.are.same({ 3, 0 }, z:reshape(3, 0):shape())
    H.error_with(function() z:reshape(0, -1) end, "invalid for a tensor of 0 elements")
    assert.are.same({}, z:totable())
  end)
end)

describe("views: gradients (float64 finite differences)", function()
  before_each(function() mm.manual_seed(11) end)

  it("views: reshape, view, transpose, permute, narrow, select, expand, squeeze, unsqueeze", function()
    local x = H.leaf(2, 3, 4)
    local views = {
      function(a) return a:reshape(4, 6) end, function(a) return a:view(-1) end,
      function(a) return a:transpose(1, 3) end, function(a) return a:permute(3, 1, 2) end,
      function(a) return a:narrow(3, 2, 2) end, function(a) return a:select(2, -1) end,
      function(a) return a:unsqueeze(2):expand(2, 5, 3, 4) end,
      function(a) return a:narrow(1, 1, 1):squeeze(1) end,
      function(a) return a:transpose(1, 2):reshape(3, 8) end,
      function(a) return a:contiguous():clone():flatten(2) end,
      function(a) return a:double() * 1 end,
    }
    for i, f in ipairs(views) do
      local ok, msg = mm.gradcheck(f, { x }, { raise = false })
      assert(ok, ("view #%d: %s"):format(i, tostring(msg)))
    end
  end)
end)

-- Security issue items 3 and 5: view geometry from plain Lua integers.  Every
-- bound is checked without overflow, and a view can neither reach outside
-- its storage nor have more elements than an int64 counts.
describe("views with huge or hostile geometry", function()
  local maxi = math.maxinteger

  it("narrow rejects lengths and starts whose sum overflows", function()
    local t = mm.ones(5)
    local ok, err = pcall(t.narrow, t, 1, 2, maxi)
    assert.is_false(ok)
    assert.matches("narrow: start 2 and length " .. maxi .. " are out of bounds for dimension 1 of size 5", err)
    ok, err = pcall(t.narrow, t, 1, maxi, 2)
    assert.is_false(ok)
    assert.matches("narrow: start " .. maxi .. " and length 2 are out of bounds", err)
    ok = pcall(t.narrow, t, 1, 6, maxi)
    assert.is_false(ok)
    -- the valid edges still work: an empty view at the end, the full range
    assert.are.same({0}, t:narrow(1, 6, 0):shape())
    assert.are.same({5}, t:narrow(1, 1, 5):shape())
  end)

  it("narrow and select on empty tensors with huge strides stay empty and safe", function()
    local z = mm.zeros(0, 2^40|0, 2^40|0)
    assert.are.same({0, 1, 2^40|0}, z:narrow(2, 2^40|0, 1):shape())
    assert.are.same({0, 2^40|0}, z:select(2, 2^40|0):shape())
    assert.are.same({2^40|0, 2^40|0, 0}, z:permute(2, 3, 1):contiguous():shape())
  end)

  it("expand refuses element counts that do not fit int64", function()
    local ok, err = pcall(function() return mm.ones(1, 1, 1):expand(2^31|0, 2^31|0, 3) end)
    assert.is_false(ok)
    assert.matches("expand: shape %(2147483648, 2147483648, 3%) has more elements than fit", err)
    ok, err = pcall(function() return mm.ones(1, 1):expand(2^32|0, 2^32|0) end)
    assert.is_false(ok)
    assert.matches("expand:", err)
    -- a huge count that fits is a valid broadcast view
    local e = mm.ones(1):expand(2^62|0)
    assert.are.equal(2^62|0, e:numel())
    assert.are.equal(1, e:_get(2^62|0))
  end)

  it("materialising a huge broadcast view is an allocation error, not a wrapped size", function()
    local e = mm.ones(1):expand(maxi)
    local ok, err = pcall(e.contiguous, e)
    assert.is_false(ok)
    assert.matches("too many elements to allocate", err)
    ok, err = pcall(e.index_select, e, 1, mm.tensor({1}, "int64"))
    assert.is_false(ok)
    assert.matches("too many elements to allocate", err)
  end)

  it("flatten of an empty tensor whose merged dims overflow is an error", function()
    local z = mm.zeros(0, 1, 1):expand(0, 2^40|0, 2^40|0)
    local ok, err = pcall(z.flatten, z, 2, 3)
    assert.is_false(ok)
    assert.matches("flatten: dimensions 2..3", err)
    assert.are.same({0}, z:flatten():shape())
  end)

  it("transposing an empty tensor with a huge size and copying it is fine", function()
    local t = mm.zeros(0, maxi):t()
    assert.are.same({maxi, 0}, t:shape())
    assert.are.equal(0, t:contiguous():numel())
  end)
end)
