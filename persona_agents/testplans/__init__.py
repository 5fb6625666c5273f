"""Golden conversation plans for NPC behaviour: `persona-agents test`."""
