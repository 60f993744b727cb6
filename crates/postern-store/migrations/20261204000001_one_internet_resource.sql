-- An account has at most one Internet resource (the full tunnel): two would leave each client
-- to pick a gateway for "everything else" at random.
CREATE UNIQUE INDEX resources_one_internet ON resources (account_id) WHERE type = 'internet';
