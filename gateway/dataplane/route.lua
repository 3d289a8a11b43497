-- modelgate fast path: HAProxy sample fetch `lua.modelgate_route(<kind>,<max bytes>)`.
-- NOTE: a fetch reading txn.f:req_body(), not a converter on req.body: 2.6 hands converters
-- the body as a C string, cut at its first NUL byte (the gRPC frame starts with one).
--
-- Reads the model name and version from the request ("k:<model>/<version>" for KServe v2,
-- "t:<model>/<version>" for TF-Serving), looks
-- the key up in the route map the gateway maintains, picks one of the route's instances by
-- the model's policy, sets txn.key to that key (for the limits and the access log) and returns the instance's backend. Returns nothing, so that the call goes
-- to the Python gateway, when the gRPC message is not entirely in the buffer, is
-- compressed, is over the size limit, does not parse, names no version or a label, or repeats a
-- routing field (protobuf keeps the last duplicate, HAProxy's own protobuf() converter the
-- first: such a call could run a model other than the one it was routed to, so it is never
-- fast-pathed); when the key is not in the map; when every instance is down; and when a
-- sticky model's call lacks its header (the Python gateway counts those).
--
-- <kind>: "ki" KServe ModelInfer, "km" other KServe model calls, "ti" TF-Serving
-- Predict/Classify/Regress, "tm" GetModelMetadata.
--
-- Route-map values: "<policy>,<backend>=<address>,..." with <policy> "rr"
-- (round robin), "lc" (fewest calls in flight) or "sh=<header>" (rendezvous hash of the
-- header: the instance with the highest crc32("<value>|<address>"), as the Python router
-- picks it).

local routes = Map.new(os.getenv("MODELGATE_ROUTE_MAP"), Map._str)

local function varint(s, i, last)
  local value, shift = 0, 0
  while i <= last do
    local b = s:byte(i)
    i = i + 1
    value = value | ((b & 0x7f) << shift)
    if b < 0x80 then
      return value, i
    end
    shift = shift + 7
    if shift > 63 then
      return nil
    end
  end
  return nil
end

-- Walks the fields of s[first..last]; calls visit(number, wire_type, value_first, value_last
-- or varint value). Returns false when the bytes are not a well-formed message or visit does.
local function walk(s, first, last, visit)
  local i = first
  while i <= last do
    local tag
    tag, i = varint(s, i, last)
    if tag == nil then
      return false
    end
    local number, wire = tag >> 3, tag & 7
    if wire == 0 then
      local value
      value, i = varint(s, i, last)
      if value == nil or not visit(number, 0, value) then
        return false
      end
    elseif wire == 2 then
      local size
      size, i = varint(s, i, last)
      if size == nil or size < 0 or i + size - 1 > last then
        return false
      end
      if not visit(number, 2, i, i + size - 1) then
        return false
      end
      i = i + size
    elseif wire == 1 then
      i = i + 8
    elseif wire == 5 then
      i = i + 4
    else
      return false
    end
  end
  return i == last + 1
end

local function kserve(s, first, last)
  local name, version
  local ok = walk(s, first, last, function(number, wire, a, b)
    if number == 1 or number == 2 then
      if wire ~= 2 then
        return false
      end
      local text = s:sub(a, b)
      if number == 1 then
        if name ~= nil then return false end
        name = text
      else
        if version ~= nil then return false end
        version = text
      end
    end
    return true
  end)
  if not ok then
    return nil
  end
  return name, version or ""
end

