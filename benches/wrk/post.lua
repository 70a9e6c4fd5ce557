-- Rotates through 10 bodies of 1,000 rows (10,000 members in all).
local bodies = {}
local ext = os.getenv("BODY_EXT") or "ndjson"
for i = 0, 9 do
  local f = io.open((os.getenv("BODY_DIR") or "/tmp/trove-wrk") .. "/body" .. i .. "." .. ext, "rb")
  bodies[i] = f:read("*a")
  f:close()
end
local n = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = os.getenv("CONTENT_TYPE") or "application/x-ndjson"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("AUTH")
request = function()
  n = n + 1
  return wrk.format(nil, nil, nil, bodies[n % 10])
end
