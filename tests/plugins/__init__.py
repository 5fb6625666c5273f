"""Real plugin modules used by the tests (registered in fixtures, unregistered after)."""
