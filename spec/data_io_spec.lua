-- File formats: IDX (plain and gzip), .npy, CSV and safetensors
-- checkpoints.  Small files are made byte by byte with string.pack (gzip
-- through the `gzip` program), so every expectation is computed by hand
-- from the format, not by the code under test.
local mm = require "microml"
local H = require "helpers"

local tmpdir = os.tmpname()
os.remove(tmpdir)
assert(os.execute("mkdir -p '" .. tmpdir .. "'"))
local counter = 0
local function tmp(ext)
  counter = counter + 1
  return ("%s/f%d%s"):format(tmpdir, counter, ext or "")
end

local function write(path, bytes)
  local f = assert(io.open(path, "wb"))
  f:write(bytes)
  f:close()
  return path
end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local function gzip(path)
  assert(os.execute(("gzip -c -n '%s' > '%s.gz'"):format(path, path)))
  return path .. ".gz"
end

-- The error message of fn(...), which must fail.
local function error_of(fn, ...)
  local args = table.pack(...)
  assert.has_error(function() fn(table.unpack(args, 1, args.n)) end)
  local ok, e = pcall(fn, table.unpack(args, 1, args.n))
  assert(not ok)
  return tostring(e)
end

-- Asserts fn(...) fails with a message containing every plain string given.
local function fails_with(needles, fn, ...)
  local msg = error_of(fn, ...)
  if type(needles) == "string" then needles = {needles} end
  for _, s in ipairs(needles) do
    assert(msg:find(s, 1, true), ("expected %q in the error message, got: %s"):format(s, msg))
  end
  return msg
end

local values = H.values

local function assert_same(a, b)
  assert.are.equal(a:dtype(), b:dtype())
  assert.are.same(a:shape(), b:shape())
  assert.are.same(values(a), values(b))
end

