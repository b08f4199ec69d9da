"""``POST /get_reward``: OpenRLHF's remote reward model API."""
