"""Model servers thinktree starts itself: the process launcher and one profile per engine."""
