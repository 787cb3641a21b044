"""Redis: every key, the Lua scripts and their wrappers, the hand-packed lanes, notifications, the job queue."""
