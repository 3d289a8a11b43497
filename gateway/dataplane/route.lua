-- modelgate fast-path key: HAProxy sample fetch `lua.modelgate_key(<kind>,<max bytes>)`.
-- NOTE: a fetch reading txn.f:req_body(), not a converter on req.body: 2.6 hands converters
-- the body as a C string, cut at its first NUL byte (the gRPC frame starts with one).
--
-- Returns "k:<model>/<version>" (KServe v2) or "t:<model>/<version>" (TF-Serving), or nothing
-- when the call must go to the Python gateway: the gRPC message is not entirely in the
-- buffer, is compressed, is over the size limit, does not parse, names no version or a label,
-- or repeats a routing field (protobuf keeps the last duplicate, HAProxy's own protobuf()
-- converter the first: such a call could run a model other than the one it was routed to, so
-- it is never fast-pathed).
--
-- NOTE: a call naming no version goes to Python, which pins the version it resolves: the
-- backend's own choice (its newest loaded version) may be one the gateway does not route.
--
-- <kind>: "ki" KServe ModelInfer, "km" other KServe model calls, "ti" TF-Serving
-- Predict/Classify/Regress, "tm" GetModelMetadata.

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

core.register_fetches("modelgate_key", function(txn, kind, max_bytes)
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
  if name == nil or name == "" or version == nil or version == "" then
    return nil
  end
  return prefix .. ":" .. name .. "/" .. version
end)