local function tfserving(s, first, last)
  local spec_first, spec_last
  local ok = walk(s, first, last, function(number, wire, a, b)
    if number == 1 then
      if wire ~= 2 or spec_first ~= nil then return false end
      spec_first, spec_last = a, b
    end
    return true
  end)
  if not ok or spec_first == nil then
    return nil
  end
  local name, version
  ok = walk(s, spec_first, spec_last, function(number, wire, a, b)
    if number == 1 then
      if wire ~= 2 or name ~= nil then return false end
      name = s:sub(a, b)
    elseif number == 2 then
      if wire ~= 2 or version ~= nil then return false end
      local value
      local inner = walk(s, a, b, function(n, w, v)
        if n == 1 then
          if w ~= 0 or value ~= nil then return false end
          value = v
        end
        return true
      end)
      if not inner or value == nil or value <= 0 then return false end
      version = tostring(value)
    elseif number == 4 then
      return false -- a version label: resolved by the Python gateway
    end
    return true
  end)
  if not ok then
    return nil
  end
  return name, version or ""
end

-- The parsed route-map value of each key, with its round-robin turn (re-parsed when the
-- gateway changes the value; a key the map no longer has is dropped at its next call).
local parsed = {}

local function route_of(key)
  local value = routes:lookup(key)
  if value == nil then
    parsed[key] = nil
    return nil
  end
  local route = parsed[key]
  if route ~= nil and route.value == value then
    return route
  end
  local fields = {}
  for field in value:gmatch("[^,]+") do
    fields[#fields + 1] = field
  end
  local policy, header = fields[1]:match("^([^=]+)=?(.*)$")
  route = {value = value, policy = policy, header = header:lower(), backends = {},
           addresses = {}, turn = 0}
  for i = 2, #fields do
    local backend, address = fields[i]:match("^([^=]+)=(.+)$")
    route.backends[#route.backends + 1] = backend
    route.addresses[#route.addresses + 1] = address
  end
  parsed[key] = route
  return route
end

-- An instance backend's usable servers: its instance while up, and always the Python gateway.
local function up(txn, backend)
  return txn.f:nbsrv(backend) > 1
end

-- The backend of one of the route's instances that is up, or nil.
local function pick(txn, route)
  local backends = route.backends
  local n = #backends
  if route.policy == "sh" then
    local value = txn.f:req_hdr(route.header)
    if value == nil then
      return nil
    end
    local best, best_hash
    for i = 1, n do
      if up(txn, backends[i]) then
        local hash = txn.c:crc32(value .. "|" .. route.addresses[i])
        if best_hash == nil or hash > best_hash then
          best, best_hash = backends[i], hash
        end
      end
    end
    return best
  end
  route.turn = route.turn + 1
  if route.policy == "lc" then
    local best, fewest
    for j = 0, n - 1 do
      local backend = backends[(route.turn + j) % n + 1]
      if up(txn, backend) then
        local calls = txn.f:be_conn(backend)
        if fewest == nil or calls < fewest then
          best, fewest = backend, calls
        end
      end
    end
    return best
  end
  for j = 0, n - 1 do
    local backend = backends[(route.turn + j) % n + 1]
    if up(txn, backend) then
      return backend
    end
  end
  return nil
end

core.register_fetches("modelgate_route", function(txn, kind, max_bytes)
  local body = txn.f:req_body()
  -- gRPC frame: 1 byte compressed flag, 4 bytes big-endian length, then the message
  if body == nil or #body < 5 or body:byte(1) ~= 0 then
    return nil
  end
  local b1, b2, b3, b4 = body:byte(2, 5)
  local size = (b1 << 24) | (b2 << 16) | (b3 << 8) | b4
  if size ~= #body - 5 or size > tonumber(max_bytes) then
    return nil
  end
  local name, version
  local prefix = kind:sub(1, 1)
  if prefix == "k" then
    name, version = kserve(body, 6, #body)
  else
    name, version = tfserving(body, 6, #body)
  end
  -- NOTE: a call naming no version goes to Python, which pins the version it resolves: the
  -- backend's own choice (its newest loaded version) may be one the gateway does not route.
  if name == nil or name == "" or version == nil or version == "" then
    return nil
  end
  local key = prefix .. ":" .. name .. "/" .. version
  local route = route_of(key)
  if route == nil then
    return nil
  end
  local backend = pick(txn, route)
  if backend ~= nil then
    txn:set_var("txn.key", key)
  end
  return backend
end)
