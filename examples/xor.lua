--- examples/xor.lua — the smallest network that needs a hidden layer.
--
-- XOR is not linearly separable, so a single Linear layer cannot fit it; a
-- hidden layer of 8 tanh units can.  Full-batch Adam on the four points,
-- binary cross-entropy on logits.  Runs in well under a second:
--
--   build/microml examples/xor.lua
local mm = require "microml"
local nn, optim = mm.nn, mm.optim

mm.manual_seed(tonumber(arg and arg[1]) or 0)

local x = mm.tensor({ { 0, 0 }, { 0, 1 }, { 1, 0 }, { 1, 1 } }, { dtype = "float32" })
local y = mm.tensor({ { 0 }, { 1 }, { 1 }, { 0 } }, { dtype = "float32" })

local model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
local opt = optim.Adam(model:parameters(), { lr = 0.05 })
print(model)
print()

local loss
for step = 1, 400 do
  opt:zero_grad()
  loss = nn.binary_cross_entropy_with_logits(model(x), y)
  loss:backward()
  opt:step()
  if step == 1 or step % 100 == 0 then print(("step %3d  loss %.5f"):format(step, loss:item())) end
end

print("\n  a  b | a xor b | p(1)")
local p = mm.no_grad(function() return mm.sigmoid(model(x)) end)
local correct = 0
for i = 1, 4 do
  local a, b, t, q = x:_get(2 * i - 1), x:_get(2 * i), y:_get(i), p:_get(i)
  if (q > 0.5) == (t == 1) then correct = correct + 1 end
  print(("  %d  %d |    %d    | %.3f"):format(a, b, t, q))
end
print(("\n%d/4 correct after 400 Adam steps (final loss %.5f)"):format(correct, loss:item()))
