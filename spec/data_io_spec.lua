-- Data in and out.  File formats: IDX (plain and gzip, also inflated in
-- place), .npy, CSV, safetensors, and the checkpoints of optim.  Small files
-- are made byte by byte with string.pack (gzip through the `gzip` program),
-- so every expectation is computed by hand from the format, not by the code
-- under test.  Then microml.data: TensorDataset, DataLoader (batch counts,
-- drop_last, shuffling that is reproducible and complete, samplers, the
-- next batch gathered in the background), the Fashion-MNIST / MNIST loaders
-- (on small hand-made IDX files, and on the installed data set) and
-- data.nest.
local mm = require "microml"
local H = require "helpers"
local data = mm.data

local tmpdir = os.tmpname()
os.remove(tmpdir)
assert(os.execute("mkdir -p '" .. tmpdir .. "'"))
local counter = 0
local function tmp(ext)
  counter = counter + 1
  return ("%s/f%d%s"):format(tmpdir, counter, ext or "")
end

local function assert_same(a, b)
  assert.are.equal(a:dtype(), b:dtype())
  assert.are.same(a:shape(), b:shape())
  assert.are.same(H.values(a), H.values(b))
end

local function leftovers(dir)
  local p = io.popen("ls -a '" .. dir .. "'")
  local names = {}
  for line in p:lines() do
    if line:find("%.tmp%.") or line:find("%.mmtmp%.") then names[#names + 1] = line end
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
    local p = H.write_file(tmp(".idx"), idx(0x08, {2, 3}, string.char(0, 1, 2, 253, 254, 255)))
    local t = mm.read_idx(p)
    assert.are.equal("float32", t:dtype())
    assert.are.same({2, 3}, t:shape())
    assert.are.same({0, 1, 2, 253, 254, 255}, H.values(t))
  end)

  it("reads labels as int64 when asked", function()
    local p = H.write_file(tmp(".idx"), idx(0x08, {4}, string.char(9, 0, 3, 7)))
    local t = mm.read_idx(p, {dtype = "int64"})
    assert.are.equal("int64", t:dtype())
    assert.are.same({9, 0, 3, 7}, H.values(t))
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
      local p = H.write_file(tmp(".idx"), idx(c[1], {3}, c[2]))
      local t = mm.read_idx(p, {dtype = "float64"})
      assert.are.same(c[3], H.values(t))
    end
    local p = H.write_file(tmp(".idx"), idx(0x0C, {2}, string.pack(">i4i4", -5, 2147483647)))
    assert.are.same({-5, 2147483647}, H.values(mm.read_idx(p, {dtype = "int64"})))
  end)

  it("reads gzip files the same as plain ones", function()
    local bytes = idx(0x08, {3, 2, 2}, string.char(table.unpack((function()
      local v = {} for i = 1, 12 do v[i] = i * 20 end return v end)())))
    local plain = H.write_file(tmp(".idx"), bytes)
    local gz = H.gzip(plain)
    assert.are_not.equal(H.read_file(gz):sub(1, 2), bytes:sub(1, 2))
    assert_same(mm.read_idx(plain), mm.read_idx(gz))
    assert.are.same({3, 2, 2}, mm.read_idx(gz):shape())
    -- concatenated gzip members form one stream, as zcat reads them
    local half1 = H.write_file(tmp(".a"), bytes:sub(1, 10))
    local half2 = H.write_file(tmp(".b"), bytes:sub(11))
    local both = H.write_file(tmp(".gz"), H.read_file(H.gzip(half1)) .. H.read_file(H.gzip(half2)))
    assert_same(mm.read_idx(plain), mm.read_idx(both))
  end)

  it("names the path and the OS error for a missing file or a directory", function()
    H.fails_with({"read_idx", tmpdir .. "/nope.idx", "No such file"}, mm.read_idx, tmpdir .. "/nope.idx")
    H.fails_with({"read_idx", "Is a directory"}, mm.read_idx, tmpdir)
  end)

  it("rejects a wrong magic, an unsupported type and a bad dimension count", function()
    H.fails_with({"not an IDX file", "50 4b 03 04"}, mm.read_idx, H.write_file(tmp(), "PK\3\4rest of a zip"))
    H.fails_with({"unsupported IDX data type 0x0A", "0x08 ubyte"}, mm.read_idx,
      H.write_file(tmp(), idx(0x0A, {1}, "x")))
    H.fails_with({"expected 1 to 8 dimensions, got 0"}, mm.read_idx, H.write_file(tmp(), idx(0x08, {}, "")))
    H.fails_with({"expected 1 to 8 dimensions, got 9"}, mm.read_idx,
      H.write_file(tmp(), idx(0x08, {1, 1, 1, 1, 1, 1, 1, 1, 1}, "x")))
    H.fails_with({"cannot be read as int64", "float"}, mm.read_idx,
      H.write_file(tmp(), idx(0x0D, {1}, string.pack(">f", 1))), {dtype = "int64"})
    H.fails_with({"truncated header", "got 3"}, mm.read_idx, H.write_file(tmp(), "\0\0\8"))
    H.fails_with({"truncated header", "2 dimensions need 12 bytes"}, mm.read_idx,
      H.write_file(tmp(), string.pack(">BBBBI4", 0, 0, 8, 2, 5)))
  end)

  it("rejects dims whose product overflows or exceeds the data present", function()
    H.fails_with({"more elements than a tensor can hold", "4294967295"}, mm.read_idx,
      H.write_file(tmp(), idx(0x08, {0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF}, "abc")))
    H.fails_with({"truncated data", "(1000000, 1000000)", "only 4 bytes follow"}, mm.read_idx,
      H.write_file(tmp(), idx(0x0C, {1000000, 1000000}, "abcd")))
    H.fails_with({"truncated data", "(2, 3)", "6 bytes", "only 5"}, mm.read_idx,
      H.write_file(tmp(), idx(0x08, {2, 3}, "12345")))
  end)

  it("rejects trailing garbage after the declared data (plain and gzip)", function()
    local p = H.write_file(tmp(".idx"), idx(0x08, {2}, "ab" .. "xyz"))
    H.fails_with({"3 bytes of trailing data", "(2)"}, mm.read_idx, p)
    H.fails_with({"trailing data"}, mm.read_idx, H.gzip(p))
  end)

  it("rejects truncated and corrupt gzip streams", function()
    local p = H.write_file(tmp(".idx"), idx(0x08, {64, 64}, string.rep("\1\2\3\4\5\6\7\8", 512)))
    local gz = H.read_file(H.gzip(p))
    H.fails_with({"gzip"}, mm.read_idx, H.write_file(tmp(".gz"), gz:sub(1, #gz // 2)))
    H.fails_with({"gzip data is truncated"}, mm.read_idx, H.write_file(tmp(".gz"), gz:sub(1, #gz - 4)))
    local corrupt = gz:sub(1, 20) .. string.rep("\255", 16) .. gz:sub(37)
    H.fails_with({"read_idx"}, mm.read_idx, H.write_file(tmp(".gz"), corrupt))
    H.fails_with({"trailing data after the gzip stream"}, mm.read_idx, H.write_file(tmp(".gz"), gz .. "junk"))
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

describe("gzip IDX read in place (inflated into the tensor's tail)", function()
  -- IDX: two zero bytes, the type code, ndim, big-endian sizes, then data.
  local function idx(code, fmt, shape, vals)
    local parts = { string.pack(">I2BB", 0, code, #shape) }
    for _, s in ipairs(shape) do parts[#parts + 1] = string.pack(">I4", s) end
    for _, v in ipairs(vals) do parts[#parts + 1] = string.pack(fmt, v) end
    return table.concat(parts)
  end

  it("gives every value of a byte image file, in every widening dtype", function()
    local vals = {}
    for i = 1, 3 * 257 do vals[i] = (i * 37) % 256 end
    local plain = H.write_temp(idx(0x08, "B", { 3, 257 }, vals))
    local gz = H.gzip(plain)
    for _, dt in ipairs { "float32", "float64", "int64" } do
      local t = mm.read_idx(gz, { dtype = dt })
      assert.are.same({ 3, 257 }, t:shape())
      assert.are.equal(dt, t:dtype())
      assert.are.same(vals, H.values(t))
    end
    os.remove(plain); os.remove(gz)
  end)

  it("converts big-endian 16-bit integers in place too", function()
    local vals = {}
    for i = 1, 1000 do vals[i] = (i * 7919) % 65536 - 32768 end
    local plain = H.write_temp(idx(0x0B, ">i2", { 1000 }, vals))
    local gz = H.gzip(plain)
    assert.are.same(vals, H.values(mm.read_idx(gz, { dtype = "float64" })))
    assert.are.same(H.values(mm.read_idx(plain, { dtype = "int64" })), H.values(mm.read_idx(gz, { dtype = "int64" })))
    os.remove(plain); os.remove(gz)
  end)

  it("still reports truncated and over-long gzip data", function()
    local vals = {}
    for i = 1, 4000 do vals[i] = i % 251 end
    local good = idx(0x08, "B", { 4000 }, vals)
    local short = H.gzip(H.write_temp(good:sub(1, #good - 10)))
    local ok, err = pcall(mm.read_idx, short)
    assert.is_false(ok)
    assert.is_truthy(tostring(err):find("truncated", 1, true), tostring(err))
    local long = H.gzip(H.write_temp(good .. "xyz"))
    ok, err = pcall(mm.read_idx, long)
    assert.is_false(ok)
    assert.is_truthy(tostring(err):find("trailing data", 1, true), tostring(err))
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
    local s = H.read_file(p)
    assert.are.equal("\147NUMPY\1\0", s:sub(1, 8))
    local hlen = string.unpack("<I2", s, 9)
    local header = s:sub(11, 10 + hlen)
    assert.are.equal(0, (10 + hlen) % 64)
    assert.are.equal("\n", header:sub(-1))
    assert.truthy(header:find("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 1, true))
    assert.are.equal(10 + hlen + 24, #s)
    mm.save_npy(p, mm.zeros(5, {dtype = "int64"}))
    assert.truthy(H.read_file(p):find("'descr': '<i8', 'fortran_order': False, 'shape': (5,), }", 1, true))
    mm.save_npy(p, mm.tensor(1.0, {dtype = "float64"}))
    assert.truthy(H.read_file(p):find("'descr': '<f8', 'fortran_order': False, 'shape': (), }", 1, true))
  end)

  it("reads hand-made files of every supported dtype and version", function()
    local h = function(descr, shape)
      return ("{'descr': '%s', 'fortran_order': False, 'shape': %s, }\n"):format(descr, shape)
    end
    local t = mm.load_npy(H.write_file(tmp(), npy(h("<f4", "(2,)"), string.pack("<ff", 1.5, -3))))
    assert.are.equal("float32", t:dtype())
    assert.are.same({1.5, -3}, H.values(t))
    t = mm.load_npy(H.write_file(tmp(), npy(h(">f8", "(2,)"), string.pack(">dd", 0.1, 7), 2)))
    assert.are.equal("float64", t:dtype())
    assert.are.same({0.1, 7}, H.values(t))
    t = mm.load_npy(H.write_file(tmp(), npy(h("<i4", "(1, 3)"), string.pack("<i4i4i4", -1, 2, 2147483647), 3)))
    assert.are.equal("int64", t:dtype())
    assert.are.same({1, 3}, t:shape())
    assert.are.same({-1, 2, 2147483647}, H.values(t))
    t = mm.load_npy(H.write_file(tmp(), npy(h("|u1", "(2, 2)"), "\0\1\128\255")))
    assert.are.equal("float32", t:dtype())
    assert.are.same({0, 1, 128, 255}, H.values(t))
    t = mm.load_npy(H.write_file(tmp(), npy(h("<i8", "(2L,)"), string.pack("<i8i8", -2, 3))))
    assert.are.same({-2, 3}, H.values(t))
    -- key order and quotes are free; a 1-D Fortran array is laid out as a C one
    t = mm.load_npy(H.write_file(tmp(), npy('{"shape": (2,), "fortran_order": True, "descr": "<f4"}',
      string.pack("<ff", 4, 5))))
    assert.are.same({4, 5}, H.values(t))
  end)

  it("rejects Fortran order, unsupported dtypes and malformed headers clearly", function()
    local function file(header, payload, v) return H.write_file(tmp(), npy(header, payload or "", v)) end
    H.fails_with({"Fortran", "(2, 2)", "only C order"}, mm.load_npy,
      file("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", string.rep("\0", 16)))
    H.fails_with({"unsupported dtype '<c8'", "<f4"}, mm.load_npy,
      file("{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }", string.rep("\0", 8)))
    H.fails_with({"structured dtypes"}, mm.load_npy,
      file("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }"))
    H.fails_with({"unexpected key 'extra'"}, mm.load_npy,
      file("{'descr': '<f4', 'fortran_order': False, 'shape': (), 'extra': 1}"))
    H.fails_with({"lacks 'shape'"}, mm.load_npy, file("{'descr': '<f4', 'fortran_order': False}"))
    H.fails_with({"appears twice"}, mm.load_npy,
      file("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': ()}"))
    H.fails_with({"malformed header"}, mm.load_npy, file("{'descr': '<f4', 'fortran_order': False, 'shape': (1,"))
    H.fails_with({"more elements than a tensor can hold"}, mm.load_npy,
      file("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999, 99999999, 99999999), }"))
    H.fails_with({"not a .npy file"}, mm.load_npy, H.write_file(tmp(), "PK\3\4 not numpy at all"))
    H.fails_with({"unsupported .npy version 4.0"}, mm.load_npy, H.write_file(tmp(), "\147NUMPY\4\0\0\0\0\0"))
    H.fails_with({"truncated header", "declared 80"}, mm.load_npy, H.write_file(tmp(), "\147NUMPY\1\0\80\0{'descr'"))
    H.fails_with({"truncated data", "(3)", "needs 12 bytes, got 8"}, mm.load_npy,
      file("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", string.rep("\0", 8)))
    H.fails_with({"4 bytes of trailing data"}, mm.load_npy,
      file("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", string.rep("\0", 8)))
    H.fails_with({"load_npy", "No such file"}, mm.load_npy, tmpdir .. "/missing.npy")
  end)
end)

-- ---------------------------------------------------------------------------
describe("read_csv", function()
  it("reads a table of numbers as float32 [rows, cols]", function()
    local p = H.write_file(tmp(".csv"), "1,2,3\n4.5,-6e2, 7 \n")
    local t = mm.read_csv(p)
    assert.are.equal("float32", t:dtype())
    assert.are.same({2, 3}, t:shape())
    assert.are.same({1, 2, 3, 4.5, -600, 7}, H.values(t))
  end)

  it("skips a header, blank lines and CRs; honours the delimiter and quotes", function()
    local p = H.write_file(tmp(".csv"), "a;b\r\n\r\n1;\"2\"\r\n  \r\n3;4")
    local t = mm.read_csv(p, {header = true, delimiter = ";"})
    assert.are.same({2, 2}, t:shape())
    assert.are.same({1, 2, 3, 4}, H.values(t))
    t = mm.read_csv(H.write_file(tmp(), "1\t2\n 3 \t\t4\n"), {delimiter = "\t"})
    assert.are.same({1, 2, 3, 4}, H.values(t))
    t = mm.read_csv(H.write_file(tmp(), "nan,inf,-inf\n"))
    local v = H.values(t)
    assert.is_true(v[1] ~= v[1])
    assert.are.same({math.huge, -math.huge}, {v[2], v[3]})
    assert.are.same({0, 0}, mm.read_csv(H.write_file(tmp(), "")):shape())
    assert.are.same({0, 0}, mm.read_csv(H.write_file(tmp(), "x,y\n"), {header = true}):shape())
  end)

  it("names the line and column of ragged rows, non-numbers and empty fields", function()
    H.fails_with({"line 3 has 2 fields, but line 1 has 3", "ragged"}, mm.read_csv,
      H.write_file(tmp(), "1,2,3\n4,5,6\n7,8\n"))
    H.fails_with({"line 2 has more than 2 fields"}, mm.read_csv, H.write_file(tmp(), "1,2\n3,4,5\n"))
    H.fails_with({"line 2, column 2", "expected a number, got 'abc'"}, mm.read_csv,
      H.write_file(tmp(), "1,2\n3,abc\n"))
    H.fails_with({"line 4, column 1", "got '1.2.3'"}, mm.read_csv, H.write_file(tmp(), "h\n\n1\n1.2.3\n"), {header = true})
    H.fails_with({"line 1, column 2", "empty field"}, mm.read_csv, H.write_file(tmp(), "1,,3\n"))
    H.fails_with({"line 1, column 1", "out of float32 range"}, mm.read_csv, H.write_file(tmp(), "1e39\n"))
    H.fails_with({"read_csv", "No such file"}, mm.read_csv, tmpdir .. "/missing.csv")
    H.fails_with({"delimiter must be a one-character string"}, mm.read_csv, H.write_file(tmp(), "1\n"), {delimiter = ",,"})
  end)
end)

-- ---------------------------------------------------------------------------
describe("safetensors save/load", function()
  local function st(header, data)
    return string.pack("<I8", #header) .. header .. (data or "")
  end
  local function st_file(header, data) return H.write_file(tmp(".safetensors"), st(header, data)) end

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
    local s = H.read_file(p1)
    assert.are.equal(s, H.read_file(p2))
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
    local before = H.read_file(p)
    -- a failing save (reserved name) must leave the good file untouched
    H.fails_with({"'__metadata__' is reserved"}, mm.save, p, {__metadata__ = mm.zeros(1)})
    assert.are.equal(before, H.read_file(p))
    mm.save(p, {x = mm.zeros(3)})
    assert.are.same({3}, mm.load(p).x:shape())
    assert.are.same({}, leftovers(tmpdir))
    H.fails_with({"cannot create a temporary file", tmpdir .. "/no/such/dir/.", ".mmtmp.", "for '"
      .. tmpdir .. "/no/such/dir/x.st'"}, mm.save, tmpdir .. "/no/such/dir/x.st",
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
    assert.are.same({1, -3}, H.values(t.b))
    assert.are.same({1, -2, math.huge, 2 ^ -24}, H.values(t.h))
    assert.are.equal("float32", t.h:dtype())
    assert.are.same({-7, 2147483647}, H.values(t.i))
    assert.are.equal("int64", t.i:dtype())
    assert.are.same({-300}, H.values(t.s))
    assert.are.same({-5}, H.values(t.c))
    assert.are.same({200}, H.values(t.u))
    assert.are.same({0, 1}, H.values(t.t))
  end)

  it("accepts what the format allows: padding, escapes, unknown fields, null metadata", function()
    local header = '{"__metadata__":null,"a\\u00e9\\ud83d\\ude00\\n":'
      .. '{"shape":[1],"data_offsets":[0,4],"extra":[{"x":[true,false,null,-1.5e3]}],"dtype":"F32"}}   '
    local t, meta = mm.load(st_file(header, string.pack("<f", 7)))
    assert.are.same({7}, H.values(t["aé😀\n"]))
    assert.are.same({}, meta)
  end)

  it("rejects hostile and corrupt files with a clear error", function()
    local ok1 = '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    local d8 = string.rep("\0", 8)
    local cases = {
      {H.write_file(tmp(), "short"), {"not a safetensors file", "5 bytes"}},
      {H.write_file(tmp(), string.pack("<I8", 1000) .. "{}"), {"header length 1000", "rest of the file"}},
      {H.write_file(tmp(), string.pack("<I8", 0xFFFFFFFFFFFFFFF0) .. "{}"), {"header length"}},
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
    H.fails_with({"load", "No such file"}, mm.load, tmpdir .. "/missing.safetensors")
  end)

  it("rejects what cannot be saved, naming where it is", function()
    local p = tmp()
    H.fails_with({"'model.lr' is a number"}, mm.save, p, {model = {lr = 0.1}})
    local cyc = {}
    cyc.self = cyc
    H.fails_with({"contains itself"}, mm.save, p, {a = cyc})
    H.fails_with({"metadata must map strings to strings", "number"}, mm.save, p, {a = mm.ones(1)}, {epoch = 3})
    H.fails_with({"'a.b' appears twice"}, mm.save, p, {["a.b"] = mm.ones(1), a = {b = mm.ones(1)}})
    H.fails_with({"keys must be strings or integers", "boolean"}, mm.save, p, {[true] = mm.ones(1)})
    local freed = mm.ones(1)
    freed:free()
    H.fails_with({"freed"}, mm.save, p, {x = freed})
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

-- ---------------------------------------------------------------------------
describe("checkpoints (mm.checkpoint, re-exported as optim.save_checkpoint / load_checkpoint)", function()
  local optim = mm.optim

  it("round-trip tensors and plain values exactly", function()
    local path = H.tmpname("values")
    local t = mm.randn(3, 2, { dtype = "float64" })
    local ck = {
      weights = { a = t, list = { mm.ones(2), mm.zeros(1) } },
      numbers = { 1, 2.5, 0.1, -0.0, 1 / 0, -1 / 0, math.pi, math.maxinteger, math.mininteger },
      nan = 0 / 0,
      text = "quote \" and newline \n and \0 nul",
      flag = false,
      [7] = "integer key",
      ["7"] = "string key",
    }
    optim.save_checkpoint(path, ck)
    local back = optim.load_checkpoint(path)
    os.remove(path)
    H.assert_close(back.weights.a, t:totable(), 0)
    assert.are.equal("float64", back.weights.a:dtype())
    H.assert_close(back.weights.list[1], { 1, 1 }, 0)
    for i, v in ipairs(ck.numbers) do
      assert.are.equal(v, back.numbers[i])
      assert.are.equal(math.type(v), math.type(back.numbers[i]))
    end
    assert.is_true(1 / back.numbers[4] < 0)   -- -0.0 keeps its sign
    assert.is_true(back.nan ~= back.nan)
    assert.are.equal(ck.text, back.text)
    assert.are.equal(false, back.flag)
    assert.are.equal("integer key", back[7])
    assert.are.equal("string key", back["7"])
  end)

  it("refuse values they cannot store and files without their metadata", function()
    H.error_with(function() optim.save_checkpoint(H.tmpname("bad"), { f = print }) end,
                 "cannot save a function at 'f'")
    H.error_with(function() optim.save_checkpoint(H.tmpname("bad"), { a = { [true] = 1 } }) end,
                 "keys must be strings or integers, got a boolean key under 'a'")
    local path = H.tmpname("plain")
    mm.save(path, { w = mm.ones(2) })
    H.error_with(function() optim.load_checkpoint(path) end, "has no 'microml.checkpoint' metadata")
    os.remove(path)
  end)

  it("live in mm.checkpoint; optim's names are the same functions", function()
    assert.are.equal(mm.checkpoint.save_checkpoint, optim.save_checkpoint)
    assert.are.equal(mm.checkpoint.load_checkpoint, optim.load_checkpoint)
    local path = H.tmpname("ckmod")
    mm.checkpoint.save_checkpoint(path, { step = 3, w = mm.full({ 2 }, 1.5) })
    local back = mm.checkpoint.load_checkpoint(path)
    os.remove(path)
    assert.are.equal(3, back.step)
    H.assert_close(back.w, { 1.5, 1.5 }, 0)
  end)
end)

-- ---------------------------------------------------------------------------
-- The security issue's I/O items: each of these reproduced before its fix.

-- The pid of this (busted) process: /proc/self is whoever opens it.
local function my_pid()
  local f = assert(io.open("/proc/self/stat"))
  local pid = tonumber(f:read("l"):match("^(%d+)"))
  f:close()
  return pid
end

-- FNV-1a 64 of s as 16 hex digits (the temporaries' name hash, runtime/io.c);
-- Lua's integers wrap like uint64_t.
local function fnv1a(s)
  local h = -3750763034362895579   -- 14695981039346656037 as int64
  for i = 1, #s do h = (h ~ s:byte(i)) * 1099511628211 end
  return ("%016x"):format(h)
end

local function run_script(src, env)
  local script = tmp(".lua")
  H.write_file(script, src)
  return H.sh((env or "") .. " timeout 60 " .. H.quote(os.getenv("MICROML")) .. " " .. H.quote(script))
end

describe("crash-safe saves: temporary files (security)", function()
  it("never follow a symlink planted at the old predictable temporary name", function()
    local dir = tmp("_sym")
    assert(os.execute("mkdir -p " .. H.quote(dir)))
    local victim = H.write_file(tmp(".victim"), "precious")
    local p = dir .. "/model.safetensors"
    -- what the old writer opened with fopen(.., "wb"), following links
    assert(os.execute(("ln -s %s %s"):format(H.quote(victim), H.quote(p .. ".tmp." .. my_pid()))))
    mm.save(p, {x = mm.ones(3)})
    assert.are.equal("precious", H.read_file(victim))
    assert.are.same({3}, mm.load(p).x:shape())
    assert.are.equal("file", (H.sh("stat -c %F " .. H.quote(p)):match("regular (file)")))
  end)

  it("save a file whose name is 250 bytes long (temporary names stay short)", function()
    local p = tmpdir .. "/" .. string.rep("n", 246) .. ".npy"
    mm.save_npy(p, mm.tensor({1, 2}))
    assert.are.same({1, 2}, H.values(mm.load_npy(p)))
    mm.save(p, {w = mm.ones(2)})
    assert.are.same({1, 1}, H.values(mm.load(p).w))
    os.remove(p)
    assert.are.same({}, leftovers(tmpdir))
  end)

  it("remove temporaries of dead writers of the same file, keep live ones and others", function()
    local dir = tmp("_stale")
    assert(os.execute("mkdir -p " .. H.quote(dir)))
    local p = dir .. "/ck.safetensors"
    -- a pid that is certainly dead: a shell that has exited
    local dead = tonumber((H.sh("sh -c 'echo $$'")))
    local pre = dir .. "/." .. fnv1a("ck.safetensors") .. ".mmtmp."
    local stale = H.write_file(pre .. dead .. ".0badf00d", "half a save")
    local live = H.write_file(pre .. my_pid() .. ".12345678", "a save in progress")
    local other = H.write_file(dir .. "/." .. fnv1a("other") .. ".mmtmp." .. dead .. ".00000000", "x")
    mm.save(p, {x = mm.ones(1)})
    assert.is_nil(io.open(stale), "the dead writer's temporary is still there")
    assert.is_not_nil(io.open(live))
    assert.is_not_nil(io.open(other))
  end)
end)

describe("reading files that change or inflate (security)", function()
  it("a file that is shorter than its stat size gives a clear error, not SIGBUS", function()
    -- sysfs reports 4096 bytes for attributes that hold a few: exactly what
    -- a file truncated between fstat and read looks like, deterministically.
    local f = "/sys/kernel/mm/transparent_hugepage/enabled"
    if not io.open(f) then return pending("no " .. f .. " here") end
    H.fails_with({"read_csv", f, "shrank while it was read", "expected 4096 bytes"}, mm.read_csv, f)
  end)

  it("survives files truncated by another process while they load", function()
    -- The loader (a child) reads a 16 MB file over and over while a shell
    -- truncates it and grows it back; mapped reads died with SIGBUS (exit 135).
    local p = tmp(".npy")
    mm.save_npy(p, mm.zeros(4 * 1024 * 1024))
    local size = #H.read_file(p)
    local out, err, code = run_script(([[
      local mm = require "microml"
      local p, size = %q, %d
      local h = io.popen(("(for i in $(seq 400); do truncate -s 200 '%%s'; truncate -s %%d '%%s'; "
        .. "done) >/dev/null 2>&1 & echo $!"):format(p, size, p))
      local bg = h:read("l")
      h:close()
      local ok_n, err_n = 0, 0
      for _ = 1, 300 do
        local ok, e = pcall(mm.load_npy, p)
        if ok then ok_n = ok_n + 1
        else
          err_n = err_n + 1
          assert(tostring(e):find("load_npy", 1, true), e)
        end
      end
      os.execute("kill " .. bg .. " 2>/dev/null; wait")
      print(ok_n, err_n)
    ]]):format(p, size))
    assert.are.equal(0, code, "the loader died (exit " .. code .. "): " .. err)
    assert.truthy(out:match("^%d+\t%d+"))
  end)

  it("applies the memory limit before inflating gzip data, not after", function()
    -- 64 MiB of float32 zeros in a small .gz, read under a 16 MiB limit in a
    -- child: refused before inflating, so the child's peak RSS stays small.
    local raw = tmp(".idx")
    local f = assert(io.open(raw, "wb"))
    f:write(string.pack(">BBBBI4", 0, 0, 0x0D, 1, 16 * 1024 * 1024))
    local zero = string.rep("\0", 1 << 20)
    for _ = 1, 64 do f:write(zero) end
    f:close()
    local gz = H.gzip(raw)
    os.remove(raw)
    local out, err, code = run_script(([[
      local mm = require "microml"
      local ok, e = pcall(mm.read_idx, %q)
      local st = io.open("/proc/self/status"):read("a")
      print(ok, e)
      print("HWM", st:match("VmHWM:%%s*(%%d+)"))
    ]]):format(gz), "MICROML_MAX_BYTES=16777216")
    assert.are.equal(0, code, err)
    assert.truthy(out:find("false", 1, true), out)
    assert.truthy(out:find("memory limit", 1, true), out)
    assert.truthy(out:find("inflating the gzip data", 1, true), out)
    local hwm_kb = tonumber(out:match("HWM\t(%d+)"))
    assert.is_true(hwm_kb < 48 * 1024, "peak RSS " .. hwm_kb .. " kB")
  end)
end)

describe("read_csv delimiters (security)", function()
  it("refuses delimiters that can occur inside a number", function()
    local p = H.write_file(tmp(".csv"), "1.5e3e2\n")
    for _, d in ipairs({"e", "E", "n", "a", "i", "f", "x", "p", "_", "(", "5", "."}) do
      H.fails_with({"delimiter '" .. d .. "' can occur inside a number"}, mm.read_csv, p, {delimiter = d})
    end
    assert.are.same({1500, 3000}, H.values(mm.read_csv(H.write_file(tmp(), "1.5e3|3e3\n"), {delimiter = "|"})))
  end)
end)

describe("checkpoints never run code (security)", function()
  local optim = mm.optim

  -- A safetensors file with one tensor and the given metadata.
  local function ck_file(meta)
    local p = tmp(".safetensors")
    mm.save(p, {w = mm.ones(2)}, meta)
    return p
  end

  -- Runs fn under an instruction budget: code from the file would blow it.
  local function bounded(fn)
    local co = coroutine.create(function() return pcall(fn) end)
    local blown = false
    debug.sethook(co, function() blown = true; error("instruction budget exceeded") end, "", 2000000)
    local _, ok, err = coroutine.resume(co)
    return blown, ok, err
  end

  it("a Lua expression as metadata is refused as format 1, without being run", function()
    for _, code in ipairs({"(function() while true do end end)()",
                           "{[1]=(function() local n = 0 for i = 1, 1e12 do n = n + i end return n end)()}",
                           "{[1]=2^10}"}) do
      local blown, ok, err = bounded(function() return optim.load_checkpoint(ck_file({["microml.checkpoint"] = code})) end)
      assert.is_false(blown, "load_checkpoint ran the file's code: " .. code)
      assert.is_false(ok)
      assert.truthy(tostring(err):find("format 1", 1, true), err)
    end
  end)

  it("format-2 metadata is data only: anything else is refused with the byte it is at", function()
    local function load_meta(text, needle)
      local p = ck_file({["microml.checkpoint"] = text, ["microml.checkpoint.format"] = "2"})
      local blown, ok, err = bounded(function() return optim.load_checkpoint(p) end)
      assert.is_false(blown)
      assert(not ok, "expected an error for " .. text)
      assert(tostring(err):find(needle, 1, true), ("expected %q in: %s"):format(needle, tostring(err)))
    end
    load_meta('{"t":[["a",1]]} x', "nothing but blanks after the top-level table")
    load_meta('{"t":[["a",1]]}{"t":[]}', "nothing but blanks")
    load_meta('(function() while true do end end)()', "malformed checkpoint metadata at byte 0")
    load_meta('{"t":[["a",{"f":"1e400"}]]}', "hex float")
    load_meta('{"t":[["a",{"f":" 0x1p+0"}]]}', "hex float")
    load_meta('{"t":[["a",{"code":"os.exit()"}]]}', 'a tag "f" (float), "t" (table) or "tensor"')
    load_meta('{"t":[["a",1.5]]}', "an integer (floats are written as")
    load_meta('{"t":[["a",9223372036854775808]]}', "int64 range")
    load_meta('{"t":[["a",-9223372036854775809]]}', "int64 range")
    load_meta('{"t":[["a",1],["a",2]]}', "string key 'a' appears twice")
    load_meta('{"t":[[7,1],[7,2]]}', "integer key 7 appears twice")
    load_meta('{"t":[["a","\\u0100"]]}', "\\u0000-\\u00FF")
    load_meta('{"t":[["a","\195\169"]]}', "printable ASCII")   -- raw UTF-8 e-acute, not \u00XX
    load_meta('{"t":[["a",{"tensor":"nope"}]]}', "lacks the tensor 'nope'")
    load_meta('{"f":"0x1p+0"}', "must be a table")
    load_meta(string.rep('{"t":[[1,', 70) .. "1" .. string.rep("]]}", 70), "deeper than 64 levels")
    load_meta(string.rep('{"t":[[1,', 100000), "deeper than 64 levels")
    load_meta('{"t":[["a",1]]', "got the end of the metadata")
    local p = ck_file({["microml.checkpoint"] = '{"t":[]}', ["microml.checkpoint.format"] = "3"})
    H.error_with(function() optim.load_checkpoint(p) end, "checkpoint format '3', expected format 2")
  end)

  it("round-trip byte strings, extreme integers and exact floats as data", function()
    local path = tmp(".ck")
    local bytes = {}
    for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
    local ck = {s = table.concat(bytes) .. "\255\254", min = math.mininteger, max = math.maxinteger,
                tiny = 4.9406564584124654e-324, third = 1 / 3, [-5] = "negative key", [""] = "empty key",
                nest = {{{{x = mm.full({1}, 2)}}}}}
    optim.save_checkpoint(path, ck)
    local _, meta = mm.load(path)
    assert.are.equal("2", meta["microml.checkpoint.format"])
    assert.is_nil(meta["microml.checkpoint"]:find("[^\32-\126]"))   -- printable ASCII only
    local back = optim.load_checkpoint(path)
    assert.are.equal(ck.s, back.s)
    assert.are.equal(math.mininteger, back.min)
    assert.are.equal(math.maxinteger, back.max)
    assert.are.equal(ck.tiny, back.tiny)
    assert.are.equal(ck.third, back.third)
    assert.are.equal("negative key", back[-5])
    assert.are.equal("empty key", back[""])
    H.assert_close(back.nest[1][1][1].x, {2}, 0)
  end)
end)

-- ---------------------------------------------------------------------------
-- microml.data

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
    assert.are.same({2, 102}, H.values(xi))
    assert.are.equal(20, yi:item())
    local xl = ds:get(-1)
    assert.are.same({4, 104}, H.values(xl))
  end)

  it("rejects mismatched sizes, non-tensors and bad indices", function()
    H.fails_with({"size mismatch", "(5, 2)", "(4)"}, data.TensorDataset, mm.zeros(5, 2), mm.zeros(4))
    H.fails_with({"argument 2: expected a tensor, got number"}, data.TensorDataset, mm.zeros(2), 3)
    H.fails_with({"at least one tensor"}, data.TensorDataset)
    local ds = data.TensorDataset(mm.zeros(3))
    H.fails_with({"index 4 is out of range (expected 1..3)"}, ds.get, ds, 4)
    H.fails_with({"index 0 is out of range"}, ds.get, ds, 0)
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
    local r1 = H.values(mm.rand(4))
    mm.manual_seed(5)
    epoch_order(data.DataLoader(ds, {batch_size = 4, shuffle = true, seed = 9}))
    assert.are.same(r1, H.values(mm.rand(4)))

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
    assert.are.same({1, 1, 2, 2}, H.values(batches[1][1]))
    assert.are.same({2, 4}, H.values(batches[1][2]))
    assert.are.same({10}, H.values(batches[3][2]))
  end)

  it("walks a given order with sampler=, every epoch, for both kinds of dataset", function()
    local x = mm.arange(10):reshape(10, 1)
    local order = mm.tensor({3, 1, 2, 10, 9, 9, 7}, {dtype = "int64"})   -- a subset, a repeat
    local loader = data.DataLoader(data.TensorDataset(x), {batch_size = 3, sampler = order})
    assert.are.equal(3, #loader)
    for _ = 1, 2 do
      local seen = {}
      for xb in loader:iter() do for _, v in ipairs(H.values(xb)) do seen[#seen + 1] = v end end
      assert.are.same({2, 0, 1, 9, 8, 8, 6}, seen)
    end
    local generic = {len = function() return 10 end, get = function(_, i) return i end}
    local got = {}
    for b in data.DataLoader(generic, {batch_size = 4, sampler = order}):iter() do
      for _, v in ipairs(H.values(b)) do got[#got + 1] = v end
    end
    assert.are.same({3, 1, 2, 10, 9, 9, 7}, got)
    local ds = data.TensorDataset(mm.zeros(4))
    H.fails_with({"sampler", "1-D int64 tensor", "got float32(4)"}, data.DataLoader, ds, {sampler = mm.zeros(4)})
    H.fails_with({"sampler", "got table"}, data.DataLoader, ds, {sampler = {1, 2}})
    H.fails_with({"sampler index 5 is out of range (expected 1..4)"}, data.DataLoader, ds,
               {sampler = mm.tensor({1, 5}, {dtype = "int64"})})
    H.fails_with({"sampler index 0 is out of range"}, data.DataLoader, ds,
               {sampler = mm.tensor({0, 1}, {dtype = "int64"})})
    H.fails_with({"sampler and shuffle exclude each other"}, data.DataLoader, ds,
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
      assert.are.same({0, 0, 0}, H.values(w.grad[2]))
      assert.are.same({1, 1, 1}, H.values(w.grad[1]))
      assert.are.same({2, 2, 2}, H.values(w.grad[4]))
      H.fails_with({"already collected"}, mm._index_select_finish, h)
      H.fails_with({"index 21 is out of range", "1..20"}, mm._index_select_start, {w}, mm.tensor({21}, {dtype = "int64"}))
      H.fails_with({"expected tensors of 20 rows like the first, got 5"}, mm._index_select_start, {w, mm.zeros(5)}, idx)
      H.fails_with({"expected a Tensor as entry 2, got number"}, mm._index_select_start, {w, 3}, idx)
      H.fails_with({"expected a list of 1 to 8 tensors, got 0"}, mm._index_select_start, {}, idx)
      H.fails_with({"expected int64 indices, got float32"}, mm._index_select_start, {w}, mm.zeros(2))
    end)
  end)

  it("handles an empty data set and rejects bad options", function()
    local empty = data.TensorDataset(mm.zeros(0, 3))
    local loader = data.DataLoader(empty, {batch_size = 4, shuffle = true})
    assert.are.equal(0, #loader)
    for _ in loader:iter() do error("an empty data set yields no batch") end
    local ds = data.TensorDataset(mm.zeros(4))
    H.fails_with({"batch_size", ">= 1", "got 0"}, data.DataLoader, ds, {batch_size = 0})
    H.fails_with({"batch_size", "expected an integer, got 2.5"}, data.DataLoader, ds, {batch_size = 2.5})
    H.fails_with({"no get(i) method"}, data.DataLoader, {len = function() return 1 end})
    H.fails_with({"expected a dataset"}, data.DataLoader, 5)
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
      local v = H.values(tx)
      assert.are.same({0, 0.2, 0.4, 1}, {v[1], (math.floor(v[2] * 1e6 + 0.5) / 1e6),
                                         (math.floor(v[3] * 1e6 + 0.5) / 1e6), v[4]})
      assert.are.equal("int64", ty:dtype())
      assert.are.same({1, 10, 5}, H.values(ty))
      assert.are.same({2, 4}, vx:shape())
      assert.are.same({2, 3}, H.values(vy))
      local mx = data.mnist(dir)
      assert.are.same({3, 4}, mx:shape())
    end)
  end

  it("names the package and the --data option when the files are missing", function()
    H.fails_with({"fashion_mnist", "/nonexistent/dir", "dataset-fashion-mnist", "--data"},
      data.fashion_mnist, "/nonexistent/dir")
    H.fails_with({"mnist", "--data"}, data.mnist, "/nonexistent/dir")
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
    H.fails_with({"both a tensor and a prefix"}, data.nest, {a = mm.zeros(1), ["a.b"] = mm.zeros(1)})
  end)
end)

-- Security issue item 15: a batch size near math.maxinteger is one batch.
describe("DataLoader with a huge batch_size", function()
  it("yields one batch holding everything", function()
    local ds = data.TensorDataset(mm.arange(1, 11):reshape(10, 1), mm.arange(1, 11))
    for _, shuffle in ipairs({false, true}) do
      for _, bs in ipairs({math.maxinteger, math.maxinteger - 3, 10, 11}) do
        local loader = data.DataLoader(ds, {batch_size = bs, shuffle = shuffle, seed = 1})
        assert.are.equal(1, #loader)
        local n = 0
        for x, y in loader:iter() do
          n = n + 1
          assert.are.same({10, 1}, x:shape())
          assert.are.equal(55, y:sum():item())
        end
        assert.are.equal(1, n)
      end
      local drop = data.DataLoader(ds, {batch_size = math.maxinteger, drop_last = true})
      assert.are.equal(0, #drop)
    end
  end)
end)
