-- DNS patterns change meaning: '*' is now exactly one label and '**' any depth (it was '*'),
-- '?' one character (it was '?' as a whole label, for one label). Stored patterns keep what
-- their admins meant.
UPDATE resources SET address = '**' || substr(address, 2) WHERE type = 'dns' AND address LIKE '*.%';
UPDATE resources SET address = '*' || substr(address, 2) WHERE type = 'dns' AND address LIKE '?.%';
