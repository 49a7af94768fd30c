-- Leased messages only, for the in-flight count and the consumers' lease count a
-- send and a lease ask for. Through messages_visible those walked every message
-- still to come, delayed ones included; this index holds only the leased.
CREATE INDEX messages_leased ON messages (queue, visible_at, lease) WHERE lease IS NOT NULL;
