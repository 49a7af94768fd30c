-- Sends in one round trip: the pipelined INSERT checks the queues' limits itself.
--
-- A group of sends used to read the limits of its queues and wait for them
-- before sending its INSERT: two round trips per commit. The INSERT now takes
-- the limits in the same statement and, should any send of the group be refused
-- (a queue missing or too full), calls this function, which aborts the
-- transaction. The writer then applies the group again the careful way, one
-- send at a time, and refuses exactly the sends that do not fit.
CREATE FUNCTION kvqueue_refuse_sends() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'a queue of these sends is missing or over its limits'
    USING ERRCODE = 'KQ001';
END $$;
