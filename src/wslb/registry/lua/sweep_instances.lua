-- Drop every instance (as drop_instance.lua) whose heartbeat key expired.
-- Run by the leader; an instance is listed in "{ns}:instances" by its
-- heartbeat (instance_heartbeat.lua), so one that never beats is never swept.
-- ARGV: [1] now
-- Reply: the ids of the dropped instances.
local dropped = {}
for _, instance in ipairs(redis.call('SMEMBERS', INSTANCES)) do
  if redis.call('EXISTS', instanceKey(instance)) == 0 then
    dropInstance(instance, ARGV[1])
    table.insert(dropped, instance)
  end
end
return cjson.encode(dropped)
