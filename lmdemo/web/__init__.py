"""The web demo's own code: everything that exists only because visitors use the models through a page."""
