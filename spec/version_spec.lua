-- version_spec.lua — one version number: MM_VERSION in runtime/tensor.h.
-- mm.version, the program's --version line, the rockspecs' versions and
-- CHANGELOG.md's newest heading must agree with it (microml.pc's Version
-- is checked by `make install-check`).  Run from the top of the tree.
local mm = require "microml"
local H = require "helpers"

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local MM_VERSION = read("runtime/tensor.h"):match('#define MM_VERSION "([^"]+)"')

describe("the version", function()
  it("is defined once, as MAJOR.MINOR.PATCH", function()
    assert.is_string(MM_VERSION)
    assert.truthy(MM_VERSION:match("^%d+%.%d+%.%d+$"), MM_VERSION)
  end)

  it("is mm.version", function()
    assert.are.equal(MM_VERSION, mm.version)
  end)

  it("is in microml --version and -v", function()
    local program = assert(os.getenv("MICROML"), "set MICROML to the path of build/microml (make spec does)")
    for _, opt in ipairs({ "--version", "-v" }) do
      local out = H.sh(H.quote(program) .. " " .. opt)
      assert.truthy(out:find("MicroML " .. MM_VERSION .. " (Lua 5.4", 1, true), out)
    end
  end)

  it("is the rockspecs' version: scm-1, or MM_VERSION-N for a release", function()
    local found = 0
    for _, dir in ipairs({ ".", "rockspecs" }) do
      local p = io.popen("ls " .. dir .. "/*.rockspec 2>/dev/null")
      for path in p:lines() do
        found = found + 1
        local from_name = path:match("microml%-([^/]+)%.rockspec$")
        local declared = read(path):match('\nversion = "([^"]+)"')
        assert.are.equal(from_name, declared, path .. ": file name and version field")
        assert.truthy(declared == "scm-1" or declared:match("^(.+)%-%d+$") == MM_VERSION,
                      ("%s: expected version scm-1 or %s-N, got %s"):format(path, MM_VERSION, declared))
      end
      p:close()
    end
    assert.is_true(found >= 1, "no rockspec found")
  end)

  it("heads CHANGELOG.md", function()
    local first = read("CHANGELOG.md"):match("\n## ([^\n]+)")
    assert.truthy(first and first:find(MM_VERSION, 1, true),
                  ("expected CHANGELOG.md's first '## ' heading to name %s, got %s"):format(MM_VERSION,
                                                                                       tostring(first)))
  end)
end)