local function leftovers(dir)
  local p = io.popen("ls -a '" .. dir .. "'")
  local names = {}
  for line in p:lines() do
    if line:find("%.tmp%.") then names[#names + 1] = line end
  end
  p:close()
  return names
end

teardown(function() os.execute("rm -rf '" .. tmpdir .. "'") end)

-- ---------------------------------------------------------------------------
describe("read_idx", function()
  local function idx(type_code, dims, payload)
    local h = string.pack(">BBBB", 0, 0, type_code, #dims)
    for _, d in ipairs(dims) do h = h .. string.pack(">I4", d) end
    return h .. payload
  end

  it("reads ubyte data unscaled as float32 by default, with the file's shape", function()
    local p = write(tmp(".idx"), idx(0x08, {2, 3}, string.char(0, 1, 2, 253, 254, 255)))
    local t = mm.read_idx(p)
    assert.are.equal("float32", t:dtype())
    assert.are.same({2, 3}, t:shape())
    assert.are.same({0, 1, 2, 253, 254, 255}, values(t))
  end)

  it("reads labels as int64 when asked", function()
    local p = write(tmp(".idx"), idx(0x08, {4}, string.char(9, 0, 3, 7)))
    local t = mm.read_idx(p, {dtype = "int64"})
    assert.are.equal("int64", t:dtype())
    assert.are.same({9, 0, 3, 7}, values(t))
  end)

  it("decodes every IDX type big-endian", function()
    local cases = {
      {0x09, string.pack(">i1i1i1", -128, 127, -1), {-128, 127, -1}},
      {0x0B, string.pack(">i2i2i2", -300, 7, 32767), {-300, 7, 32767}},
      {0x0C, string.pack(">i4i4i4", -70000, 123456789, 0), {-70000, 123456789, 0}},
      {0x0D, string.pack(">fff", 1.5, -2.25, 1e-3), {1.5, -2.25, (string.unpack("f", string.pack("f", 1e-3)))}},
      {0x0E, string.pack(">ddd", 0.1, -1e300, 2.5), {0.1, -1e300, 2.5}},
    }
    for _, c in ipairs(cases) do
      local p = write(tmp(".idx"), idx(c[1], {3}, c[2]))
      local t = mm.read_idx(p, {dtype = "float64"})
      assert.are.same(c[3], values(t))
    end
    local p = write(tmp(".idx"), idx(0x0C, {2}, string.pack(">i4i4", -5, 2147483647)))
    assert.are.same({-5, 2147483647}, values(mm.read_idx(p, {dtype = "int64"})))
  end)

  it("reads gzip files the same as plain ones", function()
    local bytes = idx(0x08, {3, 2, 2}, string.char(table.unpack((function()
      local v = {} for i = 1, 12 do v[i] = i * 20 end return v end)())))
    local plain = write(tmp(".idx"), bytes)
    local gz = gzip(plain)
    assert.are_not.equal(read(gz):sub(1, 2), bytes:sub(1, 2))
    assert_same(mm.read_idx(plain), mm.read_idx(gz))
    assert.are.same({3, 2, 2}, mm.read_idx(gz):shape())
    -- concatenated gzip members form one stream, as zcat reads them
    local half1 = write(tmp(".a"), bytes:sub(1, 10))
    local half2 = write(tmp(".b"), bytes:sub(11))
    local both = write(tmp(".gz"), read(gzip(half1)) .. read(gzip(half2)))
    assert_same(mm.read_idx(plain), mm.read_idx(both))
  end)

  it("names the path and the OS error for a missing file or a directory", function()
    fails_with({"read_idx", tmpdir .. "/nope.idx", "No such file"}, mm.read_idx, tmpdir .. "/nope.idx")
    fails_with({"read_idx", "Is a directory"}, mm.read_idx, tmpdir)
  end)

  it("rejects a wrong magic, an unsupported type and a bad dimension count", function()
    fails_with({"not an IDX file", "50 4b 03 04"}, mm.read_idx, write(tmp(), "PK\3\4rest of a zip"))
    fails_with({"unsupported IDX data type 0x0A", "0x08 ubyte"}, mm.read_idx,
      write(tmp(), idx(0x0A, {1}, "x")))
    fails_with({"expected 1 to 8 dimensions, got 0"}, mm.read_idx, write(tmp(), idx(0x08, {}, "")))
    fails_with({"expected 1 to 8 dimensions, got 9"}, mm.read_idx,
      write(tmp(), idx(0x08, {1, 1, 1, 1, 1, 1, 1, 1, 1}, "x")))
    fails_with({"cannot be read as int64", "float"}, mm.read_idx,
      write(tmp(), idx(0x0D, {1}, string.pack(">f", 1))), {dtype = "int64"})
    fails_with({"truncated header", "got 3"}, mm.read_idx, write(tmp(), "\0\0\8"))
    fails_with({"truncated header", "2 dimensions need 12 bytes"}, mm.read_idx,
      write(tmp(), string.pack(">BBBBI4", 0, 0, 8, 2, 5)))
  end)

  it("rejects dims whose product overflows or exceeds the data present", function()
    fails_with({"more elements than a tensor can hold", "4294967295"}, mm.read_idx,
      write(tmp(), idx(0x08, {0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF}, "abc")))
    fails_with({"truncated data", "(1000000, 1000000)", "only 4 bytes follow"}, mm.read_idx,
      write(tmp(), idx(0x0C, {1000000, 1000000}, "abcd")))
    fails_with({"truncated data", "(2, 3)", "6 bytes", "only 5"}, mm.read_idx,
      write(tmp(), idx(0x08, {2, 3}, "12345")))
  end)

  it("rejects trailing garbage after the declared data (plain and gzip)", function()
    local p = write(tmp(".idx"), idx(0x08, {2}, "ab" .. "xyz"))
    fails_with({"3 bytes of trailing data", "(2)"}, mm.read_idx, p)
    fails_with({"trailing data"}, mm.read_idx, gzip(p))
  end)

  it("rejects truncated and corrupt gzip streams", function()
    local p = write(tmp(".idx"), idx(0x08, {64, 64}, string.rep("\1\2\3\4\5\6\7\8", 512)))
    local gz = read(gzip(p))
    fails_with({"gzip"}, mm.read_idx, write(tmp(".gz"), gz:sub(1, #gz // 2)))
    fails_with({"gzip data is truncated"}, mm.read_idx, write(tmp(".gz"), gz:sub(1, #gz - 4)))
    local corrupt = gz:sub(1, 20) .. string.rep("\255", 16) .. gz:sub(37)
    fails_with({"read_idx"}, mm.read_idx, write(tmp(".gz"), corrupt))
    fails_with({"trailing data after the gzip stream"}, mm.read_idx, write(tmp(".gz"), gz .. "junk"))
  end)

  local dir = "/usr/share/datasets/fashion-mnist"
  -- make test installs dataset-fashion-mnist first: its absence is a failure.
  it("reads the real Fashion-MNIST files with their shapes and label range", function()
    local y = mm.read_idx(dir .. "/t10k-labels-idx1-ubyte.gz", {dtype = "int64"})
    assert.are.same({10000}, y:shape())
    local counts = {}
    for i = 1, 10000 do
      local v = y:_get(i)
      counts[v] = (counts[v] or 0) + 1
    end
    for c = 0, 9 do assert.are.equal(1000, counts[c]) end   -- the test set is balanced
    local x = mm.read_idx(dir .. "/t10k-images-idx3-ubyte.gz")
    assert.are.same({10000, 28, 28}, x:shape())
    local lo, hi = math.huge, -math.huge
    for i = 1, 28 * 28 * 5 do
      local v = x:_get(i)
      lo, hi = math.min(lo, v), math.max(hi, v)
    end
    assert.are.equal(0, lo)
    assert.is_true(hi > 200 and hi <= 255)
  end)
end)

-- ---------------------------------------------------------------------------
describe("npy", function()
  local function npy(header, payload, version)
    version = version or 1
    local pre = "\147NUMPY" .. string.char(version, 0)
    if version == 1 then
      return pre .. string.pack("<I2", #header) .. header .. payload
    end
    return pre .. string.pack("<I4", #header) .. header .. payload
  end

  it("round-trips float32, float64 and int64 with exact values", function()
    local cases = {
      mm.tensor({{1.5, -2}, {3.25, 1e-8}}, {dtype = "float32"}),
      mm.tensor({{0.1, -1e300}, {5e-324, 2}}, {dtype = "float64"}),
      mm.tensor({math.maxinteger, math.mininteger, 2 ^ 53 + 1 | 0, -7}),
    }
    for _, t in ipairs(cases) do
      local p = tmp(".npy")
      mm.save_npy(p, t)
      assert_same(t, mm.load_npy(p))
    end
  end)

  it("round-trips 0-dim, empty and non-contiguous tensors", function()
    for _, t in ipairs {mm.tensor(3.5), mm.zeros(0, 3), mm.zeros(0), mm.zeros(2, 0, 4, {dtype = "int64"})} do
      local p = tmp(".npy")
      mm.save_npy(p, t)
      assert_same(t, mm.load_npy(p))
    end
    local t = mm.arange(12, {dtype = "float64"}):reshape(3, 4):t()
    assert.is_false(t:is_contiguous())
    local p = tmp(".npy")
    mm.save_npy(p, t)
    assert_same(t:contiguous(), mm.load_npy(p))
  end)

  it("writes the header NumPy writes", function()
    local p = tmp(".npy")
    mm.save_npy(p, mm.zeros(2, 3))
    local s = read(p)
    assert.are.equal("\147NUMPY\1\0", s:sub(1, 8))
    local hlen = string.unpack("<I2", s, 9)
    local header = s:sub(11, 10 + hlen)
    assert.are.equal(0, (10 + hlen) % 64)
    assert.are.equal("\n", header:sub(-1))
    assert.truthy(header:find("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 1, true))
    assert.are.equal(10 + hlen + 24, #s)
    mm.save_npy(p, mm.zeros(5, {dtype = "int64"}))
    assert.truthy(read(p):find("'descr': '<i8', 'fortran_order': False, 'shape': (5,), }", 1, true))
    mm.save_npy(p, mm.tensor(1.0, {dtype = "float64"}))
    assert.truthy(read(p):find("'descr': '<f8', 'fortran_order': False, 'shape': (), }", 1, true))
  end)

  it("reads hand-made files of every supported dtype and version", function()
    local h = function(descr, shape)
      return ("{'descr': '%s', 'fortran_order': False, 'shape': %s, }\n"):format(descr, shape)
    end
    local t = mm.load_npy(write(tmp(), npy(h("<f4", "(2,)"), string.pack("<ff", 1.5, -3))))
    assert.are.equal("float32", t:dtype())
    assert.are.same({1.5, -3}, values(t))
    t = mm.load_npy(write(tmp(), npy(h(">f8", "(2,)"), string.pack(">dd", 0.1, 7), 2)))
    assert.are.equal("float64", t:dtype())
    assert.are.same({0.1, 7}, values(t))
    t = mm.load_npy(write(tmp(), npy(h("<i4", "(1, 3)"), string.pack("<i4i4i4", -1, 2, 2147483647), 3)))
    assert.are.equal("int64", t:dtype())
    assert.are.same({1, 3}, t:shape())
    assert.are.same({-1, 2, 2147483647}, values(t))
    t = mm.load_npy(write(tmp(), npy(h("|u1", "(2, 2)"), "\0\1\128\255")))
    assert.are.equal("float32", t:dtype())
    assert.are.same({0, 1, 128, 255}, values(t))
    t = mm.load_npy(write(tmp(), npy(h("<i8", "(2L,)"), string.pack("<i8i8", -2, 3))))
    assert.are.same({-2, 3}, values(t))
    -- key order and quotes are free; a 1-D Fortran array is laid out as a C one
    t = mm.load_npy(write(tmp(), npy('{"shape": (2,), "fortran_order": True, "descr": "<f4"}',
      string.pack("<ff", 4, 5))))
    assert.are.same({4, 5}, values(t))
  end)

  it("rejects Fortran order, unsupported dtypes and malformed headers clearly", function()
    local function file(header, payload, v) return write(tmp(), npy(header, payload or "", v)) end
    fails_with({"Fortran", "(2, 2)", "only C order"}, mm.load_npy,
      file("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", string.rep("\0", 16)))
    fails_with({"unsupported dtype '<c8'", "<f4"}, mm.load_npy,
      file("{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }", string.rep("\0", 8)))
    fails_with({"structured dtypes"}, mm.load_npy,
      file("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }"))
    fails_with({"unexpected key 'extra'"}, mm.load_npy,
      file("{'descr': '<f4', 'fortran_order': False, 'shape': (), 'extra': 1}"))
    fails_with({"lacks 'shape'"}, mm.load_npy, file("{'descr': '<f4', 'fortran_order': False}"))
    fails_with({"appears twice"}, mm.load_npy,
      file("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': ()}"))
    fails_with({"malformed header"}, mm.load_npy, file("{'descr': '<f4', 'fortran_order': False, 'shape': (1,"))
    fails_with({"more elements than a tensor can hold"}, mm.load_npy,
      file("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999, 99999999, 99999999), }"))
    fails_with({"not a .npy file"}, mm.load_npy, write(tmp(), "PK\3\4 not numpy at all"))
    fails_with({"unsupported .npy version 4.0"}, mm.load_npy, write(tmp(), "\147NUMPY\4\0\0\0\0\0"))
    fails_with({"truncated header", "declared 80"}, mm.load_npy, write(tmp(), "\147NUMPY\1\0\80\0{'descr'"))
    fails_with({"truncated data", "(3)", "needs 12 bytes, got 8"}, mm.load_npy,
      file("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", string.rep("\0", 8)))
    fails_with({"4 bytes of trailing data"}, mm.load_npy,
      file("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", string.rep("\0", 8)))
    fails_with({"load_npy", "No such file"}, mm.load_npy, tmpdir .. "/missing.npy")
  end)
end)

-- ---------------------------------------------------------------------------
describe("read_csv", function()
  it("reads a table of numbers as float32 [rows, cols]", function()
    local p = write(tmp(".csv"), "1,2,3\n4.5,-6e2, 7 \n")
    local t = mm.read_csv(p)
    assert.are.equal("float32", t:dtype())
    assert.are.same({2, 3}, t:shape())
    assert.are.same({1, 2, 3, 4.5, -600, 7}, values(t))
  end)

  it("skips a header, blank lines and CRs; honours the delimiter and quotes", function()
    local p = write(tmp(".csv"), "a;b\r\n\r\n1;\"2\"\r\n  \r\n3;4")
    local t = mm.read_csv(p, {header = true, delimiter = ";"})
    assert.are.same({2, 2}, t:shape())
    assert.are.same({1, 2, 3, 4}, values(t))
    t = mm.read_csv(write(tmp(), "1\t2\n 3 \t\t4\n"), {delimiter = "\t"})
    assert.are.same({1, 2, 3, 4}, values(t))
    t = mm.read_csv(write(tmp(), "nan,inf,-inf\n"))
    local v = values(t)
    assert.is_true(v[1] ~= v[1])
    assert.are.same({math.huge, -math.huge}, {v[2], v[3]})
    assert.are.same({0, 0}, mm.read_csv(write(tmp(), "")):shape())
    assert.are.same({0, 0}, mm.read_csv(write(tmp(), "x,y\n"), {header = true}):shape())
  end)

  it("names the line and column of ragged rows, non-numbers and empty fields", function()
    fails_with({"line 3 has 2 fields, but line 1 has 3", "ragged"}, mm.read_csv,
      write(tmp(), "1,2,3\n4,5,6\n7,8\n"))
    fails_with({"line 2 has more than 2 fields"}, mm.read_csv, write(tmp(), "1,2\n3,4,5\n"))
    fails_with({"line 2, column 2", "expected a number, got 'abc'"}, mm.read_csv,
      write(tmp(), "1,2\n3,abc\n"))
    fails_with({"line 4, column 1", "got '1.2.3'"}, mm.read_csv, write(tmp(), "h\n\n1\n1.2.3\n"), {header = true})
    fails_with({"line 1, column 2", "empty field"}, mm.read_csv, write(tmp(), "1,,3\n"))
    fails_with({"line 1, column 1", "out of float32 range"}, mm.read_csv, write(tmp(), "1e39\n"))
    fails_with({"read_csv", "No such file"}, mm.read_csv, tmpdir .. "/missing.csv")
    fails_with({"delimiter must be a one-character string"}, mm.read_csv, write(tmp(), "1\n"), {delimiter = ",,"})
  end)
end)

-- ---------------------------------------------------------------------------
describe("safetensors save/load", function()
  local function st(header, data)
    return string.pack("<I8", #header) .. header .. (data or "")
  end
  local function st_file(header, data) return write(tmp(".safetensors"), st(header, data)) end

  it("round-trips every dtype, 0-dim and empty tensors, and metadata", function()
    local tensors = {
      f32 = mm.tensor({{1.5, -2}, {3, 4}}, {dtype = "float32"}),
      f64 = mm.tensor({0.1, 1e-300, -5}, {dtype = "float64"}),
      i64 = mm.tensor({math.maxinteger, math.mininteger, 0}),
      scalar = mm.tensor(2.5, {dtype = "float64"}),
      empty = mm.zeros(0, 4),
      strided = mm.arange(6, {dtype = "float32"}):reshape(2, 3):t(),
    }
    local p = tmp(".safetensors")
    mm.save(p, tensors, {epoch = "3", note = "héllo \"quoted\"\n"})
    local got, meta = mm.load(p)
    for name, t in pairs(tensors) do assert_same(t:contiguous(), got[name]) end
    local n = 0
    for _ in pairs(got) do n = n + 1 end
    assert.are.equal(6, n)
    assert.are.same({epoch = "3", note = "héllo \"quoted\"\n"}, meta)
    assert.are.same({}, select(2, (function() mm.save(p, {a = mm.zeros(1)}); return mm.load(p) end)()))
  end)

  it("flattens nested tables to dotted names and data.nest restores them", function()
    local w, b = mm.randn(2, 3), mm.zeros(2)
    local p = tmp(".safetensors")
    mm.save(p, {model = {fc1 = {weight = w, bias = b}}, layers = {mm.ones(1), mm.zeros(1)}})
    local flat = mm.load(p)
    assert_same(w, flat["model.fc1.weight"])
    assert_same(b, flat["model.fc1.bias"])
    assert.truthy(flat["layers.1"] and flat["layers.2"])
    local nested = mm.data.nest(flat)
    assert_same(w, nested.model.fc1.weight)
    assert.are.equal(2, #nested.layers)
  end)

  it("writes a deterministic, aligned header with sorted names", function()
    local p1, p2 = tmp(), tmp()
    local a, b = mm.ones(3), mm.arange(4, {dtype = "float64"})
    mm.save(p1, {zeta = a, alpha = b}, {k = "v"})
    mm.save(p2, {alpha = b, zeta = a}, {k = "v"})
    local s = read(p1)
    assert.are.equal(s, read(p2))
    local n = string.unpack("<I8", s)
    assert.are.equal(0, (8 + n) % 8)
    local header = s:sub(9, 8 + n)
    assert.are.equal('{"__metadata__":{"k":"v"},'
      .. '"alpha":{"dtype":"F64","shape":[4],"data_offsets":[0,32]},'
      .. '"zeta":{"dtype":"F32","shape":[3],"data_offsets":[32,44]}}', (header:gsub(" +$", "")))
    assert.are.equal(8 + n + 44, #s)
    assert.are.equal(string.pack("<dddd", 0, 1, 2, 3), s:sub(9 + n, 8 + n + 32))
  end)

  it("replaces files atomically and leaves no temporary file behind", function()
    local p = tmp(".safetensors")
    mm.save(p, {x = mm.ones(2)})
    local before = read(p)
    -- a failing save (reserved name) must leave the good file untouched
    fails_with({"'__metadata__' is reserved"}, mm.save, p, {__metadata__ = mm.zeros(1)})
    assert.are.equal(before, read(p))
    mm.save(p, {x = mm.zeros(3)})
    assert.are.same({3}, mm.load(p).x:shape())
    assert.are.same({}, leftovers(tmpdir))
    fails_with({"cannot create", tmpdir .. "/no/such/dir/x.st.tmp."}, mm.save, tmpdir .. "/no/such/dir/x.st",
      {x = mm.ones(1)})
  end)

  it("reads F16, BF16, I32, I16, I8, U8 and BOOL written by other tools", function()
    local header = '{"b":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]},'
      .. '"h":{"dtype":"F16","shape":[4],"data_offsets":[4,12]},'
      .. '"i":{"dtype":"I32","shape":[2],"data_offsets":[12,20]},'
      .. '"s":{"dtype":"I16","shape":[1],"data_offsets":[20,22]},'
      .. '"c":{"dtype":"I8","shape":[1],"data_offsets":[22,23]},'
      .. '"u":{"dtype":"U8","shape":[1],"data_offsets":[23,24]},'
      .. '"t":{"dtype":"BOOL","shape":[2],"data_offsets":[24,26]}}'
    local data = string.pack("<I2I2", 0x3F80, 0xC040)                       -- 1.0, -3.0
      .. string.pack("<I2I2I2I2", 0x3C00, 0xC000, 0x7C00, 0x0001)          -- 1, -2, inf, 2^-24
      .. string.pack("<i4i4", -7, 2147483647) .. string.pack("<i2", -300)
      .. string.pack("<i1", -5) .. "\200" .. "\0\1"
    local t = mm.load(st_file(header, data))
    assert.are.same({1, -3}, values(t.b))
    assert.are.same({1, -2, math.huge, 2 ^ -24}, values(t.h))
    assert.are.equal("float32", t.h:dtype())
    assert.are.same({-7, 2147483647}, values(t.i))
    assert.are.equal("int64", t.i:dtype())
    assert.are.same({-300}, values(t.s))
    assert.are.same({-5}, values(t.c))
    assert.are.same({200}, values(t.u))
    assert.are.same({0, 1}, values(t.t))
  end)

  it("accepts what the format allows: padding, escapes, unknown fields, null metadata", function()
    local header = '{"__metadata__":null,"a\\u00e9\\ud83d\\ude00\\n":'
      .. '{"shape":[1],"data_offsets":[0,4],"extra":[{"x":[true,false,null,-1.5e3]}],"dtype":"F32"}}   '
    local t, meta = mm.load(st_file(header, string.pack("<f", 7)))
    assert.are.same({7}, values(t["aé😀\n"]))
    assert.are.same({}, meta)
  end)

  it("rejects hostile and corrupt files with a clear error", function()
    local ok1 = '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    local d8 = string.rep("\0", 8)
    local cases = {
      {write(tmp(), "short"), {"not a safetensors file", "5 bytes"}},
      {write(tmp(), string.pack("<I8", 1000) .. "{}"), {"header length 1000", "rest of the file"}},
      {write(tmp(), string.pack("<I8", 0xFFFFFFFFFFFFFFF0) .. "{}"), {"header length"}},
      {st_file('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}', d8), {"malformed header JSON", "end of the header"}},
      {st_file('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],}}', d8), {"malformed header JSON", "expected a string"}},
      {st_file('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}x', d8), {"only spaces after the header"}},
      {st_file('{"a\\x":{}}'), {"valid escape"}},
      {st_file('{"a\255":{}}'), {"invalid UTF-8"}},
      {st_file('{"\\ud800":{}}'), {"low surrogate"}},
      {st_file('{"a\\u0000b":{}}'), {"\\u0000"}},
      {st_file('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":' .. string.rep("[", 100)
        .. string.rep("]", 100) .. '}}', d8), {"nests deeper than 64"}},
      {st_file('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[0],"data_offsets":[8,8]}}', d8),
        {"tensor name 'a' appears twice"}},
      {st_file(ok1, string.rep("\0", 4)), {"outside the data area of 4 bytes", "[0, 8]"}},
      {st_file('{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}', d8), {"tensor 'a'", "needs 12 bytes", "span 8"}},
      {st_file('{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}', d8), {"outside the data area"}},
      {st_file('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', d8),
        {"overlaps"}},
      {st_file('{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', d8), {"bytes 0..4", "belong to no tensor"}},
      {st_file(ok1, d8 .. "tail"), {"4 bytes of trailing data"}},
      {st_file('{"a":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}}', d8), {"unsupported dtype 'C64'"}},
      {st_file('{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}', d8), {"shape must hold integers >= 0", "-2"}},
      {st_file('{"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}}', d8), {"shape must hold integers >= 0"}},
      {st_file('{"a":{"dtype":"F32","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,4]}}', d8), {"more than 8 entries"}},
      {st_file('{"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}}', d8),
        {"more elements than a tensor can hold"}},
      {st_file('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,99999999999999999999]}}', d8), {"data_offsets must hold integers"}},
      {st_file('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}}', d8), {"data_offsets must be [begin, end]"}},
      {st_file('{"a":{"dtype":"F32","data_offsets":[0,8]}}', d8), {"tensor 'a' lacks 'shape'"}},
      {st_file('{"__metadata__":{"k":1},' .. ok1:sub(2), d8), {"__metadata__ value for key 'k' must be a string"}},
      {st_file('{"__metadata__":{"k":"a","k":"b"},' .. ok1:sub(2), d8), {"__metadata__ key 'k' appears twice"}},
      {st_file('[]'), {"expected '{' starting the header"}},
      {st_file('{"a":{"dtype":"F32","shape":[01],"data_offsets":[0,4]}}', d8), {"leading zero"}},
    }
    for i, c in ipairs(cases) do
      local ok, msg = pcall(mm.load, c[1])
      assert(not ok, ("case %d: expected an error"):format(i))
      for _, s in ipairs(c[2]) do
        assert(tostring(msg):find(s, 1, true), ("case %d: expected %q in: %s"):format(i, s, tostring(msg)))
      end
    end
    fails_with({"load", "No such file"}, mm.load, tmpdir .. "/missing.safetensors")
  end)

  it("rejects what cannot be saved, naming where it is", function()
    local p = tmp()
    fails_with({"'model.lr' is a number"}, mm.save, p, {model = {lr = 0.1}})
    local cyc = {}
    cyc.self = cyc
    fails_with({"contains itself"}, mm.save, p, {a = cyc})
    fails_with({"metadata must map strings to strings", "number"}, mm.save, p, {a = mm.ones(1)}, {epoch = 3})
    fails_with({"'a.b' appears twice"}, mm.save, p, {["a.b"] = mm.ones(1), a = {b = mm.ones(1)}})
    fails_with({"keys must be strings or integers", "boolean"}, mm.save, p, {[true] = mm.ones(1)})
    local freed = mm.ones(1)
    freed:free()
    fails_with({"freed"}, mm.save, p, {x = freed})
    assert.are.same({}, leftovers(tmpdir))
  end)

  it("saves tensors that require grad (their data, not their graph)", function()
    local w = mm.randn(3, {requires_grad = true})
    local y = w * 2
    local p = tmp()
    mm.save(p, {w = w, y = y})
    local got = mm.load(p)
    assert_same(w:detach(), got.w)
    assert.is_false(got.w.requires_grad)
    assert_same(y:detach(), got.y)
  end)
end)
