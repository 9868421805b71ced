-- flashsale_segments.lua: splits a sale's stock into segments for the
-- segment-lock baseline (--flashsale-strategy=segment-lock).
-- KEYS[1..n] fs:{SKU}:seg:0 .. fs:{SKU}:seg:<n-1>   ARGV[1] stock
-- Reply: {'ok'}.  Segment i holds stock/n, the first stock%n segments one more.
local n = #KEYS
local stock = tonumber(ARGV[1])
for i = 1, n do
  local share = math.floor(stock / n)
  if i <= stock % n then share = share + 1 end
  redis.call('SET', KEYS[i], share, 'NX')
end
return {'ok'}
