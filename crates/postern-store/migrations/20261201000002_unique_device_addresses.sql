-- A tunnel address belongs to one device of an account, whichever portal node allocated it.
-- Devices that an earlier version gave an address already held keep nothing: the newer row
-- goes (the device gets a fresh row and address when it next connects).
DELETE FROM devices WHERE id IN (
    SELECT newer.id FROM devices newer
    JOIN devices older ON older.account_id = newer.account_id
        AND older.ipv4 = newer.ipv4 AND older.id < newer.id
);
CREATE UNIQUE INDEX devices_by_ipv4 ON devices (account_id, ipv4);
