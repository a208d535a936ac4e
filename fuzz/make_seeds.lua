-- make_seeds.lua — writes a small seed corpus for each fuzz harness:
--   lua5.4 fuzz/make_seeds.lua DIR   ->  DIR/idx, DIR/npy, DIR/csv, DIR/safetensors,
--                                        DIR/checkpoint_meta
-- Seeds are valid files made with the library itself (plus an IDX file in
-- gzip), so the fuzzer starts from deep inside each format instead of
-- having to discover the magic numbers.  The idx and csv harnesses read an
-- options byte first, which each seed carries.
local mm = require "microml"
local dir = assert(arg[1], "usage: lua5.4 fuzz/make_seeds.lua DIR")
for _, sub in ipairs {"idx", "npy", "csv", "safetensors", "checkpoint_meta"} do
  assert(os.execute(("mkdir -p '%s/%s'"):format(dir, sub)))
end
local function write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end
local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local idx = string.pack(">BBBBI4I4", 0, 0, 8, 2, 2, 3) .. "\0\1\2\3\4\5"
write(dir .. "/idx/ubyte", "\0" .. idx)
write(dir .. "/idx/double", "\1" .. string.pack(">BBBBI4dd", 0, 0, 0x0E, 1, 2, 1.5, -2))
write(dir .. "/idx/int", "\2" .. string.pack(">BBBBI4i4", 0, 0, 0x0C, 1, 1, -7))
write("/tmp/seed_idx_plain", idx)
assert(os.execute("gzip -c -n /tmp/seed_idx_plain > /tmp/seed_idx_plain.gz"))
write(dir .. "/idx/gzip", "\0" .. read("/tmp/seed_idx_plain.gz"))
os.remove("/tmp/seed_idx_plain"); os.remove("/tmp/seed_idx_plain.gz")

mm.save_npy(dir .. "/npy/f4", mm.tensor({{1, 2}, {3, 4}}, {dtype = "float32"}))
mm.save_npy(dir .. "/npy/i8", mm.tensor({5, 6, 7}))
mm.save_npy(dir .. "/npy/scalar", mm.tensor(1.5, {dtype = "float64"}))

write(dir .. "/csv/comma", "\4a,b\n1,2\n3.5,-4e2\n")
write(dir .. "/csv/tab", "\2 1\t2 \r\n\"3\"\t4\n")

mm.save(dir .. "/safetensors/model", {w = mm.ones(2, 2), b = mm.zeros(2, {dtype = "int64"}),
  s = mm.tensor(1.0, {dtype = "float64"})}, {epoch = "1", note = "\"x\"\n"})

-- Checkpoint metadata as save_checkpoint writes it (every kind of value).
local ck = require "microml.checkpoint"
ck.save_checkpoint("/tmp/seed_checkpoint", {step = 3, lr = 0.1, nan = 0 / 0, inf = -1 / 0, z = -0.0,
  min = math.mininteger, s = "a\0\255\"\\", ok = true, [7] = "i", ["7"] = "s",
  model = {w = mm.ones(2), layers = {{b = mm.zeros(1)}}}})
local _, meta = mm.load("/tmp/seed_checkpoint")
os.remove("/tmp/seed_checkpoint")
write(dir .. "/checkpoint_meta/full", meta["microml.checkpoint"])
write(dir .. "/checkpoint_meta/empty", '{"t":[]}')
write(dir .. "/checkpoint_meta/nested", '{"t":[[1,{"t":[["x",{"f":"0x1.8p+1"}],[-2,{"tensor":"x.y"}]]}]]}')
